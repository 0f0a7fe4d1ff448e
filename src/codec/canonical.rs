//! Protobuf bytes read without decoding them: a check that a request is in *canonical* form, and
//! lookups of its fields by number.
//!
//! Canonical means what decoding into a `DynamicMessage` and encoding again would give back
//! byte for byte: known fields only, by ascending number, each singular field once, minimal varints,
//! no default values in fields without presence, packed where the field is packed, valid UTF-8. Every
//! protobuf library writes messages that way, so a reply that copies parts of a canonical request can
//! copy its bytes, which is what the general path would have encoded anyway. Anything else (unknown
//! fields, maps, groups, proto2, a field written twice) is simply "not canonical": the caller then takes
//! the general path, which decodes — and reports a malformed request as it always has.

use std::collections::HashMap;

use prost_reflect::{Kind, MessageDescriptor, Syntax};

/// Deeper than this is left to the general path (prost's own limit is 100).
const MAX_DEPTH: u32 = 64;

/// The layouts of a message type and of every message type reachable from it.
#[derive(Debug)]
pub(crate) struct Layouts {
    /// Index 0 is the root type. `None`: a type the check does not cover (present → not canonical).
    types: Vec<Option<Layout>>,
}

#[derive(Debug)]
struct Layout {
    /// By ascending number.
    fields: Vec<FieldLayout>,
}

#[derive(Clone, Copy, Debug)]
struct FieldLayout {
    number: u32,
    kind: ValueKind,
    repeated: bool,
    packed: bool,
    /// A singular field without presence: its default value is never written.
    implicit: bool,
    /// Bit of its oneof in a per-message mask (`None`: not in a oneof, or more than 64 of them).
    oneof: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Bool,
    Enum,
    Fixed32,
    Fixed64,
    Float,
    Double,
    String,
    Bytes,
    Message(u32),
    /// Maps (their entries come back in hash order) and groups.
    Unsupported,
}

impl Layouts {
    /// Layouts of `root` and everything it contains.
    pub(crate) fn new(root: &MessageDescriptor) -> Layouts {
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut pending = vec![root.clone()];
        index.insert(root.full_name().to_string(), 0);
        let mut types = Vec::new();
        while types.len() < pending.len() {
            let desc = pending[types.len()].clone();
            let mut type_of = |m: MessageDescriptor| -> u32 {
                let next = index.len() as u32;
                *index.entry(m.full_name().to_string()).or_insert_with(|| {
                    pending.push(m);
                    next
                })
            };
            types.push(layout(&desc, &mut type_of));
        }
        Layouts { types }
    }

    /// Whether `bytes` is a canonical message of the root type.
    pub(crate) fn is_canonical(&self, bytes: &[u8]) -> bool {
        self.check(0, bytes, 0)
    }

    fn check(&self, ty: u32, mut buf: &[u8], depth: u32) -> bool {
        let Some(layout) = &self.types[ty as usize] else {
            return buf.is_empty();
        };
        if depth > MAX_DEPTH {
            return false;
        }
        let (mut prev, mut prev_repeats, mut oneofs) = (0u32, false, 0u64);
        let mut cursor = 0;
        while !buf.is_empty() {
            let Some(key) = read_varint(&mut buf) else {
                return false;
            };
            let (number, wire) = (key >> 3, (key & 7) as u8);
            if number == 0 || number > u64::from(u32::MAX) {
                return false;
            }
            let number = number as u32;
            if number < prev || (number == prev && !prev_repeats) {
                return false;
            }
            while layout.fields.get(cursor).is_some_and(|f| f.number < number) {
                cursor += 1;
            }
            let Some(field) = layout.fields.get(cursor).filter(|f| f.number == number) else {
                return false;
            };
            if number != prev {
                if let Some(bit) = field.oneof {
                    if oneofs & (1 << bit) != 0 {
                        return false;
                    }
                    oneofs |= 1 << bit;
                }
            }
            prev = number;
            prev_repeats = field.repeated && !field.packed;
            let ok = if field.packed {
                wire == 2
                    && match read_len(&mut buf) {
                        Some(payload) => !payload.is_empty() && packed_ok(field.kind, payload),
                        None => false,
                    }
            } else {
                self.value_ok(field, wire, &mut buf, depth)
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// One value of `field` (with wire type `wire`), consumed from `buf`.
    fn value_ok(&self, field: &FieldLayout, wire: u8, buf: &mut &[u8], depth: u32) -> bool {
        let implicit = field.implicit;
        match field.kind {
            ValueKind::Fixed32 | ValueKind::Float => {
                let Some(bits) = take::<4>(buf) else {
                    return false;
                };
                wire == 5 && !(implicit && fixed32_is_default(field.kind, bits))
            }
            ValueKind::Fixed64 | ValueKind::Double => {
                let Some(bits) = take::<8>(buf) else {
                    return false;
                };
                wire == 1 && !(implicit && fixed64_is_default(field.kind, bits))
            }
            ValueKind::String | ValueKind::Bytes | ValueKind::Message(_) => {
                if wire != 2 {
                    return false;
                }
                let Some(payload) = read_len(buf) else {
                    return false;
                };
                match field.kind {
                    ValueKind::String => !(implicit && payload.is_empty()) && is_utf8(payload),
                    ValueKind::Bytes => !(implicit && payload.is_empty()),
                    ValueKind::Message(ty) => self.check(ty, payload, depth + 1),
                    _ => unreachable!("matched above"),
                }
            }
            ValueKind::Unsupported => false,
            varint => {
                wire == 0
                    && read_varint(buf)
                        .is_some_and(|v| varint_ok(varint, v) && !(implicit && v == 0))
            }
        }
    }
}

fn layout(
    desc: &MessageDescriptor,
    type_of: &mut impl FnMut(MessageDescriptor) -> u32,
) -> Option<Layout> {
    if desc.parent_file().syntax() != Syntax::Proto3 || desc.extension_ranges().next().is_some() {
        return None;
    }
    let oneofs: Vec<String> = desc.oneofs().map(|o| o.full_name().to_string()).collect();
    let mut fields: Vec<FieldLayout> = desc
        .fields()
        .map(|f| {
            let kind = if f.is_map() || f.is_group() {
                ValueKind::Unsupported
            } else {
                match f.kind() {
                    Kind::Int32 => ValueKind::Int32,
                    Kind::Int64 => ValueKind::Int64,
                    Kind::Uint32 => ValueKind::Uint32,
                    Kind::Uint64 => ValueKind::Uint64,
                    Kind::Sint32 => ValueKind::Sint32,
                    Kind::Sint64 => ValueKind::Sint64,
                    Kind::Bool => ValueKind::Bool,
                    Kind::Enum(_) => ValueKind::Enum,
                    Kind::Fixed32 | Kind::Sfixed32 => ValueKind::Fixed32,
                    Kind::Fixed64 | Kind::Sfixed64 => ValueKind::Fixed64,
                    Kind::Float => ValueKind::Float,
                    Kind::Double => ValueKind::Double,
                    Kind::String => ValueKind::String,
                    Kind::Bytes => ValueKind::Bytes,
                    Kind::Message(m) => ValueKind::Message(type_of(m)),
                }
            };
            let oneof = f
                .containing_oneof()
                .and_then(|o| oneofs.iter().position(|n| n == o.full_name()))
                .and_then(|i| u8::try_from(i).ok())
                .filter(|i| *i < 64);
            if f.containing_oneof().is_some() && oneof.is_none() {
                // More than 64 oneofs: such a field cannot be checked, so never counts as canonical.
                return FieldLayout {
                    number: f.number(),
                    kind: ValueKind::Unsupported,
                    repeated: false,
                    packed: false,
                    implicit: false,
                    oneof: None,
                };
            }
            FieldLayout {
                number: f.number(),
                kind,
                repeated: f.is_list(),
                packed: f.is_packed() && f.is_list(),
                implicit: !f.is_list() && !f.supports_presence(),
                oneof,
            }
        })
        .collect();
    fields.sort_by_key(|f| f.number);
    Some(Layout { fields })
}

/// A minimal (canonical) varint: no trailing zero groups, at most 10 bytes.
pub(crate) fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if (i > 0 && byte == 0) || (i == 9 && byte > 1) {
                return None;
            }
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

/// A length-delimited payload with a minimal length prefix.
fn read_len<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(buf)?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (payload, rest) = buf.split_at(len);
    *buf = rest;
    Some(payload)
}

fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

/// What prost would read back unchanged: an int32 is a sign-extended 32-bit value, and so on.
fn varint_ok(kind: ValueKind, v: u64) -> bool {
    match kind {
        ValueKind::Int32 | ValueKind::Enum => v == i64::from(v as i32) as u64,
        ValueKind::Uint32 | ValueKind::Sint32 => v <= u64::from(u32::MAX),
        ValueKind::Bool => v <= 1,
        _ => true,
    }
}

/// Default values as prost-reflect compares them (`-0.0 == 0.0`, so a negative zero is dropped too).
fn fixed32_is_default(kind: ValueKind, bits: [u8; 4]) -> bool {
    match kind {
        ValueKind::Float => f32::from_le_bytes(bits) == 0.0,
        _ => bits == [0; 4],
    }
}

fn fixed64_is_default(kind: ValueKind, bits: [u8; 8]) -> bool {
    match kind {
        ValueKind::Double => f64::from_le_bytes(bits) == 0.0,
        _ => bits == [0; 8],
    }
}

fn packed_ok(kind: ValueKind, mut payload: &[u8]) -> bool {
    match kind {
        ValueKind::Fixed32 | ValueKind::Float => payload.len().is_multiple_of(4),
        ValueKind::Fixed64 | ValueKind::Double => payload.len().is_multiple_of(8),
        ValueKind::String | ValueKind::Bytes | ValueKind::Message(_) | ValueKind::Unsupported => {
            false
        }
        varint => {
            while !payload.is_empty() {
                match read_varint(&mut payload) {
                    Some(v) if varint_ok(varint, v) => {}
                    _ => return false,
                }
            }
            true
        }
    }
}

/// One field found in canonical bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawField<'a> {
    /// Every record of the field, keys included (several for an unpacked repeated field).
    pub records: &'a [u8],
    /// The value of the (first) record without its key: the varint, the fixed bytes, or the payload
    /// of a length-delimited value without its length.
    pub value: &'a [u8],
}

/// The records of field `number` in canonical bytes (which keep each field's records together).
pub(crate) fn find(buf: &[u8], number: u32) -> Option<RawField<'_>> {
    let mut rest = buf;
    // (start of the first record, end of the last, the first value)
    let mut found: Option<(usize, usize, &[u8])> = None;
    while !rest.is_empty() {
        let start = buf.len() - rest.len();
        let key = read_varint(&mut rest)?;
        let value = skip_value((key & 7) as u8, &mut rest)?;
        let n = key >> 3;
        if n > u64::from(number) {
            break;
        }
        if n == u64::from(number) {
            let end = buf.len() - rest.len();
            found = Some(match found {
                None => (start, end, value),
                Some((first, _, value)) => (first, end, value),
            });
        }
    }
    found.map(|(start, end, value)| RawField {
        records: &buf[start..end],
        value,
    })
}

/// Consumes one value of wire type `wire`; returns it without its length prefix.
fn skip_value<'a>(wire: u8, buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let start = *buf;
    match wire {
        0 => {
            read_varint(buf)?;
            Some(&start[..start.len() - buf.len()])
        }
        1 => take::<8>(buf).map(|_| &start[..8]),
        5 => take::<4>(buf).map(|_| &start[..4]),
        2 => read_len(buf),
        _ => None,
    }
}

/// Each record of a run of records (as in [`RawField::records`]): its value without key and length.
pub(crate) fn values(mut records: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if records.is_empty() {
            return None;
        }
        let key = read_varint(&mut records)?;
        skip_value((key & 7) as u8, &mut records)
    })
}

/// Whether `bytes` is UTF-8; the ASCII test first, inlined, because most strings on the wire are
/// short and ASCII, where `from_utf8`'s call and set-up cost more than the test itself.
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}
