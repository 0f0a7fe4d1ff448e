//! Prometheus metrics on `GET /metrics`: calls made over gRPC, gRPC-Web, Connect and HTTP/JSON
//! (answered, failed, unmatched, streamed, cancelled) counted by method, protocol and code, the
//! latency histogram holding every call, rule hits by `file:line`, reloads and failed reloads, and
//! the open connection and stream gauges — read back as Prometheus reads the text.

mod common;
mod http_client;

use std::time::Duration;

use common::*;
use http_client::{envelope, get, post_json, send};
use prometheus_parse::{Sample, Scrape, Value};

const PROTO: &str = r#"syntax = "proto3";
package m;

import "google/api/annotations.proto";

message Req { string name = 1; }
message Resp { string text = 1; }

service Greeter {
  rpc Hello(Req) returns (Resp) {
    option (google.api.http) = { get: "/v1/hello/{name}" };
  }
  rpc Stream(Req) returns (stream Resp);
  rpc Slow(Req) returns (stream Resp);
  rpc Nothing(Req) returns (Resp);
  rpc Chat(stream Req) returns (stream Resp);
}
"#;

/// Rules at lines 1, 6, 11, 16 and 22 (what the rule hits are labelled with).
const HANDLERS: &str = r#"[[rule]]
method = "m.Greeter/Hello"
when.request.name = "missing"
error = { code = "NOT_FOUND", message = "no such name" }

[[rule]]
method = "m.Greeter/Hello"
when.request.name = { regex = "^[a-z]+$" }
reply = { text = "hello {{request.name}}" }

[[rule]]
method = "m.Greeter/Stream"
stream.repeat = 3
stream.message = { text = "{{index}}" }

[[rule]]
method = "m.Greeter/Slow"
stream.repeat = 2
stream.delay = "30s"
stream.message = { text = "late" }

[[rule]]
method = "m.Greeter/Chat"
reply = { text = "{{request.name}}" }
"#;

const HELLO: &str = "m.Greeter/Hello";

fn start() -> Server {
    Server::start(&[("m.proto", PROTO)], &[("m.toml", HANDLERS)])
}

/// A gRPC client of the server's protos (the bundled google/api protos as an include root).
async fn connect(server: &Server) -> Client {
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protos/include");
    let pool = compile_protos(&server.protos_dir(), &[include]).unwrap_or_else(|e| panic!("{e}"));
    Client::connect(server.addr, pool).await
}

/// `GET /metrics`, parsed as Prometheus parses it.
async fn scrape(server: &Server) -> Scrape {
    let reply = get(server.addr, "/metrics").await;
    reply.expect(200);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = reply.text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the text format parses")
}

fn number(sample: &Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{} is not a number: {other:?}", sample.metric),
    }
}

/// The value of the one sample of `metric` whose labels include `labels` (a label value ending in
/// `*` matches by prefix, one starting with `*` by suffix); 0 when there is none, as Prometheus
/// reads a series that was never written.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| label_is(x, k, v)))
        .collect();
    assert!(found.len() <= 1, "several samples {metric} {labels:?}");
    found.first().map_or(0.0, |x| number(x))
}

fn label_is(sample: &Sample, key: &str, want: &str) -> bool {
    let Some(got) = sample.labels.get(key) else {
        return false;
    };
    match (want.strip_prefix('*'), want.strip_suffix('*')) {
        (Some(suffix), _) => got.ends_with(suffix),
        (_, Some(prefix)) => got.starts_with(prefix),
        _ => got == want,
    }
}

fn calls(s: &Scrape, method: &str, protocol: &str, code: &str) -> f64 {
    let labels = [("method", method), ("protocol", protocol), ("code", code)];
    value(s, "protodrop_calls_total", &labels)
}

/// Every sample of `metric`, added up.
fn total(s: &Scrape, metric: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .map(number)
        .sum()
}

/// The `+Inf` bucket of a histogram's series for `method` and `protocol`.
fn histogram_count(s: &Scrape, method: &str, protocol: &str) -> f64 {
    let sample = s.samples.iter().find(|x| {
        x.metric == "protodrop_call_duration_seconds"
            && label_is(x, "method", method)
            && label_is(x, "protocol", protocol)
    });
    match sample.map(|x| &x.value) {
        Some(Value::Histogram(buckets)) => {
            let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY);
            inf.expect("a +Inf bucket").count
        }
        Some(other) => panic!("not a histogram: {other:?}"),
        None => 0.0,
    }
}

#[tokio::test]
async fn calls_of_every_protocol_are_counted_by_method_protocol_and_code() {
    let server = start();
    let client = connect(&server).await;

    // gRPC: two answers, a rule's error, a call no rule matches, a server stream, a method with
    // no rule at all.
    client.unary(HELLO, json!({"name": "ann"})).await.ok();
    client.unary(HELLO, json!({"name": "bea"})).await.ok();
    let missing = client.unary(HELLO, json!({"name": "missing"})).await;
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let unmatched = client.unary(HELLO, json!({"name": "X1"})).await;
    assert_eq!(unmatched.code(), tonic::Code::Unimplemented);
    let streamed = client.server_stream("m.Greeter/Stream", json!({})).await;
    assert_eq!(streamed.ok().messages.len(), 3);
    let nothing = client.unary("m.Greeter/Nothing", json!({})).await;
    assert_eq!(nothing.code(), tonic::Code::Unimplemented);
    // A bidi call of three messages: its rule answers each once.
    let chat = [
        json!({"name": "a"}),
        json!({"name": "b"}),
        json!({"name": "c"}),
    ];
    let chat = client.bidi("m.Greeter/Chat", chat.to_vec()).await;
    assert_eq!(chat.ok().messages.len(), 3);

    // Connect: an answer and an error.
    post_json(server.addr, "/m.Greeter/Hello", r#"{"name":"cy"}"#)
        .await
        .expect(200);
    post_json(server.addr, "/m.Greeter/Hello", r#"{"name":"missing"}"#)
        .await
        .expect(404);
    // HTTP/JSON by the method's route: an answer and an error.
    get(server.addr, "/v1/hello/dee").await.expect(200);
    get(server.addr, "/v1/hello/missing").await.expect(404);
    // gRPC-Web: Req { name: "web" }.
    let web = send(
        server.addr,
        "POST",
        "/m.Greeter/Hello",
        &[("content-type", "application/grpc-web+proto")],
        envelope(0, b"\x0a\x03web"),
    )
    .await;
    web.expect(200);

    let s = scrape(&server).await;
    assert_eq!(calls(&s, HELLO, "grpc", "OK"), 2.0);
    assert_eq!(calls(&s, HELLO, "grpc", "NOT_FOUND"), 1.0);
    assert_eq!(calls(&s, HELLO, "grpc", "UNIMPLEMENTED"), 1.0);
    assert_eq!(calls(&s, HELLO, "connect", "OK"), 1.0);
    assert_eq!(calls(&s, HELLO, "connect", "NOT_FOUND"), 1.0);
    assert_eq!(calls(&s, HELLO, "http-json", "OK"), 1.0);
    assert_eq!(calls(&s, HELLO, "http-json", "NOT_FOUND"), 1.0);
    assert_eq!(calls(&s, HELLO, "grpc-web", "OK"), 1.0);
    assert_eq!(calls(&s, "m.Greeter/Stream", "grpc", "OK"), 1.0);
    let nothing = calls(&s, "m.Greeter/Nothing", "grpc", "UNIMPLEMENTED");
    assert_eq!(nothing, 1.0);
    assert_eq!(calls(&s, "m.Greeter/Chat", "grpc", "OK"), 1.0);
    assert_eq!(total(&s, "protodrop_calls_total"), 12.0);

    // The histogram holds every call, once.
    assert_eq!(histogram_count(&s, HELLO, "grpc"), 4.0);
    assert_eq!(histogram_count(&s, HELLO, "connect"), 2.0);
    assert_eq!(histogram_count(&s, HELLO, "http-json"), 2.0);
    assert_eq!(histogram_count(&s, HELLO, "grpc-web"), 1.0);
    assert_eq!(histogram_count(&s, "m.Greeter/Stream", "grpc"), 1.0);
    let counts = total(&s, "protodrop_call_duration_seconds_count");
    assert_eq!(counts, total(&s, "protodrop_calls_total"));

    // Rule hits by file:line, whatever the protocol.
    let hits = |line: &str| {
        let rule = format!("*m.toml:{line}");
        value(&s, "protodrop_rule_hits_total", &[("rule", rule.as_str())])
    };
    assert_eq!(hits("1"), 3.0, "the NOT_FOUND rule");
    assert_eq!(hits("6"), 5.0, "the reply rule");
    assert_eq!(hits("11"), 1.0, "the stream rule");
    assert_eq!(hits("16"), 0.0, "the rule nothing called");
    assert_eq!(hits("22"), 3.0, "the bidi rule, once per message");
    let unmatched = |m| value(&s, "protodrop_unmatched_calls_total", &[("method", m)]);
    assert_eq!(unmatched(HELLO), 1.0);
    assert_eq!(unmatched("m.Greeter/Nothing"), 1.0);
}

#[tokio::test]
async fn open_connections_and_streams_are_gauges() {
    let server = start();
    let client = connect(&server).await;
    client.unary(HELLO, json!({"name": "ann"})).await.ok();

    // The client's connection and the scrape's own.
    let s = scrape(&server).await;
    assert!(value(&s, "protodrop_connections_open", &[]) >= 2.0);
    assert_eq!(
        value(&s, "protodrop_streams_open", &[("protocol", "grpc")]),
        0.0
    );

    // A server stream that waits 30 s before its first message is open until the client gives up.
    let waiting = {
        let slow = connect(&server).await;
        tokio::spawn(async move { slow.server_stream("m.Greeter/Slow", json!({})).await })
    };
    let open = |s: &Scrape| value(s, "protodrop_streams_open", &[("protocol", "grpc")]);
    eventually(Duration::from_secs(10), || async {
        let s = scrape(&server).await;
        match open(&s) {
            1.0 => Ok(()),
            n => Err(format!("{n} streams open")),
        }
    })
    .await;
    waiting.abort();
    eventually(Duration::from_secs(10), || async {
        let s = scrape(&server).await;
        let cancelled = calls(&s, "m.Greeter/Slow", "grpc", "CANCELLED");
        match (open(&s), cancelled) {
            (0.0, 1.0) => Ok(()),
            n => Err(format!("(open, cancelled) = {n:?}")),
        }
    })
    .await;

    // Once the clients are gone, only the scrape's own connection is open.
    drop(client);
    eventually(Duration::from_secs(10), || async {
        let s = scrape(&server).await;
        match value(&s, "protodrop_connections_open", &[]) {
            1.0 => Ok(()),
            n => Err(format!("{n} connections open")),
        }
    })
    .await;
}

#[tokio::test]
async fn reloads_and_failed_reloads_are_counted_and_rule_hits_follow_the_edit() {
    let server = start();
    let client = connect(&server).await;
    client.unary(HELLO, json!({"name": "ann"})).await.ok();
    let s = scrape(&server).await;
    assert_eq!(value(&s, "protodrop_reloads_total", &[]), 0.0);

    // The reply rule moves down two lines.
    server.write_handler("m.toml", &format!("# moved\n\n{HANDLERS}"));
    eventually(Duration::from_secs(10), || async {
        let s = scrape(&server).await;
        match value(&s, "protodrop_reloads_total", &[]) {
            0.0 => Err("no reload yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    client.unary(HELLO, json!({"name": "bea"})).await.ok();
    let s = scrape(&server).await;
    let hits = |s: &Scrape, line: &str| {
        let rule = format!("*m.toml:{line}");
        value(s, "protodrop_rule_hits_total", &[("rule", rule.as_str())])
    };
    assert_eq!(hits(&s, "6"), 1.0, "the call before the edit");
    assert_eq!(hits(&s, "8"), 1.0, "the call after it");
    // Calls are counted by method across the reload.
    assert_eq!(calls(&s, HELLO, "grpc", "OK"), 2.0);

    server.write_handler("m.toml", "[[rule]\nmethod = ");
    eventually(Duration::from_secs(10), || async {
        let s = scrape(&server).await;
        match value(&s, "protodrop_reload_failures_total", &[]) {
            0.0 => Err("no failed reload yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
}

#[tokio::test]
async fn a_user_route_on_the_metrics_path_wins_and_no_metrics_turns_them_off() {
    let proto = r#"syntax = "proto3";
package u;
import "google/api/annotations.proto";
message Req {}
message Resp { string text = 1; }
service Mine {
  rpc Metrics(Req) returns (Resp) { option (google.api.http) = { get: "/metrics" }; }
}
"#;
    let handlers = r#"[[rule]]
method = "u.Mine/Metrics"
reply = { text = "theirs" }
"#;
    let server = Server::start(&[("u.proto", proto)], &[("u.toml", handlers)]);
    let reply = get(server.addr, "/metrics").await;
    reply.expect(200);
    assert_eq!(reply.json(), json!({"text": "theirs"}));

    let options = Options::default().arg("--no-metrics");
    let off = Server::start_with(&[("m.proto", PROTO)], &[("m.toml", HANDLERS)], options);
    get(off.addr, "/v1/hello/ann").await.expect(200);
    let reply = get(off.addr, "/metrics").await;
    reply.expect(404);
    assert!(
        !reply.text().contains("protodrop_calls"),
        "{}",
        reply.text()
    );
}
