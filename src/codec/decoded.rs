//! How much memory a request takes once decoded into a `DynamicMessage`, estimated from its bytes
//! before they are decoded (`--max-request-memory`).
//!
//! A decoded message is much larger than its encoding: every field value is a `Value` enum, every
//! nested message a `DynamicMessage` with a `BTreeMap` node for its fields. A 4 MB request of two-byte
//! empty entries (`repeated User user = 1`, 2,000,000 of them) decodes to about 120 MB, and with one
//! field set in each entry to several times that. The estimate walks the wire format with the
//! message's descriptor, charging each value what the decoded form takes, and stops as soon as the
//! limit is passed. It runs only on requests large enough to possibly pass the limit (see
//! [`MAX_PER_BYTE`]), so small calls never pay for it. Malformed bytes end the estimate: decoding
//! then reports them as it always has. JSON requests (Connect, HTTP/JSON) are estimated from their
//! punctuation ([`check_json`]): `[{},{},…]` expands as much as empty entries do.

use std::sync::atomic::{AtomicUsize, Ordering};

use prost_reflect::{Kind, MessageDescriptor};
use tonic::Status;

/// A `Value` (in a field or a list).
const VALUE: usize = 64;
/// A `DynamicMessage` without fields.
const MESSAGE: usize = 48;
/// The `BTreeMap` node a message allocates for its first field (it holds up to eleven).
const FIELD_NODE: usize = 768;
/// One entry of a map field (`MapKey`, `Value` and the hash table's share), besides its payload.
const MAP_ENTRY: usize = 160;
/// The most one request byte can cost decoded: a four-byte nested message with one varint field
/// (`0a 02 08 01`) costs a value, a message, a node and a value.
const MAX_PER_BYTE: usize = (VALUE + MESSAGE + FIELD_NODE + VALUE).div_ceil(4);
/// Nesting deeper than prost's own limit does not decode anyway.
const MAX_DEPTH: u32 = 100;

/// Default `--max-request-memory`.
pub(crate) const DEFAULT_MAX_REQUEST_MEMORY: usize = 64 << 20;

static MAX_REQUEST_MEMORY: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_REQUEST_MEMORY);

/// Sets `--max-request-memory` for every request decoded from now on (0 = no limit). One value per
/// process, as the flag is: requests are decoded in many places (every protocol, streams, the
/// direct path's fallback), and none of them has another use for the setting.
pub(crate) fn set_max_request_memory(bytes: usize) {
    MAX_REQUEST_MEMORY.store(bytes, Ordering::Relaxed);
}

/// RESOURCE_EXHAUSTED when a request of type `desc` would take more than `--max-request-memory`
/// decoded.
pub(crate) fn check(desc: &MessageDescriptor, bytes: &[u8]) -> Result<(), Status> {
    let limit = MAX_REQUEST_MEMORY.load(Ordering::Relaxed);
    if limit == 0 || bytes.len().saturating_mul(MAX_PER_BYTE) <= limit {
        return Ok(());
    }
    let mut left = limit;
    match estimate(desc, bytes, &mut left, 0) {
        Ok(()) => Ok(()),
        Err(Over) => Err(Status::resource_exhausted(format!(
            "the {} request ({} bytes) would take more than {limit} bytes of memory decoded \
             (--max-request-memory)",
            desc.full_name(),
            bytes.len()
        ))),
    }
}

/// The most one byte of JSON can cost decoded (`{},` — its parsed form included — is three bytes
/// charged an object).
const JSON_MAX_PER_BYTE: usize = (VALUE + MESSAGE + FIELD_NODE).div_ceil(2);

/// [`check`] for a JSON request body (`name`: the type it is read as). Each object is charged a
/// value, a message and a field node, each further element or field a value, each byte of text
/// one byte: near what decoding takes for lists of small objects or scalars, the shapes that expand.
pub(crate) fn check_json(name: &str, text: &[u8]) -> Result<(), Status> {
    let limit = MAX_REQUEST_MEMORY.load(Ordering::Relaxed);
    if limit == 0 || text.len().saturating_mul(JSON_MAX_PER_BYTE) <= limit {
        return Ok(());
    }
    let mut left = limit;
    let (mut in_string, mut escaped) = (false, false);
    let mut result = spend(&mut left, text.len());
    for &b in text {
        if result.is_err() {
            break;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        result = match b {
            b'"' => {
                in_string = true;
                Ok(())
            }
            b'{' => spend(&mut left, VALUE + MESSAGE + FIELD_NODE),
            b',' => spend(&mut left, VALUE),
            _ => Ok(()),
        };
    }
    result.map_err(|Over| {
        Status::resource_exhausted(format!(
            "the {name} request ({} bytes of JSON) would take more than {limit} bytes of memory \
             decoded (--max-request-memory)",
            text.len()
        ))
    })
}

struct Over;

fn spend(left: &mut usize, n: usize) -> Result<(), Over> {
    *left = left.checked_sub(n).ok_or(Over)?;
    Ok(())
}

fn estimate(
    desc: &MessageDescriptor,
    mut buf: &[u8],
    left: &mut usize,
    depth: u32,
) -> Result<(), Over> {
    spend(left, MESSAGE)?;
    if !buf.is_empty() {
        spend(left, FIELD_NODE)?;
    }
    while !buf.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut buf) else {
            return Ok(());
        };
        let field = desc.get_field((key >> 3) as u32);
        match key & 7 {
            0 => {
                if prost::encoding::decode_varint(&mut buf).is_err() {
                    return Ok(());
                }
                spend(left, VALUE)?;
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Ok(());
                }
                buf = &buf[n..];
                spend(left, VALUE)?;
            }
            2 => {
                let Ok(len) = prost::encoding::decode_varint(&mut buf) else {
                    return Ok(());
                };
                let Some(len) = usize::try_from(len).ok().filter(|&l| l <= buf.len()) else {
                    return Ok(());
                };
                let (payload, rest) = buf.split_at(len);
                buf = rest;
                match field.map(|f| f.kind()) {
                    Some(Kind::Message(m)) if m.is_map_entry() => {
                        spend(left, MAP_ENTRY + payload.len())?
                    }
                    Some(Kind::Message(m)) => {
                        if depth >= MAX_DEPTH {
                            return Ok(());
                        }
                        spend(left, VALUE)?;
                        estimate(&m, payload, left, depth + 1)?;
                    }
                    Some(Kind::String | Kind::Bytes) | None => spend(left, VALUE + payload.len())?,
                    // Packed scalars: one value each.
                    Some(Kind::Fixed32 | Kind::Sfixed32 | Kind::Float) => {
                        spend(left, VALUE * (len / 4))?
                    }
                    Some(Kind::Fixed64 | Kind::Sfixed64 | Kind::Double) => {
                        spend(left, VALUE * (len / 8))?
                    }
                    Some(_) => {
                        let values = payload.iter().filter(|b| **b & 0x80 == 0).count();
                        spend(left, VALUE * values)?
                    }
                }
            }
            // Groups (proto2) and anything else: left to the decoder.
            _ => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> MessageDescriptor {
        let pool = crate::protos::compile_texts(&[(
            "d.proto",
            r#"syntax = "proto3"; package d;
               message Item { uint32 id = 1; }
               message Req { string name = 1; repeated Item items = 2; repeated int32 nums = 3; }"#,
        )]);
        pool.get_message_by_name("d.Req").unwrap()
    }

    /// Field `number`, length-delimited, `payload`.
    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_large_string_or_packed_list_passes_and_millions_of_entries_do_not() {
        let desc = req();
        // 4 MB of text, and 1M packed ints: a few megabytes and 64 MB decoded.
        check(&desc, &field(1, &vec![b'x'; 4_000_000])).unwrap();
        check(&desc, &field(3, &vec![1u8; 1_000_000])).unwrap();
        // 2M empty items: 2M messages.
        let err = check(&desc, &[0x12, 0x00].repeat(2_000_000)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("--max-request-memory"), "{err:?}");
        // 500k items with an id: each a message with a field node.
        check(&desc, &[0x12, 0x02, 0x08, 0x01].repeat(500_000)).unwrap_err();
        // JSON: the same text passes, an array of many objects does not.
        let text = format!("{{\"name\":\"{}\"}}", "{,}".repeat(1_000_000));
        check_json("d.Req", text.as_bytes()).unwrap();
        let items = format!("{{\"items\":[{}{{}}]}}", "{},".repeat(1_000_000));
        check_json("d.Req", items.as_bytes()).unwrap_err();
    }
}
