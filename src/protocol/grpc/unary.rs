//! Unary gRPC calls without tonic's streaming machinery: the hot path.
//!
//! A unary call is one framed message in and one out. Reading the frame straight off the body and
//! answering with a body that holds the whole reply frame and the trailers saves the per-call buffers,
//! boxed streams and wakeups of `tonic::server::Grpc`, which is what a compiled tonic server pays too.
//! What tonic would answer stays the same: its status codes and messages for bad frames, gzip both
//! ways, trailers-only errors.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http_body::Frame;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::{Body, ServiceSettings, GRPC_ACCEPT_ENCODING, GRPC_ENCODING, GRPC_STATUS};
use crate::codec::measure_reply;
use crate::engine::{self, Message, Method};
use crate::limits::{check_reply_len, multiple_requests, request_too_large};
use crate::protocol::compression::{self, Gunzip};
use crate::protocol::envelope::{self, ReadError, PREFIX};

/// Answers one unary call. Every failure becomes a gRPC status, as tonic would send it.
pub(super) async fn serve(
    method: Arc<Method>,
    request: http::Request<Body>,
    settings: ServiceSettings,
) -> http::Response<tonic::body::Body> {
    let (parts, body) = request.into_parts();
    let gzip_in = match request_encoding(&parts.headers) {
        Ok(gzip) => gzip,
        Err(status) => return status.into_http(),
    };
    // Replies are compressed only for a client that compressed its request and accepts gzip (what
    // grpc-go does); compressing every reply to a client that merely accepts gzip costs CPU for
    // nothing on a mock's small messages.
    let gzip_out = gzip_in && accepts_gzip(&parts.headers);
    let limit = settings.max_message_size;
    let message = match read_message(body, gzip_in, limit).await {
        Ok(bytes) => bytes,
        Err(status) => return status.into_http(),
    };
    let call = engine::Call {
        method,
        metadata: MetadataMap::from_headers(parts.headers),
        requests: engine::Requests::One(engine::Request::Encoded(message)),
        limit,
        reserve: PREFIX,
    };
    let ready = match engine::answer(call).await {
        engine::Reply::Ready(ready) => ready,
        other => match other.whole().await {
            Ok(ready) => ready,
            Err(refused) => return refused.into_status().into_http(),
        },
    };
    let (data, end) = match ready.message.map(|m| frame(m, gzip_out, limit)) {
        Some(Ok(data)) => (Some(data), ready.end),
        Some(Err(status)) => (None, status.into()),
        None => (None, ready.end),
    };
    http_response(ready.headers, data, end.into_status(), gzip_out)
}

/// A unary answer: headers, the reply frame if any, the status (with any custom trailers).
fn http_response(
    metadata: MetadataMap,
    data: Option<Bytes>,
    status: Status,
    gzip_out: bool,
) -> http::Response<tonic::body::Body> {
    let mut headers = sanitized(metadata.into_headers());
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if gzip_out {
        headers.insert(&GRPC_ENCODING, HeaderValue::from_static("gzip"));
    }
    let mut trailers = HeaderMap::new();
    if is_plain_ok(&status) {
        // What `add_header` writes for it, without its general work.
        trailers.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
    } else if let Err(bad) = status.add_header(&mut trailers) {
        trailers = HeaderMap::new();
        let _ = Status::internal(format!("invalid trailer: {}", bad.message()))
            .add_header(&mut trailers);
    }
    let mut response = http::Response::new(tonic::body::Body::new(UnaryBody {
        data,
        trailers: Some(trailers),
    }));
    *response.headers_mut() = headers;
    response
}

/// OK, with no message, details or custom trailers: the status of most answers.
fn is_plain_ok(status: &Status) -> bool {
    status.code() == tonic::Code::Ok
        && status.message().is_empty()
        && status.details().is_empty()
        && status.metadata().is_empty()
}

/// `grpc-encoding`: identity or gzip; anything else UNIMPLEMENTED, as tonic answers it.
fn request_encoding(headers: &HeaderMap) -> Result<bool, Status> {
    match headers.get(&GRPC_ENCODING).map(HeaderValue::as_bytes) {
        None | Some(b"identity") => Ok(false),
        Some(b"gzip") => Ok(true),
        Some(other) => {
            let mut status = Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(other)
            ));
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static("gzip"),
            );
            Err(status)
        }
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(&GRPC_ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.trim() == "gzip")
}

/// The call's one message, and the end of the request: a second message is INTERNAL, as grpc-go
/// answers it (tonic drops it unread). Errors are worded as tonic words them.
async fn read_message(body: Body, gzip: bool, limit: usize) -> Result<Bytes, Status> {
    let flags = if gzip { envelope::COMPRESSED } else { 0 };
    let mut reader = envelope::Reader::new(body, flags, limit);
    let (flags, message) = match reader.next().await {
        Ok(Some(envelope)) => envelope,
        Ok(None) => return Err(Status::internal("Missing request message.")),
        Err(ReadError::Body(status)) => return Err(status),
        Err(ReadError::Flags(1)) => return Err(Status::internal(
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        )),
        Err(ReadError::Flags(f)) => return Err(Status::internal(format!(
            "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
        ))),
        Err(ReadError::TooLarge(len)) => return Err(request_too_large(len, limit)),
        Err(ReadError::Truncated(_)) => return Err(Status::internal("Unexpected EOF decoding stream.")),
    };
    if reader.more().await? {
        return Err(multiple_requests());
    }
    if flags & envelope::COMPRESSED != 0 {
        gunzip(&message, limit)
    } else {
        Ok(message)
    }
}

fn gunzip(data: &[u8], limit: usize) -> Result<Bytes, Status> {
    match compression::gunzip_within(data, limit) {
        Ok(out) => Ok(out.into()),
        Err(Gunzip::Corrupt(e)) => Err(Status::internal(format!("Error decompressing: {e}"))),
        Err(Gunzip::TooLarge(len)) => Err(request_too_large(len, limit)),
    }
}

/// The reply as one gRPC frame: written by the engine after room for the prefix (framed in
/// place), or measured once for both the size limit and the prefix.
fn frame(reply: Message, gzip: bool, limit: usize) -> Result<Bytes, Status> {
    let mut buf = Vec::new();
    match reply {
        Message::Reserved(written, PREFIX) => buf = written,
        Message::Decoded(reply) => {
            let measured = measure_reply(&reply, limit)?;
            buf.reserve_exact(PREFIX + measured.len());
            buf.resize(PREFIX, 0);
            measured.write(&mut buf);
        }
        encoded => {
            let bytes = encoded.into_bytes(limit)?;
            buf.reserve_exact(PREFIX + bytes.len());
            buf.resize(PREFIX, 0);
            buf.extend_from_slice(&bytes);
        }
    }
    finish_frame(buf, gzip, limit)
}

/// A frame around an encoded reply in `buf[PREFIX..]` (the prefix bytes were reserved, so the usual
/// uncompressed reply is framed in place).
fn finish_frame(mut buf: Vec<u8>, gzip: bool, limit: usize) -> Result<Bytes, Status> {
    let len = buf.len() - PREFIX;
    check_reply_len(len, limit)?;
    if gzip {
        let packed = compression::Encoding::Gzip.compress(buf.split_off(PREFIX));
        return Ok(envelope::encode(envelope::COMPRESSED, &packed));
    }
    envelope::write_prefix(&mut buf[..PREFIX], 0, len);
    Ok(buf.into())
}

/// Headers a handler may not set, because the transport owns them (tonic drops the same ones).
fn sanitized(mut headers: HeaderMap) -> HeaderMap {
    if headers.is_empty() {
        return headers;
    }
    for reserved in [
        "te",
        "user-agent",
        "content-type",
        "grpc-message",
        "grpc-message-type",
        "grpc-status",
    ] {
        headers.remove(reserved);
    }
    headers
}

/// A reply frame, then trailers: the whole body of a unary answer. No exact size hint: it would
/// become a `content-length` that leaves no room for the trailers gRPC-Web adds to the body.
struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}
