//! Load (issue 5, part 4): 1,000 concurrent calls of each RPC shape against one server, every
//! answer checked, for handler rules and for Rhai scripts. Timings are printed (run with
//! `--nocapture` to see them); the limits asserted are generous, for a debug build on a busy 2-core
//! CI machine. The long run with reloads is tests/soak.rs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use serde_json::Value as Json;
use tonic::Code;

/// Calls in flight at once, per shape.
const CONCURRENT: usize = 1000;
/// Connections they are spread over (HTTP/2 multiplexes the rest).
const CONNECTIONS: usize = 8;
/// Longest one batch of 1,000 calls may take.
const BATCH_LIMIT: Duration = Duration::from_secs(30);

/// `l.Rules` answers with handler rules, `l.Scripts` with scripts (a client-streaming or bidi
/// script must be its method's only rule, hence two services).
const L_PROTO: &str = r#"syntax = "proto3";
package l;
import "t.proto";
service Rules {
  rpc Unary(t.Req) returns (t.Resp);
  rpc ServerStream(t.Req) returns (stream t.Resp);
  rpc ClientStream(stream t.Req) returns (t.Resp);
  rpc Bidi(stream t.Req) returns (stream t.Resp);
}
service Scripts {
  rpc Unary(t.Req) returns (t.Resp);
  rpc ServerStream(t.Req) returns (stream t.Resp);
  rpc ClientStream(stream t.Req) returns (t.Resp);
  rpc Bidi(stream t.Req) returns (stream t.Resp);
}
"#;

const HANDLER: &str = r#"
[[rule]]
method = "l.Rules/Unary"
reply = { text = "u {{request.name}}", num = "{{request.num}}" }

[[rule]]
method = "l.Rules/ServerStream"
stream.repeat = 3
stream.message = { text = "s {{request.name}}", num = "{{index}}" }

[[rule]]
method = "l.Rules/ClientStream"
reply = { text = "c {{request.name}}", num = "{{count}}" }

[[rule]]
method = "l.Rules/Bidi"
reply = { text = "b {{request.name}}", num = "{{count}}" }

[[rule]]
method = "l.Scripts/Unary"
code = '#{ text: "u " + request.name, num: request.num }'

[[rule]]
method = "l.Scripts/ServerStream"
code = '''
for i in 0..3 { send(#{ text: "s " + request.name, num: i }); }
'''

[[rule]]
method = "l.Scripts/ClientStream"
code = '''
let n = 0;
let last = ();
loop { let m = next(); if m == () { break; } n += 1; last = m; }
#{ text: "c " + last.name, num: n }
'''

[[rule]]
method = "l.Scripts/Bidi"
code = '''
let n = 0;
loop { let m = next(); if m == () { break; } n += 1; send(#{ text: "b " + m.name, num: n }); }
'''
"#;

fn serve() -> Server {
    Server::start(
        &[("t.proto", T_PROTO), ("l.proto", L_PROTO)],
        &[("l.toml", HANDLER)],
    )
}

async fn clients(s: &Server) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(s.client().await);
    }
    out
}

/// The request and the answer expected for call `i` of `shape` on `service`.
fn case(service: &str, shape: &str, i: usize) -> (String, Vec<Json>, Vec<Json>) {
    let name = format!("{shape}{i}");
    let method = format!("l.{service}/{shape}");
    let three: Vec<Json> = (0..3)
        .map(|k| json!({ "name": format!("{name}.{k}") }))
        .collect();
    let num = |n: usize| if n == 0 { json!(null) } else { json!(n) };
    let with_num = |text: String, n: usize| match num(n) {
        Json::Null => json!({ "text": text }),
        n => json!({ "text": text, "num": n }),
    };
    match shape {
        "Unary" => (
            method,
            vec![json!({ "name": name, "num": i })],
            vec![with_num(format!("u {name}"), i)],
        ),
        "ServerStream" => (
            method,
            vec![json!({ "name": name })],
            (0..3).map(|k| with_num(format!("s {name}"), k)).collect(),
        ),
        "ClientStream" => (method, three, vec![with_num(format!("c {name}.2"), 3)]),
        "Bidi" => (
            method,
            three,
            (0..3)
                .map(|k| with_num(format!("b {name}.{k}"), k + 1))
                .collect(),
        ),
        _ => unreachable!(),
    }
}

/// Runs `CONCURRENT` calls of `shape` at once, spread over the connections; checks every answer.
async fn batch(clients: &[Client], service: &str, shape: &str) -> Duration {
    let started = Instant::now();
    let calls = (0..CONCURRENT).map(|i| {
        let client = clients[i % clients.len()].clone();
        async move {
            let (method, requests, want) = case(service, shape, i);
            let out = client.client_stream(&method, requests).await;
            (i, method, out, want)
        }
    });
    let results = tokio::time::timeout(BATCH_LIMIT, join_all(calls))
        .await
        .unwrap_or_else(|_| {
            panic!("{CONCURRENT} {service}/{shape} calls took over {BATCH_LIMIT:?}")
        });
    let took = started.elapsed();
    let mut failed = Vec::new();
    for (i, method, out, want) in results {
        if out.code() != Code::Ok || out.messages != want {
            failed.push(format!(
                "#{i} {method}: {:?} {:?}, got {:?}, want {want:?}",
                out.code(),
                out.message(),
                out.messages
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {CONCURRENT} {service}/{shape} calls failed, e.g.:\n{}",
        failed.len(),
        failed[..failed.len().min(5)].join("\n")
    );
    eprintln!("{CONCURRENT} concurrent {service}/{shape} calls: {took:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_of_each_shape_answered_by_rules() {
    let s = serve();
    let clients = clients(&s).await;
    for shape in ["Unary", "ServerStream", "ClientStream", "Bidi"] {
        batch(&clients, "Rules", shape).await;
    }
}

/// Scripts run on tokio's blocking pool (512 threads), streaming ones with a helper thread besides.
/// Here every client sends its whole stream at once, so no script waits on its client and each
/// holds its thread only briefly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_of_each_shape_answered_by_scripts() {
    let s = serve();
    let clients = clients(&s).await;
    for shape in ["Unary", "ServerStream", "ClientStream", "Bidi"] {
        batch(&clients, "Scripts", shape).await;
    }
}

/// All four shapes at once, rules and scripts mixed: 8,000 calls in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_at_once_rules_and_scripts() {
    let s = serve();
    let clients = clients(&s).await;
    let started = Instant::now();
    let batches = ["Rules", "Scripts"].into_iter().flat_map(|service| {
        ["Unary", "ServerStream", "ClientStream", "Bidi"]
            .into_iter()
            .map(move |shape| (service, shape))
    });
    join_all(batches.map(|(service, shape)| batch(&clients, service, shape))).await;
    eprintln!(
        "{} calls, every shape, rules and scripts at once: {:?}",
        8 * CONCURRENT,
        started.elapsed()
    );
}

/// 1,000 chat-like clients: each opens a bidi stream answered by a script, sends one message and
/// keeps the stream open, waiting for its answer. Regression: a script waiting in `next()` holds a
/// thread of tokio's blocking pool, which was 512 threads, so only 512 got their answer within
/// ~1.5 s and the other 488 waited until `--script-timeout` (10 s) killed the first ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_open_bidi_script_sessions_are_all_answered_at_once() {
    let s = serve();
    let clients = clients(&s).await;
    let mut sessions: Vec<Session> = (0..CONCURRENT)
        .map(|i| clients[i % clients.len()].session("l.Scripts/Bidi"))
        .collect();
    for (i, session) in sessions.iter_mut().enumerate() {
        session.send(json!({ "name": format!("open{i}") }));
    }
    let started = Instant::now();
    let firsts = join_all(
        sessions
            .iter_mut()
            .map(|session| session.recv_within(Duration::from_secs(5))),
    )
    .await;
    let answered = firsts.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    eprintln!(
        "{answered} of {CONCURRENT} open bidi script sessions answered within {:?}",
        started.elapsed()
    );
    assert_eq!(
        answered, CONCURRENT,
        "sessions without an answer within 5 s"
    );
    for (i, first) in firsts.into_iter().enumerate() {
        assert_eq!(
            first,
            Ok(Some(json!({ "text": format!("b open{i}"), "num": 1 })))
        );
    }
    for (rest, _, status) in join_all(sessions.into_iter().map(Session::finish)).await {
        assert!(rest.is_empty(), "{rest:?}");
        assert_eq!(status.code(), Code::Ok, "{status:?}");
    }
}
