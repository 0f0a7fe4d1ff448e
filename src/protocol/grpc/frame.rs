//! gRPC's wire form, written once for every shape of call: which coding a request is in and which
//! one to answer in, reading request messages off the body ([`envelope::Reader`] and gzip within
//! `--max-message-size`), writing reply frames, and the headers and trailers of an answer.
//!
//! Unary calls and streams used to be framed by two stacks (this one for unary, tonic's `Streaming`
//! and encoder for streams), with two envelope parsers, two gzips and two sets of limits. Both now
//! read and write through here, so a bad frame, an over-size message or an unknown coding gets the
//! same answer whatever the shape. The statuses and texts are those tonic gave, except where gRPC's
//! table says otherwise (a message over the limit is RESOURCE_EXHAUSTED, see [`crate::limits`]).

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::{Body, GRPC_ACCEPT_ENCODING, GRPC_ENCODING, GRPC_STATUS};
use crate::codec::measure_reply;
use crate::engine::{End, Message};
use crate::limits::{check_reply_len, multiple_requests, request_too_large};
use crate::protocol::compression::{self, Gunzip};
use crate::protocol::envelope::{self, ReadError, PREFIX};

/// The content codings of one call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Codings {
    /// The request's messages may be gzip (`grpc-encoding: gzip`).
    pub gzip_in: bool,
    /// Replies are gzip.
    pub gzip_out: bool,
}

impl Codings {
    /// From the request's `grpc-encoding` (identity or gzip; anything else UNIMPLEMENTED with the
    /// accepted ones in `grpc-accept-encoding`, as tonic answers it) and `grpc-accept-encoding`.
    /// Replies are compressed only for a client that compressed its request and accepts gzip (what
    /// grpc-go does); compressing every reply to a client that merely accepts gzip costs CPU for
    /// nothing on a mock's small messages.
    pub(super) fn of(headers: &HeaderMap) -> Result<Codings, Status> {
        let gzip_in = match headers.get(&GRPC_ENCODING).map(HeaderValue::as_bytes) {
            None | Some(b"identity") => false,
            Some(b"gzip") => true,
            Some(other) => {
                let mut status = Status::unimplemented(format!(
                    "Content is compressed with `{}` which isn't supported",
                    String::from_utf8_lossy(other)
                ));
                status.metadata_mut().insert(
                    "grpc-accept-encoding",
                    tonic::metadata::MetadataValue::from_static("gzip"),
                );
                return Err(status);
            }
        };
        Ok(Codings {
            gzip_in,
            gzip_out: gzip_in && accepts_gzip(headers),
        })
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

/// A reader of the request's messages: the compressed flag is accepted only when the request
/// named gzip (gRPC's compression spec).
pub(super) fn reader(body: Body, codings: Codings, limit: usize) -> envelope::Reader {
    let flags = if codings.gzip_in {
        envelope::COMPRESSED
    } else {
        0
    };
    envelope::Reader::new(body, flags, limit)
}

/// Why a request message could not be read, worded as tonic words it.
pub(super) fn read_error(error: ReadError, limit: usize) -> Status {
    match error {
        ReadError::Body(status) => status,
        ReadError::Flags(1) => Status::internal(
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ),
        ReadError::Flags(f) => Status::internal(format!(
            "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
        )),
        ReadError::TooLarge(len) => request_too_large(len, limit),
        ReadError::Truncated(_) => Status::internal("Unexpected EOF decoding stream."),
    }
}

/// A request message as read (`flags`, the envelope's): inflated if it says it is compressed.
pub(super) fn message(flags: u8, message: Bytes, limit: usize) -> Result<Bytes, Status> {
    if flags & envelope::COMPRESSED == 0 {
        return Ok(message);
    }
    match compression::gunzip_within(&message, limit) {
        Ok(out) => Ok(out.into()),
        Err(Gunzip::Corrupt(e)) => Err(Status::internal(format!("Error decompressing: {e}"))),
        Err(Gunzip::TooLarge(len)) => Err(request_too_large(len, limit)),
    }
}

/// The call's one message, and the end of the request: none is INTERNAL as tonic answers it, a
/// second one INTERNAL as grpc-go answers it (tonic drops it unread).
pub(super) async fn one_message(
    body: Body,
    codings: Codings,
    limit: usize,
) -> Result<Bytes, Status> {
    let mut reader = reader(body, codings, limit);
    let (flags, read) = match reader.next().await {
        Ok(Some(envelope)) => envelope,
        Ok(None) => return Err(Status::internal("Missing request message.")),
        Err(error) => return Err(read_error(error, limit)),
    };
    if reader.more().await? {
        return Err(multiple_requests());
    }
    message(flags, read, limit)
}

/// The reply as one gRPC frame: written by the engine after room for the prefix (framed in
/// place), or measured once for both the size limit and the prefix.
pub(super) fn frame(reply: Message, gzip: bool, limit: usize) -> Result<Bytes, Status> {
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

/// Appends the reply as one gRPC frame to `out`, the data a stream sends next (several frames go out
/// in one piece when they are ready together). On an error `out` is as it was.
pub(super) fn append_frame(
    out: &mut BytesMut,
    reply: Message,
    gzip: bool,
    limit: usize,
) -> Result<(), Status> {
    let encoded = match reply {
        Message::Decoded(reply) => {
            let measured = measure_reply(&reply, limit)?;
            if !gzip {
                // Written straight into the stream's data, as tonic's encoder would.
                out.reserve(PREFIX + measured.len());
                out.put_u8(0);
                out.put_u32(measured.len() as u32);
                measured.write(out);
                return Ok(());
            }
            let mut buf = Vec::with_capacity(measured.len());
            measured.write(&mut buf);
            Bytes::from(buf)
        }
        encoded => encoded.into_bytes(limit)?,
    };
    check_reply_len(encoded.len(), limit)?;
    let (flags, body) = if gzip {
        let packed = compression::Encoding::Gzip.compress(encoded.to_vec());
        (envelope::COMPRESSED, Bytes::from(packed))
    } else {
        (0, encoded)
    };
    out.reserve(PREFIX + body.len());
    out.put_u8(flags);
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    Ok(())
}

/// The headers of an answer that has some (not a trailers-only one): the rule's, without those
/// the transport owns, and the content type and reply coding.
pub(super) fn headers(metadata: MetadataMap, gzip_out: bool) -> HeaderMap {
    let mut headers = sanitized(metadata.into_headers());
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if gzip_out {
        headers.insert(&GRPC_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers
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

/// The trailers of an answer: its status (`grpc-status`, `grpc-message`,
/// `grpc-status-details-bin`) and the rule's trailers, as tonic writes a status.
pub(super) fn trailers(end: End) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if end.is_ok() && end.message.is_empty() && end.details.is_empty() && end.trailers.is_empty() {
        // The end of most answers: what `add_header` writes for it, without building a status.
        trailers.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
    } else if let Err(bad) = end.into_status().add_header(&mut trailers) {
        trailers = HeaderMap::new();
        let _ = Status::internal(format!("invalid trailer: {}", bad.message()))
            .add_header(&mut trailers);
    }
    trailers
}
