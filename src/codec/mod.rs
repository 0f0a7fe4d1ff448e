//! `DynamicMessage` on the wire: replies encoded in two passes to their exact bytes ([`encode`],
//! measured once, so the size limit costs no second pass), requests decoded with their decoded size
//! estimated first ([`decoded`]) or read without decoding ([`canonical`]).
//!
//! The server frames messages itself (`protocol::envelope`); [`DynamicCodec`] is a tonic [`Codec`]
//! for a client of methods known only at run time (the tests' client, for one).

pub mod canonical;
pub mod decoded;
pub mod encode;

use bytes::{Buf, Bytes};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Decodes messages of one type and encodes messages of another (a method's input and output).
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    decode_as: MessageDescriptor,
}

impl DynamicCodec {
    /// A codec that decodes `decode_as` and encodes whatever `DynamicMessage` it is given.
    pub fn new(decode_as: MessageDescriptor) -> Self {
        Self { decode_as }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.decode_as.clone())
    }
}

/// Writes a `DynamicMessage` as protobuf bytes.
#[derive(Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        let measured = encode::Measured::new(&item);
        dst.reserve(measured.len());
        measured.write(dst);
        Ok(())
    }
}

/// A reply's bytes, or RESOURCE_EXHAUSTED when it is over `limit` (`--max-message-size`), as gRPC
/// implementations answer it (tonic's own check would say INTERNAL).
pub fn encode_reply(message: &DynamicMessage, limit: usize) -> Result<Bytes, Status> {
    let measured = measure_reply(message, limit)?;
    let mut out = Vec::with_capacity(measured.len());
    measured.write(&mut out);
    Ok(out.into())
}

/// A reply measured once, for the size limit and then for writing it.
pub fn measure_reply(
    message: &DynamicMessage,
    limit: usize,
) -> Result<encode::Measured<'_>, Status> {
    let measured = encode::Measured::new(message);
    crate::limits::check_reply_len(measured.len(), limit)?;
    Ok(measured)
}

/// Reads protobuf bytes as a `DynamicMessage` of one type.
#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // An empty buffer is a valid message (every field default): never answer `Ok(None)` here,
        // or tonic reports "Missing request message" for `google.protobuf.Empty`.
        decode_request(&self.0, src.copy_to_bytes(src.remaining())).map(Some)
    }
}

/// A request message of type `desc`. gRPC's status table: a request that does not parse is
/// INTERNAL (as grpc-go and grpc-java answer it); one that would take more memory decoded than
/// `--max-request-memory` is RESOURCE_EXHAUSTED (see [`decoded`]).
pub fn decode_request(desc: &MessageDescriptor, bytes: Bytes) -> Result<DynamicMessage, Status> {
    decoded::check(desc, &bytes)?;
    DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| Status::internal(format!("request is not a valid {}: {e}", desc.full_name())))
}
