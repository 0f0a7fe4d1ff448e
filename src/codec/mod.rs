//! `DynamicMessage` on the wire: replies encoded in two passes to their exact bytes ([`encode`],
//! measured once, so the size limit costs no second pass), requests decoded with their decoded size
//! estimated first ([`decoded`]) or read without decoding ([`canonical`]).
//!
//! Framing, compression and size limits on the wire are the protocols' (`protocol::envelope`,
//! `protocol::compression`); nothing of tonic's codec machinery is used.

pub(crate) mod canonical;
pub(crate) mod decoded;
pub(crate) mod encode;

use bytes::Bytes;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;

/// A reply's bytes, or RESOURCE_EXHAUSTED when it is over `limit` (`--max-message-size`), as gRPC
/// implementations answer it (tonic's own check would say INTERNAL).
pub(crate) fn encode_reply(message: &DynamicMessage, limit: usize) -> Result<Bytes, Status> {
    let measured = measure_reply(message, limit)?;
    let mut out = Vec::with_capacity(measured.len());
    measured.write(&mut out);
    Ok(out.into())
}

/// A reply measured once, for the size limit and then for writing it.
pub(crate) fn measure_reply(
    message: &DynamicMessage,
    limit: usize,
) -> Result<encode::Measured<'_>, Status> {
    let measured = encode::Measured::new(message);
    crate::limits::check_reply_len(measured.len(), limit)?;
    Ok(measured)
}

/// A request message of type `desc`. gRPC's status table: a request that does not parse is
/// INTERNAL (as grpc-go and grpc-java answer it); one that would take more memory decoded than
/// `--max-request-memory` is RESOURCE_EXHAUSTED (see [`decoded`]).
pub(crate) fn decode_request(
    desc: &MessageDescriptor,
    bytes: Bytes,
) -> Result<DynamicMessage, Status> {
    decoded::check(desc, &bytes)?;
    DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| Status::internal(format!("request is not a valid {}: {e}", desc.full_name())))
}
