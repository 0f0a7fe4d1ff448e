//! `DynamicMessage` on the gRPC wire: a tonic [`Codec`] whose message types are known only at run time.
//!
//! tonic's framing, compression and size limits stay tonic's; this codec only turns one message body
//! into a `DynamicMessage` of the method's input type, and writes replies already encoded by
//! [`encode`] (measured once, so the size limit costs no second pass).

pub(crate) mod canonical;
pub(crate) mod decoded;
pub(crate) mod encode;

use bytes::{Buf, BufMut, Bytes};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The server's codec for streaming calls: messages in and out as bytes. Requests are decoded
/// (or read without decoding) by the service; replies were encoded by [`encode_reply`] or an
/// emitter beforehand, so the size limit is checked without a second pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerCodec;

impl Codec for ServerCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

/// Writes a message encoded beforehand.
#[derive(Debug)]
pub(crate) struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

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

/// Takes each message's bytes as they are: the server decodes them itself, or copies from them
/// without decoding (see [`crate::engine::emit`]).
#[derive(Debug)]
pub(crate) struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // As above: an empty message is a message.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
