//! The one gRPC service behind every `/package.Service/Method` path: looks the method up in the
//! current state; a unary call is answered by [`unary`], the streaming shapes by tonic's gRPC
//! machinery with a codec for that method's types.

mod direct;
mod unary;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use http::HeaderName;
use prost_reflect::MessageDescriptor;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceExt as _;

use crate::codec::{decode_request, encode_reply, ServerCodec};
use crate::front::{connect, health, transcode, HttpService, Protocol};
use crate::registry::{Method, Registry, State};
use crate::respond::{respond, Incoming, ReplyStream};

// Names looked up on every call: a `HeaderName` is hashed as it is, a `&str` parsed first.
static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
static GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Settings of the gRPC layer.
#[derive(Clone, Copy, Debug)]
pub struct ServiceSettings {
    /// Largest message accepted or sent, in bytes (`--max-message-size`).
    pub max_message_size: usize,
}

type Body = axum::body::Body;

/// An HTTP answer, when it is ready: what the service, the web front and the server hand on.
pub type ResponseFuture = BoxFuture<'static, Result<http::Response<tonic::body::Body>, Infallible>>;

/// Serves every method of the registry's current state.
#[derive(Clone)]
pub struct DynamicService {
    registry: Arc<Registry>,
    settings: ServiceSettings,
}

impl DynamicService {
    pub fn new(registry: Arc<Registry>, settings: ServiceSettings) -> Self {
        Self { registry, settings }
    }

    /// The answer to one request (`&self`: the server calls one shared service, not a clone).
    pub fn answer(&self, request: http::Request<tonic::body::Body>) -> ResponseFuture {
        // The fronts read bodies as axum's (its `into_data_stream` among them).
        let request = request.map(Body::new);
        let state = self.registry.current();
        match Protocol::of(&request) {
            Protocol::Grpc => {}
            Protocol::Connect => {
                // Reflection and health are gRPC services; Connect reaches them through a bridge.
                let builtin = front_for(&self.registry, &state, request.uri().path());
                let serve = connect::serve(state, request, self.settings, builtin);
                return Box::pin(serve.map(Ok));
            }
            Protocol::Http => {
                return Box::pin(transcode::serve(state, request, self.settings).map(Ok));
            }
        }
        let path = request.uri().path();
        // The user's methods first (one lookup on the hot path), then the built-in services.
        let Some(method) = state.methods.get(path).cloned() else {
            if let Some(front) = front_for(&self.registry, &state, path) {
                return Box::pin(front.oneshot(request));
            }
            let status = unknown_path(&state, path);
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let deadline = grpc_timeout(request.headers()).map(|t| tokio::time::Instant::now() + t);
        if !method.desc.is_client_streaming() && !method.desc.is_server_streaming() {
            let answer = unary::serve(state, method, request, self.settings);
            return Box::pin(before_deadline(answer, deadline).map(Ok));
        }
        let limit = self.settings.max_message_size;
        let mut grpc = Grpc::new(ServerCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        // As for unary calls: gzip replies only to a client that sent gzip.
        if request
            .headers()
            .get(&GRPC_ENCODING)
            .is_some_and(|e| e == "gzip")
        {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        let call = Call {
            state,
            method,
            max_reply_size: limit,
            deadline,
        };
        let answer = async move { grpc.streaming(call, request).await };
        Box::pin(before_deadline(answer, deadline).map(Ok))
    }
}

/// For tonic-web, which wraps the service.
impl tower::Service<http::Request<tonic::body::Body>> for DynamicService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.answer(request)
    }
}

/// An answer that is not ready (its headers, for a stream) when the deadline passes is
/// DEADLINE_EXCEEDED, as gRPC's status table says.
async fn before_deadline(
    answer: impl Future<Output = http::Response<tonic::body::Body>>,
    deadline: Option<tokio::time::Instant>,
) -> http::Response<tonic::body::Body> {
    let Some(deadline) = deadline else {
        return answer.await;
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(response) => response,
        Err(_) => {
            Status::deadline_exceeded("deadline exceeded before the reply started").into_http()
        }
    }
}

/// Reflection and health, when `path` is theirs. The user's protos win if they define these services.
fn front_for(registry: &Registry, state: &State, path: &str) -> Option<HttpService> {
    if state.methods.contains_key(path) {
        return None;
    }
    if path.starts_with(health::PREFIX) {
        return Some(registry.health.service.clone());
    }
    state.reflection()?.route(path).cloned()
}

/// `UNIMPLEMENTED`, naming what was asked for and what is there.
pub(crate) fn unknown_path(state: &State, path: &str) -> Status {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Status::unimplemented(format!(
            "'{path}' is not a gRPC method path (/package.Service/Method)"
        ));
    };
    match state.protos.pool.get_service_by_name(service) {
        Some(s) => {
            let names: Vec<String> = s.methods().map(|m| m.name().to_string()).collect();
            Status::unimplemented(format!(
                "service {service} has no method '{method}' (methods: {})",
                names.join(", ")
            ))
        }
        None => {
            let names: Vec<String> = state
                .protos
                .pool
                .services()
                .map(|s| s.full_name().to_string())
                .collect();
            Status::unimplemented(format!(
                "unknown service '{service}' (services: {})",
                names.join(", ")
            ))
        }
    }
}

/// One call, bound to the state it started with.
struct Call {
    state: Arc<State>,
    method: Arc<Method>,
    max_reply_size: usize,
    deadline: Option<tokio::time::Instant>,
}

/// Reply messages, encoded as they are produced.
type EncodedStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

impl StreamingService<Bytes> for Call {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EncodedStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let limit = self.max_reply_size;
        let (metadata, _, streaming) = request.into_parts();
        let deadline = self.deadline;
        let (state, method) = (self.state.clone(), self.method.clone());
        Box::pin(async move {
            let response = if method.direct.is_some() {
                match direct::streaming(method.clone(), metadata, streaming, limit).await {
                    direct::Streamed::Answered(answer) => answer?,
                    // The general path, with the message already read put back in front.
                    direct::Streamed::General {
                        first,
                        rest,
                        metadata,
                    } => {
                        let input = method.desc.input();
                        let first = first.map(|bytes| decode_request(&input, bytes));
                        let incoming =
                            Box::pin(futures::stream::iter(first).chain(incoming(*rest, input)));
                        general(state, method, metadata, incoming, limit).await?
                    }
                }
            } else {
                let incoming = incoming(streaming, method.desc.input());
                general(state, method, metadata, incoming, limit).await?
            };
            Ok(response.map(|stream| match deadline {
                Some(deadline) => Box::pin(until_deadline(stream, deadline)) as EncodedStream,
                None => stream,
            }))
        })
    }
}

/// A call answered from its decoded messages by [`respond`], its replies encoded as they come.
async fn general(
    state: Arc<State>,
    method: Arc<Method>,
    metadata: tonic::metadata::MetadataMap,
    incoming: Incoming,
    limit: usize,
) -> Result<Response<EncodedStream>, Status> {
    let response = respond(state, method, metadata, incoming, limit).await?;
    Ok(response.map(|stream: ReplyStream| -> EncodedStream {
        Box::pin(stream.map(move |item| encode_reply(&item?, limit)))
    }))
}

/// The call's `grpc-timeout`, if it sent one (`1500m`, `2S`, …).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// [`before_deadline`] holds a call to its deadline until the response headers; a reply stream is
/// cut here when the deadline passes, which also drops (and so cancels) whatever produces it — a
/// delay, a script.
fn until_deadline<T: Send + 'static>(
    stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
    deadline: tokio::time::Instant,
) -> impl futures::Stream<Item = Result<T, Status>> + Send + 'static {
    async_stream::stream! {
        let mut stream = std::pin::pin!(stream);
        let expiry = tokio::time::sleep_until(deadline);
        let mut expiry = std::pin::pin!(expiry);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(item) => yield item,
                    None => break,
                },
                () = &mut expiry => {
                    yield Err(Status::deadline_exceeded("deadline exceeded while streaming the reply"));
                    break;
                }
            }
        }
    }
}

/// tonic's message stream as protocol-neutral `Incoming`, each message decoded as `input`.
fn incoming(streaming: Streaming<Bytes>, input: MessageDescriptor) -> Incoming {
    Box::pin(futures::stream::unfold(streaming, move |mut s| {
        let input = input.clone();
        async move {
            let item = s.message().await.map_err(size_status).transpose()?;
            Some((item.and_then(|bytes| decode_request(&input, bytes)), s))
        }
    }))
}

/// A message over `--max-message-size` is RESOURCE_EXHAUSTED, as gRPC implementations answer it
/// (tonic says OUT_OF_RANGE).
fn size_status(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        Status::resource_exhausted(format!("request {}", status.message()))
    } else {
        status
    }
}
