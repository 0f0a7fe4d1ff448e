//! Connections on the real binary: silent and half-open ones are closed after the documented
//! timeouts (`--handshake-timeout`, `--keepalive-interval`, `--keepalive-timeout`, short here), a
//! live client is not; at the fd limit, closing them is what lets new calls in. Calls still
//! running when the shutdown grace period ends get UNAVAILABLE "server shutting down". Request
//! headers over `--max-header-size` get RESOURCE_EXHAUSTED, not a bare HTTP 431.
//!
//! The half-open cases talk raw bytes over TCP (a preface cut short, a HEADERS block never
//! finished) and never answer the server's PINGs: reading the socket until it closes only drains
//! what the server sends.

mod common;
mod http_client;
mod raw;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longer than any timeout set below takes to close a connection, by a wide margin; a connection
/// still open after it is one the server keeps.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// Short timeouts: a silent connection goes within 0.5 s (no preface) or 0.6 s (no PING answer).
fn short_timeouts() -> Options {
    Options::default()
        .arg("--handshake-timeout")
        .arg("500ms")
        .arg("--keepalive-interval")
        .arg("300ms")
        .arg("--keepalive-timeout")
        .arg("300ms")
}

const RULES: &str = r#"
[[rule]]
method = "t.Svc/Echo"
when.request.name = "slow"
delay = "30s"
reply = { name = "too late" }

[[rule]]
method = "t.Svc/Echo"
when.request.name = "pause"
delay = "1500ms"
reply = { name = "paused" }

[[rule]]
method = "t.Svc/Echo"
reply = { name = "{{request.name}}" }

[[rule]]
method = "t.Svc/ServerStream"
stream.repeat = 3
stream.message = { text = "tick" }
stream.delay = "1200ms"

[[rule]]
method = "t.Svc/Bidi"
reply = { text = "{{request.name}}" }
"#;

fn start(options: Options) -> Server {
    Server::start_with(&t_proto(), &[("t.toml", RULES)], options)
}

/// How long the server took to close `tcp` (reading, and dropping, whatever it sends), or `None`
/// if it was still open after [`CLOSED_WITHIN`].
async fn time_to_close(tcp: &mut TcpStream) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let drain = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSED_WITHIN, drain).await.ok()?;
    Some(start.elapsed())
}

#[track_caller]
fn assert_closed(took: Option<Duration>, what: &str, s: &Server) {
    assert!(
        took.is_some(),
        "{what}: the server kept the connection open for {CLOSED_WITHIN:?}; log:\n{}",
        s.logs()
    );
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const END_HEADERS: u8 = 0x4;

/// An HPACK block of literal fields (never indexed, no Huffman): what a HEADERS frame carries.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        for s in [name, value] {
            assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

fn echo_request_headers() -> Vec<u8> {
    hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/t.Svc/Echo"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// Preface and an empty SETTINGS frame: an HTTP/2 connection as far as the server can tell.
async fn h2_handshake(s: &Server) -> TcpStream {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&h2_frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tcp
}

#[tokio::test]
async fn a_tcp_connection_that_sends_nothing_is_closed() {
    let s = start(short_timeouts());
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    assert_closed(time_to_close(&mut tcp).await, "silent TCP", &s);
}

#[tokio::test]
async fn half_a_preface_then_silence_is_closed() {
    let s = start(short_timeouts());
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&PREFACE[..12]).await.unwrap();
    assert_closed(time_to_close(&mut tcp).await, "half a preface", &s);
}

/// The handshake done, the client goes silent and answers no PING.
#[tokio::test]
async fn an_http2_connection_that_stops_answering_pings_is_closed() {
    let s = start(short_timeouts());
    let mut tcp = h2_handshake(&s).await;
    assert_closed(time_to_close(&mut tcp).await, "silent HTTP/2", &s);
}

/// HEADERS without END_HEADERS: the server waits for a CONTINUATION that never comes.
#[tokio::test]
async fn headers_without_end_headers_then_silence_is_closed() {
    let s = start(short_timeouts());
    let mut tcp = h2_handshake(&s).await;
    let block = echo_request_headers();
    let half = &block[..block.len() / 2];
    tcp.write_all(&h2_frame(HEADERS, 0, 1, half)).await.unwrap();
    assert_closed(time_to_close(&mut tcp).await, "unfinished HEADERS", &s);
}

/// A call whose request body stops halfway (a gRPC frame announcing 10 bytes, 2 sent) from a peer
/// that is silent.
#[tokio::test]
async fn a_stalled_request_body_from_a_silent_peer_is_closed() {
    let s = start(short_timeouts());
    let mut tcp = h2_handshake(&s).await;
    let block = echo_request_headers();
    tcp.write_all(&h2_frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .unwrap();
    tcp.write_all(&h2_frame(DATA, 0, 1, &[0, 0, 0, 0, 10, 0x0a, 0x01]))
        .await
        .unwrap();
    assert_closed(time_to_close(&mut tcp).await, "stalled DATA", &s);
}

/// hyper's header read timeout, set by `--handshake-timeout` (it was 30 s).
#[tokio::test]
async fn an_http1_request_head_cut_short_is_closed() {
    let s = start(short_timeouts());
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"POST /t.Svc/Echo HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    assert_closed(time_to_close(&mut tcp).await, "partial HTTP/1.1 head", &s);
}

/// A client that answers PINGs keeps its connection through calls far longer than the keep-alive
/// interval plus timeout, and between them.
#[tokio::test]
async fn a_live_client_is_not_cut_during_long_calls() {
    let s = start(short_timeouts());
    let c = s.client().await;
    // Five keep-alive periods between two messages of a server stream.
    let out = c.server_stream("t.Svc/ServerStream", json!({})).await;
    out.ok();
    assert_eq!(out.messages.len(), 3);
    let out = c.unary("t.Svc/Echo", json!({ "name": "pause" })).await;
    assert_eq!(out.single(), &json!({ "name": "paused" }));
    // Idle, with no call open, for as long again: still the same connection.
    let conn = raw::Conn::connect(s.addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn2 = conn.clone();
    let answer = conn2
        .call(
            "/t.Svc/Echo",
            &[],
            raw::frame(false, &raw::string_field(1, b"idle")),
        )
        .await;
    answer.expect_status(Code::Ok);
}

/// Lowers the server's open-file limit to just above what it uses, fills it with silent
/// connections, and checks that a new call, refused while they stay, gets through once the server
/// has closed them — while the test still holds them open — and that the failing accepts did
/// not spin meanwhile.
#[tokio::test]
async fn at_the_fd_limit_silent_connections_are_closed_and_new_calls_get_in() {
    let s = start(
        Options::default()
            .arg("--handshake-timeout")
            .arg("1s")
            .arg("--no-watch"),
    );
    let pid = s.pid();
    let probe = |timeout: Duration| {
        let addr = s.addr;
        async move {
            tokio::time::timeout(timeout, async move {
                let tcp = TcpStream::connect(addr).await.ok()?;
                let (send, connection) = h2::client::handshake(tcp).await.ok()?;
                tokio::spawn(connection);
                let mut send = send.ready().await.ok()?;
                let request = http::Request::post(format!("http://{addr}/t.Svc/Echo"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let (response, mut body) = send.send_request(request, false).ok()?;
                let message = raw::frame(false, &raw::string_field(1, b"probe"));
                body.send_data(message, true).ok()?;
                let response = response.await.ok()?;
                let (_, mut body) = response.into_parts();
                while let Some(chunk) = body.data().await {
                    chunk.ok()?;
                }
                let trailers = body.trailers().await.ok()??;
                (trailers.get("grpc-status")? == "0").then_some(())
            })
            .await
            .ok()
            .flatten()
            .is_some()
        }
    };
    assert!(
        probe(CALL_TIMEOUT).await,
        "the server answers before the limit"
    );

    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 8;
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "prlimit failed");

    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(s.addr).await.unwrap());
    }
    assert!(
        !probe(Duration::from_millis(300)).await,
        "the fd limit was not reached: the test proves nothing"
    );
    eventually(Duration::from_secs(20), || async {
        if probe(Duration::from_millis(500)).await {
            Ok(())
        } else {
            Err("a new call still gets no answer".to_string())
        }
    })
    .await;
    let wall = started.elapsed();
    let cpu = Duration::from_millis((cpu_ticks(pid) - cpu_before) * 10);
    eprintln!(
        "fd limit {limit}: a new call got in after {wall:?}; the server used {cpu:?} of CPU meanwhile"
    );
    assert!(
        cpu < wall / 2,
        "the server used {cpu:?} of CPU in {wall:?} at the fd limit: accept errors spin"
    );
    drop(silent);
}

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn grace(ms: u64) -> Options {
    Options::default()
        .arg("--shutdown-grace")
        .arg(format!("{ms}ms"))
}

/// SIGTERM, then the process must exit 0 soon after the grace period.
async fn terminate(s: &mut Server) {
    let started = Instant::now();
    let status = s.signal_and_wait("TERM", Duration::from_secs(5)).await;
    let status =
        status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", s.logs()));
    assert!(status.success(), "exits 0, got {status}");
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exited {:?} after SIGTERM",
        started.elapsed()
    );
}

#[track_caller]
fn assert_shutting_down(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "server shutting down", "{status:?}");
}

#[tokio::test]
async fn a_server_stream_cut_at_shutdown_ends_with_unavailable() {
    let mut s = start(grace(300));
    let c = s.client().await;
    let mut call = c.session("t.Svc/ServerStream");
    call.send(json!({}));
    call.close();
    assert_eq!(call.recv().await, json!({ "text": "tick" }));
    terminate(&mut s).await;
    let end = call.recv_within(Duration::from_secs(5)).await;
    assert_eq!(end, Ok(None), "the call ended");
    assert_shutting_down(&call.end.as_ref().unwrap().1);
}

#[tokio::test]
async fn a_unary_call_in_a_long_delay_at_shutdown_ends_with_unavailable() {
    let mut s = start(grace(300));
    let c = s.client().await;
    // The connection is up before the call starts, so the call reaches the server at once.
    c.unary("t.Svc/Echo", json!({ "name": "warm" })).await.ok();
    let call = tokio::spawn(async move { c.unary("t.Svc/Echo", json!({ "name": "slow" })).await });
    // No event tells the test that the server has the call; the grace period leaves slack.
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&mut s).await;
    let out = call.await.unwrap();
    assert_shutting_down(&out.status);
}

#[tokio::test]
async fn a_bidi_call_open_at_shutdown_ends_with_unavailable() {
    let mut s = start(grace(300));
    let c = s.client().await;
    let mut call = c.session("t.Svc/Bidi");
    call.send(json!({ "name": "a" }));
    assert_eq!(call.recv().await, json!({ "text": "a" }));
    terminate(&mut s).await;
    let end = call.recv_within(Duration::from_secs(5)).await;
    assert_eq!(end, Ok(None), "the call ended");
    assert_shutting_down(&call.end.as_ref().unwrap().1);
}

/// Connect (here over HTTP/1.1) gets its own error form: HTTP 503 and `unavailable`.
#[tokio::test]
async fn a_connect_call_in_a_long_delay_at_shutdown_ends_with_unavailable() {
    let mut s = start(grace(300));
    let addr = s.addr;
    let call = tokio::spawn(async move {
        http_client::post_json(addr, "/t.Svc/Echo", r#"{"name":"slow"}"#).await
    });
    // As for the unary gRPC call: nothing to poll that says the server has it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&mut s).await;
    let reply = call.await.unwrap();
    reply.expect(503);
    assert_eq!(
        reply.json(),
        json!({ "code": "unavailable", "message": "server shutting down" })
    );
}

/// A Connect server stream already answering when the grace period ends: its body ends with the
/// end-stream message carrying `unavailable`, as Connect's streaming protocol requires (the body
/// was cut without one, which clients report as a protocol error).
#[tokio::test]
async fn a_connect_server_stream_cut_at_shutdown_ends_with_its_end_stream_message() {
    let mut s = start(grace(300));
    let addr = s.addr;
    let call = tokio::spawn(async move {
        let headers = [("content-type", "application/connect+json")];
        let body = http_client::envelope(0, b"{}");
        http_client::send(addr, "POST", "/t.Svc/ServerStream", &headers, body).await
    });
    // As for the unary calls: nothing to poll that says the server has it (its first message
    // waits 1.2 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&mut s).await;
    let reply = call.await.unwrap();
    reply.expect(200);
    let envelopes = http_client::envelopes(&reply.body);
    let (flags, last) = envelopes.last().expect("an end-stream message");
    assert_eq!(
        *flags, 2,
        "the last envelope is the end-stream message: {envelopes:?}"
    );
    let end: serde_json::Value = serde_json::from_slice(last).unwrap();
    assert_eq!(
        end["error"],
        json!({ "code": "unavailable", "message": "server shutting down" }),
        "{end}"
    );
}

/// gRPC-Web over HTTP/1.1: the status reaches the page too (headers of a trailers-only answer, or
/// the trailer frame).
#[tokio::test]
async fn a_grpc_web_call_in_a_long_delay_at_shutdown_ends_with_unavailable() {
    let mut s = start(grace(300));
    let addr = s.addr;
    let call = tokio::spawn(async move {
        let body = raw::frame(false, &raw::string_field(1, b"slow"));
        let headers = [("content-type", "application/grpc-web+proto")];
        http_client::send(addr, "POST", "/t.Svc/Echo", &headers, body).await
    });
    // As for the unary gRPC call: nothing to poll that says the server has it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&mut s).await;
    let reply = call.await.unwrap();
    reply.expect(200);
    let text = format!(
        "{:?} {}",
        reply.headers,
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        reply.header("grpc-status").as_deref() == Some("14") || text.contains("grpc-status:14"),
        "{text}"
    );
    let text = percent_encoding::percent_decode_str(&text).decode_utf8_lossy();
    assert!(text.contains("server shutting down"), "{text}");
}

/// 20,000 bytes in one header: over the default 16 KiB.
fn big_header() -> String {
    "x".repeat(20_000)
}

#[tokio::test]
async fn request_headers_over_the_limit_get_resource_exhausted() {
    let s = start(Options::default());
    let mut conn = raw::Conn::connect(s.addr).await;
    let big = big_header();
    let body = raw::frame(false, &raw::string_field(1, b"h"));
    let answer = conn
        .call("/t.Svc/Echo", &[("x-big", &big)], body.clone())
        .await;
    let message = answer.expect_status(Code::ResourceExhausted);
    assert!(message.contains("--max-header-size"), "{message}");
    // The connection is still good for the next call.
    conn.call("/t.Svc/Echo", &[], body)
        .await
        .expect_status(Code::Ok);

    let c = s.client().await;
    let out = c
        .unary_md("t.Svc/Echo", json!({ "name": "h" }), &[("x-big", &big)])
        .await;
    assert_eq!(out.code(), Code::ResourceExhausted, "{:?}", out.status);

    // Connect: its error JSON, with the code's HTTP status.
    let reply = http_client::send(
        s.addr,
        "POST",
        "/t.Svc/Echo",
        &[("content-type", "application/json"), ("x-big", &big)],
        r#"{"name":"h"}"#,
    )
    .await;
    reply.expect(429);
    assert_eq!(reply.json()["code"], "resource_exhausted");
}

#[tokio::test]
async fn max_header_size_raises_the_limit() {
    let s = start(Options::default().arg("--max-header-size").arg("64KiB"));
    let c = s.client().await;
    let big = big_header();
    let out = c
        .unary_md("t.Svc/Echo", json!({ "name": "h" }), &[("x-big", &big)])
        .await;
    assert_eq!(out.single(), &json!({ "name": "h" }));
}
