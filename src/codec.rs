//! `DynamicMessage` on the gRPC wire: a tonic [`Codec`] whose message types are known only at run time.
//!
//! tonic's framing, compression and size limits stay tonic's; this codec only turns one message body
//! into a `DynamicMessage` of the method's input type and back.

use bytes::Buf;
use prost::Message;
use prost_reflect::ReflectMessage;
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
        item.encode(dst).map_err(|e| {
            Status::internal(format!("encoding {}: {e}", item.descriptor().full_name()))
        })
    }
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
        let mut message = DynamicMessage::new(self.0.clone());
        message
            .merge(src.copy_to_bytes(src.remaining()))
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "request is not a valid {}: {e}",
                    self.0.full_name()
                ))
            })?;
        Ok(Some(message))
    }
}
