//! gRPC over HTTP/2 (and gRPC-Web, translated to it by [`super::grpc_web`]): a call of a user's
//! method, once the router has looked the method up. Every shape is read and written on one
//! framing ([`frame`]: the shared envelope and gzip, gRPC's statuses and trailers): a unary call by
//! [`unary`] (the hot path: one frame in, one out, no stream), the streaming shapes by [`stream`]
//! (request messages read as the engine asks for them, reply frames written as the body is polled).
//!
//! Two things end a call from outside: its `grpc-timeout` (DEADLINE_EXCEEDED) and the end of the
//! shutdown grace period (UNAVAILABLE "server shutting down"); see [`super::deadline`].

mod frame;
mod stream;
mod unary;

use std::future::Future;
use std::sync::Arc;

use http::HeaderName;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::deadline::{bounded, shutdown_status, Deadline};
use super::{Body, HttpResponse, ResponseFuture, ServiceSettings};
use crate::engine::Method;

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
/// is [`shutdown_status`]. A stream is held to both after its headers too.
pub(crate) fn serve(
    method: Arc<Method>,
    request: http::Request<Body>,
    deadline: Deadline,
    settings: ServiceSettings,
    cut: &'static CancellationToken,
) -> ResponseFuture {
    if !method.client_streaming() && !method.server_streaming() {
        let answer = unary::serve(method, request, settings, deadline);
        return Box::pin(before_deadline(answer, deadline, cut));
    }
    let answer = stream::serve(method, request, settings, deadline, cut);
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
