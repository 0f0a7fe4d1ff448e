//! Scripts that would take a server down (issue 5, part 3): endless recursion and every way to
//! allocate without bound end their own call with RESOURCE_EXHAUSTED naming the flag, the server's
//! memory stays small, and it answers the next call. (A loop that never ends is tests/scripts.rs,
//! `runaway_loop_is_stopped_with_resource_exhausted_and_the_server_still_answers`; the limits one by
//! one are unit tests in src/handlers/script.rs.)

mod common;

use common::*;
use futures::future::join_all;
use tonic::Code;

/// One rule per bomb, chosen by `request.name`.
const BOMBS: &[(&str, &str, &str)] = &[
    (
        "recursion",
        "fn f(x) { f(x + 1) }\nf(0)",
        "--script-max-call-depth",
    ),
    (
        "doubling",
        "let s = \"0123456789\"; loop { s += s; }",
        "--script-max-string-size",
    ),
    (
        "string_pad",
        "let s = \"x\"; s.pad(2000000000, 'y'); #{}",
        "--script-max-string-size",
    ),
    (
        "array_doubling",
        "let a = [1]; loop { a += a; }",
        "--script-max-array-size",
    ),
    (
        "array_pad",
        "let a = []; a.pad(2000000000, 1); #{}",
        "--script-max-array-size",
    ),
    (
        "blob",
        "let b = blob(2000000000); #{}",
        "--script-max-array-size",
    ),
    // Rhai checks a map's size only when it is passed on: growing one by index is stopped by the
    // operation budget.
    (
        "map_index",
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        "--script-max-operations",
    ),
];

fn handler() -> String {
    let mut h = String::new();
    for (name, code, _) in BOMBS {
        h.push_str(&format!(
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"{name}\"\ncode = '''\n{code}\n'''\n\n"
        ));
    }
    h.push_str("[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"alive\"\n\n");
    // The same recursion in a streaming response, which runs on its own helper thread.
    h.push_str("[[rule]]\nmethod = \"t.Svc/ServerStream\"\ncode = '''\nfn f(x) { send(#{ num: x }); f(x + 1) }\nf(0)\n'''\n");
    h
}

async fn assert_bombs_are_defused(s: &Server, call_depth: usize) {
    let c = s.client().await;
    let calls = BOMBS.iter().map(|(name, _, flag)| {
        let c = c.clone();
        async move {
            (
                name,
                flag,
                c.unary("t.Svc/Unary", json!({ "name": name })).await,
            )
        }
    });
    for (name, flag, out) in join_all(calls).await {
        let message = out.err(Code::ResourceExhausted);
        assert!(message.contains(flag), "{name}: {message}");
    }
    let out = c.server_stream("t.Svc/ServerStream", json!({})).await;
    let message = out.err(Code::ResourceExhausted);
    assert!(
        message.contains(&format!("call depth of {call_depth}")),
        "{message}"
    );
    assert!(
        !out.messages.is_empty(),
        "it streamed before it was stopped"
    );

    assert_eq!(
        c.unary("t.Svc/Unary", json!({ "name": "x" }))
            .await
            .single(),
        &json!({ "text": "alive" })
    );
    let peak = proc_status_kib(s.pid(), "VmHWM");
    assert!(peak < 256 * 1024, "the server's peak RSS was {peak} KiB");
}

/// Default limits, except a smaller operation budget so that the map bomb ends in a second on a
/// debug build (it would take about ten at the default million).
#[tokio::test]
async fn script_bombs_end_their_own_call_and_the_server_serves_on() {
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", &handler())],
        Options::default()
            .arg("--script-max-operations")
            .arg("100000"),
    );
    assert_bombs_are_defused(&s, 64).await;
}

/// Rhai recurses on the native stack: a call depth raised far above the default must still end in
/// RESOURCE_EXHAUSTED, not in a stack overflow that aborts the whole server (the runtime's threads
/// and the streaming helper threads are sized from the flag).
#[tokio::test]
async fn a_raised_call_depth_does_not_overflow_the_stack() {
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", &handler())],
        Options::default()
            .arg("--script-max-call-depth")
            .arg("2000")
            .arg("--script-max-operations")
            .arg("100000"),
    );
    assert_bombs_are_defused(&s, 2000).await;
}
