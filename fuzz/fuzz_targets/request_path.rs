//! (a) The request path: bytes → decode as the method's input → the method's rules (`engine::answer`) →
//! every reply message encoded, over the seed protos and handlers (`../protos`, `../handlers`).
//!
//! Input: byte 0 picks the method (modulo the method count, methods sorted by path), byte 1 holds flags
//! (bit 0: a client stream ends with a transport error instead of a clean end), the rest is the
//! request body. For client and bidi streams the body is split into messages: a length byte, then
//! that many bytes, again and again (a length past the end takes the rest). A message that does not
//! decode becomes an `INVALID_ARGUMENT` item of the incoming stream, as tonic's streaming decoder gives
//! it; for a unary or server-streaming method it ends the call before the handler, as in the server.
//!
//! Properties: nothing panics; the call and its reply stream end within `CALL_LIMIT`; decoding is
//! stable (encode ∘ decode is idempotent on the request and on every reply); every reply is of the
//! method's output type.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use tonic::metadata::MetadataMap;
use tonic::Status;

use protodrop::fuzzing::script::ScriptLimits;
use protodrop::fuzzing::state::{Method, Sources, State};
use protodrop::fuzzing::engine::{self, Event, Message as Reply, Request, Requests};

/// Longest one call (answer and whole reply stream) may take before it counts as a hang.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Most messages one input sends on a client stream.
const MAX_MESSAGES: usize = 64;
/// The server's default `--max-message-size`: replies are checked against it while they are built.
const MAX_MESSAGE_SIZE: usize = 4 << 20;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// Every served method, sorted by path so that byte 0 means the same method on every run.
    methods: Vec<Arc<Method>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let sources = Sources {
            protos: root.join("protos"),
            handlers: root.join("handlers"),
            include_roots: vec![],
            exclude: vec![],
            descriptor_sets: vec![],
            script_limits: ScriptLimits {
                // Well below CALL_LIMIT, so a slow script is the server's DEADLINE_EXCEEDED, not a hang.
                max_duration: Duration::from_secs(2),
                ..ScriptLimits::default()
            },
            reflection: false,
            reads: Default::default(),
        };
        let state = State::build(&sources).unwrap_or_else(|d| panic!("seed state: {d}"));
        let mut methods: Vec<Arc<Method>> = state.methods.values().cloned().collect();
        methods.sort_by(|a, b| a.name.cmp(&b.name));
        assert!(!methods.is_empty(), "no methods in the seed protos");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Fixture { runtime, methods }
    })
}

/// As the server decodes one message body (`codec::decode_request`, without its size check).
fn decode(desc: &MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, Status> {
    let mut message = DynamicMessage::new(desc.clone());
    message.merge(bytes).map_err(|e| {
        Status::invalid_argument(format!("request is not a valid {}: {e}", desc.full_name()))
    })?;
    Ok(message)
}

/// Encoding a decoded message and decoding it again gives the same message (compared as bytes:
/// float NaNs make `==` on values useless, and the seed protos have no map fields whose order
/// could differ).
fn assert_stable(message: &DynamicMessage) {
    let once = message.encode_to_vec();
    let again = decode(&message.descriptor(), &once).unwrap_or_else(|s| {
        panic!(
            "re-decoding an encoded {}: {s}",
            message.descriptor().full_name()
        )
    });
    assert_eq!(
        once,
        again.encode_to_vec(),
        "encode/decode of {} is not stable",
        message.descriptor().full_name()
    );
}

/// The client stream's message bodies: a length byte, then the body, repeatedly.
fn split(mut body: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while let Some((&len, rest)) = body.split_first() {
        if parts.len() == MAX_MESSAGES {
            break;
        }
        let len = usize::from(len).min(rest.len());
        parts.push(&rest[..len]);
        body = &rest[len..];
    }
    parts
}

fuzz_target!(|data: &[u8]| {
    let [selector, flags, body @ ..] = data else {
        return;
    };
    let fx = fixture();
    let method = fx.methods[usize::from(*selector) % fx.methods.len()].clone();
    let input = method.desc.input();
    let output = method.desc.output();

    let items: Vec<Result<DynamicMessage, Status>> = if method.desc.is_client_streaming() {
        let mut items: Vec<_> = split(body).into_iter().map(|b| decode(&input, b)).collect();
        if flags & 1 == 1 {
            items.push(Err(Status::unavailable("fuzz: the client's stream broke")));
        }
        items
    } else {
        match decode(&input, body) {
            Ok(m) => vec![Ok(m)],
            // tonic answers INVALID_ARGUMENT before the handler runs.
            Err(_) => return,
        }
    };
    for message in items.iter().flatten() {
        assert_stable(message);
    }
    let items = items.into_iter().map(|item| item.map(Request::Decoded));
    let call = engine::Call {
        method,
        metadata: MetadataMap::new(),
        requests: Requests::Stream(Box::pin(futures::stream::iter(items))),
        limit: MAX_MESSAGE_SIZE,
        reserve: 0,
        watch: None,
    };
    let call = async move {
        let Ok(streamed) = engine::answer(call).await.into_stream() else {
            return;
        };
        let mut events = streamed.events;
        while let Some(event) = events.next().await {
            match event {
                Event::Message(reply) => {
                    let reply = match reply {
                        Reply::Decoded(m) => m,
                        encoded => encoded.into_decoded(&output).expect("a reply that decodes"),
                    };
                    assert_eq!(reply.descriptor(), output, "a reply of the wrong type");
                    assert_stable(&reply);
                }
                // The end: its status and trailers.
                Event::End(_) => break,
            }
        }
    };
    fx.runtime
        .block_on(async { tokio::time::timeout(CALL_LIMIT, call).await })
        .unwrap_or_else(|_| panic!("the call did not end within {CALL_LIMIT:?}"));
});
