//! gRPC over HTTP/2 (and gRPC-Web, translated to it by [`super::grpc_web`]): a call of a user's
//! method, once the router has looked the method up. A unary call is answered by [`unary`] on its
//! own framing (the hot path); the streaming shapes go through tonic's gRPC machinery with a codec
//! for that method's types.
//!
//! Two things end a call from outside: its `grpc-timeout` (DEADLINE_EXCEEDED) and the end of the
//! shutdown grace period (UNAVAILABLE "server shutting down"); see [`super::deadline`].

mod unary;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use http::HeaderName;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::deadline::{bounded, shutdown_status, until_deadline, Deadline};
use super::{Body, HttpResponse, ResponseFuture, ServiceSettings};
use crate::codec::ServerCodec;
use crate::engine::{self, Method};
use crate::limits::size_status;

/// Reply messages, encoded as they are produced.
type EncodedStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

// Names looked up on every call: a `HeaderName` is hashed as it is, a `&str` parsed first.
static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
static GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What is checked of every gRPC request before its path is looked up, as grpc-go does: a call that
/// cannot be a gRPC call gets an HTTP error status with a gRPC one in its headers. The call's
/// deadline when it may go on.
#[allow(clippy::result_large_err)]
pub(crate) fn admit(request: &http::Request<Body>) -> Result<Deadline, HttpResponse> {
    let deadline = Deadline::grpc(request.headers()).map_err(|status| {
        let mut response = status.into_http();
        *response.status_mut() = http::StatusCode::BAD_REQUEST;
        response
    })?;
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
        return Err(response);
    }
    Ok(deadline)
}

/// Serves one call of `method`. An answer not ready (its headers, for a stream) when the deadline
/// passes is DEADLINE_EXCEEDED, as gRPC's status table says; one not ready when `cut` is cancelled
/// is [`shutdown_status`].
pub(crate) fn serve(
    method: Arc<Method>,
    request: http::Request<Body>,
    deadline: Deadline,
    settings: ServiceSettings,
    cut: &'static CancellationToken,
) -> ResponseFuture {
    if !method.desc.is_client_streaming() && !method.desc.is_server_streaming() {
        let answer = unary::serve(method, request, settings);
        return Box::pin(before_deadline(answer, deadline, cut));
    }
    let limit = settings.max_message_size;
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
        cut,
    };
    let answer = async move { grpc.streaming(call, request).await };
    Box::pin(before_deadline(answer, deadline, cut))
}

fn before_deadline<F>(
    answer: F,
    deadline: Deadline,
    cut: &'static CancellationToken,
) -> super::deadline::Bounded<F>
where
    F: Future<Output = HttpResponse>,
{
    bounded(
        answer,
        deadline,
        cut,
        || Status::deadline_exceeded("deadline exceeded before the reply started").into_http(),
        || shutdown_status().into_http(),
    )
}

/// A status as a gRPC answer that ends the call (trailers-only).
pub(crate) fn error(status: &tonic::Status) -> HttpResponse {
    status.clone().into_http()
}

/// One call, bound to the method as it was when the call started.
struct Call {
    method: Arc<Method>,
    max_reply_size: usize,
    deadline: Deadline,
    cut: &'static CancellationToken,
}

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
