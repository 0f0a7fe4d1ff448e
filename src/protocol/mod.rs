//! The protocols a call can come in, one module each, over shared wire pieces.
//!
//! The router (`server::router`) picks exactly one protocol per request, from method, path and
//! content type, and hands the request to it; the protocol reads the call off the wire, asks the
//! engine (`engine::answer`: a call in, reply events out) for the answer and writes
//! it back in its own framing.
//!
//! * [`grpc`] — gRPC over HTTP/2: every shape on one framing over [`envelope`] and [`compression`];
//!   unary calls without a stream (the hot path).
//! * [`grpc_web`] — gRPC-Web, binary and text: tonic-web's translation around the gRPC protocol,
//!   which the router passes in (a protocol never imports another one).
//! * [`connect`] — Connect: unary, streaming and GET, and its bridge to the built-in services.
//! * [`http_json`] — HTTP/JSON transcoding by `google.api.http` routes.
//!
//! What they share sits beside them, below them all: [`envelope`] (the 5-byte frame),
//! [`compression`] (gzip within the size limit), [`deadline`] (one deadline, the shutdown cut),
//! [`wire`] (bodies, metadata as headers, a reply collected into one message) and [`json`] (proto3
//! JSON and the error bodies of Connect and HTTP/JSON).
//!
//! A new protocol is a module here, plus its detection in `server::router` (its branch of `Kind`,
//! and the call to its `serve`).

pub(crate) mod compression;
pub(crate) mod connect;
pub(crate) mod deadline;
pub(crate) mod envelope;
pub(crate) mod grpc;
pub(crate) mod grpc_web;
pub(crate) mod http_json;
pub(crate) mod json;
pub(crate) mod wire;

use std::convert::Infallible;

use futures::future::BoxFuture;

/// The one request body type, from hyper's `Incoming` boxed once (tonic-web's translation and the
/// Connect bridge produce their own).
pub(crate) type Body = tonic::body::Body;

/// A response as every protocol answers.
pub(crate) type HttpResponse = http::Response<Body>;

/// An HTTP answer, when it is ready: what the protocols, the router and the server hand on.
pub(crate) type ResponseFuture = BoxFuture<'static, Result<HttpResponse, Infallible>>;

/// Settings every protocol applies.
#[derive(Clone, Copy, Debug)]
pub struct ServiceSettings {
    /// Largest message accepted or sent, in bytes (`--max-message-size`).
    pub max_message_size: usize,
    /// Largest request header list, counted as HTTP/2 counts it (`--max-header-size`).
    pub max_header_list_size: usize,
    /// Where every call is recorded (the call log, the journal).
    pub(crate) observer: &'static crate::observe::Observer,
}
