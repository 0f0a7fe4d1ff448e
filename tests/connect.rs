//! The Connect protocol on the gRPC port: unary JSON and binary, errors as Connect error JSON with the
//! mapped HTTP status, streaming in 5-byte envelopes ended by the end-stream message, headers and
//! trailers, compression, timeouts and GET.

mod common;
mod http_client;

use std::io::{Read as _, Write as _};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_client::{envelope, envelopes, get, post_json, send, Reply};
use prost::Message as _;
use prost_reflect::DynamicMessage;

fn handlers() -> String {
    rules(&[
        (
            "t.Svc/Unary",
            r#"when.request.name = "missing"
error = { code = "NOT_FOUND", message = "no {{request.name}} here", details = [
  { "@type" = "google.rpc.ErrorInfo", reason = "GONE", domain = "t.example" },
] }"#,
        ),
        (
            "t.Svc/Unary",
            r#"when.metadata.x-tenant = "acme"
reply = { text = "tenant acme" }"#,
        ),
        (
            "t.Svc/Unary",
            r#"when.request.name = "slow"
delay = "3s"
reply = { text = "late" }"#,
        ),
        (
            "t.Svc/Unary",
            r#"headers = { x-served-by = "protodrop" }
trailers = { x-cost = "7" }
reply = { text = "hello {{request.name}}", big = 9007199254740993, color = "GREEN", num = "{{request.num}}" }"#,
        ),
        ("t.Svc/Echo", r#"reply = "{{request}}""#),
        (
            "t.Svc/ServerStream",
            r#"when.request.name = "fail"
stream.messages = [ { text = "one" } ]
error = { code = "UNAVAILABLE", message = "gone away" }"#,
        ),
        (
            "t.Svc/ServerStream",
            r#"trailers = { x-done = "yes" }
stream.repeat = 3
stream.message = { text = "item {{index}}", big = "{{index}}" }"#,
        ),
        (
            "t.Svc/ClientStream",
            r#"reply = { text = "{{count}} messages, first {{first.name}}, last {{request.name}}" }"#,
        ),
        (
            "t.Svc/Bidi",
            r#"reply = { text = "echo {{request.name}}" }"#,
        ),
    ])
}

fn server() -> Server {
    start_t(&handlers())
}

/// `POST path` with these headers.
async fn post(s: &Server, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    send(s.addr, "POST", path, headers, body).await
}

/// `POST path` with this content type and no other header.
async fn post_as(s: &Server, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
    post(s, path, &[("content-type", content_type)], body).await
}

/// [`post_as`], answered with HTTP 200.
async fn post_ok(s: &Server, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let r = post_as(s, path, content_type, body).await;
    r.expect(200);
    r
}

/// `POST path` with `content-type: application/json` and then `headers`.
async fn post_json_with(
    s: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    post(s, path, &all, body).await
}

/// A Connect error answer: this HTTP status and this `code` in the error JSON, which it returns.
#[track_caller]
fn connect_error(r: &Reply, status: u16, code: &str) -> serde_json::Value {
    r.expect(status);
    let body = r.json();
    assert_eq!(body["code"], code, "{body}");
    body
}

/// The end-stream message's JSON, from its envelope's payload.
fn end_stream(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap()
}

fn pool(s: &Server) -> prost_reflect::DescriptorPool {
    compile_protos(&s.protos_dir(), &[]).expect("protos compile")
}

/// A message of `type_name` from JSON, encoded.
fn proto_bytes(s: &Server, type_name: &str, value: serde_json::Value) -> Vec<u8> {
    let desc = pool(s).get_message_by_name(type_name).unwrap();
    DynamicMessage::deserialize(desc, value)
        .unwrap()
        .encode_to_vec()
}

fn proto_json(s: &Server, type_name: &str, bytes: &[u8]) -> serde_json::Value {
    let desc = pool(s).get_message_by_name(type_name).unwrap();
    serde_json::to_value(DynamicMessage::decode(desc, bytes).unwrap()).unwrap()
}

#[tokio::test]
async fn unary_json_with_headers_and_prefixed_trailers() {
    let s = server();
    let r = post_json_with(
        &s,
        "/t.Svc/Unary",
        &[("connect-protocol-version", "1")],
        r#"{"name":"ann","num":4}"#,
    )
    .await;
    r.expect(200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    // Canonical proto3 JSON: int64 as a string, enums by name.
    assert_eq!(
        r.json(),
        json!({"text": "hello ann", "num": 4, "big": "9007199254740993", "color": "GREEN"})
    );
    assert_eq!(r.header("x-served-by").as_deref(), Some("protodrop"));
    assert_eq!(r.header("trailer-x-cost").as_deref(), Some("7"));
}

#[tokio::test]
async fn the_protocol_version_header_may_be_left_out_but_not_wrong() {
    let s = server();
    post_json(s.addr, "/t.Svc/Unary", r#"{"name":"curl"}"#)
        .await
        .expect(200);
    let r = post_json_with(
        &s,
        "/t.Svc/Unary",
        &[("connect-protocol-version", "2")],
        "{}",
    )
    .await;
    connect_error(&r, 400, "invalid_argument");
}

#[tokio::test]
async fn unary_binary_proto() {
    let s = server();
    let body = proto_bytes(&s, "t.Req", json!({"name": "bin", "num": 2}));
    let r = post_ok(&s, "/t.Svc/Unary", "application/proto", body).await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/proto")
    );
    assert_eq!(
        proto_json(&s, "t.Resp", &r.body),
        json!({"text": "hello bin", "num": 2, "big": "9007199254740993", "color": "GREEN"})
    );
}

#[tokio::test]
async fn error_is_connect_json_with_the_mapped_http_status() {
    let s = server();
    let r = post_json(s.addr, "/t.Svc/Unary", r#"{"name":"missing"}"#).await;
    let body = connect_error(&r, 404, "not_found");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(body["message"], "no missing here");
    let detail = &body["details"][0];
    assert_eq!(detail["type"], "google.rpc.ErrorInfo");
    assert_eq!(
        detail["debug"],
        json!({"reason": "GONE", "domain": "t.example"})
    );
    // The value is the detail's protobuf, unpadded base64.
    let value = detail["value"].as_str().unwrap();
    assert!(!value.ends_with('='));
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value)
        .unwrap();
    let info = rpc_pool()
        .get_message_by_name("google.rpc.ErrorInfo")
        .unwrap();
    let info = DynamicMessage::decode(info, bytes.as_slice()).unwrap();
    assert_eq!(
        serde_json::to_value(info).unwrap(),
        json!({"reason": "GONE", "domain": "t.example"})
    );
}

#[tokio::test]
async fn no_handler_unknown_method_and_bad_json_are_connect_errors() {
    let s = server();
    let r = post_json(s.addr, "/t.Svc/Ping", "{}").await;
    let body = connect_error(&r, 501, "unimplemented");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no handler for t.Svc/Ping"));

    let r = post_json(s.addr, "/t.Svc/Nope", "{}").await;
    connect_error(&r, 404, "unimplemented");
    assert!(r.text().contains("no method 'Nope'"), "{}", r.text());

    let r = post_json(s.addr, "/t.Svc/Unary", r#"{"nmae":"x"}"#).await;
    connect_error(&r, 400, "invalid_argument");
    assert!(r.text().contains("nmae"), "{}", r.text());

    let r = post_json(s.addr, "/t.Svc/Unary", r#"{"name":"#).await;
    connect_error(&r, 400, "invalid_argument");

    let r = post_as(
        &s,
        "/t.Svc/Unary",
        "application/proto",
        vec![0xff, 0xff, 0xff],
    )
    .await;
    connect_error(&r, 400, "invalid_argument");
}

#[tokio::test]
async fn request_headers_are_metadata_for_conditions() {
    let s = server();
    let r = post_json_with(&s, "/t.Svc/Unary", &[("x-tenant", "acme")], "{}").await;
    assert_eq!(r.expect(200).json(), json!({"text": "tenant acme"}));
}

#[tokio::test]
async fn well_known_types_and_empty_bodies() {
    let s = server();
    // A blank body is the empty message; google.protobuf.Empty answers `{}`.
    let r = post_json(s.addr, "/t.Svc/Echo", "").await;
    assert_eq!(r.expect(200).json(), json!({}));
    let r = post_json(
        s.addr,
        "/t.Svc/Echo",
        r#"{"name":"x","big":"-5","color":"RED","tags":["a","b"],"inner":{"id":3},"ratio":0.5}"#,
    )
    .await;
    assert_eq!(
        r.expect(200).json(),
        json!({"name":"x","big":"-5","color":"RED","tags":["a","b"],"inner":{"id":3},"ratio":0.5})
    );
}

#[tokio::test]
async fn server_stream_in_envelopes_ends_with_trailers() {
    let s = server();
    let r = post_ok(
        &s,
        "/t.Svc/ServerStream",
        "application/connect+json",
        envelope(0, br#"{"name":"s"}"#),
    )
    .await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/connect+json")
    );
    let frames = envelopes(&r.body);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let messages: Vec<serde_json::Value> = frames[..3]
        .iter()
        .map(|(flags, m)| {
            assert_eq!(*flags, 0);
            serde_json::from_slice(m).unwrap()
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            json!({"text": "item 0"}),
            json!({"text": "item 1", "big": "1"}),
            json!({"text": "item 2", "big": "2"}),
        ]
    );
    let (flags, end) = &frames[3];
    assert_eq!(*flags, 0x02, "the last envelope is the end-stream message");
    let end = end_stream(end);
    assert_eq!(end, json!({"metadata": {"x-done": ["yes"]}}));
}

#[tokio::test]
async fn server_stream_error_after_messages_is_in_the_end_stream_message() {
    let s = server();
    let r = post_ok(
        &s,
        "/t.Svc/ServerStream",
        "application/connect+json",
        envelope(0, br#"{"name":"fail"}"#),
    )
    .await;
    let frames = envelopes(&r.body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0], (0, br#"{"text":"one"}"#.to_vec()));
    assert_eq!(frames[1].0, 0x02);
    let end = end_stream(&frames[1].1);
    assert_eq!(
        end,
        json!({"error": {"code": "unavailable", "message": "gone away"}})
    );
}

#[tokio::test]
async fn server_stream_in_binary() {
    let s = server();
    let r = post_ok(
        &s,
        "/t.Svc/ServerStream",
        "application/connect+proto",
        envelope(0, &proto_bytes(&s, "t.Req", json!({"name": "b"}))),
    )
    .await;
    let frames = envelopes(&r.body);
    assert_eq!(frames.len(), 4);
    assert_eq!(
        proto_json(&s, "t.Resp", &frames[2].1),
        json!({"text": "item 2", "big": "2"})
    );
    assert_eq!(frames[3].0, 0x02);
}

#[tokio::test]
async fn client_stream_and_bidi_over_envelopes() {
    let s = server();
    let mut body = envelope(0, br#"{"name":"a"}"#);
    body.extend(envelope(0, br#"{"name":"b"}"#));
    body.extend(envelope(0, br#"{"name":"c"}"#));
    let r = post_ok(
        &s,
        "/t.Svc/ClientStream",
        "application/connect+json",
        body.clone(),
    )
    .await;
    let frames = envelopes(&r.body);
    assert_eq!(
        frames,
        vec![
            (0, br#"{"text":"3 messages, first a, last c"}"#.to_vec()),
            (2, b"{}".to_vec())
        ]
    );
    // Bidi works when the client sends its messages before reading (as HTTP/1.1 clients do).
    let r = post_as(&s, "/t.Svc/Bidi", "application/connect+json", body).await;
    let texts: Vec<Vec<u8>> = envelopes(&r.expect(200).body)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        texts,
        vec![
            br#"{"text":"echo a"}"#.to_vec(),
            br#"{"text":"echo b"}"#.to_vec(),
            br#"{"text":"echo c"}"#.to_vec(),
            b"{}".to_vec()
        ]
    );
}

#[tokio::test]
async fn streaming_methods_need_the_streaming_content_type() {
    let s = server();
    let r = post_json(s.addr, "/t.Svc/ServerStream", "{}").await;
    connect_error(&r, 415, "unimplemented");
    assert!(
        r.text().contains("application/connect+json"),
        "{}",
        r.text()
    );
    let r = post_as(&s, "/t.Svc/Unary", "application/protobuf", "").await;
    r.expect(415);
}

#[tokio::test]
async fn a_truncated_envelope_is_an_error_in_the_end_stream_message() {
    let s = server();
    let mut body = envelope(0, br#"{"name":"s"}"#);
    body.truncate(8);
    let r = post_ok(&s, "/t.Svc/ServerStream", "application/connect+json", body).await;
    let frames = envelopes(&r.body);
    let end = end_stream(&frames.last().unwrap().1);
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn gzip_both_ways() {
    let s = server();
    let r = post_json_with(
        &s,
        "/t.Svc/Echo",
        &[("content-encoding", "gzip"), ("accept-encoding", "gzip")],
        gzip(br#"{"name":"zipped"}"#),
    )
    .await;
    r.expect(200);
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(gunzip(&r.body), br#"{"name":"zipped"}"#);

    // Streaming: per-envelope compression flag, connect-content-encoding.
    let r = post(
        &s,
        "/t.Svc/ServerStream",
        &[
            ("content-type", "application/connect+json"),
            ("connect-content-encoding", "gzip"),
            ("connect-accept-encoding", "gzip"),
        ],
        envelope(1, &gzip(br#"{"name":"z"}"#)),
    )
    .await;
    r.expect(200);
    assert_eq!(
        r.header("connect-content-encoding").as_deref(),
        Some("gzip")
    );
    let frames = envelopes(&r.body);
    assert_eq!(frames[1].0, 1);
    assert_eq!(gunzip(&frames[1].1), br#"{"text":"item 1","big":"1"}"#);
    assert_eq!(
        frames.last().unwrap().0,
        2,
        "the end-stream message is not compressed"
    );

    let r = post_json_with(&s, "/t.Svc/Echo", &[("content-encoding", "br")], "x").await;
    r.expect(501);
    assert!(r.text().contains("gzip, identity"), "{}", r.text());
}

#[tokio::test]
async fn connect_timeout_ms_ends_the_call_with_deadline_exceeded() {
    let s = server();
    let start = std::time::Instant::now();
    let r = post_json_with(
        &s,
        "/t.Svc/Unary",
        &[("connect-timeout-ms", "200")],
        r#"{"name":"slow"}"#,
    )
    .await;
    connect_error(&r, 504, "deadline_exceeded");
    assert!(start.elapsed() < std::time::Duration::from_secs(2));

    let r = post_json_with(&s, "/t.Svc/Unary", &[("connect-timeout-ms", "soon")], "{}").await;
    r.expect(400);
}

#[tokio::test]
async fn get_requests_for_unary_methods() {
    let s = server();
    let path = "/t.Svc/Echo?encoding=json&message=%7B%22name%22%3A%22got%22%7D&connect=v1";
    let echoed = get(s.addr, path).await.expect(200).json();
    assert_eq!(echoed, json!({"name": "got"}));

    let message = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(proto_bytes(
        &s,
        "t.Req",
        json!({"name": "b64"}),
    ));
    let r = get(
        s.addr,
        &format!("/t.Svc/Echo?encoding=proto&base64=1&message={message}"),
    )
    .await;
    r.expect(200);
    assert_eq!(proto_json(&s, "t.Req", &r.body), json!({"name": "b64"}));
}

#[tokio::test]
async fn reflection_and_health_answer_over_connect_too() {
    let s = server();
    // grpc.health.v1.Health/Check, unary: `{}` in, `status: SERVING` (field 1 = 1) out.
    let r = post_ok(&s, "/grpc.health.v1.Health/Check", "application/proto", "").await;
    assert_eq!(r.body, vec![0x08, 0x01]);

    // Reflection is a bidi stream: `list_services` (field 7, empty string) in one envelope.
    let r = post_ok(
        &s,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "application/connect+proto",
        envelope(0, &[0x3a, 0x00]),
    )
    .await;
    let frames = envelopes(&r.body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, 0);
    let listing = String::from_utf8_lossy(&frames[0].1);
    assert!(listing.contains("t.Svc"), "{listing}");
    assert_eq!(frames[1], (0x02, b"{}".to_vec()));

    // A watch that outlives connect-timeout-ms ends with deadline_exceeded.
    let r = post(
        &s,
        "/grpc.health.v1.Health/Watch",
        &[
            ("content-type", "application/connect+proto"),
            ("connect-timeout-ms", "300"),
        ],
        envelope(0, &[]),
    )
    .await;
    let frames = envelopes(&r.expect(200).body);
    let (flags, end) = frames.last().unwrap();
    assert_eq!(*flags, 0x02);
    let end = end_stream(end);
    assert_eq!(end["error"]["code"], "deadline_exceeded");

    // JSON would need these services' descriptors.
    let r = post_json(s.addr, "/grpc.health.v1.Health/Check", "{}").await;
    r.expect(415);
}

/// Regression: a unary-framed Connect call to Health/Watch (a never-ending server stream) used to be
/// bridged as unary and waited for the stream's end forever. It is refused like any streaming method.
#[tokio::test]
async fn unary_framing_on_a_built_in_stream_is_refused_not_left_hanging() {
    let s = server();
    let call = post_as(&s, "/grpc.health.v1.Health/Watch", "application/proto", "");
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), call)
        .await
        .expect("answered, not left hanging");
    r.expect(415);
    assert!(r.text().contains("streaming method"), "{}", r.text());
}

/// Regression: `accept-encoding` weights were matched as text, so only a literal `q=0` refused gzip.
#[tokio::test]
async fn a_zero_weight_in_accept_encoding_refuses_gzip_whatever_its_spelling() {
    let s = server();
    for accept in ["gzip;q=0.0", "gzip; q=0.000", "gzip;Q=0, identity"] {
        let r = post_json_with(
            &s,
            "/t.Svc/Echo",
            &[("content-encoding", "gzip"), ("accept-encoding", accept)],
            gzip(br#"{"name":"plain"}"#),
        )
        .await;
        r.expect(200);
        assert_eq!(r.header("content-encoding"), None, "{accept}");
        assert_eq!(r.json()["name"], "plain", "{accept}");
    }
    let r = post_json_with(
        &s,
        "/t.Svc/Echo",
        &[("accept-encoding", "gzip;q=0.5")],
        r#"{"name":"zipped"}"#,
    )
    .await;
    r.expect(200);
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
}

/// Regression: `connect-timeout-ms: 0` was taken (an instant deadline); Connect asks for a positive
/// integer.
#[tokio::test]
async fn a_zero_connect_timeout_is_invalid() {
    let s = server();
    let r = post_json_with(&s, "/t.Svc/Echo", &[("connect-timeout-ms", "0")], "{}").await;
    connect_error(&r, 400, "invalid_argument");
}
