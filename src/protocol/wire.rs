//! What the protocols that answer in plain HTTP bodies (Connect, HTTP/JSON) share: request bodies
//! read within `--max-message-size`, request headers as metadata and metadata as response headers,
//! a reply collected into one message, and response bodies, whole or fed by a stream of frames.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt as _;
use prost_reflect::DynamicMessage;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::{Body, HttpResponse};
use crate::engine::{End, Message, Reply};
use crate::limits::{check_reply_len, too_large};

/// Reads a whole request body; more than `limit` bytes is RESOURCE_EXHAUSTED.
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::cancelled(format!("reading the request: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if buf.len() + chunk.len() > limit {
            return Err(too_large("request body", limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A reply over the size limit ends the call with RESOURCE_EXHAUSTED, as over gRPC.
pub(crate) fn check_reply_size(message: &DynamicMessage, limit: usize) -> Result<(), Status> {
    check_reply_len(crate::codec::encode::Measured::new(message).len(), limit)
}

/// A header's value as text, if it has one.
pub(crate) fn header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A query string's name/value pairs, decoded, in order (none without a query).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Request headers as the call's metadata (what `when.metadata.*` and `{{metadata.*}}` see), without
/// the ones that only frame the HTTP exchange.
pub(crate) fn request_metadata(headers: &HeaderMap) -> MetadataMap {
    let mut headers = headers.clone();
    for name in [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ACCEPT_ENCODING,
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("connect-"))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
    MetadataMap::from_headers(headers)
}

/// Adds a handler's metadata to response headers, each name after `prefix` (Connect's `trailer-`).
/// Names that would change how the body is framed are left out.
pub(crate) fn add_metadata(headers: &mut HeaderMap, metadata: &MetadataMap, prefix: &str) {
    for (name, value) in metadata.clone().into_headers().iter() {
        if matches!(
            name.as_str(),
            "content-type"
                | "content-length"
                | "content-encoding"
                | "transfer-encoding"
                | "connection"
        ) {
            continue;
        }
        let name = if prefix.is_empty() {
            name.clone()
        } else {
            match HeaderName::from_bytes(format!("{prefix}{name}").as_bytes()) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        headers.append(name, value.clone());
    }
}

/// The one reply of a unary (or client-streaming) call, with its headers and trailers.
pub(crate) struct SingleReply {
    pub headers: MetadataMap,
    /// Encoded when the engine wrote it from canonical request bytes, else decoded.
    pub message: Message,
    pub trailers: MetadataMap,
}

/// Reads a unary reply to its end. An error status carries the response headers too (an HTTP error
/// answer has only one set of headers).
pub(crate) async fn single_reply(reply: Reply, limit: usize) -> Result<SingleReply, Status> {
    let ready = reply.whole().await.map_err(End::into_status)?;
    let headers = ready.headers;
    if !ready.end.is_ok() {
        return Err(with_headers(ready.end.into_status(), &headers));
    }
    let message = ready
        .message
        .ok_or_else(|| Status::internal("the method answered no message"))
        .and_then(|m| match m {
            // Bytes the engine wrote are within the limit already.
            Message::Decoded(d) => check_reply_size(&d, limit).map(|()| Message::Decoded(d)),
            encoded => Ok(encoded),
        })
        .map_err(|s| with_headers(s, &headers))?;
    Ok(SingleReply {
        headers,
        message,
        trailers: ready.end.trailers,
    })
}

/// `status` with `headers` added to its metadata (before its own entries).
pub(crate) fn with_headers(status: Status, headers: &MetadataMap) -> Status {
    if headers.is_empty() {
        return status;
    }
    let mut merged = headers.clone().into_headers();
    for (name, value) in status.metadata().clone().into_headers().iter() {
        merged.append(name.clone(), value.clone());
    }
    let mut status = status;
    *status.metadata_mut() = MetadataMap::from_headers(merged);
    status
}

/// A response with a complete body.
pub(crate) fn full_response(
    status: http::StatusCode,
    mut headers: HeaderMap,
    content_type: &'static str,
    body: Vec<u8>,
) -> HttpResponse {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A response whose body is produced as `frames` yields (data, then maybe trailers).
pub(crate) fn streaming_response(
    headers: HeaderMap,
    content_type: &'static str,
    frames: impl Stream<Item = Frame<Bytes>> + Send + 'static,
) -> HttpResponse {
    let mut response = http::Response::new(Body::new(FrameBody(Box::pin(frames))));
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An HTTP body over a stream of frames; it never fails (errors are written into the body by the
/// protocol that produces the frames).
struct FrameBody(Pin<Box<dyn Stream<Item = Frame<Bytes>> + Send>>);

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_next_unpin(cx).map(|frame| frame.map(Ok))
    }
}
