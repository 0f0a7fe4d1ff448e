//! `--threads`: with 1, one thread serves every call (tokio's current-thread scheduler), so nothing a
//! call does may hold that thread: a script that waits or runs long must leave the other calls
//! answered at once. Each test runs with 1 and with 2 threads.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

/// A call that must not be held up by the slow one is answered within this.
const PROMPT: Duration = Duration::from_millis(1500);

async fn serve_threads(threads: usize, rules: &str, args: &[&str]) -> (Server, Client) {
    let options = Options::default().arg("--threads").arg(threads.to_string());
    let options = args.iter().fold(options, |o, a| o.arg(*a));
    let server = Server::start_with(&t_proto(), &[("t.toml", rules)], options);
    let client = server.client().await;
    (server, client)
}

/// On 1 and on 2 threads: while a call answered by `slow_rule` (a script taking 3 s or more) is in
/// flight, ten plain calls are each answered within [`PROMPT`]; then the slow call ends with
/// `{ text: answer }`. `args`: extra flags.
async fn a_slow_script_holds_nobody_up(slow_rule: &str, args: &[&str], answer: &str) {
    let handler = rules(&[
        (
            "t.Svc/Unary",
            &format!("when.request.name = \"slow\"\n{slow_rule}"),
        ),
        ("t.Svc/Unary", "reply.text = \"{{request.name}}\""),
    ]);
    for threads in [1, 2] {
        let (_s, c) = serve_threads(threads, &handler, args).await;
        let start = Instant::now();
        let slow_call = {
            let c = c.clone();
            tokio::spawn(async move { c.unary("t.Svc/Unary", json!({ "name": "slow" })).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..10 {
            let out = c.unary("t.Svc/Unary", json!({ "name": "quick" })).await;
            assert_eq!(
                out.single(),
                &json!({ "text": "quick" }),
                "threads {threads}, call {i}"
            );
            assert!(
                out.elapsed < PROMPT,
                "threads {threads}: call {i} took {:?}",
                out.elapsed
            );
        }
        assert!(
            !slow_call.is_finished(),
            "the slow call was already over after {:?}: the test shows nothing",
            start.elapsed()
        );
        let slow = slow_call.await.unwrap();
        assert_eq!(
            slow.single(),
            &json!({ "text": answer }),
            "threads {threads}"
        );
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn a_sleeping_script_leaves_the_other_calls_answered() {
    a_slow_script_holds_nobody_up("code = 'sleep(3000); #{ text: \"slept\" }'", &[], "slept").await;
}

/// A unary script naming no waiting function is first tried on the serving thread, within a small
/// operation budget; one that needs more is moved off it, so a long computation holds up nobody.
#[tokio::test]
async fn a_long_computation_leaves_the_other_calls_answered() {
    a_slow_script_holds_nobody_up(
        "code = '''\nlet t = timestamp();\nlet n = 0;\nwhile t.elapsed < 3.0 { n += 1; }\n#{ text: if n > 0 { \"done\" } else { \"none\" } }\n'''",
        // It counts to whatever 3 s allows: no operation budget.
        &["--script-max-operations", "0"],
        "done",
    )
    .await;
}

/// A bidi script waits in `next()` between messages (on a thread of its own): meanwhile unary calls
/// are answered, and each message is still echoed as it comes.
#[tokio::test]
async fn a_script_waiting_for_the_next_message_leaves_the_other_calls_answered() {
    for threads in [1, 2] {
        let h = rules(&[
            (
                "t.Svc/Bidi",
                "code = '''\nloop {\n  let m = next();\n  if type_of(m) == \"()\" { break; }\n  send(#{ text: \"echo \" + m.name });\n}\n'''",
            ),
            ("t.Svc/Unary", "reply.text = \"{{request.name}}\""),
        ]);
        let (_s, c) = serve_threads(threads, &h, &[]).await;
        let mut call = c.session("t.Svc/Bidi");
        for round in ["one", "two", "three"] {
            call.send(json!({ "name": round }));
            assert_eq!(
                call.recv_within(PROMPT).await,
                Ok(Some(json!({ "text": format!("echo {round}") }))),
                "threads {threads}"
            );
            let out = c.unary("t.Svc/Unary", json!({ "name": round })).await;
            assert_eq!(out.single(), &json!({ "text": round }));
            assert!(out.elapsed < PROMPT, "{:?}", out.elapsed);
        }
        let (rest, _, status) = call.finish().await;
        assert!(rest.is_empty(), "{rest:?}");
        assert_eq!(status.code(), Code::Ok, "{status:?}");
    }
}

#[test]
fn zero_threads_is_refused_by_name() {
    let out = command()
        .args(["serve", "--threads", "0"])
        .output()
        .expect("running protodrop");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
}
