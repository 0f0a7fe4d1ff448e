//! Deadlines and cancellation (issue 5, part 2): a call ends when its `grpc-timeout` passes,
//! whatever it was waiting on (a handler `delay`, a script), with DEADLINE_EXCEEDED (before the
//! response headers as after them), and a client that goes away leaves nothing running on the server.
//!
//! "Nothing running" is observed two ways. A script prints a line every 50 ms: once its client is
//! gone the lines stop. And a graceful shutdown waits for calls in flight (tests/cli.rs,
//! `sigterm_waits_for_calls_in_flight_only_for_the_grace_period`): with a 10 s grace period, a
//! server whose abandoned calls were really dropped exits at once on SIGTERM.
//! (The server-streaming case of the first kind is tests/streams.rs,
//! `a_server_stream_ends_at_its_deadline`; scripts past `--script-timeout` are tests/scripts.rs.)
//! HTTP/JSON calls have a deadline too: `Grpc-Timeout`, as grpc-gateway reads it.

mod common;
mod http_client;
mod raw;

use std::time::{Duration, Instant};

use common::*;
use raw::*;
use tonic::Code;

const HANDLER: &str = r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "slow"
delay = "5s"
reply.text = "late"

[[rule]]
method = "t.Svc/Unary"
when.request.name = "script"
code = '''
loop { print(`tick ${request.num}`); sleep(50); }
'''

[[rule]]
method = "t.Svc/Unary"
reply.text = "hi {{request.name}}"

[[rule]]
method = "t.Svc/ClientStream"
delay = "5s"
reply.text = "late"

[[rule]]
method = "t.Svc/Bidi"
when.request.name = "slow"
delay = "5s"
reply.text = "late"

[[rule]]
method = "t.Svc/Bidi"
reply.text = "{{request.name}}"

[[rule]]
method = "t.Svc/ServerStream"
stream.repeat = 1000
stream.delay = "100ms"
stream.message = { text = "tick {{index}}" }
"#;

/// Scripted streams: the script is the method's only rule, so they live in their own server.
const SCRIPTED: &str = r#"
[[rule]]
method = "t.Svc/ServerStream"
code = '''
let i = 0;
loop { print(`tick ${request.num}`); send(#{ num: i }); i += 1; sleep(50); }
'''

[[rule]]
method = "t.Svc/Bidi"
code = '''
let first = next();
loop { print(`tick ${first.num}`); send(#{ num: first.num }); sleep(50); }
'''
"#;

const DEADLINE: Duration = Duration::from_millis(300);

fn serve(handler: &str) -> Server {
    serve_threads(handler, None)
}

/// [`serve`] with `--threads` (`--threads 1`: timers, calls and the script's thread all meet on
/// one serving thread).
fn serve_threads(handler: &str, threads: Option<usize>) -> Server {
    // A long grace period: a server left running a call would wait that long on SIGTERM.
    let options = Options::default().arg("--shutdown-grace").arg("10s");
    let options = match threads {
        Some(n) => options.arg("--threads").arg(n.to_string()),
        None => options,
    };
    Server::start_with(&t_proto(), &[("t.toml", handler)], options)
}

/// `t.Req { name, num }` in a frame.
fn req(name: &str, num: u8) -> bytes::Bytes {
    let mut body = string_field(1, name.as_bytes());
    body.extend_from_slice(&[0x10, num]);
    frame(false, &body)
}

/// Calls `path` with a 300 ms `grpc-timeout` over the raw client (tonic's own client would give up
/// at the deadline itself, with CANCELLED, and hide what the server answers). The call must end when
/// the deadline passes, not when the delay ends. Returns the `grpc-status` and the messages that
/// came before it.
async fn call_past_deadline(
    conn: &mut Conn,
    path: &str,
    chunks: Vec<bytes::Bytes>,
) -> (Code, Vec<String>) {
    let started = Instant::now();
    let answer = conn
        .call_chunks(path, &[("grpc-timeout", "300m")], chunks)
        .await;
    let took = started.elapsed();
    assert!(
        took >= DEADLINE - Duration::from_millis(50) && took < Duration::from_secs(2),
        "{path}: answered after {took:?}, the deadline was {DEADLINE:?}: {answer:?}"
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let code = Code::from(answer.grpc_status().expect("a grpc-status"));
    let messages = answer
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    (code, messages)
}

/// DEADLINE_EXCEEDED is what gRPC specifies ("Deadline expires before server returns status",
/// both sides), before and after the response headers.
#[track_caller]
fn assert_past_deadline(path: &str, code: Code) {
    assert_eq!(code, Code::DeadlineExceeded, "{path}");
}

#[tokio::test]
async fn a_delay_longer_than_the_deadline_ends_the_call_at_the_deadline() {
    for threads in [1, 2] {
        a_delay_longer_than_the_deadline_ends_the_call_at_the_deadline_on(threads).await;
    }
}

async fn a_delay_longer_than_the_deadline_ends_the_call_at_the_deadline_on(threads: usize) {
    let s = serve_threads(HANDLER, Some(threads));
    let mut conn = Conn::connect(s.addr).await;
    let (code, _) = call_past_deadline(&mut conn, "/t.Svc/Unary", vec![req("slow", 0)]).await;
    assert_past_deadline("unary", code);
    let (code, _) = call_past_deadline(
        &mut conn,
        "/t.Svc/ClientStream",
        vec![req("a", 0), req("b", 0)],
    )
    .await;
    assert_past_deadline("client stream", code);

    // Bidi: the first message is answered at once (so the headers are out), the second waits 5 s.
    let (code, before) = call_past_deadline(
        &mut conn,
        "/t.Svc/Bidi",
        vec![req("first", 0), req("slow", 0)],
    )
    .await;
    assert_eq!(code, Code::DeadlineExceeded);
    assert_eq!(before.len(), 1, "the first reply came: {before:?}");
    assert!(before[0].contains("first"), "{before:?}");

    // And the server answers the next call at once.
    let c = s.client().await;
    assert_eq!(
        c.unary("t.Svc/Unary", json!({ "name": "x" }))
            .await
            .single(),
        &json!({ "text": "hi x" })
    );
}

/// A script that never ends (it sleeps in a loop, within its operation budget) ends at the client's
/// deadline, not at `--script-timeout` (10 s), and stops running.
#[tokio::test]
async fn a_script_past_the_deadline_ends_the_call_and_stops() {
    for threads in [1, 2] {
        let s = serve_threads(HANDLER, Some(threads));
        let mut conn = Conn::connect(s.addr).await;
        let (code, _) = call_past_deadline(&mut conn, "/t.Svc/Unary", vec![req("script", 1)]).await;
        assert_past_deadline("unary script", code);
        assert_ticks_stop(&s, "tick 1").await;
    }
}

/// gRPC's status table: "Deadline expires before server returns status: DEADLINE_EXCEEDED".
/// Regression: a call whose deadline passed before its response headers (a unary or client-stream
/// `delay`, a unary script) got tonic's CANCELLED "Timeout expired".
#[tokio::test]
async fn a_deadline_that_passes_before_the_headers_is_deadline_exceeded() {
    let s = serve(HANDLER);
    let mut conn = Conn::connect(s.addr).await;
    for (path, chunks) in [
        ("/t.Svc/Unary", vec![req("slow", 0)]),
        ("/t.Svc/ClientStream", vec![req("a", 0)]),
        ("/t.Svc/Unary", vec![req("script", 9)]),
    ] {
        let (code, _) = call_past_deadline(&mut conn, path, chunks).await;
        assert_eq!(code, Code::DeadlineExceeded, "{path}");
    }
}

/// Waits until `marker` has been logged, then checks that it stops being logged.
async fn assert_ticks_stop(s: &Server, marker: &str) {
    let count = || s.logs().matches(marker).count();
    eventually(Duration::from_secs(5), || async {
        if count() > 0 {
            Ok(())
        } else {
            Err(format!("no {marker:?} logged yet"))
        }
    })
    .await;
    // Stopping takes one sleep(50) at most; leave room for a loaded machine.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        count(),
        settled,
        "{marker:?} is still being logged: the script kept running; log:\n{}",
        s.logs()
    );
}

/// Clients that reset their call (RST_STREAM CANCEL) while a script runs: unary, server streaming,
/// bidi. Each script stops printing.
#[tokio::test]
async fn a_client_gone_mid_script_stops_the_script() {
    let s = serve(HANDLER);
    let mut conn = Conn::connect(s.addr).await;
    let (_response, mut stream) = conn.open("/t.Svc/Unary", &[]).await;
    stream.send_data(req("script", 2), true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.send_reset(h2::Reason::CANCEL);
    assert_ticks_stop(&s, "tick 2").await;

    let scripted = serve(SCRIPTED);
    let mut conn = Conn::connect(scripted.addr).await;
    let (_response, mut stream) = conn.open("/t.Svc/ServerStream", &[]).await;
    stream.send_data(req("", 3), true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.send_reset(h2::Reason::CANCEL);
    assert_ticks_stop(&scripted, "tick 3").await;

    let (_response, mut stream) = conn.open("/t.Svc/Bidi", &[]).await;
    stream.send_data(req("", 4), false).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.send_reset(h2::Reason::CANCEL);
    assert_ticks_stop(&scripted, "tick 4").await;
}

/// Clients that go away mid-`delay` (unary), mid-stream (a server stream with `stream.delay`) and
/// mid-bidi: nothing of their calls is left, so SIGTERM, which waits up to 10 s for calls in flight,
/// exits at once, even though the clients' connection is still open.
#[tokio::test]
async fn calls_abandoned_mid_delay_or_mid_stream_do_not_hold_a_graceful_shutdown() {
    let mut s = serve(HANDLER);
    let mut conn = Conn::connect(s.addr).await;
    let mut abandoned = Vec::new();
    for (path, body, end) in [
        ("/t.Svc/Unary", req("slow", 0), true),
        ("/t.Svc/ServerStream", req("", 0), true),
        ("/t.Svc/Bidi", req("slow", 0), false),
    ] {
        let (response, mut stream) = conn.open(path, &[]).await;
        stream.send_data(body, end).unwrap();
        abandoned.push((response, stream));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (_, stream) in &mut abandoned {
        stream.send_reset(h2::Reason::CANCEL);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = s.signal_and_wait("TERM", Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?}: something of the abandoned calls was still running; log:\n{}",
        s.logs()
    );
    drop(conn);
}

/// The control for the test above: a call that is still in flight does hold the shutdown (so a
/// fast exit above means the abandoned calls were gone, not that shutdown ignores calls).
#[tokio::test]
async fn a_call_still_in_flight_holds_a_graceful_shutdown() {
    let mut s = Server::start_with(
        &t_proto(),
        &[("t.toml", HANDLER)],
        Options::default().arg("--shutdown-grace").arg("2s"),
    );
    let mut conn = Conn::connect(s.addr).await;
    let (response, mut stream) = conn.open("/t.Svc/ServerStream", &[]).await;
    stream.send_data(req("", 0), true).unwrap();
    // Keep reading, as a live client does.
    let reading = tokio::spawn(async move {
        if let Ok(response) = response.await {
            let mut body = response.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let status = s.signal_and_wait("TERM", Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "exited after {:?}, without waiting for the call",
        started.elapsed()
    );
    reading.abort();
}

/// Routes for the HTTP/JSON deadline: a unary method whose answer takes 1 s, and a server stream.
const ROUTED: &str = r#"syntax = "proto3";
package h;
import "google/api/annotations.proto";
message Req { string name = 1; }
message Res { string text = 1; }
service Slow {
  rpc Wait(Req) returns (Res) { option (google.api.http) = { get: "/v1/wait/{name}" }; }
  rpc Ticks(Req) returns (stream Res) { option (google.api.http) = { get: "/v1/ticks/{name}" }; }
}
"#;

const ROUTED_RULES: &str = r#"
[[rule]]
method = "h.Slow/Wait"
delay = "1s"
reply.text = "late {{request.name}}"

[[rule]]
method = "h.Slow/Ticks"
stream.repeat = 1000
stream.delay = "100ms"
stream.message = { text = "tick {{index}}" }
"#;

/// HTTP/JSON honours `Grpc-Timeout` as grpc-gateway's runtime does: a call still unanswered when it
/// passes is HTTP 504 with DEADLINE_EXCEEDED in the `google.rpc.Status` body the transcoder writes
/// for every error, at the deadline (not when the delay ends); a stream already started ends with
/// its error line. Regression: HTTP/JSON had no deadline at all (the call answered 200 after 1 s).
#[tokio::test]
async fn an_http_json_call_ends_at_its_grpc_timeout() {
    use http_client::{get, send};
    let s = Server::start(&[("h.proto", ROUTED)], &[("h.toml", ROUTED_RULES)]);
    let timeout = [("Grpc-Timeout", "100m")];
    let started = Instant::now();
    let r = send(s.addr, "GET", "/v1/wait/a", &timeout, bytes::Bytes::new()).await;
    let took = started.elapsed();
    r.expect(504);
    assert_eq!(r.json()["code"], 4, "{}", r.text());
    assert!(
        took < Duration::from_millis(800),
        "answered after {took:?}, the deadline was 100 ms"
    );
    // A deadline the answer meets changes nothing.
    let r = send(
        s.addr,
        "GET",
        "/v1/wait/b",
        &[("Grpc-Timeout", "5S")],
        bytes::Bytes::new(),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json(), serde_json::json!({"text": "late b"}));
    // One that does not read is refused, as grpc-gateway refuses it.
    let r = send(
        s.addr,
        "GET",
        "/v1/wait/c",
        &[("Grpc-Timeout", "soon")],
        bytes::Bytes::new(),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["code"], 3, "{}", r.text());
    // A stream answers its first messages, then its deadline is its last line.
    let started = Instant::now();
    let r = send(
        s.addr,
        "GET",
        "/v1/ticks/d",
        &[("Grpc-Timeout", "350m")],
        bytes::Bytes::new(),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    r.expect(200);
    let lines = r.lines();
    let last = lines.last().expect("lines");
    assert_eq!(last["error"]["code"], 4, "{}", r.text());
    assert!(lines.len() >= 2, "{}", r.text());
    // Without a deadline the call is answered, late.
    let r = get(s.addr, "/v1/wait/e").await;
    r.expect(200);
}
