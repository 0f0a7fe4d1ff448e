//! The four RPC shapes, answered as they go; `google.protobuf.Empty`; gzip on the wire.

mod common;

use std::time::Duration;

use common::*;
use prost_reflect::ReflectMessage as _;

const HANDLERS: &str = r#"
[[rule]]
method = "t.Svc/Unary"
reply = { text = "hello {{request.name}}", num = 7 }

[[rule]]
method = "t.Svc/Echo"
reply = "{{request}}"

[[rule]]
method = "t.Svc/ServerStream"
stream.repeat = 3
stream.message = { text = "{{request.name}}", num = "{{index}}" }

[[rule]]
method = "t.Svc/ClientStream"
reply = { text = "got {{count}}", num = "{{count}}" }

[[rule]]
method = "t.Svc/Bidi"
reply = { text = "re: {{request.name}}", num = "{{count}}" }

[[rule]]
method = "t.Svc/Ping"
reply = {}
"#;

fn server() -> Server {
    Server::start(&t_proto(), &[("t.toml", HANDLERS)])
}

#[tokio::test]
async fn unary_answers_one_message() {
    let s = server();
    let c = s.client().await;
    let out = c.unary("t.Svc/Unary", json!({ "name": "ann" })).await;
    assert_eq!(out.single(), &json!({ "text": "hello ann", "num": 7 }));
}

#[tokio::test]
async fn server_stream_sends_every_message() {
    let s = server();
    let c = s.client().await;
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "x" }))
        .await;
    out.ok();
    assert_eq!(
        out.messages,
        vec![
            json!({ "text": "x" }),
            json!({ "text": "x", "num": 1 }),
            json!({ "text": "x", "num": 2 })
        ]
    );
}

#[tokio::test]
async fn client_stream_answers_after_the_last_message() {
    let s = server();
    let c = s.client().await;
    let reqs = vec![
        json!({ "name": "a" }),
        json!({ "name": "b" }),
        json!({ "name": "c" }),
    ];
    let out = c.client_stream("t.Svc/ClientStream", reqs).await;
    assert_eq!(out.single(), &json!({ "text": "got 3", "num": 3 }));
}

#[tokio::test]
async fn bidi_answers_every_message() {
    let s = server();
    let c = s.client().await;
    let out = c
        .bidi(
            "t.Svc/Bidi",
            vec![json!({ "name": "a" }), json!({ "name": "b" })],
        )
        .await;
    out.ok();
    assert_eq!(
        out.messages,
        vec![
            json!({ "text": "re: a", "num": 1 }),
            json!({ "text": "re: b", "num": 2 })
        ]
    );
}

/// Send one, read its reply, only then send the next: a server that buffers the stream (or waits for the
/// client to finish) makes `recv_within` time out instead of hanging the test.
#[tokio::test]
async fn bidi_answers_the_first_message_before_the_second_is_sent() {
    let s = server();
    let c = s.client().await;
    let mut call = c.session("t.Svc/Bidi");
    call.send(json!({ "name": "one" }));
    let first = call.recv_within(Duration::from_secs(3)).await;
    assert_eq!(
        first,
        Ok(Some(json!({ "text": "re: one", "num": 1 }))),
        "first reply before the second request"
    );
    call.send(json!({ "name": "two" }));
    let second = call.recv_within(Duration::from_secs(3)).await;
    assert_eq!(second, Ok(Some(json!({ "text": "re: two", "num": 2 }))));
    let (rest, _, status) = call.finish().await;
    assert!(rest.is_empty(), "no more replies: {rest:?}");
    assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");
}

#[tokio::test]
async fn server_stream_with_delay_delivers_the_first_message_well_before_the_last() {
    let s = Server::start(
        &t_proto(),
        &[(
            "t.toml",
            r#"
[[rule]]
method = "t.Svc/ServerStream"
stream.repeat = 5
stream.delay = "100ms"
stream.message = { num = "{{index}}" }
"#,
        )],
    );
    let c = s.client().await;
    let out = c.server_stream("t.Svc/ServerStream", json!({})).await;
    out.ok();
    assert_eq!(out.messages.len(), 5);
    let (first, last) = (out.arrivals[0], out.arrivals[4]);
    assert!(
        first >= Duration::from_millis(90),
        "the delay comes before each message, first came at {first:?}"
    );
    assert!(
        last.saturating_sub(first) >= Duration::from_millis(300),
        "messages must be sent as they are due, not collected: first at {first:?}, last at {last:?}"
    );
    for pair in out.arrivals.windows(2) {
        assert!(
            pair[1] >= pair[0] + Duration::from_millis(60),
            "arrivals too close: {:?}",
            out.arrivals
        );
    }
}

#[tokio::test]
async fn empty_request_and_empty_reply() {
    let s = server();
    let c = s.client().await;
    let out = c.unary("t.Svc/Ping", json!({})).await;
    assert_eq!(out.single(), &json!({}));
    assert_eq!(out.raw[0].descriptor().full_name(), "google.protobuf.Empty");
}

#[tokio::test]
async fn gzip_request_and_gzip_response() {
    let s = server();
    let c = s.client().await.gzip();
    let tags: Vec<String> = (0..200).map(|i| format!("tag number {i}")).collect();
    let req = json!({ "name": "zip", "num": 5, "tags": tags });
    let out = c.unary("t.Svc/Echo", req.clone()).await;
    assert_eq!(out.single(), &req);
    assert_eq!(
        out.header("grpc-encoding").as_deref(),
        Some("gzip"),
        "response headers: {:?}",
        out.headers
    );
}
