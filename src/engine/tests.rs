//! The same rule answered from canonical bytes (emitters) and the general way (non-canonical bytes
//! of the same message, and the decoded message a JSON protocol hands in) gives the same events:
//! headers, message bytes, end with status and trailers.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::{answer, Call, Event, Message, Method, Reply, Request, Requests};

const PROTO: &str = r#"
    syntax = "proto3";
    package e;
    message Req { string name = 1; int32 n = 2; }
    message Rep { string text = 1; int32 n = 2; uint64 index = 3; }
    service S {
        rpc Unary(Req) returns (Rep);
        rpc Stream(Req) returns (stream Rep);
        rpc Fail(Req) returns (Rep);
        rpc StreamThenFail(Req) returns (stream Rep);
    }
"#;

const RULES: &str = r##"
[[rule]]
method = "e.S/Unary"
headers = { x-who = "{{metadata.x-user}}" }
trailers = { x-done = "yes {{metadata.x-user}}" }
reply = { text = "hello {{request.name}}", n = "{{request.n}}" }

[[rule]]
method = "e.S/Stream"
headers = { x-who = "{{metadata.x-user}}" }
trailers = { x-done = "all" }
stream.repeat = 3
stream.message = { text = "#{{index}} {{request.name}}", n = "{{request.n}}", index = "{{index}}" }

[[rule]]
method = "e.S/Fail"
when.request.n = 1
headers = { x-who = "{{metadata.x-user}}" }
trailers = { x-why = "n is {{request.n}}" }
error = { code = "FAILED_PRECONDITION", message = "no {{request.name}}" }

[[rule]]
method = "e.S/Fail"
reply = { text = "fine" }

[[rule]]
method = "e.S/StreamThenFail"
trailers = { x-done = "then" }
stream.messages = [{ text = "one {{request.name}}" }, { text = "two" }]
error = { code = "ABORTED", message = "after two" }
"##;

fn methods() -> &'static Vec<Arc<Method>> {
    static METHODS: OnceLock<Vec<Arc<Method>>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let pool = crate::protos::compile_texts(&[("e.proto", PROTO)]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e.toml"), RULES).unwrap();
        let engine = crate::script::ScriptEngine::new(Default::default());
        let mut handlers =
            crate::rules::load(dir.path(), &pool, &engine).unwrap_or_else(|e| panic!("rules: {e}"));
        let service = pool.get_service_by_name("e.S").unwrap();
        let handlers_dir: Arc<std::path::Path> = Arc::from(dir.path());
        service
            .methods()
            .map(|desc| {
                let name = format!("e.S/{}", desc.name());
                let rules = handlers.methods.remove(&name);
                Arc::new(Method::new(desc, name, rules, handlers_dir.clone()))
            })
            .collect()
    })
}

fn method(name: &str) -> Arc<Method> {
    let method = methods()
        .iter()
        .find(|m| m.name == format!("e.S/{name}"))
        .unwrap()
        .clone();
    assert!(method.direct.is_some(), "{name}: its rules compile");
    method
}

fn pool() -> DescriptorPool {
    methods()[0].desc.parent_pool().clone()
}

fn request(name: &str, n: i32) -> DynamicMessage {
    let mut m = DynamicMessage::new(pool().get_message_by_name("e.Req").unwrap());
    m.set_field_by_name("name", Value::String(name.into()));
    m.set_field_by_name("n", Value::I32(n));
    m
}

/// What a call produced, in a form that compares: the reply's kind, headers, each message's bytes
/// and whether the engine wrote it itself, the end.
#[derive(Debug, PartialEq)]
struct Seen {
    kind: &'static str,
    headers: http::HeaderMap,
    messages: Vec<Bytes>,
    end: (Code, String, Bytes, http::HeaderMap),
}

/// Answers `request` of `method`, returning what was seen and how many messages came as bytes
/// written by emitters (`Encoded`/`Reserved`) rather than `Decoded`.
async fn call(method: &Arc<Method>, request: Request, reserve: usize) -> (Seen, usize) {
    let mut metadata = MetadataMap::new();
    metadata.insert("x-user", "ada".parse().unwrap());
    let call = Call {
        method: method.clone(),
        metadata,
        requests: Requests::One(request),
        limit: 1 << 20,
        reserve,
        watch: None,
    };
    let reply = answer(call).await;
    let kind = match &reply {
        Reply::Refused(_) => "refused",
        Reply::Ready(_) => "ready",
        Reply::Stream(_) => "stream",
    };
    let streamed = match reply.into_stream() {
        Ok(streamed) => streamed,
        Err(end) => {
            let seen = Seen {
                kind,
                headers: http::HeaderMap::new(),
                messages: vec![],
                end: (
                    end.code,
                    end.message,
                    end.details,
                    end.trailers.into_headers(),
                ),
            };
            return (seen, 0);
        }
    };
    let (mut messages, mut written, mut end) = (vec![], 0, None);
    let mut events = streamed.events;
    while let Some(event) = events.next().await {
        match event {
            Event::Message(m) => {
                written += usize::from(!matches!(m, Message::Decoded(_)));
                messages.push(m.into_bytes(1 << 20).unwrap());
            }
            Event::End(e) => {
                assert!(end.is_none(), "one end");
                end = Some(*e);
            }
        }
    }
    let end = end.expect("the last event is the end");
    let seen = Seen {
        kind,
        headers: streamed.headers.into_headers(),
        messages,
        end: (
            end.code,
            end.message,
            end.details,
            end.trailers.into_headers(),
        ),
    };
    (seen, written)
}

/// The three ways in give equal events; the canonical one's messages are written by emitters
/// (`fast` of them), the others' rendered.
async fn same_three_ways(name: &str, message: DynamicMessage, reserve: usize, fast: usize) -> Seen {
    let method = method(name);
    let canonical = Bytes::from(message.encode_to_vec());
    // The same message with a default written out (`n = 0` is never written canonically) and the
    // last occurrence of `n` winning: decodes equal, is not canonical.
    let mut other = vec![0x10, 0x00];
    other.extend_from_slice(&canonical);
    let other = Bytes::from(other);
    let direct = method.direct.as_ref().unwrap();
    assert!(direct.is_canonical(&canonical));
    assert!(!direct.is_canonical(&other));
    assert_eq!(
        DynamicMessage::decode(method.desc.input(), other.clone()).unwrap(),
        message
    );

    let (by_bytes, written) = call(&method, Request::Encoded(canonical), reserve).await;
    assert_eq!(written, fast, "{name}: messages written from the bytes");
    let (general, written) = call(&method, Request::Encoded(other), reserve).await;
    assert_eq!(written, 0, "{name}: non-canonical bytes go the general way");
    assert_eq!(
        by_bytes, general,
        "{name}: canonical vs non-canonical bytes"
    );
    let (decoded, _) = call(&method, Request::Decoded(message), reserve).await;
    assert_eq!(by_bytes, decoded, "{name}: bytes vs decoded");
    by_bytes
}

#[tokio::test]
async fn unary_answers_equal_from_bytes_and_decoded() {
    let seen = same_three_ways("Unary", request("bo", 7), 5, 1).await;
    assert_eq!(seen.kind, "ready");
    assert_eq!(seen.headers["x-who"], "ada");
    assert_eq!(seen.end.0, Code::Ok);
    assert_eq!(seen.end.3["x-done"], "yes ada");
    let rep = DynamicMessage::decode(
        pool().get_message_by_name("e.Rep").unwrap(),
        seen.messages[0].clone(),
    )
    .unwrap();
    assert_eq!(
        rep.get_field_by_name("text").unwrap().as_str(),
        Some("hello bo")
    );
}

#[tokio::test]
async fn server_streams_equal_from_bytes_and_decoded() {
    let seen = same_three_ways("Stream", request("bo", 7), 0, 3).await;
    assert_eq!(seen.kind, "stream");
    assert_eq!(seen.messages.len(), 3);
    assert_eq!(seen.headers["x-who"], "ada");
    assert_eq!(seen.end.0, Code::Ok);
    assert_eq!(seen.end.3["x-done"], "all");
}

#[tokio::test]
async fn errors_with_trailers_equal_from_bytes_and_decoded() {
    let seen = same_three_ways("Fail", request("bo", 1), 5, 0).await;
    assert_eq!(seen.kind, "refused");
    assert_eq!(seen.end.0, Code::FailedPrecondition);
    assert_eq!(seen.end.1, "no bo");
    // Answered before any header: the rule's headers and trailers travel with the status.
    assert_eq!(seen.end.3["x-who"], "ada");
    assert_eq!(seen.end.3["x-why"], "n is 1");
    // The other rule of the same method is written from the bytes.
    let seen = same_three_ways("Fail", request("bo", 2), 5, 1).await;
    assert_eq!(seen.end.0, Code::Ok);
}

#[tokio::test]
async fn a_stream_ending_in_an_error_is_equal_from_bytes_and_decoded() {
    let seen = same_three_ways("StreamThenFail", request("bo", 3), 0, 2).await;
    assert_eq!(seen.messages.len(), 2);
    assert_eq!(seen.end.0, Code::Aborted);
    assert_eq!(seen.end.1, "after two");
}

#[tokio::test]
async fn a_method_without_rules_is_unimplemented_naming_the_file() {
    let pool = crate::protos::compile_texts(&[("e.proto", PROTO)]);
    let desc = pool.get_service_by_name("e.S").unwrap().methods().next();
    let method = Method::new(
        desc.unwrap(),
        "e.S/Unary".into(),
        None,
        Arc::from(std::path::Path::new("handlers")),
    );
    let (seen, _) = call(&Arc::new(method), Request::Decoded(request("x", 1)), 0).await;
    assert_eq!(seen.kind, "refused");
    assert_eq!(seen.end.0, Code::Unimplemented);
    assert!(seen.end.1.contains("handlers/e.toml"), "{}", seen.end.1);
}
