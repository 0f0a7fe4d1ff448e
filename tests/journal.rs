//! The journal, verification, runtime rules and the call log, seen from real clients end to end:
//! a server on a small tree with every RPC shape, called over gRPC (tonic), gRPC-Web and Connect
//! (HTTP/1.1 bodies as browsers and `buf curl` send them) and HTTP/JSON, then asked through the
//! admin API's HTTP/JSON routes (as curl does) and over gRPC what it saw.

mod common;
mod http_client;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value as Json;
use tonic::Code;

const CALLS: &str = "/protodrop/admin/v1/calls";
const VERIFY: &str = "/protodrop/admin/v1/calls:verify";
const RULES: &str = "/protodrop/admin/v1/rules";

/// `j.S`: one method of each shape, a unary one routed for HTTP/JSON, and one whose only rule has
/// conditions (for near misses).
const J_PROTO: &str = r#"syntax = "proto3";
package j;

import "google/api/annotations.proto";

message Req {
  string name = 1;
  int32 num = 2;
}

message Resp {
  string text = 1;
  int32 num = 2;
}

service S {
  rpc Unary(Req) returns (Resp) {
    option (google.api.http) = { post: "/v1/unary" body: "*" };
  }
  rpc Server(Req) returns (stream Resp);
  rpc Client(stream Req) returns (Resp);
  rpc Bidi(stream Req) returns (stream Resp);
  rpc Picky(Req) returns (Resp);
}
"#;

const J_RULES: &str = r#"[[rule]]
method = "j.S/Unary"
when.request.name = "ghost"
error = { code = "NOT_FOUND", message = "no {{request.name}}" }

[[rule]]
method = "j.S/Unary"
reply = { text = "hello {{request.name}}" }

[[rule]]
method = "j.S/Server"
stream.repeat = 3
stream.message = { text = "{{request.name}}", num = "{{index}}" }

[[rule]]
method = "j.S/Client"
reply = { text = "got {{count}}", num = "{{count}}" }

[[rule]]
method = "j.S/Bidi"
reply = { text = "re: {{request.name}}", num = "{{count}}" }

[[rule]]
method = "j.S/Picky"
when.request.name = "x"
when.request.num = 7
reply = { text = "picked" }
"#;

fn start_with(options: Options) -> Server {
    Server::start_with(&[("j.proto", J_PROTO)], &[("j.toml", J_RULES)], options)
}

fn start() -> Server {
    start_with(Options::default())
}

fn include() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protos/include")
}

/// The server's protos as a client compiles them (google/api from the repository's copy).
fn pool(server: &Server) -> DescriptorPool {
    compile_protos(&server.protos_dir(), &[include()]).unwrap()
}

async fn client(server: &Server) -> Client {
    Client::connect(server.addr, pool(server)).await
}

/// `handlers/j.toml:LINE` of the rule whose text holds `needle` (its `[[rule]]` line), as the
/// server names it.
fn origin(server: &Server, needle: &str) -> String {
    let at = line_of(J_RULES, needle);
    let line = J_RULES.lines().take(at).collect::<Vec<_>>();
    let rule_line = line.iter().rposition(|l| *l == "[[rule]]").unwrap() + 1;
    format!(
        "{}:{rule_line}",
        server.handlers_dir().join("j.toml").display()
    )
}

// ---- the admin API, as curl asks it ----

/// ListCalls over HTTP/JSON (`query` as written after `?`, or "").
async fn list_calls(addr: SocketAddr, query: &str) -> Vec<Json> {
    let path = match query {
        "" => CALLS.to_string(),
        q => format!("{CALLS}?{q}"),
    };
    let reply = http_client::get(addr, &path).await;
    let body = reply.expect(200).json();
    body["calls"].as_array().cloned().unwrap_or_default()
}

async fn clear_calls(addr: SocketAddr) -> u64 {
    let reply = http_client::send(addr, "DELETE", CALLS, &[], "").await;
    let body = reply.expect(200).json();
    body["cleared"].as_str().map_or(0, |n| n.parse().unwrap())
}

/// Verify over HTTP/JSON: the reply (status, body).
async fn verify(addr: SocketAddr, filter: &str, list: bool) -> http_client::Reply {
    let body = json!({ "filter": filter, "list": list }).to_string();
    http_client::post_json(addr, VERIFY, &body).await
}

async fn count(addr: SocketAddr, filter: &str) -> u64 {
    let reply = verify(addr, filter, false).await;
    let body = reply.expect(200).json();
    body["count"].as_str().map_or(0, |n| n.parse().unwrap())
}

// ---- what a journaled call holds ----

/// The request messages of a journaled call, as JSON, in order.
fn requests(call: &Json) -> Vec<Json> {
    frames(call)
        .filter_map(|f| f.get("request").map(|p| norm(&p["json"])))
        .collect()
}

/// A payload's JSON as the test writes it: `google.protobuf.Value` holds numbers as doubles, so a
/// whole number comes back as `1.0`.
fn norm(value: &Json) -> Json {
    match value {
        Json::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            _ => value.clone(),
        },
        Json::Array(items) => Json::Array(items.iter().map(norm).collect()),
        Json::Object(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), norm(v))).collect()),
        other => other.clone(),
    }
}

/// The reply messages with the rule that wrote each, in order.
fn replies(call: &Json) -> Vec<(Json, String)> {
    frames(call)
        .filter_map(|f| {
            f.get("reply").map(|p| {
                let rule = f["rule"].as_str().unwrap_or_default().to_string();
                (norm(&p["json"]), rule)
            })
        })
        .collect()
}

fn frames(call: &Json) -> impl Iterator<Item = &Json> {
    call["frames"].as_array().into_iter().flatten()
}

fn code_name(call: &Json) -> &str {
    call["status"]["codeName"].as_str().unwrap_or("<no status>")
}

/// The value of request metadata `key` the call was journaled with.
fn metadata<'a>(call: &'a Json, key: &str) -> Option<&'a str> {
    call["requestMetadata"]
        .as_array()?
        .iter()
        .find(|m| m["key"] == key)
        .and_then(|m| m["value"].as_str())
}

/// The one call in `calls` whose metadata `x-tag` is `tag`.
#[track_caller]
fn tagged<'a>(calls: &'a [Json], tag: &str) -> &'a Json {
    let found: Vec<&Json> = calls
        .iter()
        .filter(|c| metadata(c, "x-tag") == Some(tag))
        .collect();
    assert_eq!(found.len(), 1, "calls tagged {tag}: {calls:#?}");
    found[0]
}

// ---- the clients ----

fn encode(pool: &DescriptorPool, type_name: &str, value: &Json) -> Vec<u8> {
    let desc = pool.get_message_by_name(type_name).unwrap();
    DynamicMessage::deserialize(desc, value.clone())
        .unwrap()
        .encode_to_vec()
}

/// A gRPC-Web call (binary), every request framed in its body; the reply's grpc-status.
async fn grpc_web(
    addr: SocketAddr,
    pool: &DescriptorPool,
    method: &str,
    tag: &str,
    requests: &[Json],
) -> String {
    let mut body = Vec::new();
    for r in requests {
        body.extend(http_client::envelope(0, &encode(pool, "j.Req", r)));
    }
    let reply = http_client::send(
        addr,
        "POST",
        &format!("/{method}"),
        &[
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
            ("x-tag", tag),
        ],
        body,
    )
    .await;
    reply.expect(200);
    let frames = http_client::envelopes(&reply.body);
    let trailer = frames
        .iter()
        .find(|(flags, _)| flags & 0x80 != 0)
        .map(|(_, t)| String::from_utf8_lossy(t).to_string());
    let trailer = trailer.unwrap_or_else(|| reply.header("grpc-status").unwrap_or_default());
    trailer
}

/// A Connect call: unary as `application/json`, streams as `application/connect+json` envelopes.
async fn connect(addr: SocketAddr, method: &str, tag: &str, requests: &[Json]) -> Vec<u8> {
    let path = format!("/{method}");
    let unary = method.ends_with("/Unary") || method.ends_with("/Picky");
    let (content_type, body) = if unary {
        ("application/json", requests[0].to_string().into_bytes())
    } else {
        let mut body = Vec::new();
        for r in requests {
            body.extend(http_client::envelope(0, r.to_string().as_bytes()));
        }
        ("application/connect+json", body)
    };
    let reply = http_client::send(
        addr,
        "POST",
        &path,
        &[("content-type", content_type), ("x-tag", tag)],
        body,
    )
    .await;
    reply.expect(200);
    reply.body
}

/// What each shape is sent, and what it answers (with the rule that answers).
struct Shape {
    method: &'static str,
    requests: Vec<Json>,
    replies: Vec<Json>,
    rule: &'static str,
}

fn shapes() -> Vec<Shape> {
    vec![
        Shape {
            method: "j.S/Unary",
            requests: vec![json!({ "name": "u" })],
            replies: vec![json!({ "text": "hello u" })],
            rule: "hello {{request.name}}",
        },
        Shape {
            method: "j.S/Server",
            requests: vec![json!({ "name": "s" })],
            replies: vec![
                json!({ "text": "s" }),
                json!({ "text": "s", "num": 1 }),
                json!({ "text": "s", "num": 2 }),
            ],
            rule: "stream.repeat = 3",
        },
        Shape {
            method: "j.S/Client",
            requests: vec![
                json!({ "name": "a" }),
                json!({ "name": "b" }),
                json!({ "name": "c", "num": 3 }),
            ],
            replies: vec![json!({ "text": "got 3", "num": 3 })],
            rule: "got {{count}}",
        },
        Shape {
            method: "j.S/Bidi",
            requests: vec![
                json!({ "name": "a" }),
                json!({ "name": "b" }),
                json!({ "name": "c" }),
            ],
            replies: vec![
                json!({ "text": "re: a", "num": 1 }),
                json!({ "text": "re: b", "num": 2 }),
                json!({ "text": "re: c", "num": 3 }),
            ],
            rule: "re: {{request.name}}",
        },
    ]
}

#[tokio::test]
async fn every_shape_over_every_protocol_is_journaled_with_its_frames_rules_and_metadata() {
    let server = start();
    let pool = pool(&server);
    let grpc = client(&server).await;
    let shapes = shapes();
    for shape in &shapes {
        let tag = format!("grpc {}", shape.method);
        let out = grpc
            .client_stream_md(shape.method, shape.requests.clone(), &[("x-tag", &tag)])
            .await;
        assert_eq!(out.ok().messages, shape.replies, "{tag}");
        let tag = format!("grpc-web {}", shape.method);
        let status = grpc_web(server.addr, &pool, shape.method, &tag, &shape.requests).await;
        assert!(status.contains("grpc-status:0"), "{tag}: {status}");
        let tag = format!("connect {}", shape.method);
        connect(server.addr, shape.method, &tag, &shape.requests).await;
    }
    let http = http_client::send(
        server.addr,
        "POST",
        "/v1/unary",
        &[("content-type", "application/json"), ("x-tag", "http-json")],
        r#"{"name":"h"}"#,
    )
    .await;
    assert_eq!(http.expect(200).json(), json!({ "text": "hello h" }));

    let calls = list_calls(server.addr, "").await;
    assert_eq!(calls.len(), 13, "{calls:#?}");
    for shape in &shapes {
        let rule = origin(&server, shape.rule);
        for protocol in ["grpc", "grpc-web", "connect"] {
            let tag = format!("{protocol} {}", shape.method);
            let call = tagged(&calls, &tag);
            assert_eq!(call["protocol"], protocol, "{tag}: {call:#}");
            assert_eq!(call["method"], shape.method, "{tag}");
            assert_eq!(code_name(call), "OK", "{tag}: {call:#}");
            assert_eq!(requests(call), shape.requests, "{tag}: {call:#}");
            let want: Vec<(Json, String)> = shape
                .replies
                .iter()
                .map(|r| (r.clone(), rule.clone()))
                .collect();
            assert_eq!(replies(call), want, "{tag}: {call:#}");
            assert_eq!(call["rules"], json!([rule]), "{tag}");
            assert!(call["duration"].is_string(), "{tag}: {call:#}");
        }
    }
    let call = tagged(&calls, "http-json");
    assert_eq!(call["protocol"], "http-json");
    assert_eq!(call["method"], "j.S/Unary");
    assert_eq!(requests(call), vec![json!({ "name": "h" })]);
    let rule = origin(&server, "hello {{request.name}}");
    assert_eq!(replies(call), vec![(json!({ "text": "hello h" }), rule)]);
    assert_eq!(code_name(call), "OK");

    // Ids increase in the order the calls started, which is the order listed.
    let ids: Vec<u64> = calls
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}
