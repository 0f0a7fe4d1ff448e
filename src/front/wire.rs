//! What Connect and HTTP transcoding share on the wire: request bodies read within
//! `--max-message-size`, gzip, request headers as metadata and metadata as response headers, a reply
//! collected into one message, and response bodies fed by a stream of frames.

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use prost_reflect::DynamicMessage;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::engine::{End, Message, Reply};

/// A response as every front answers.
pub type HttpResponse = http::Response<tonic::body::Body>;

/// Reads a whole request body; more than `limit` bytes is RESOURCE_EXHAUSTED.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Status> {
    let mut chunks = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| Status::cancelled(format!("reading the request: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large("request body", limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub fn too_large(what: &str, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "{what} is larger than the limit of {limit} bytes (--max-message-size)"
    ))
}

/// A reply over the size limit ends the call with RESOURCE_EXHAUSTED, as over gRPC.
pub fn check_reply_size(message: &DynamicMessage, limit: usize) -> Result<(), Status> {
    check_reply_len(crate::codec::encode::Measured::new(message).len(), limit)
}

/// [`check_reply_size`] for a length already measured.
pub use crate::codec::check_reply_len;

/// A content coding this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// The coding a request names (`content-encoding`, `connect-content-encoding`, `compression=`);
    /// none is identity, an unknown one UNIMPLEMENTED as Connect asks.
    pub fn parse(name: Option<&str>) -> Result<Encoding, Status> {
        match name.map(|n| n.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("gzip") => Ok(Encoding::Gzip),
            Some(other) => Err(Status::unimplemented(format!(
                "content encoding '{other}' is not supported (supported: gzip, identity)"
            ))),
        }
    }

    /// The coding to answer in: gzip when an accept list names it with a
    /// nonzero weight (`gzip;q=0.0` refuses it), the request's own
    /// coding when there is no list, else identity.
    pub fn accepted(accept: Option<&str>, request: Encoding) -> Encoding {
        let Some(list) = accept else {
            return request;
        };
        let gzip = list.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next().is_some_and(|c| c.eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| {
                    let Some((name, value)) = p.split_once('=') else {
                        return false;
                    };
                    name.trim().eq_ignore_ascii_case("q")
                        && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
        });
        if gzip {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
        }
    }

    /// Decompresses `data`; more than `limit` bytes once decompressed is RESOURCE_EXHAUSTED. Empty
    /// content is never decompressed (Connect's rule).
    pub fn decompress(self, data: Bytes, limit: usize) -> Result<Bytes, Status> {
        if self == Encoding::Identity || data.is_empty() {
            return Ok(data);
        }
        match gunzip_within(&data, limit) {
            Ok(out) => Ok(out.into()),
            Err(Gunzip::Corrupt(e)) => Err(Status::invalid_argument(format!(
                "request is not valid gzip: {e}"
            ))),
            Err(Gunzip::TooLarge(_)) => Err(too_large("decompressed request", limit)),
        }
    }

    pub fn compress(self, data: Vec<u8>) -> Vec<u8> {
        match self {
            Encoding::Identity => data,
            Encoding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 32),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                let _ = encoder.write_all(&data);
                encoder.finish().unwrap_or_default()
            }
        }
    }
}

/// Why gzip content could not be read within a limit.
pub enum Gunzip {
    Corrupt(std::io::Error),
    /// More than the limit once decompressed (the length read: the limit + 1 at most, a bomb is
    /// never inflated whole).
    TooLarge(usize),
}

/// The most deflate can inflate: 258 bytes from every 2 bits (zlib's technical notes say 1032:1).
const MAX_DEFLATE_RATIO: usize = 1032;

/// Decompresses gzip `data`, reading at most one byte past `limit`. Each protocol answers the
/// failures with its own status.
pub fn gunzip_within(data: &[u8], limit: usize) -> Result<Vec<u8>, Gunzip> {
    // One buffer of the right size instead of a doubling one, whose copies would hold up to three
    // times the message at once: gzip's trailer says the inflated length (mod 2^32). Untrusted, so
    // capped by the limit and by deflate's largest ratio (1032:1); a wrong one only costs a regrowth.
    let stated = data
        .last_chunk::<4>()
        .map_or(0, |trailer| u32::from_le_bytes(*trailer) as usize);
    let capacity = stated
        .min(limit.saturating_add(1))
        .min(data.len().saturating_mul(MAX_DEFLATE_RATIO));
    let mut out = Vec::with_capacity(capacity);
    flate2::read::GzDecoder::new(data)
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Gunzip::Corrupt)?;
    if out.len() > limit {
        return Err(Gunzip::TooLarge(out.len()));
    }
    Ok(out)
}

/// A header's value as text, if it has one.
pub fn header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A query string's name/value pairs, decoded, in order (none without a query).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Request headers as the call's metadata (what `when.metadata.*` and `{{metadata.*}}` see), without
/// the ones that only frame the HTTP exchange.
pub fn request_metadata(headers: &HeaderMap) -> MetadataMap {
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
pub fn add_metadata(headers: &mut HeaderMap, metadata: &MetadataMap, prefix: &str) {
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
pub struct SingleReply {
    pub headers: MetadataMap,
    /// Encoded when the engine wrote it from canonical request bytes, else decoded.
    pub message: Message,
    pub trailers: MetadataMap,
}

/// Reads a unary reply to its end. An error status carries the response headers too (an HTTP error
/// answer has only one set of headers).
pub async fn single_reply(reply: Reply, limit: usize) -> Result<SingleReply, Status> {
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
pub fn with_headers(status: Status, headers: &MetadataMap) -> Status {
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
pub fn full_response(
    status: http::StatusCode,
    mut headers: HeaderMap,
    content_type: &'static str,
    body: Vec<u8>,
) -> HttpResponse {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let mut response = http::Response::new(tonic::body::Body::new(axum::body::Body::from(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A response whose body is produced as `frames` yields (data, then maybe trailers).
pub fn streaming_response(
    headers: HeaderMap,
    content_type: &'static str,
    frames: impl Stream<Item = Frame<Bytes>> + Send + 'static,
) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(FrameBody(Box::pin(frames))));
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
