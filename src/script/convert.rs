//! Rhai values back to messages, as proto3 JSON would read them, without serde on the way (the
//! other direction, messages shown to scripts, is [`super::to_rhai`]).
//!
//! The serde route (prost-reflect's JSON mapping driven through Rhai's serializer) is the reference:
//! these walks give exactly its values, and only handle the shapes they are sure of. Anything else
//! (well-known types with their own JSON forms, extensions, a value that does not fit its field) goes
//! the serde route, which then also words the error. The unit tests compare both routes.
//! [`encode_message`] goes one step further for replies: from Rhai values straight to bytes.

use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, GeneralPurpose as Engine64};
use base64::{DecodeError, Engine as _};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use rhai::serde::DynamicDeserializer;
use rhai::{Dynamic, ImmutableString, FLOAT, INT};

use super::lazy::{plain, LazyMessage};
use super::to_rhai::has_own_json_form;
use crate::codec::encode::{encode_field, Measured};

/// Converts a script value to `desc` as proto3 JSON would be; unknown fields are an error.
pub(super) fn dynamic_to_message(
    value: &Dynamic,
    desc: &MessageDescriptor,
) -> Result<DynamicMessage, String> {
    match Direct::message(value, desc) {
        Some(message) => Ok(message),
        None => dynamic_to_message_via_serde(value, desc),
    }
}

fn dynamic_to_message_via_serde(
    value: &Dynamic,
    desc: &MessageDescriptor,
) -> Result<DynamicMessage, String> {
    let options = DeserializeOptions::new();
    let value = &plain(value).map_err(|err| err.to_string())?;
    // Straight from Rhai values first; on failure, again through serde_json, whose errors name the
    // problem plainly where Rhai's deserializer wraps them as syntax errors.
    DynamicMessage::deserialize_with_options(
        desc.clone(),
        DynamicDeserializer::new(value),
        &options,
    )
    .or_else(|_| {
        let json: serde_json::Value =
            rhai::serde::from_dynamic(value).map_err(|err| err.to_string())?;
        DynamicMessage::deserialize_with_options(desc.clone(), json, &options)
            .map_err(|err| err.to_string())
    })
}

/// Encodes a script value as a `desc` message into `out`: the bytes of `dynamic_to_message`'s
/// message, written without building that message where [`Write`] can (an untouched lazy message
/// of the field's type is copied as it came).
pub(super) fn encode_message(
    value: &Dynamic,
    desc: &MessageDescriptor,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let start = out.len();
    if Write::message(value, desc, out).is_some() {
        return Ok(());
    }
    out.truncate(start);
    let message = dynamic_to_message(value, desc)?;
    Measured::new(&message).write(out);
    Ok(())
}

/// The field a map entry sets, read alike by both walks: `Some(None)` for `()`, which leaves the
/// field unset (the serde route reads it as JSON null); `None` where only the serde route can say
/// (no such field, or a null that means something).
fn entry_field(
    desc: &MessageDescriptor,
    key: &str,
    value: &Dynamic,
) -> Option<Option<FieldDescriptor>> {
    let field = desc
        .get_field_by_json_name(key)
        .or_else(|| desc.get_field_by_name(key))?;
    if !value.is_unit() {
        return Some(Some(field));
    }
    match field.kind() {
        Kind::Message(m) if has_own_json_form(&m) => None,
        Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => None,
        _ => Some(None),
    }
}

/// The walk from Rhai values to bytes: `None` wherever [`Direct`] would not build the message, or
/// where the order of the written records is not certain to be its encoder's (map fields).
struct Write;

impl Write {
    fn message(value: &Dynamic, desc: &MessageDescriptor, out: &mut Vec<u8>) -> Option<()> {
        if has_own_json_form(desc) || value.is_shared() {
            return None;
        }
        if let Some(lazy) = value.read_lock::<LazyMessage>() {
            let bytes = lazy.bytes_of(desc)?;
            out.extend_from_slice(bytes);
            return Some(());
        }
        let map = value.read_lock::<rhai::Map>()?;
        let mut fields = Vec::with_capacity(map.len());
        for (key, value) in map.iter() {
            if let Some(field) = entry_field(desc, key, value)? {
                fields.push((field, value));
            }
        }
        // Records go out by field number, as the encoder writes them.
        fields.sort_unstable_by_key(|(field, _)| field.number());
        let mut oneofs = Vec::new();
        for (i, (field, _)) in fields.iter().enumerate() {
            // One field under both its names, two members of one oneof: Direct's (or serde's) call.
            if i > 0 && fields[i - 1].0.number() == field.number() {
                return None;
            }
            if let Some(oneof) = field.containing_oneof() {
                if oneofs.contains(&oneof) {
                    return None;
                }
                oneofs.push(oneof);
            }
        }
        for (field, value) in fields {
            // Map entries come in hash order; groups are not length-delimited: the encoder's.
            if field.is_map() || field.is_group() {
                return None;
            }
            if let (Kind::Message(of), false) = (field.kind(), field.is_list()) {
                encode_key(field.number(), WireType::LengthDelimited, out);
                let body = out.len();
                Self::message(value, &of, out)?;
                // The body's length goes in front of it, from a buffer on the stack.
                let mut prefix = [0u8; 10];
                let mut free = &mut prefix[..];
                encode_varint((out.len() - body) as u64, &mut free);
                let used = 10 - free.len();
                out.splice(body..body, prefix[..used].iter().copied());
                continue;
            }
            let value = Direct::field(value, &field)?;
            if !field.supports_presence() && value.is_default_for_field(&field) {
                continue;
            }
            encode_field(&field, &value, out);
        }
        Some(())
    }
}

/// The direct walk from Rhai values: `None` wherever it is not certain to match the serde route
/// (which prost-reflect's JSON deserializer drives with the same accepts and rejects as here).
struct Direct;

impl Direct {
    fn message(value: &Dynamic, desc: &MessageDescriptor) -> Option<DynamicMessage> {
        if has_own_json_form(desc) || value.is_shared() {
            return None;
        }
        if let Some(lazy) = value.read_lock::<LazyMessage>() {
            return match lazy.message_of(desc) {
                Some(message) => Some(message),
                None => Self::message(&lazy.clone().into_map().ok()?, desc),
            };
        }
        let map = value.read_lock::<rhai::Map>()?;
        let mut message = DynamicMessage::new(desc.clone());
        for (key, value) in map.iter() {
            let Some(field) = entry_field(desc, key, value)? else {
                continue;
            };
            let value = Self::field(value, &field)?;
            // Two members of one oneof (or one field under both its names): the serde route's error.
            if let Some(oneof) = field.containing_oneof() {
                if oneof.fields().any(|f| message.has_field(&f)) {
                    return None;
                }
            }
            message.set_field(&field, value);
        }
        Some(message)
    }

    fn field(value: &Dynamic, field: &FieldDescriptor) -> Option<Value> {
        if value.is_shared() {
            return None;
        }
        let kind = field.kind();
        if field.is_list() {
            let items = value.read_lock::<rhai::Array>()?;
            let items = items
                .iter()
                .map(|item| Self::single(item, &kind))
                .collect::<Option<Vec<_>>>()?;
            Some(Value::List(items))
        } else if field.is_map() {
            let Kind::Message(entry) = &kind else {
                return None;
            };
            let key_kind = entry.map_entry_key_field().kind();
            let value_kind = entry.map_entry_value_field().kind();
            let map = value.read_lock::<rhai::Map>()?;
            let mut entries = std::collections::HashMap::with_capacity(map.len());
            for (key, value) in map.iter() {
                let key = match key_kind {
                    Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(key.parse().ok()?),
                    Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(key.parse().ok()?),
                    Kind::Uint32 | Kind::Fixed32 => MapKey::U32(key.parse().ok()?),
                    Kind::Uint64 | Kind::Fixed64 => MapKey::U64(key.parse().ok()?),
                    Kind::Bool => MapKey::Bool(key.parse().ok()?),
                    Kind::String => MapKey::String(key.to_string()),
                    _ => return None,
                };
                entries.insert(key, Self::single(value, &value_kind)?);
            }
            Some(Value::Map(entries))
        } else {
            Self::single(value, &kind)
        }
    }

    /// One value of `kind` (a singular field, a list item or a map value).
    fn single(value: &Dynamic, kind: &Kind) -> Option<Value> {
        if value.is_shared() {
            return None;
        }
        if let Kind::Message(desc) = kind {
            return Self::message(value, desc).map(Value::Message);
        }
        if let Ok(n) = value.as_int() {
            return Self::from_int(n, kind);
        }
        if let Ok(x) = value.as_float() {
            return Self::from_float(x, kind);
        }
        if let Ok(b) = value.as_bool() {
            return matches!(kind, Kind::Bool).then_some(Value::Bool(b));
        }
        let s = value.read_lock::<ImmutableString>()?;
        Self::from_str(&s, kind)
    }

    fn from_int(n: INT, kind: &Kind) -> Option<Value> {
        Some(match kind {
            Kind::Double => Value::F64(n as f64),
            Kind::Float => Value::F32(n as f32),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(n.try_into().ok()?),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(n),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(n.try_into().ok()?),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(n.try_into().ok()?),
            Kind::Enum(e) if e.full_name() != "google.protobuf.NullValue" => {
                Value::EnumNumber(n.try_into().ok()?)
            }
            _ => return None,
        })
    }

    fn from_float(x: FLOAT, kind: &Kind) -> Option<Value> {
        // An integer field takes a float without a fraction, within its range.
        let whole = |min: f64, max: f64| (x.fract() == 0.0 && x >= min && x <= max).then_some(x);
        Some(match kind {
            Kind::Double => Value::F64(x),
            Kind::Float => {
                if x < f64::from(f32::MIN) || x > f64::from(f32::MAX) {
                    return None;
                }
                Value::F32(x as f32)
            }
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                Value::I32(whole(f64::from(i32::MIN), f64::from(i32::MAX))? as i32)
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                Value::I64(whole(i64::MIN as f64, i64::MAX as f64)? as i64)
            }
            Kind::Uint32 | Kind::Fixed32 => Value::U32(whole(0.0, f64::from(u32::MAX))? as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(whole(0.0, u64::MAX as f64)? as u64),
            _ => return None,
        })
    }

    fn from_str(s: &str, kind: &Kind) -> Option<Value> {
        Some(match kind {
            Kind::String => Value::String(s.to_owned()),
            Kind::Bytes => Value::Bytes(decode_base64(s)?.into()),
            Kind::Double => Value::F64(parse_float(s)?),
            Kind::Float => Value::F32(parse_float(s)?),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(s.parse().ok()?),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(s.parse().ok()?),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(s.parse().ok()?),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(s.parse().ok()?),
            Kind::Enum(e) if e.full_name() != "google.protobuf.NullValue" => {
                Value::EnumNumber(e.get_value_by_name(s)?.number())
            }
            _ => return None,
        })
    }
}

/// A float field's text: a number, or JSON's names for the values it cannot write.
fn parse_float<T: FromStr + From<f32>>(s: &str) -> Option<T> {
    match s.parse() {
        Ok(x) => Some(x),
        Err(_) => match s {
            "Infinity" => Some(T::from(f32::INFINITY)),
            "-Infinity" => Some(T::from(f32::NEG_INFINITY)),
            "NaN" => Some(T::from(f32::NAN)),
            _ => None,
        },
    }
}

/// Base64 as proto3 JSON reads it: standard or URL-safe alphabet, padding optional.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD_LENIENT: Engine64 = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE_LENIENT: Engine64 = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    match STANDARD_LENIENT.decode(s) {
        Ok(bytes) => Some(bytes),
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => URL_SAFE_LENIENT.decode(s).ok(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::to_rhai::{message_to_dynamic, message_to_dynamic_via_serde, TO_SCRIPT};
    use super::*;
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use prost_reflect::DescriptorPool;
    use serde_json::{json, Value as Json};

    const PROTO: &str = r#"
        syntax = "proto3";
        package c;
        import "google/protobuf/timestamp.proto";
        import "google/protobuf/struct.proto";
        import "google/protobuf/wrappers.proto";
        enum Color { BLACK = 0; WHITE = 1; RED = 3; }
        message Inner { string name = 1; Color color = 2; repeated int32 nums = 3; int64 big = 4; }
        message All {
            double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;
            sint32 s32 = 7; sint64 s64 = 8; fixed32 fx32 = 9; fixed64 fx64 = 10; sfixed32 sf32 = 11;
            sfixed64 sf64 = 12; bool b = 13; string s = 14; bytes by = 15; Color color = 16;
            Inner inner = 17; repeated Inner inners = 18; repeated string strs = 19;
            repeated Color colors = 20; map<string, Inner> by_name = 21; map<int32, string> by_num = 22;
            map<bool, int64> by_flag = 23; map<uint64, Color> by_u64 = 24;
            oneof choice { string c1 = 25; Inner c2 = 26; }
            optional int32 maybe = 27; google.protobuf.Timestamp ts = 28; google.protobuf.Struct st = 29;
            google.protobuf.Int32Value w = 30; google.protobuf.Value v = 31;
            repeated google.protobuf.NullValue nvs = 32; repeated double ds = 33; repeated float fs = 34;
        }
    "#;

    fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| crate::protos::compile_texts(&[("c.proto", PROTO)]))
    }

    fn desc(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).unwrap()
    }

    fn to_json(message: &DynamicMessage) -> Json {
        message
            .serialize_with_options(serde_json::value::Serializer, &TO_SCRIPT)
            .unwrap()
    }

    /// A small deterministic generator (proptest picks the seeds).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self) -> bool {
            self.next() & 1 == 1
        }
        fn pick<T: Clone>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())].clone()
        }
    }

    fn inner_json(g: &mut Gen) -> Json {
        let mut m = serde_json::Map::new();
        if g.chance() {
            m.insert(
                "name".into(),
                g.pick(&[json!(""), json!("Bof"), json!("é ☃")]),
            );
        }
        if g.chance() {
            m.insert(
                "color".into(),
                g.pick(&[json!("RED"), json!(1), json!(7), json!(0)]),
            );
        }
        if g.chance() {
            m.insert(
                "nums".into(),
                g.pick(&[json!([]), json!([1, -2, 2147483647])]),
            );
        }
        if g.chance() {
            m.insert(
                "big".into(),
                g.pick(&[json!("-9223372036854775808"), json!(444325235223i64)]),
            );
        }
        Json::Object(m)
    }

    /// A random `c.All` in proto3 JSON, touching every kind of field.
    fn all_json(g: &mut Gen) -> Json {
        let mut m = serde_json::Map::new();
        let mut put = |g: &mut Gen, key: &str, options: &[Json]| {
            if g.chance() {
                let v = g.pick(options);
                m.insert(key.into(), v);
            }
        };
        put(
            g,
            "d",
            &[
                json!(0.0),
                json!(4.55332),
                json!(-1e300),
                json!("NaN"),
                json!("-Infinity"),
            ],
        );
        put(
            g,
            "f",
            &[json!(232.3), json!(-0.0), json!("Infinity"), json!(3.4e38)],
        );
        put(g, "i32", &[json!(-2147483648), json!(32)]);
        put(g, "i64", &[json!("9223372036854775807"), json!(-5)]);
        put(g, "u32", &[json!(4294967295u32), json!(0)]);
        put(
            g,
            "u64",
            &[
                json!("18446744073709551615"),
                json!("9223372036854775808"),
                json!(7),
            ],
        );
        put(g, "s32", &[json!(-7)]);
        put(g, "s64", &[json!("-9223372036854775808")]);
        put(g, "fx32", &[json!(1)]);
        put(g, "fx64", &[json!("12345678901234")]);
        put(g, "sf32", &[json!(-1)]);
        put(g, "sf64", &[json!(-2)]);
        put(g, "b", &[json!(true), json!(false)]);
        put(g, "s", &[json!(""), json!("a name")]);
        put(g, "by", &[json!(""), json!("AAEC/w=="), json!("aGk")]);
        put(g, "color", &[json!("WHITE"), json!(5)]);
        let inner = inner_json(g);
        put(g, "inner", &[inner]);
        let inners = json!([inner_json(g), inner_json(g)]);
        put(g, "inners", &[inners, json!([])]);
        put(g, "strs", &[json!(["x", ""])]);
        put(g, "colors", &[json!(["RED", 2, 9])]);
        let by_name = json!({ "k": inner_json(g), "": {} });
        put(g, "byName", &[by_name]);
        put(g, "byNum", &[json!({ "-1": "minus", "7": "" })]);
        put(g, "byFlag", &[json!({ "true": 1, "false": "-3" })]);
        put(
            g,
            "byU64",
            &[json!({ "18446744073709551615": "RED", "0": 4 })],
        );
        // One member of the oneof at most.
        let c2 = inner_json(g);
        match g.below(3) {
            0 => put(g, "c1", &[json!(""), json!("ofcourse")]),
            1 => put(g, "c2", &[c2]),
            _ => {}
        }
        put(g, "maybe", &[json!(0), json!(9)]);
        put(g, "ts", &[json!("2024-01-02T03:04:05.5Z")]);
        put(g, "st", &[json!({ "a": 1, "b": [true, null, "x"] })]);
        put(g, "w", &[json!(5), json!(0)]);
        put(g, "v", &[json!(null), json!("x"), json!({ "n": 1.5 })]);
        put(g, "nvs", &[json!([null])]);
        put(g, "ds", &[json!([1.0, "NaN", -0.5])]);
        put(g, "fs", &[json!([1.25, "Infinity"])]);
        Json::Object(m)
    }

    fn all_message(g: &mut Gen) -> DynamicMessage {
        let json = all_json(g);
        DynamicMessage::deserialize(desc("c.All"), json.clone())
            .unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// Script values a reply field might be given, fitting or not.
    fn a_value(g: &mut Gen) -> Dynamic {
        let int = g.pick(&[0, 1, -1, 3, 9, INT::MAX, INT::MIN, 1 << 31, 1 << 32]);
        let float = g.pick(&[
            0.0,
            2.0,
            2.5,
            -3.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            4294967296.0,
        ]);
        let text = g.pick(&[
            "", "12", "-7", "1.5", "NaN", "Infinity", "RED", "AAEC", "a-_b", "true", "x y",
        ]);
        match g.below(9) {
            0 => Dynamic::UNIT,
            1 => int.into(),
            2 => float.into(),
            3 => text.into(),
            4 => g.chance().into(),
            5 => 'c'.into(),
            6 => Dynamic::from_blob(vec![1, 2]),
            7 => {
                let mut items = rhai::Array::new();
                for _ in 0..g.below(3) {
                    items.push(a_value(g));
                }
                items.into()
            }
            _ => {
                let mut map = rhai::Map::new();
                for _ in 0..g.below(3) {
                    let key = g.pick(&[
                        "name", "color", "nums", "big", "0", "-1", "true", "7", "nope",
                    ]);
                    map.insert(key.into(), a_value(g));
                }
                map.into()
            }
        }
    }

    /// A reply map for `c.All`: a converted message with some fields replaced or added.
    fn a_reply(g: &mut Gen) -> Dynamic {
        let mut value = message_to_dynamic_via_serde(&all_message(g)).unwrap();
        let names: Vec<String> = desc("c.All")
            .fields()
            .flat_map(|f| [f.json_name().to_string(), f.name().to_string()])
            .chain(["unknown".to_string()])
            .collect();
        let mut map = value.write_lock::<rhai::Map>().unwrap();
        if g.chance() {
            // Well-known types always take the serde route: leave them out half the time.
            for wkt in ["ts", "st", "w", "v", "nvs"] {
                map.remove(wkt);
            }
        }
        for _ in 0..g.below(4) {
            let name = g.pick(&names);
            map.insert(name.into(), a_value(g));
        }
        drop(map);
        value
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The direct walk shows a message exactly as the serde route does.
        #[test]
        fn message_to_dynamic_matches_serde(seed in 1u64..) {
            let message = all_message(&mut Gen(seed));
            let direct = message_to_dynamic(&message).unwrap();
            let serde = message_to_dynamic_via_serde(&message).unwrap();
            prop_assert_eq!(format!("{direct:?}"), format!("{serde:?}"));
        }

        /// Whatever the direct walk accepts, the serde route accepts too, giving the same message
        /// (anything the walk turns down goes the serde route, errors included).
        #[test]
        fn dynamic_to_message_matches_serde(seed in 1u64..) {
            let reply = a_reply(&mut Gen(seed));
            let desc = desc("c.All");
            if let Some(direct) = Direct::message(&reply, &desc) {
                let serde = dynamic_to_message_via_serde(&reply, &desc);
                prop_assert!(serde.is_ok(), "{reply:?}: direct gave {}, serde {:?}", to_json(&direct), serde);
                prop_assert_eq!(to_json(&direct), to_json(&serde.unwrap()), "{:?}", reply);
            }
        }
    }

    /// The walk must handle the usual replies itself, or it saves nothing.
    #[test]
    fn ordinary_messages_take_the_direct_walk_both_ways() {
        let mut g = Gen(7);
        let mut direct = 0;
        for _ in 0..200 {
            let json = inner_json(&mut g);
            let message = DynamicMessage::deserialize(desc("c.Inner"), json).unwrap();
            let shown = message_to_dynamic(&message).unwrap();
            let back = Direct::message(&shown, &desc("c.Inner"))
                .unwrap_or_else(|| panic!("not the direct walk: {shown:?}"));
            assert_eq!(to_json(&back), to_json(&message));
            direct += 1;
        }
        assert_eq!(direct, 200);

        // The bench's echo: a nested message with every scalar, a oneof, an enum list.
        let json = json!({ "d": 4.55332, "f": 232.3, "b": true, "i64": 444325235223i64, "c1": "x",
            "inners": [{ "name": "Bof", "color": "RED" }], "byNum": { "3": "three" }, "by": "AAE=" });
        let message = DynamicMessage::deserialize(desc("c.All"), json).unwrap();
        let back = Direct::message(&message_to_dynamic(&message).unwrap(), &desc("c.All"));
        assert_eq!(to_json(&back.expect("direct walk")), to_json(&message));
    }

    /// The property above is only worth something if the walk takes many of those replies.
    #[test]
    fn the_walk_takes_many_of_the_generated_replies() {
        let taken = (1..=1000u64)
            .filter(|seed| Direct::message(&a_reply(&mut Gen(*seed)), &desc("c.All")).is_some())
            .count();
        assert!(taken > 100, "{taken} of 1000");
    }

    #[test]
    fn a_reply_that_does_not_fit_keeps_the_serde_error() {
        let mut map = rhai::Map::new();
        map.insert("nope".into(), 1.into());
        let err = dynamic_to_message(&map.into(), &desc("c.Inner")).unwrap_err();
        assert_eq!(err, "unrecognized field name 'nope'");

        let mut map = rhai::Map::new();
        map.insert("c1".into(), "a".into());
        map.insert("c2".into(), rhai::Map::new().into());
        let err = dynamic_to_message(&map.into(), &desc("c.All")).unwrap_err();
        assert!(
            err.contains("multiple fields provided for oneof 'choice'"),
            "{err}"
        );
    }
}
