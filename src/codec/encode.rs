//! Protobuf encoding of a `DynamicMessage` in two passes: measure once, then write.
//!
//! prost-reflect's own encoder asks every nested message for its length while writing its parent, so
//! a message `d` levels deep is measured `d` times, and each field is looked up in its descriptor per
//! pass. Here one measuring pass records every nested length (in the order the writing pass needs
//! them), and the writing pass only reads them back. The bytes are the same as prost-reflect's: the
//! same field order (by number, unknown fields in between), the same defaults left out, the same
//! packing; `src/tests/encoding.rs` checks that over generated messages.

use bytes::BufMut;
use prost::encoding::{self, WireType};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value};

/// A message measured and ready to be written.
pub(crate) struct Measured<'a> {
    message: &'a DynamicMessage,
    /// Lengths of nested messages, map entries and packed lists, in the order `write` meets them.
    lengths: Vec<usize>,
    len: usize,
}

impl<'a> Measured<'a> {
    pub(crate) fn new(message: &'a DynamicMessage) -> Self {
        let mut lengths = Vec::new();
        let len = measure(message, &mut lengths);
        Measured {
            message,
            lengths,
            len,
        }
    }

    /// The encoded length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the message; `buf` must have room for [`len`](Self::len) bytes.
    pub(crate) fn write(&self, buf: &mut impl BufMut) {
        let mut next = self.lengths.iter().copied();
        write(self.message, &mut next, buf);
    }
}

/// The message's bytes, as `prost::Message::encode_to_vec` would give them.
pub(crate) fn encode_to_vec(message: &DynamicMessage) -> Vec<u8> {
    let measured = Measured::new(message);
    let mut out = Vec::with_capacity(measured.len());
    measured.write(&mut out);
    out
}

/// The records of one field holding `value`, as they are written within a message.
pub(crate) fn encode_field(field: &FieldDescriptor, value: &Value, buf: &mut impl BufMut) {
    let mut lengths = Vec::new();
    measure_field(field, value, &mut lengths);
    write_field(field, field.number(), value, &mut lengths.into_iter(), buf);
}

/// Messages whose type has extension ranges are left to prost-reflect, which knows where extension
/// values sit among the fields (proto3 has no extensions, so the hot path never goes there).
fn has_extensions(message: &DynamicMessage) -> bool {
    message.descriptor().extension_ranges().next().is_some()
}

fn measure(message: &DynamicMessage, lengths: &mut Vec<usize>) -> usize {
    if has_extensions(message) {
        return prost::Message::encoded_len(message);
    }
    let mut len: usize = message.unknown_fields().map(|u| u.encoded_len()).sum();
    for (field, value) in message.fields() {
        len += measure_field(&field, value, lengths);
    }
    len
}

fn measure_field(field: &FieldDescriptor, value: &Value, lengths: &mut Vec<usize>) -> usize {
    let number = field.number();
    match value {
        Value::List(values) if field.is_list() => {
            if field.is_packed() {
                let kind = field.kind();
                let body: usize = values.iter().map(|v| packed_len(&kind, v)).sum();
                lengths.push(body);
                encoding::key_len(number) + encoding::encoded_len_varint(body as u64) + body
            } else {
                values
                    .iter()
                    .map(|v| measure_single(field, number, v, lengths))
                    .sum()
            }
        }
        Value::Map(entries) if field.is_map() => {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("map field of a non-message kind")
            };
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            let key_kind = key_field.kind();
            let mut len = 0;
            for (key, value) in entries {
                let slot = lengths.len();
                lengths.push(0);
                let entry_len = map_key_len(&key_field, &key_kind, key)
                    + if value_field.supports_presence()
                        || !value.is_default_for_field(&value_field)
                    {
                        measure_single(&value_field, 2, value, lengths)
                    } else {
                        0
                    };
                lengths[slot] = entry_len;
                len += encoding::key_len(number)
                    + encoding::encoded_len_varint(entry_len as u64)
                    + entry_len;
            }
            len
        }
        value => measure_single(field, number, value, lengths),
    }
}

/// One value with its key: a singular field, or one element of an unpacked repeated field.
fn measure_single(
    field: &FieldDescriptor,
    number: u32,
    value: &Value,
    lengths: &mut Vec<usize>,
) -> usize {
    let key = encoding::key_len(number);
    match value {
        Value::Message(message) => {
            if field.is_group() {
                2 * key + measure(message, lengths)
            } else {
                let slot = lengths.len();
                lengths.push(0);
                let len = measure(message, lengths);
                lengths[slot] = len;
                key + encoding::encoded_len_varint(len as u64) + len
            }
        }
        Value::String(s) => key + encoding::encoded_len_varint(s.len() as u64) + s.len(),
        Value::Bytes(b) => key + encoding::encoded_len_varint(b.len() as u64) + b.len(),
        Value::EnumNumber(n) => key + encoding::encoded_len_varint(*n as u64),
        scalar => key + scalar_len(&field.kind(), scalar),
    }
}

/// The length of a scalar without its key.
fn scalar_len(kind: &Kind, value: &Value) -> usize {
    match (value, kind) {
        (Value::Bool(_), _) => 1,
        (Value::I32(v), Kind::Sint32) => encoding::encoded_len_varint(zigzag32(*v) as u64),
        (Value::I32(_), Kind::Sfixed32) | (Value::U32(_), Kind::Fixed32) | (Value::F32(_), _) => 4,
        (Value::I32(v), _) => encoding::encoded_len_varint(*v as u64),
        (Value::I64(v), Kind::Sint64) => encoding::encoded_len_varint(zigzag64(*v)),
        (Value::I64(_), Kind::Sfixed64) | (Value::U64(_), Kind::Fixed64) | (Value::F64(_), _) => 8,
        (Value::I64(v), _) => encoding::encoded_len_varint(*v as u64),
        (Value::U32(v), _) => encoding::encoded_len_varint(*v as u64),
        (Value::U64(v), _) => encoding::encoded_len_varint(*v),
        (Value::EnumNumber(v), _) => encoding::encoded_len_varint(*v as u64),
        (other, kind) => panic!("value {other:?} does not fit kind {kind:?}"),
    }
}

fn packed_len(kind: &Kind, value: &Value) -> usize {
    scalar_len(kind, value)
}

fn map_key_len(field: &FieldDescriptor, kind: &Kind, key: &MapKey) -> usize {
    if !field.supports_presence() && key.is_default(kind) {
        return 0;
    }
    let len = match key {
        MapKey::Bool(_) => 1,
        MapKey::I32(v) => match kind {
            Kind::Sint32 => encoding::encoded_len_varint(zigzag32(*v) as u64),
            Kind::Sfixed32 => 4,
            _ => encoding::encoded_len_varint(*v as u64),
        },
        MapKey::I64(v) => match kind {
            Kind::Sint64 => encoding::encoded_len_varint(zigzag64(*v)),
            Kind::Sfixed64 => 8,
            _ => encoding::encoded_len_varint(*v as u64),
        },
        MapKey::U32(v) => match kind {
            Kind::Fixed32 => 4,
            _ => encoding::encoded_len_varint(*v as u64),
        },
        MapKey::U64(v) => match kind {
            Kind::Fixed64 => 8,
            _ => encoding::encoded_len_varint(*v),
        },
        MapKey::String(s) => encoding::encoded_len_varint(s.len() as u64) + s.len(),
    };
    encoding::key_len(1) + len
}

fn write(
    message: &DynamicMessage,
    lengths: &mut impl Iterator<Item = usize>,
    buf: &mut impl BufMut,
) {
    if has_extensions(message) {
        prost::Message::encode_raw(message, buf);
        return;
    }
    let mut unknown = message.unknown_fields().peekable();
    for (field, value) in message.fields() {
        let number = field.number();
        while let Some(u) = unknown.next_if(|u| u.number() < number) {
            u.encode(buf);
        }
        write_field(&field, number, value, lengths, buf);
    }
    for u in unknown {
        u.encode(buf);
    }
}

fn write_field(
    field: &FieldDescriptor,
    number: u32,
    value: &Value,
    lengths: &mut impl Iterator<Item = usize>,
    buf: &mut impl BufMut,
) {
    match value {
        Value::List(values) if field.is_list() => {
            if field.is_packed() {
                let kind = field.kind();
                let body = next_len(lengths);
                encoding::encode_key(number, WireType::LengthDelimited, buf);
                encoding::encode_varint(body as u64, buf);
                for v in values {
                    write_scalar(&kind, v, buf);
                }
            } else {
                for v in values {
                    write_single(field, number, v, lengths, buf);
                }
            }
        }
        Value::Map(entries) if field.is_map() => {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("map field of a non-message kind")
            };
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            let key_kind = key_field.kind();
            for (key, value) in entries {
                let entry_len = next_len(lengths);
                encoding::encode_key(number, WireType::LengthDelimited, buf);
                encoding::encode_varint(entry_len as u64, buf);
                if key_field.supports_presence() || !key.is_default(&key_kind) {
                    write_map_key(&key_kind, key, buf);
                }
                if value_field.supports_presence() || !value.is_default_for_field(&value_field) {
                    write_single(&value_field, 2, value, lengths, buf);
                }
            }
        }
        value => write_single(field, number, value, lengths, buf),
    }
}

fn next_len(lengths: &mut impl Iterator<Item = usize>) -> usize {
    lengths
        .next()
        .expect("the writing pass meets the nested messages the measuring pass met")
}

fn write_single(
    field: &FieldDescriptor,
    number: u32,
    value: &Value,
    lengths: &mut impl Iterator<Item = usize>,
    buf: &mut impl BufMut,
) {
    match value {
        Value::Message(message) => {
            if field.is_group() {
                encoding::encode_key(number, WireType::StartGroup, buf);
                write(message, lengths, buf);
                encoding::encode_key(number, WireType::EndGroup, buf);
            } else {
                let len = next_len(lengths);
                encoding::encode_key(number, WireType::LengthDelimited, buf);
                encoding::encode_varint(len as u64, buf);
                write(message, lengths, buf);
            }
        }
        Value::String(s) => {
            encoding::encode_key(number, WireType::LengthDelimited, buf);
            encoding::encode_varint(s.len() as u64, buf);
            buf.put_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            encoding::encode_key(number, WireType::LengthDelimited, buf);
            encoding::encode_varint(b.len() as u64, buf);
            buf.put_slice(b);
        }
        Value::EnumNumber(n) => {
            encoding::encode_key(number, WireType::Varint, buf);
            encoding::encode_varint(*n as u64, buf);
        }
        scalar => {
            let kind = field.kind();
            encoding::encode_key(number, wire_type(&kind), buf);
            write_scalar(&kind, scalar, buf);
        }
    }
}

/// The wire type of a (non-group) value of `kind`.
pub(crate) fn wire_type(kind: &Kind) -> WireType {
    match kind {
        Kind::Sfixed32 | Kind::Fixed32 | Kind::Float => WireType::ThirtyTwoBit,
        Kind::Sfixed64 | Kind::Fixed64 | Kind::Double => WireType::SixtyFourBit,
        Kind::String | Kind::Bytes | Kind::Message(_) => WireType::LengthDelimited,
        _ => WireType::Varint,
    }
}

/// A scalar without its key.
fn write_scalar(kind: &Kind, value: &Value, buf: &mut impl BufMut) {
    match (value, kind) {
        (Value::Bool(v), _) => encoding::encode_varint(*v as u64, buf),
        (Value::I32(v), Kind::Sint32) => encoding::encode_varint(zigzag32(*v) as u64, buf),
        (Value::I32(v), Kind::Sfixed32) => buf.put_i32_le(*v),
        (Value::I32(v), _) => encoding::encode_varint(*v as u64, buf),
        (Value::I64(v), Kind::Sint64) => encoding::encode_varint(zigzag64(*v), buf),
        (Value::I64(v), Kind::Sfixed64) => buf.put_i64_le(*v),
        (Value::I64(v), _) => encoding::encode_varint(*v as u64, buf),
        (Value::U32(v), Kind::Fixed32) => buf.put_u32_le(*v),
        (Value::U32(v), _) => encoding::encode_varint(*v as u64, buf),
        (Value::U64(v), Kind::Fixed64) => buf.put_u64_le(*v),
        (Value::U64(v), _) => encoding::encode_varint(*v, buf),
        (Value::F32(v), _) => buf.put_f32_le(*v),
        (Value::F64(v), _) => buf.put_f64_le(*v),
        (Value::EnumNumber(v), _) => encoding::encode_varint(*v as u64, buf),
        (other, kind) => panic!("value {other:?} does not fit kind {kind:?}"),
    }
}

fn write_map_key(kind: &Kind, key: &MapKey, buf: &mut impl BufMut) {
    match key {
        MapKey::String(s) => {
            encoding::encode_key(1, WireType::LengthDelimited, buf);
            encoding::encode_varint(s.len() as u64, buf);
            buf.put_slice(s.as_bytes());
        }
        MapKey::Bool(v) => {
            encoding::encode_key(1, WireType::Varint, buf);
            encoding::encode_varint(*v as u64, buf);
        }
        other => {
            let value = match other {
                MapKey::I32(v) => Value::I32(*v),
                MapKey::I64(v) => Value::I64(*v),
                MapKey::U32(v) => Value::U32(*v),
                MapKey::U64(v) => Value::U64(*v),
                MapKey::String(_) | MapKey::Bool(_) => unreachable!("handled above"),
            };
            encoding::encode_key(1, wire_type(kind), buf);
            write_scalar(kind, &value, buf);
        }
    }
}

fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
