//! gRPC-Web (`application/grpc-web`, `…+proto`, `application/grpc-web-text`, `…-text+proto`):
//! tonic-web turns the request into gRPC and the answer back into gRPC-Web (trailers as a last
//! `0x80` frame; base64 for `-text`). Only the shapes a browser can make work over HTTP/1.1: unary
//! and server streaming.
//!
//! The gRPC side is a service the router passes in (its own gRPC branch: method lookup, built-ins,
//! [`super::grpc`]), so that this module does not import another protocol and a translated call is
//! not detected a second time.

use std::convert::Infallible;

use futures::FutureExt as _;
use http::header::{self, HeaderValue};
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer as _, Service, ServiceExt as _};

use super::{Body, HttpResponse, ResponseFuture};

/// The four content types tonic-web translates (matched exactly, as tonic-web does).
pub(crate) const CONTENT_TYPES: [&str; 4] = [
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
];

/// gRPC-Web in front of the gRPC service `S`.
#[derive(Clone)]
pub(crate) struct GrpcWeb<S> {
    translated: GrpcWebService<S>,
}

impl<S> GrpcWeb<S>
where
    S: Service<http::Request<Body>, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    pub(crate) fn new(grpc: S) -> Self {
        Self {
            translated: GrpcWebLayer::new().layer(grpc),
        }
    }

    /// Serves one gRPC-Web request (its content type is one of [`CONTENT_TYPES`]).
    pub(crate) fn serve(&self, mut request: http::Request<Body>) -> ResponseFuture {
        answer_text_to_text(&mut request);
        self.translated.clone().oneshot(request).boxed()
    }
}

/// tonic-web picks the answer's framing from `Accept` alone, matched exactly: a base64 (`-text`)
/// request with no such `Accept` (curl sends `*/*`) would get binary frames back. Answer in the
/// request's own framing unless the client asked for binary by name.
fn answer_text_to_text(request: &mut http::Request<Body>) {
    let is_text = super::wire::header(request.headers(), header::CONTENT_TYPE)
        .is_some_and(|v| v.starts_with("application/grpc-web-text"));
    let wants_binary = request
        .headers()
        .get(header::ACCEPT)
        .is_some_and(|v| v == "application/grpc-web" || v == "application/grpc-web+proto");
    if is_text && !wants_binary {
        request.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("application/grpc-web-text"),
        );
    }
}
