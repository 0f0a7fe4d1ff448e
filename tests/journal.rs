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
const LIST_CALLS: &str = "protodrop.admin.v1.Admin/ListCalls";
const ADD_RULES: &str = "protodrop.admin.v1.Admin/AddRules";
const VERIFY_METHOD: &str = "protodrop.admin.v1.Admin/Verify";

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
method = "j.S/Server"
when.request.name = "slow"
stream.repeat = 1000
stream.delay = "20ms"
stream.message = { text = "slow" }

[[rule]]
method = "j.S/Picky"
when.request.name = "x"
when.request.num = 7
reply = { text = "picked" }
"#;

/// A server with its defaults: the journal is on unless `--no-journal`.
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

/// The first journaled call of `method`, waited for (up to `within`) until it has ended.
async fn first_ended_call(addr: SocketAddr, method: &str, within: Duration) -> Json {
    eventually(within, || async {
        let calls = list_calls(addr, &format!("method={method}")).await;
        match calls.first() {
            Some(call) if call.get("status").is_some() => Ok(call.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
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

#[tokio::test]
async fn a_bidi_call_of_a_thousand_messages_each_way_is_journaled_in_full_and_in_order() {
    let server = start();
    let grpc = client(&server).await;
    let sent: Vec<Json> = (0..1000)
        .map(|i| json!({ "name": format!("m{i}"), "num": i }))
        .collect();
    let out = grpc.bidi("j.S/Bidi", sent.clone()).await;
    assert_eq!(out.ok().messages.len(), 1000);

    let calls = list_calls(server.addr, "method=j.S/Bidi").await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(code_name(call), "OK");
    assert!(call.get("droppedFrames").is_none(), "no frame dropped");
    let got = requests(call);
    let want: Vec<Json> = sent
        .iter()
        .map(|r| match r["num"].as_i64() {
            // proto3 JSON leaves a default out.
            Some(0) => json!({ "name": r["name"] }),
            _ => r.clone(),
        })
        .collect();
    assert_eq!(got, want, "the requests, all and in order");
    let rule = origin(&server, "re: {{request.name}}");
    let answered = replies(call);
    assert_eq!(answered.len(), 1000);
    for (n, (reply, by)) in answered.iter().enumerate() {
        let want = json!({ "text": format!("re: m{n}"), "num": n + 1 });
        assert_eq!(reply, &want, "reply {n}");
        assert_eq!(by, &rule, "reply {n}");
    }
    // Reply n comes after request n in the frames.
    let mut requests_seen = 0;
    let mut replies_seen = 0;
    for frame in frames(call) {
        if frame.get("request").is_some() {
            requests_seen += 1;
        } else if frame.get("reply").is_some() {
            replies_seen += 1;
            assert!(
                replies_seen <= requests_seen,
                "reply {replies_seen} before request {replies_seen}"
            );
        }
    }
}

#[tokio::test]
async fn clear_calls_empties_the_journal_and_method_and_limit_filter_it() {
    let server = start();
    let grpc = client(&server).await;
    for name in ["a", "b", "c"] {
        grpc.unary("j.S/Unary", json!({ "name": name })).await.ok();
    }
    grpc.server_stream("j.S/Server", json!({ "name": "s" }))
        .await
        .ok();

    let all = list_calls(server.addr, "").await;
    assert_eq!(all.len(), 4);
    let unary = list_calls(server.addr, "method=j.S/Unary").await;
    let names: Vec<Json> = unary
        .iter()
        .map(|c| requests(c)[0]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("a"), json!("b"), json!("c")]);
    // The newest `limit`, oldest first.
    let newest = list_calls(server.addr, "method=j.S/Unary&limit=2").await;
    let names: Vec<Json> = newest
        .iter()
        .map(|c| requests(c)[0]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("b"), json!("c")]);
    let last = list_calls(server.addr, "limit=1").await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["method"], "j.S/Server");
    assert!(list_calls(server.addr, "method=j.S/Bidi").await.is_empty());

    // Over gRPC, the same filters.
    let admin = Client::connect(server.addr, admin_pool()).await;
    let out = admin
        .unary(LIST_CALLS, json!({ "method": "j.S/Unary", "limit": 1 }))
        .await;
    let calls = out.single()["calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(requests(&calls[0]), vec![json!({ "name": "c" })]);

    assert_eq!(clear_calls(server.addr).await, 4);
    assert!(list_calls(server.addr, "").await.is_empty());
    assert_eq!(clear_calls(server.addr).await, 0);
    // Calls after the clear are journaled as ever.
    grpc.unary("j.S/Unary", json!({ "name": "d" })).await.ok();
    let after = list_calls(server.addr, "").await;
    assert_eq!(after.len(), 1);
    assert_eq!(requests(&after[0]), vec![json!({ "name": "d" })]);
}

#[tokio::test]
async fn a_journal_larger_than_a_reply_may_be_is_listed_newest_first_saying_what_it_left_out() {
    // A journal keeps calls of up to its byte cap (64 MiB), a reply is refused past
    // --max-message-size: one call of 4 MB made the whole journal unreadable (ListCalls and
    // Verify answered RESOURCE_EXHAUSTED). Here the limit is 64 KiB and each call ~50 KB listed.
    let server = start_with(Options::default().arg("--max-message-size=64KiB"));
    let grpc = client(&server).await;
    let names: Vec<String> = ["a", "b", "c"].iter().map(|c| c.repeat(12_000)).collect();
    for name in &names {
        assert_eq!(grpc_text(&grpc, name).await, format!("hello {name}"));
    }
    // The newest whole; the older ones without their messages, their sizes said.
    let check = |calls: &[Json]| {
        assert_eq!(calls.len(), 3);
        assert_eq!(requests(&calls[2])[0]["name"], names[2].as_str());
        for call in &calls[..2] {
            for frame in frames(call) {
                let payload = frame.get("request").or(frame.get("reply")).unwrap();
                assert!(payload.get("json").is_none(), "{payload}");
                let size: usize = payload["omittedSize"].as_str().unwrap().parse().unwrap();
                assert!((12_000..12_020).contains(&size), "{payload}");
            }
            assert_eq!(code_name(call), "OK");
        }
    };
    check(&list_calls(server.addr, "").await);
    let verified = verify(server.addr, "method = \"j.S/Unary\"", true).await;
    let verified = verified.expect(200).json();
    assert_eq!(verified["count"], "3");
    check(verified["calls"].as_array().unwrap());
    let admin = Client::connect(server.addr, admin_pool()).await;
    let listed = admin.unary(LIST_CALLS, json!({})).await;
    check(listed.single()["calls"].as_array().unwrap());
    // More calls than fit even without their messages: the newest are listed, the rest counted.
    for n in 0..400 {
        grpc.unary("j.S/Unary", json!({ "name": format!("n{n}") }))
            .await
            .ok();
    }
    let reply = http_client::get(server.addr, CALLS).await;
    let body = reply.expect(200).json();
    let calls = body["calls"].as_array().unwrap();
    let omitted = body["omitted"].as_u64().unwrap() as usize;
    assert!(omitted > 0 && calls.len() > 100, "{omitted} left out");
    assert_eq!(calls.len() + omitted, 403);
    assert_eq!(requests(calls.last().unwrap())[0]["name"], "n399");
}

/// Reading a full journal costs what the reply holds, not the journal: 2,000 calls of 16 kB kept,
/// measured as held (`MIMALLOC_PURGE_DELAY=0`: the allocator gives memory back as it is freed),
/// the peak reset before each step.
/// - `calls?limit=1`, as a test suite polls it, copied and decoded every call kept, each time: the
///   server grew by twice the journal (+73 MiB), +1 MiB now.
/// - `calls` decoded every call and rendered each as JSON, to send the newest 210 that fit in a
///   reply: +143 MiB and 440 ms (debug build); now +40 MiB (the journal's copy) and 190 ms.
/// - Verify with `list` held every call it matched, decoded, until it rendered the newest: +104
///   MiB; now +40 MiB.
#[tokio::test]
async fn reading_a_full_journal_costs_what_the_reply_holds() {
    let s = start_with(held());
    let grpc = client(&s).await;
    let name = "n".repeat(8 * 1024);
    const CALLS_KEPT: usize = 2000;
    for n in 0..CALLS_KEPT {
        let named = format!("{n} {name}");
        grpc.unary("j.S/Unary", json!({ "name": named })).await.ok();
    }
    let kept_kib = (CALLS_KEPT * 16) as u64;
    let grown = |before: u64| proc_status_kib(s.pid(), "VmHWM").saturating_sub(before);
    let before = reset_peak(s.pid());
    for _ in 0..5 {
        let last = list_calls(s.addr, "limit=1").await;
        assert_eq!(last.len(), 1);
        assert!(requests(&last[0])[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("1999 "));
        let of_method = list_calls(s.addr, "method=j.S/Unary&limit=2").await;
        assert_eq!(of_method.len(), 2);
    }
    let polled = grown(before);
    let before = reset_peak(s.pid());
    let all = http_client::get(s.addr, CALLS).await.expect(200).json();
    let listed = grown(before);
    let shown = all["calls"].as_array().unwrap().len();
    assert!(shown > 100, "{shown} calls shown");
    assert_eq!(all["omitted"].as_u64(), Some((CALLS_KEPT - shown) as u64));
    let newest = all["calls"].as_array().unwrap().last().unwrap();
    assert!(requests(newest)[0]["name"]
        .as_str()
        .unwrap()
        .starts_with("1999 "));
    let before = reset_peak(s.pid());
    let verified = verify(s.addr, "method = \"j.S/Unary\"\nwhen.request.num = 0", true).await;
    let verified_cost = grown(before);
    assert_eq!(verified.expect(200).json()["count"], "2000");
    eprintln!(
        "{CALLS_KEPT} calls kept ({kept_kib} KiB): VmHWM +{polled} KiB over ten listings of the \
         newest, +{listed} KiB listing them all, +{verified_cost} KiB verifying them all"
    );
    assert!(
        polled < 4 * 1024,
        "listing the newest calls took {polled} KiB more"
    );
    assert!(
        listed < 2 * kept_kib,
        "listing the journal took {listed} KiB more"
    );
    assert!(
        verified_cost < 2 * kept_kib,
        "verifying took {verified_cost} KiB more"
    );
}

#[tokio::test]
async fn verify_counts_what_the_client_did() {
    let server = start();
    let grpc = client(&server).await;
    for _ in 0..3 {
        grpc.unary_md(
            "j.S/Unary",
            json!({ "name": "tom" }),
            &[("x-user", "admin")],
        )
        .await
        .ok();
    }
    for _ in 0..2 {
        grpc.unary("j.S/Unary", json!({ "name": "ann" })).await.ok();
    }
    let ghost = grpc.unary("j.S/Unary", json!({ "name": "ghost" })).await;
    assert_eq!(ghost.err(Code::NotFound), "no ghost");
    grpc.client_stream("j.S/Client", vec![json!({ "name": "tom" })])
        .await
        .ok();

    let unary = "method = \"j.S/Unary\"\n";
    let addr = server.addr;
    assert_eq!(count(addr, unary).await, 6);
    assert_eq!(
        count(addr, &format!("{unary}when.request.name = \"tom\"")).await,
        3
    );
    assert_eq!(
        count(addr, &format!("{unary}when.request.name = \"ann\"")).await,
        2
    );
    assert_eq!(
        count(addr, &format!("{unary}when.request.name = \"bob\"")).await,
        0
    );
    assert_eq!(
        count(addr, &format!("{unary}status = \"NOT_FOUND\"")).await,
        1
    );
    assert_eq!(count(addr, &format!("{unary}status = 5")).await, 1);
    assert_eq!(count(addr, &format!("{unary}status = \"OK\"")).await, 5);
    assert_eq!(count(addr, "status = \"OK\"").await, 6, "every method");
    assert_eq!(
        count(addr, &format!("{unary}when.metadata.x-user = \"admin\"")).await,
        3
    );
    assert_eq!(
        count(
            addr,
            &format!("{unary}when.metadata.x-user = {{ present = false }}")
        )
        .await,
        3
    );
    assert_eq!(
        count(addr, "method = \"j.S/Client\"\nwhen.request.name = \"tom\"").await,
        1
    );

    // `list` gives the matching calls themselves.
    let reply = verify(addr, &format!("{unary}when.request.name = \"ann\""), true).await;
    let body = reply.expect(200).json();
    assert_eq!(body["count"], "2");
    let calls = body["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(requests(call), vec![json!({ "name": "ann" })]);
        assert_eq!(code_name(call), "OK");
    }
    let reply = verify(addr, unary, false).await;
    assert!(reply.expect(200).json()["calls"]
        .as_array()
        .is_none_or(|c| c.is_empty()));

    // The same filter as JSON, over gRPC.
    let admin = Client::connect(addr, admin_pool()).await;
    let filter = json!({ "method": "j.S/Unary", "when": { "request": { "name": "tom" } } });
    let out = admin
        .unary(VERIFY_METHOD, json!({ "filterJson": filter }))
        .await;
    assert_eq!(out.single()["count"], "3");
}

#[tokio::test]
async fn a_bad_filter_is_invalid_argument_naming_line_and_column() {
    let server = start();
    let filter = "method = \"j.S/Unary\"\nwhen.request.nope = \"x\"\n";
    let reply = verify(server.addr, filter, false).await;
    let body = reply.expect(400).json();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("submitted.toml:2:14:"),
        "names line and column: {body}"
    );
    assert!(message.contains("nope"), "{body}");

    let admin = Client::connect(server.addr, admin_pool()).await;
    let out = admin
        .unary(VERIFY_METHOD, json!({ "filter": "status = \"NOPE\"" }))
        .await;
    let message = out.err(Code::InvalidArgument);
    assert!(message.contains(":1:"), "{message}");
    let out = admin
        .unary(VERIFY_METHOD, json!({ "filter": "method = \"j.S/Nope\"" }))
        .await;
    out.err(Code::InvalidArgument);
}

#[tokio::test]
async fn an_unmatched_call_lists_its_near_misses() {
    let server = start();
    let grpc = client(&server).await;
    let out = grpc
        .unary("j.S/Picky", json!({ "name": "x", "num": 8 }))
        .await;
    out.err(Code::Unimplemented);
    let calls = list_calls(server.addr, "method=j.S/Picky").await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(code_name(call), "UNIMPLEMENTED");
    assert!(call.get("rules").is_none(), "no rule answered: {call:#}");
    let misses = call["nearMisses"].as_array().expect("near misses");
    assert_eq!(misses.len(), 1, "{call:#}");
    assert_eq!(
        misses[0]["rule"],
        origin(&server, "reply = { text = \"picked\" }")
    );
    assert_eq!(misses[0]["held"], 1);
    assert_eq!(misses[0]["conditions"], 2);
    let failed = misses[0]["failed"].as_str().unwrap();
    assert!(
        failed.contains("request.num") && failed.contains('7'),
        "{failed}"
    );

    // A call that matched has none.
    let out = grpc
        .unary("j.S/Picky", json!({ "name": "x", "num": 7 }))
        .await;
    assert_eq!(out.single(), &json!({ "text": "picked" }));
    let calls = list_calls(server.addr, "method=j.S/Picky").await;
    assert!(calls[1].get("nearMisses").is_none(), "{:#}", calls[1]);
}

// ---- runtime rules ----

async fn add_rules(addr: SocketAddr, toml: &str) -> http_client::Reply {
    http_client::post_json(addr, RULES, &json!({ "toml": toml }).to_string()).await
}

async fn list_rules(addr: SocketAddr) -> Json {
    http_client::get(addr, RULES).await.expect(200).json()
}

/// The `text` a unary call for `name` is answered with, over gRPC.
async fn grpc_text(grpc: &Client, name: &str) -> String {
    let out = grpc.unary("j.S/Unary", json!({ "name": name })).await;
    out.single()["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The same over Connect.
async fn connect_text(addr: SocketAddr, name: &str) -> String {
    let body = connect(addr, "j.S/Unary", "", &[json!({ "name": name })]).await;
    let reply: Json = serde_json::from_slice(&body).unwrap();
    reply["text"].as_str().unwrap_or_default().to_string()
}

const RUNTIME_RULE: &str =
    "[[rule]]\nmethod = \"j.S/Unary\"\nreply = { text = \"runtime {{request.name}}\" }\n";

#[tokio::test]
async fn a_runtime_rule_answers_the_next_call_until_it_is_deleted() {
    let server = start();
    let addr = server.addr;
    let grpc = client(&server).await;
    assert_eq!(grpc_text(&grpc, "u").await, "hello u");
    let before = list_rules(addr).await;

    let added = add_rules(addr, RUNTIME_RULE).await.expect(200).json();
    assert_eq!(added["rules"][0]["id"], "r1", "{added}");
    assert_eq!(added["rules"][0]["origin"], "runtime:r1", "{added}");
    assert_eq!(added["rules"][0]["method"], "j.S/Unary", "{added}");

    // The very next call, over gRPC and over Connect.
    assert_eq!(grpc_text(&grpc, "u").await, "runtime u");
    assert_eq!(connect_text(addr, "v").await, "runtime v");
    // The journal names it as the rule that answered.
    let calls = list_calls(addr, "method=j.S/Unary&limit=1").await;
    assert_eq!(calls[0]["rules"], json!(["runtime:r1"]));
    assert_eq!(replies(&calls[0])[0].1, "runtime:r1");

    // ListRules shows it, tried first, with the text as written.
    let listed = list_rules(addr).await;
    let unary: Vec<&Json> = listed["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "j.S/Unary")
        .collect();
    assert_eq!(unary[0]["id"], "r1", "{listed:#}");
    assert_eq!(unary[0]["origin"], "runtime:r1");
    assert_eq!(unary[0]["text"], RUNTIME_RULE.trim_end());
    assert_eq!(
        unary.len(),
        3,
        "the file's two and the runtime one: {listed:#}"
    );

    // Replaced in place: same id, the new answer.
    let replacement = RUNTIME_RULE.replace("runtime {{", "replaced {{");
    let body = json!({ "toml": replacement }).to_string();
    let replaced = http_client::send(
        addr,
        "PUT",
        &format!("{RULES}/r1"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    let replaced = replaced.expect(200).json();
    assert_eq!(replaced["rule"]["origin"], "runtime:r1", "{replaced}");
    assert_eq!(grpc_text(&grpc, "u").await, "replaced u");

    // Deleted: the file's rule answers again, and the listing is as before.
    http_client::send(addr, "DELETE", &format!("{RULES}/r1"), &[], "")
        .await
        .expect(200);
    assert_eq!(grpc_text(&grpc, "u").await, "hello u");
    assert_eq!(connect_text(addr, "v").await, "hello v");
    assert_eq!(list_rules(addr).await, before);
    // Deleting it again: NOT_FOUND.
    http_client::send(addr, "DELETE", &format!("{RULES}/r1"), &[], "")
        .await
        .expect(404);
}

#[tokio::test]
async fn a_bad_runtime_rule_is_refused_with_a_diagnostic_and_changes_nothing() {
    let server = start();
    let addr = server.addr;
    let grpc = client(&server).await;
    add_rules(addr, RUNTIME_RULE).await.expect(200);
    let before = list_rules(addr).await;

    // The second rule's reply names a field `Resp` does not have (line 7 of the text).
    let bad =
        "[[rule]]\nmethod = \"j.S/Unary\"\nwhen.request.name = \"a\"\nreply = { text = \"a\" }\n\n\
               [[rule]]\nmethod = \"j.S/Unary\"\nreply = { nope = \"b\" }\n";
    let reply = add_rules(addr, bad).await;
    let body = reply.expect(400).json();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("submitted.toml:8:11:"),
        "names line 8, column 11: {body}"
    );
    assert!(message.contains("nope"), "{body}");

    // Nothing changed: not even the good first rule was added.
    assert_eq!(list_rules(addr).await, before);
    assert_eq!(grpc_text(&grpc, "a").await, "runtime a");

    // Not TOML at all, over gRPC.
    let admin = Client::connect(addr, admin_pool()).await;
    let out = admin
        .unary(ADD_RULES, json!({ "toml": "[[rule]\nmethod = 1" }))
        .await;
    let message = out.err(Code::InvalidArgument);
    assert!(message.contains("submitted.toml:1:"), "{message}");
    assert_eq!(list_rules(addr).await, before);
    assert_eq!(connect_text(addr, "a").await, "runtime a");
}

/// `--max-runtime-rules` bounds the runtime rules kept at once: a submission that would pass it is
/// refused whole with RESOURCE_EXHAUSTED naming the flag, and changes nothing; room made by a reset
/// is taken again. Without it a client adding rules in a loop grew the server without bound (3,000
/// rules: +68 MiB, each addition slower than the last).
#[tokio::test]
async fn runtime_rules_are_kept_within_max_runtime_rules() {
    let server = start_with(Options::default().arg("--max-runtime-rules=3"));
    let addr = server.addr;
    let grpc = client(&server).await;
    let rule = |name: &str| {
        format!(
            "[[rule]]\nmethod = \"j.S/Unary\"\nwhen.request.name = \"{name}\"\n\
             reply = {{ text = \"runtime {name}\" }}\n"
        )
    };
    add_rules(addr, &(rule("a") + &rule("b"))).await.expect(200);
    let before = list_rules(addr).await;
    let reply = add_rules(addr, &(rule("c") + &rule("d"))).await;
    let body = reply.expect(429).json();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("--max-runtime-rules"), "{body}");
    assert!(message.contains("over the limit of 3"), "{body}");
    assert_eq!(list_rules(addr).await, before);
    assert_eq!(grpc_text(&grpc, "c").await, "hello c");
    // Over gRPC, the same status.
    let admin = Client::connect(addr, admin_pool()).await;
    let out = admin
        .unary(ADD_RULES, json!({ "toml": rule("c") + &rule("d") }))
        .await;
    out.err(Code::ResourceExhausted);
    // One more fits; a reset makes room for three again.
    add_rules(addr, &rule("c")).await.expect(200);
    assert_eq!(grpc_text(&grpc, "c").await, "runtime c");
    add_rules(addr, &rule("d")).await.expect(429);
    let reset = http_client::post_json(addr, &format!("{RULES}:reset"), "{}").await;
    assert_eq!(reset.expect(200).json()["deleted"], 3);
    add_rules(addr, &(rule("d") + &rule("e") + &rule("f")))
        .await
        .expect(200);
    assert_eq!(grpc_text(&grpc, "f").await, "runtime f");
}

#[tokio::test]
async fn reset_rules_deletes_every_runtime_rule() {
    let server = start();
    let addr = server.addr;
    let grpc = client(&server).await;
    let two =
        format!("{RUNTIME_RULE}\n[[rule]]\nmethod = \"j.S/Client\"\nreply = {{ text = \"rt\" }}\n");
    let added = add_rules(addr, &two).await.expect(200).json();
    let ids: Vec<&Json> = added["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, vec!["r1", "r2"]);
    assert_eq!(grpc_text(&grpc, "u").await, "runtime u");
    let reset = http_client::post_json(addr, &format!("{RULES}:reset"), "{}").await;
    assert_eq!(reset.expect(200).json()["deleted"], 2);
    assert_eq!(grpc_text(&grpc, "u").await, "hello u");
    let listed = list_rules(addr).await;
    assert!(
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("id").is_none_or(|id| id == "")),
        "{listed:#}"
    );
}

#[tokio::test]
async fn a_runtime_rule_outlives_a_handler_file_edit() {
    let server = start();
    let addr = server.addr;
    let grpc = client(&server).await;
    let only_rt = "[[rule]]\nmethod = \"j.S/Unary\"\nwhen.request.name = \"rt\"\nreply = { text = \"runtime\" }\n";
    add_rules(addr, only_rt).await.expect(200);
    assert_eq!(grpc_text(&grpc, "rt").await, "runtime");

    server.write_handler("j.toml", &J_RULES.replace("hello {{", "bye {{"));
    eventually(Duration::from_secs(10), || async {
        match grpc_text(&grpc, "u").await.as_str() {
            "bye u" => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    assert_eq!(grpc_text(&grpc, "rt").await, "runtime");
    assert_eq!(connect_text(addr, "rt").await, "runtime");
    let listed = list_rules(addr).await;
    assert!(
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["origin"] == "runtime:r1"),
        "{listed:#}"
    );
}

// ---- concurrency ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_the_journal_is_read_and_cleared_are_all_accounted_for() {
    let server = start();
    let addr = server.addr;
    let (workers, each) = (8, 40);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut cleared = 0;
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || rounds == 0 {
                for call in list_calls(addr, "").await {
                    // A finished call is whole: every frame its shape gives.
                    if call.get("status").is_some() {
                        assert_eq!(code_name(&call), "OK", "{call:#}");
                        let (sent, answered) = (requests(&call).len(), replies(&call).len());
                        match call["method"].as_str().unwrap() {
                            "j.S/Unary" => assert_eq!((sent, answered), (1, 1), "{call:#}"),
                            "j.S/Bidi" => assert_eq!((sent, answered), (5, 5), "{call:#}"),
                            other => panic!("{other}"),
                        }
                        assert!(call["duration"].is_string(), "{call:#}");
                    }
                    assert!(metadata(&call, "x-tag").is_some(), "{call:#}");
                }
                cleared += clear_calls(addr).await;
                rounds += 1;
            }
            (cleared, rounds)
        })
    };
    let grpc = client(&server).await;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let grpc = grpc.clone();
            tokio::spawn(async move {
                for n in 0..each {
                    let tag = format!("{w}-{n}");
                    let md = [("x-tag", tag.as_str())];
                    if n % 4 == 0 {
                        let five = (0..5).map(|i| json!({ "name": format!("{i}") })).collect();
                        let out = grpc.client_stream_md("j.S/Bidi", five, &md).await;
                        assert_eq!(out.ok().messages.len(), 5);
                    } else {
                        grpc.unary_md("j.S/Unary", json!({ "name": tag }), &md)
                            .await
                            .ok();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (cleared, rounds) = reader.await.unwrap();
    let kept = list_calls(addr, "").await;
    assert!(kept.iter().all(|c| c.get("status").is_some()), "{kept:#?}");
    assert_eq!(
        cleared + kept.len() as u64,
        (workers * each) as u64,
        "cleared {cleared} in {rounds} rounds, {} kept",
        kept.len()
    );
    let body = http_client::get(addr, CALLS).await.json();
    assert!(
        body.get("dropped").is_none(),
        "none dropped: {}",
        body["dropped"]
    );
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "{}", log_tail(&logs));
}

// ---- switches and the call log ----

#[tokio::test]
async fn without_journal_list_calls_is_failed_precondition() {
    let server = Server::start_with(
        &[("j.proto", J_PROTO)],
        &[("j.toml", J_RULES)],
        Options::default().arg("--no-journal"),
    );
    let grpc = client(&server).await;
    assert_eq!(grpc_text(&grpc, "u").await, "hello u");
    let admin = Client::connect(server.addr, admin_pool()).await;
    let out = admin.unary(LIST_CALLS, json!({})).await;
    assert!(
        out.err(Code::FailedPrecondition).contains("--no-journal"),
        "{}",
        out.message()
    );
    http_client::get(server.addr, CALLS).await.expect(400);
    let out = admin
        .unary(VERIFY_METHOD, json!({ "filter": "status = \"OK\"" }))
        .await;
    out.err(Code::FailedPrecondition);
    // Runtime rules do not need the journal.
    add_rules(server.addr, RUNTIME_RULE).await.expect(200);
    assert_eq!(grpc_text(&grpc, "u").await, "runtime u");
}

#[tokio::test]
async fn each_call_logs_a_line_naming_protocol_method_code_and_rule() {
    let server = start();
    let grpc = client(&server).await;
    let since = server.logs().len();
    grpc.unary("j.S/Unary", json!({ "name": "u" })).await.ok();
    let rule = origin(&server, "hello {{request.name}}");
    let line = log_line(&server, since, "j.S/Unary").await;
    assert!(line.contains("INFO"), "{line}");
    for part in ["grpc", "j.S/Unary", " OK", &rule] {
        assert!(line.contains(part), "{part:?} in {line}");
    }

    let since = server.logs().len();
    let ghost = r#"{"name":"ghost"}"#;
    let reply = http_client::post_json(server.addr, "/j.S/Unary", ghost).await;
    reply.expect(404);
    let line = log_line(&server, since, "j.S/Unary").await;
    for part in ["connect", "NOT_FOUND", &origin(&server, "NOT_FOUND")] {
        assert!(line.contains(part), "{part:?} in {line}");
    }

    // No rule matched: WARN, with the reason and the rules tried.
    let since = server.logs().len();
    grpc.unary("j.S/Picky", json!({ "name": "y" }))
        .await
        .err(Code::Unimplemented);
    let line = log_line(&server, since, "j.S/Picky").await;
    assert!(line.contains("WARN"), "{line}");
    for part in [
        "UNIMPLEMENTED",
        "no rule matched",
        &origin(&server, "picked"),
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
}

#[tokio::test]
async fn log_format_json_writes_a_json_object_per_call() {
    let server = start_with(Options::default().arg("--log-format").arg("json"));
    let grpc = client(&server).await;
    grpc.unary("j.S/Unary", json!({ "name": "u" })).await.ok();
    grpc.unary("j.S/Picky", json!({ "name": "y" }))
        .await
        .err(Code::Unimplemented);
    let line = log_line(&server, 0, "j.S/Unary").await;
    let logged: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let fields = logged.get("fields").unwrap_or(&logged);
    assert_eq!(fields["protocol"], "grpc", "{logged}");
    assert_eq!(fields["method"], "j.S/Unary", "{logged}");
    assert_eq!(fields["code"], "OK", "{logged}");
    assert_eq!(
        fields["rule"],
        origin(&server, "hello {{request.name}}"),
        "{logged}"
    );
    assert_eq!(logged["level"], "INFO", "{logged}");

    let line = log_line(&server, 0, "j.S/Picky").await;
    let logged: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let fields = logged.get("fields").unwrap_or(&logged);
    assert_eq!(logged["level"], "WARN", "{logged}");
    assert_eq!(fields["code"], "UNIMPLEMENTED", "{logged}");
    assert_eq!(fields["reason"], "no rule matched", "{logged}");
}

/// The first line of the server's log after `since` bytes that names `method` as a call's line
/// (target `protodrop::call`), waiting for it to be written.
async fn log_line(server: &Server, since: usize, method: &str) -> String {
    eventually(Duration::from_secs(5), || async {
        let logs = server.logs();
        logs[since..]
            .lines()
            .find(|l| l.contains("protodrop::call") && l.contains(method))
            .map(str::to_string)
            .ok_or_else(|| log_tail(&logs))
    })
    .await
}

#[tokio::test]
async fn a_call_the_client_walks_away_from_is_journaled_with_its_end() {
    let server = start();
    let grpc = client(&server).await;
    let mut session = grpc.session_md("j.S/Server", &[("x-tag", "gone")]);
    session.send(json!({ "name": "slow" }));
    session.close();
    assert_eq!(session.recv().await, json!({ "text": "slow" }));
    drop(session);
    let call = first_ended_call(server.addr, "j.S/Server", Duration::from_secs(10)).await;
    assert_eq!(code_name(&call), "CANCELLED", "{call:#}");
    assert_eq!(metadata(&call, "x-tag"), Some("gone"));
    let sent = replies(&call).len();
    assert!((1..1000).contains(&sent), "{sent} replies: {call:#}");
    assert!(call["duration"].is_string(), "{call:#}");
    // The log line says so too.
    let line = log_line(&server, 0, "j.S/Server").await;
    assert!(line.contains("CANCELLED"), "{line}");
}

#[tokio::test]
async fn without_the_journal_unmatched_calls_and_failed_scripts_still_log_a_warn_line() {
    // The default log: no journal, no line per call, but a WARN line for a call no rule matched
    // and for a script that failed — told by the engine without a journal record.
    let failing =
        "[[rule]]\nmethod = \"j.S/Picky\"\nwhen.request.name = \"s\"\ncode = 'undefined_fn()'\n";
    let server = Server::start_with(
        &[("j.proto", J_PROTO)],
        &[("j.toml", J_RULES), ("s.toml", failing)],
        Options::default().env("RUST_LOG", "info,protodrop::call=warn"),
    );
    let grpc = client(&server).await;
    grpc.unary("j.S/Unary", json!({ "name": "u" })).await.ok();
    grpc.unary("j.S/Picky", json!({ "name": "y" }))
        .await
        .err(Code::Unimplemented);
    let line = log_line(&server, 0, "no rule matched").await;
    assert!(line.contains("WARN"), "{line}");
    for part in [
        "grpc",
        "j.S/Picky",
        "UNIMPLEMENTED",
        "rule=none",
        &origin(&server, "picked"),
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    let status = grpc.unary("j.S/Picky", json!({ "name": "s" })).await;
    let message = status.message();
    assert!(message.starts_with("script "), "{message}");
    let line = log_line(&server, 0, "undefined_fn").await;
    assert!(line.contains("WARN"), "{line}");
    for part in ["j.S/Picky", "s.toml:1", "reason=\"script "] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    // An answered call has no line in this log.
    let logs = server.logs();
    let calls: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("protodrop::call"))
        .collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
}

#[tokio::test]
async fn a_call_its_deadline_cut_is_journaled_and_counted_as_deadline_exceeded() {
    // The client is told DEADLINE_EXCEEDED; the journal and the metrics say the same, not
    // CANCELLED (the answer is dropped either way: what dropped it tells them apart).
    let late = "[[rule]]\nmethod = \"j.S/Picky\"\ndelay = \"5s\"\nreply = { text = \"late\" }\n";
    let server = Server::start_with(
        &[("j.proto", J_PROTO)],
        &[("j.toml", J_RULES), ("late.toml", late)],
        // The flag of the versions where the journal was off: still accepted.
        Options::default().arg("--journal"),
    );
    let reply = http_client::send(
        server.addr,
        "POST",
        "/j.S/Picky",
        &[
            ("content-type", "application/json"),
            ("connect-timeout-ms", "200"),
        ],
        r#"{"name":"z"}"#,
    )
    .await;
    assert!(
        reply.text().contains("deadline_exceeded"),
        "{}",
        reply.text()
    );
    let call = first_ended_call(server.addr, "j.S/Picky", Duration::from_secs(5)).await;
    assert_eq!(code_name(&call), "DEADLINE_EXCEEDED", "{call:#}");
    let metrics = http_client::get(server.addr, "/metrics")
        .await
        .expect(200)
        .text();
    let counted = metrics.lines().any(|l| {
        l.starts_with("protodrop_calls_total{")
            && l.contains(r#"method="j.S/Picky""#)
            && l.contains(r#"code="DEADLINE_EXCEEDED""#)
    });
    assert!(counted, "{metrics}");
}

#[tokio::test]
async fn without_the_journal_each_call_logs_its_line_and_a_call_walked_away_from_its_cut() {
    // The line per call alone is written from what the engine tells, without a journal record:
    // the same line, and a call dropped before its end still gets one.
    let server = Server::start_with(
        &[("j.proto", J_PROTO)],
        &[("j.toml", J_RULES)],
        Options::default().env("RUST_LOG", "info"),
    );
    let grpc = client(&server).await;
    grpc.unary("j.S/Unary", json!({ "name": "u" })).await.ok();
    let line = log_line(&server, 0, "j.S/Unary").await;
    let rule = origin(&server, "hello {{request.name}}");
    for part in ["INFO", "grpc", " OK", &rule] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    let mut session = grpc.session_md("j.S/Server", &[]);
    session.send(json!({ "name": "slow" }));
    session.close();
    assert_eq!(session.recv().await, json!({ "text": "slow" }));
    drop(session);
    let line = log_line(&server, 0, "j.S/Server").await;
    assert!(line.contains("CANCELLED"), "{line}");
}
