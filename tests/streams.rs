//! `stream` answers (messages, repeat, for_each), client-stream matching, bidi per-message answers.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;

const RULES: &str = r#"
[[rule]]
method = "t.Svc/ServerStream"
when.request.name = "list"
stream.messages = [{ text = "one" }, { text = "two {{request.num}}" }, { text = "three" }]

[[rule]]
method = "t.Svc/ServerStream"
when.request.name = "each"
stream.for_each = "request.items"
stream.message = { inner = "{{item}}", num = "{{index}}", text = "{{item.label}} of {{request.name}}" }

[[rule]]
method = "t.Svc/ServerStream"
when.request.name = "none"
stream.repeat = 0
stream.message = { text = "never" }

[[rule]]
method = "t.Svc/ServerStream"
when.request.name = "one"
reply = { text = "just one" }

[[rule]]
method = "t.Svc/ClientStream"
when.request.name = "end"
reply = { text = "ended with end after {{count}}" }

[[rule]]
method = "t.Svc/ClientStream"
when.request.name = "refuse"
error = { code = "FAILED_PRECONDITION", message = "refused after {{count}}" }

[[rule]]
method = "t.Svc/ClientStream"
reply = { text = "other", num = "{{count}}" }

[[rule]]
method = "t.Svc/Bidi"
when.request.name = "stop"
error = { code = "ABORTED", message = "stopped at {{count}}" }

[[rule]]
method = "t.Svc/Bidi"
when.request.name = "many"
stream.messages = [{ text = "many 1" }, { text = "many 2" }]

[[rule]]
method = "t.Svc/Bidi"
reply = { text = "{{request.name}}", num = "{{count}}" }
"#;

async fn setup() -> (Server, Client) {
    let s = Server::start(&t_proto(), &[("t.toml", RULES)]);
    let c = s.client().await;
    (s, c)
}

#[tokio::test]
async fn server_stream_fixed_messages() {
    let (_s, c) = setup().await;
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "list", "num": 2 }))
        .await;
    out.ok();
    assert_eq!(
        out.messages,
        vec![
            json!({ "text": "one" }),
            json!({ "text": "two 2" }),
            json!({ "text": "three" })
        ]
    );
}

#[tokio::test]
async fn server_stream_for_each_element() {
    let (_s, c) = setup().await;
    let req =
        json!({ "name": "each", "items": [{ "id": 1, "label": "a" }, { "id": 2, "label": "b" }] });
    let out = c.server_stream("t.Svc/ServerStream", req).await;
    out.ok();
    assert_eq!(
        out.messages,
        vec![
            json!({ "inner": { "id": 1, "label": "a" }, "text": "a of each" }),
            json!({ "inner": { "id": 2, "label": "b" }, "num": 1, "text": "b of each" }),
        ]
    );
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "each" }))
        .await;
    out.ok();
    assert!(
        out.messages.is_empty(),
        "an empty list streams nothing: {:?}",
        out.messages
    );
}

#[tokio::test]
async fn server_stream_repeat_zero_and_reply_on_a_stream() {
    let (_s, c) = setup().await;
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "none" }))
        .await;
    out.ok();
    assert!(out.messages.is_empty(), "{:?}", out.messages);
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "one" }))
        .await;
    assert_eq!(out.single(), &json!({ "text": "just one" }));
}

#[tokio::test]
async fn client_stream_conditions_apply_to_the_last_message() {
    let (_s, c) = setup().await;
    let out = c
        .client_stream(
            "t.Svc/ClientStream",
            vec![json!({ "name": "x" }), json!({ "name": "end" })],
        )
        .await;
    assert_eq!(out.single(), &json!({ "text": "ended with end after 2" }));
    let out = c
        .client_stream(
            "t.Svc/ClientStream",
            vec![json!({ "name": "end" }), json!({ "name": "x" })],
        )
        .await;
    assert_eq!(out.single(), &json!({ "text": "other", "num": 2 }));
    let out = c
        .client_stream(
            "t.Svc/ClientStream",
            vec![json!({}), json!({ "name": "refuse" })],
        )
        .await;
    assert_eq!(out.err(Code::FailedPrecondition), "refused after 2");
}

#[tokio::test]
async fn client_stream_with_no_message() {
    let (_s, c) = setup().await;
    let out = c.client_stream("t.Svc/ClientStream", vec![]).await;
    assert_eq!(
        out.single(),
        &json!({ "text": "other" }),
        "count is 0, the default rule answers"
    );
}

/// Each incoming message is matched on its own and answered at once: reply, several messages, or an
/// error that ends the call.
#[tokio::test]
async fn bidi_matches_each_message() {
    let (_s, c) = setup().await;
    let mut call = c.session("t.Svc/Bidi");
    call.send(json!({ "name": "a" }));
    assert_eq!(call.recv().await, json!({ "text": "a", "num": 1 }));
    call.send(json!({ "name": "many" }));
    assert_eq!(call.recv().await, json!({ "text": "many 1" }));
    assert_eq!(call.recv().await, json!({ "text": "many 2" }));
    call.send(json!({ "name": "b" }));
    assert_eq!(call.recv().await, json!({ "text": "b", "num": 3 }));
    call.send(json!({ "name": "stop" }));
    let end = call.recv_within(Duration::from_secs(5)).await;
    assert_eq!(end, Ok(None), "the error ends the call");
    let (_, status) = call.end.as_ref().unwrap();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "stopped at 4");
}

#[tokio::test]
async fn bidi_with_no_message_ends_ok() {
    let (_s, c) = setup().await;
    let out = c.bidi("t.Svc/Bidi", vec![]).await;
    out.ok();
    assert!(out.messages.is_empty());
}

#[tokio::test]
async fn bidi_first_message_error_ends_the_call() {
    let (_s, c) = setup().await;
    let out = c
        .bidi(
            "t.Svc/Bidi",
            vec![json!({ "name": "stop" }), json!({ "name": "after" })],
        )
        .await;
    assert_eq!(out.err(Code::Aborted), "stopped at 1");
    assert!(out.messages.is_empty(), "{:?}", out.messages);
}

/// Regression: tonic applies `grpc-timeout` only until the response headers, so a slow server stream
/// used to run past its deadline (here 50 × 100 ms). It ends with DEADLINE_EXCEEDED at the deadline.
#[tokio::test]
async fn a_server_stream_ends_at_its_deadline() {
    let slow = "[[rule]]\nmethod = \"t.Svc/ServerStream\"\nstream.repeat = 50\nstream.message = { text = \"tick {{index}}\" }\nstream.delay = \"100ms\"\n";
    let server = Server::start(&t_proto(), &[("slow.toml", slow)]);
    let client = server.client().await;
    let method = client.method("t.Svc/ServerStream");
    let request = client.message(&method.input(), serde_json::json!({"name": "x"}));
    let out = client
        .call_stream(
            "/t.Svc/ServerStream",
            method.output(),
            futures::stream::iter([request]),
            &[("grpc-timeout", "450m")],
        )
        .await;
    assert_eq!(out.code(), Code::DeadlineExceeded, "{:?}", out.status);
    assert!(
        (2..=5).contains(&out.messages.len()),
        "about 4 ticks before the deadline, got {}",
        out.messages.len()
    );
    assert!(
        out.elapsed < Duration::from_secs(2),
        "ended after {:?}",
        out.elapsed
    );
}
