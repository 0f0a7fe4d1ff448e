//! The one gRPC service behind every `/package.Service/Method` path: looks the method up in the
//! current state; a unary call is answered by [`unary`], the streaming shapes by tonic's gRPC
//! machinery with a codec for that method's types.
//!
//! Two things end a call from outside: its `grpc-timeout` (DEADLINE_EXCEEDED) and the end of the
//! shutdown grace period (UNAVAILABLE "server shutting down", [`shutdown_status`]). An answer is
//! raced against them only once its first poll found it not ready, so that a call answered at once
//! never arms a timer or joins the shutdown token's waiters (a reply stream joins them once).

mod unary;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use http::HeaderName;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceExt as _;

use crate::codec::ServerCodec;
use crate::engine::{self, Method};
use crate::front::{connect, health, json, transcode, HttpService, Protocol};
use crate::registry::{Registry, State};

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
    /// Largest request header list, counted as HTTP/2 counts it (`--max-header-size`).
    pub max_header_list_size: usize,
}

type Body = axum::body::Body;

/// An HTTP answer, when it is ready: what the service, the web front and the server hand on.
pub type ResponseFuture = BoxFuture<'static, Result<http::Response<tonic::body::Body>, Infallible>>;

/// Serves every method of the registry's current state.
#[derive(Clone)]
pub struct DynamicService {
    registry: Arc<Registry>,
    settings: ServiceSettings,
    /// Cancelled when the shutdown grace period is over: gRPC calls still running then end with
    /// [`shutdown_status`]. `'static` so that a call borrows it: a clone per call would take the
    /// token's lock twice.
    cut: &'static CancellationToken,
}

/// How a gRPC call still running at the end of the shutdown grace period ends.
pub fn shutdown_status() -> Status {
    Status::unavailable("server shutting down")
}

impl DynamicService {
    pub fn new(
        registry: Arc<Registry>,
        settings: ServiceSettings,
        cut: &'static CancellationToken,
    ) -> Self {
        Self {
            registry,
            settings,
            cut,
        }
    }

    /// The answer to one request (`&self`: the server calls one shared service, not a clone).
    pub fn answer(&self, request: http::Request<tonic::body::Body>) -> ResponseFuture {
        // The fronts read bodies as axum's (its `into_data_stream` among them).
        let request = request.map(Body::new);
        let state = self.registry.current();
        let protocol = Protocol::of(&request);
        if let Some(status) = headers_too_large(&request, self.settings.max_header_list_size) {
            return Box::pin(std::future::ready(Ok(error_answer(protocol, &status))));
        }
        match protocol {
            Protocol::Grpc => {}
            Protocol::Connect => {
                // Reflection and health are gRPC services; Connect reaches them through a bridge.
                let builtin = front_for(&self.registry, &state, request.uri().path());
                let serve = connect::serve(state, request, self.settings, builtin, self.cut);
                let on_cut = || error_answer(Protocol::Connect, &shutdown_status());
                return Box::pin(unless_cut(serve, self.cut, on_cut));
            }
            Protocol::Http => {
                let serve = transcode::serve(state, request, self.settings);
                let on_cut = || error_answer(Protocol::Http, &shutdown_status());
                return Box::pin(unless_cut(serve, self.cut, on_cut));
            }
        }
        // Checked before any routing, as grpc-go does: a call that cannot be a gRPC call gets an HTTP
        // error status with a gRPC one in its headers.
        let deadline = match grpc_timeout(request.headers()) {
            Ok(timeout) => timeout.map(|t| tokio::time::Instant::now() + t),
            Err(status) => return early_abort(status, http::StatusCode::BAD_REQUEST),
        };
        if request.method() != http::Method::POST {
            let status = Status::internal(format!(
                "gRPC calls are POST requests, this one is {}",
                request.method()
            ));
            let mut response = status.into_http();
            *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            // HTTP's rule for a 405 (grpc-go sends none; it costs nothing here).
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return Box::pin(futures::future::ready(Ok(response)));
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
        if !method.desc.is_client_streaming() && !method.desc.is_server_streaming() {
            let answer = unary::serve(method, request, self.settings);
            return Box::pin(before_deadline(answer, deadline, self.cut));
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
            method,
            max_reply_size: limit,
            deadline,
            cut: self.cut,
        };
        let answer = async move { grpc.streaming(call, request).await };
        Box::pin(before_deadline(answer, deadline, self.cut))
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
/// DEADLINE_EXCEEDED, as gRPC's status table says; one not ready when `cut` is cancelled is
/// [`shutdown_status`].
fn before_deadline<F>(
    answer: F,
    deadline: Option<tokio::time::Instant>,
    cut: &'static CancellationToken,
) -> Bounded<F>
where
    F: Future<Output = http::Response<tonic::body::Body>>,
{
    Bounded {
        answer: Box::pin(answer),
        deadline,
        expiry: None,
        on_deadline: || {
            Status::deadline_exceeded("deadline exceeded before the reply started").into_http()
        },
        cut,
        cancelled: None,
        on_cut: || shutdown_status().into_http(),
    }
}

/// `answer`, or `on_cut()` if `cut` is cancelled before it is ready.
fn unless_cut<F: Future>(
    answer: F,
    cut: &'static CancellationToken,
    on_cut: fn() -> F::Output,
) -> Bounded<F> {
    Bounded {
        answer: Box::pin(answer),
        deadline: None,
        expiry: None,
        on_deadline: on_cut,
        cut,
        cancelled: None,
        on_cut,
    }
}

/// The future of [`before_deadline`] and [`unless_cut`], as an `Ok` for the service. An answer
/// ready at its first poll (most unary ones) passes straight through: the timer and the cut are
/// made and polled only once it waits. The answer is boxed on its own so that this wrapper (and the
/// service's box around it) stays small: an answer's state is large, and async wrappers around it
/// had copied it several times per call.
struct Bounded<F: Future> {
    answer: Pin<Box<F>>,
    deadline: Option<tokio::time::Instant>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    on_deadline: fn() -> F::Output,
    cut: &'static CancellationToken,
    /// Made on the first wait, so that an answer that never waits never joins the token's waiters.
    cancelled: Option<Pin<Box<tokio_util::sync::WaitForCancellationFuture<'static>>>>,
    on_cut: fn() -> F::Output,
}

impl<F: Future> Future for Bounded<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(answer) = this.answer.as_mut().poll(cx) {
            return Poll::Ready(Ok(answer));
        }
        let cut = this.cut;
        let cancelled = this
            .cancelled
            .get_or_insert_with(|| Box::pin(cut.cancelled()));
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok((this.on_cut)()));
        }
        if let Some(deadline) = this.deadline {
            let expiry = this
                .expiry
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok((this.on_deadline)()));
            }
        }
        Poll::Pending
    }
}

/// A status as an answer that ends the call, in the request's protocol: trailers-only gRPC,
/// Connect's error JSON, or HTTP/JSON's `google.rpc.Status`. The status has no details, so no pool
/// is needed to write them.
fn error_answer(protocol: Protocol, status: &Status) -> http::Response<tonic::body::Body> {
    let pool = || prost_reflect::DescriptorPool::global();
    match protocol {
        Protocol::Grpc => status.clone().into_http(),
        Protocol::Connect => {
            connect::unary_error(status, &pool(), json::http_status(status.code()))
        }
        Protocol::Http => transcode::error(status, &pool(), http::HeaderMap::new()),
    }
}

/// `RESOURCE_EXHAUSTED` for a request whose headers are over `limit` (as HTTP/2 counts them: name,
/// value and 32 bytes each, the pseudo-headers included). h2 would refuse them with a bare HTTP 431
/// that a gRPC client reports as an unknown error; its limit is set above ours (4×) so that the
/// check is here.
fn headers_too_large<B>(request: &http::Request<B>, limit: usize) -> Option<Status> {
    const ENTRY: usize = 32;
    let uri = request.uri();
    let mut size = ":method".len() + request.method().as_str().len() + ENTRY;
    size += ":path".len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + ENTRY;
    if let Some(authority) = uri.authority() {
        size += ":authority".len() + authority.as_str().len() + ENTRY;
    }
    if let Some(scheme) = uri.scheme_str() {
        size += ":scheme".len() + scheme.len() + ENTRY;
    }
    for (name, value) in request.headers() {
        size += name.as_str().len() + value.len() + ENTRY;
    }
    (size > limit).then(|| {
        Status::resource_exhausted(format!(
            "request headers of {size} bytes are over the server's limit of {limit} \
             (--max-header-size)"
        ))
    })
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
    method: Arc<Method>,
    max_reply_size: usize,
    deadline: Option<tokio::time::Instant>,
    cut: &'static CancellationToken,
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
        let cut = self.cut;
        let method = self.method.clone();
        // Over-size request messages are RESOURCE_EXHAUSTED (see `size_status`).
        let requests = streaming.map(|r| r.map(engine::Request::Encoded).map_err(size_status));
        let call = engine::Call {
            method,
            metadata,
            requests: engine::Requests::Stream(Box::pin(requests)),
            limit,
            reserve: 0,
        };
        Box::pin(async move {
            let streamed = engine::answer(call)
                .await
                .into_stream()
                .map_err(engine::End::into_status)?;
            // tonic sends custom trailers only from a status: an OK end with trailers is an OK one.
            let replies = streamed.events.filter_map(move |event| {
                futures::future::ready(match event {
                    engine::Event::Message(m) => Some(m.into_bytes(limit)),
                    engine::Event::End(end) if end.is_ok() && end.trailers.is_empty() => None,
                    engine::Event::End(end) => Some(Err((*end).into_status())),
                })
            });
            let mut response =
                Response::new(Box::pin(until_deadline(replies, deadline, cut)) as EncodedStream);
            *response.metadata_mut() = streamed.headers;
            Ok(response)
        })
    }
}

/// A call refused before it starts: `status` in the headers of an answer with HTTP status `code`.
fn early_abort(status: Status, code: http::StatusCode) -> ResponseFuture {
    let mut response = status.into_http();
    *response.status_mut() = code;
    Box::pin(futures::future::ready(Ok(response)))
}

/// The call's `grpc-timeout`, if it sent one: 1 to 8 digits and a unit (`1500m`, `2S`, …), as
/// PROTOCOL-HTTP2.md writes it. Anything else is INTERNAL, as grpc-go answers it (a client that
/// means a deadline must not be served without one).
fn grpc_timeout(headers: &http::HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(value) = headers.get(&GRPC_TIMEOUT) else {
        return Ok(None);
    };
    let malformed = || {
        Status::internal(format!(
            "malformed grpc-timeout: {:?} is not 1 to 8 digits and a unit (H, M, S, m, u, n)",
            String::from_utf8_lossy(value.as_bytes())
        ))
    };
    let (&unit, digits) = value.as_bytes().split_last().ok_or_else(malformed)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(malformed()),
    }))
}

pub(crate) use crate::engine::multiple_requests;

/// [`before_deadline`] holds a call to its deadline (and the shutdown) until the response headers;
/// a reply stream is cut here when the deadline passes or `cut` is cancelled, which also drops (and
/// so cancels) whatever produces it — a delay, a script.
pub(crate) fn until_deadline<T: Send + 'static>(
    stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
    deadline: Option<tokio::time::Instant>,
    cut: &'static CancellationToken,
) -> impl futures::Stream<Item = Result<T, Status>> + Send + 'static {
    UntilDeadline {
        stream: Box::pin(stream),
        expiry: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        cut,
        cancelled: None,
        done: false,
    }
}

/// The stream of [`until_deadline`]. A message that is ready passes straight through (with a
/// deadline, the clock is read); the timer and the cut are polled, and so wake the call, only while
/// the stream waits — a stream that never waits ends by itself, and one whose client stops reading
/// is not polled at all (the connection's own end after the grace period cuts it). Racing them with `select!` on every
/// message cost a second state machine, a random branch order and a poll of each per message.
struct UntilDeadline<S> {
    stream: Pin<Box<S>>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: &'static CancellationToken,
    /// Made on the first wait, so that a stream that never waits never joins the token's waiters.
    cancelled: Option<Pin<Box<tokio_util::sync::WaitForCancellationFuture<'static>>>>,
    done: bool,
}

impl<S, T> futures::Stream for UntilDeadline<S>
where
    S: futures::Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let ended = |this: &mut Self, status: Status| {
            this.done = true;
            Poll::Ready(Some(Err(status)))
        };
        match this.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                // A deadline's timer is polled only while waiting; a stream that never waits reads
                // the clock instead (only when the call has a deadline).
                if this
                    .expiry
                    .as_ref()
                    .is_some_and(|e| tokio::time::Instant::now() >= e.deadline())
                {
                    return ended(this, deadline_exceeded_while_streaming());
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let cut = this.cut;
                let cancelled = this
                    .cancelled
                    .get_or_insert_with(|| Box::pin(cut.cancelled()));
                if cancelled.as_mut().poll(cx).is_ready() {
                    return ended(this, shutdown_status());
                }
                if let Some(expiry) = this.expiry.as_mut() {
                    if expiry.as_mut().poll(cx).is_ready() {
                        return ended(this, deadline_exceeded_while_streaming());
                    }
                }
                Poll::Pending
            }
        }
    }
}

fn deadline_exceeded_while_streaming() -> Status {
    Status::deadline_exceeded("deadline exceeded while streaming the reply")
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
