//! Messages to Rhai values, as proto3 JSON would show them, without serde on the way: what a
//! script sees of a request. Well-known types with their own JSON forms and extensions go the serde
//! route, the reference (the unit tests in [`super::convert`] compare both routes).
//!
//! A module of its own, below both [`super::lazy`] (which shows one level of a message at a time
//! with these) and [`super::convert`] (which reads lazy messages back), so neither imports the other
//! back.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, SerializeOptions, Value,
};
use rhai::serde::DynamicSerializer;
use rhai::{Dynamic, EvalAltResult, FLOAT, INT};

/// How requests and incoming messages are shown to scripts: proto3 JSON names, every field present,
/// 64-bit integers as numbers.
pub(super) const TO_SCRIPT: SerializeOptions = SerializeOptions::new()
    .stringify_64_bit_integers(false)
    .skip_default_fields(false);

/// Well-known types have JSON forms of their own (a Timestamp is a string...): the serde route's.
pub(super) fn has_own_json_form(desc: &MessageDescriptor) -> bool {
    desc.package_name() == "google.protobuf"
}

/// `message` as the script sees it: a map by JSON name with every field present.
pub(super) fn message_to_dynamic(message: &DynamicMessage) -> Result<Dynamic, Box<EvalAltResult>> {
    let desc = message.descriptor();
    if has_own_json_form(&desc) || message.extensions().next().is_some() {
        return message_to_dynamic_via_serde(message);
    }
    let mut map = rhai::Map::new();
    for field in desc.fields() {
        // Fields with presence (messages, oneofs, `optional`) only when set, the others always.
        if field.supports_presence() && !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        map.insert(
            field.json_name().into(),
            value_to_dynamic(&value, &field.kind())?,
        );
    }
    Ok(map.into())
}

pub(super) fn value_to_dynamic(value: &Value, kind: &Kind) -> Result<Dynamic, Box<EvalAltResult>> {
    Ok(match value {
        Value::Bool(b) => (*b).into(),
        Value::I32(n) => INT::from(*n).into(),
        Value::I64(n) => (*n).into(),
        Value::U32(n) => INT::from(*n).into(),
        Value::U64(n) => match INT::try_from(*n) {
            Ok(n) => n.into(),
            Err(_) => (*n as FLOAT).into(),
        },
        Value::F32(x) => float_to_dynamic(f64::from(*x)),
        Value::F64(x) => float_to_dynamic(*x),
        Value::String(s) => s.as_str().into(),
        Value::Bytes(b) => STANDARD.encode(b).into(),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => Dynamic::UNIT,
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => v.name().into(),
                None => INT::from(*n).into(),
            },
            _ => INT::from(*n).into(),
        },
        Value::Message(m) => message_to_dynamic(m)?,
        Value::List(items) => items
            .iter()
            .map(|item| value_to_dynamic(item, kind))
            .collect::<Result<rhai::Array, _>>()?
            .into(),
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                _ => unreachable!("a map field's kind is its entry message"),
            };
            let mut map = rhai::Map::new();
            for (key, value) in entries {
                let key = match key {
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                    MapKey::String(s) => s.clone(),
                };
                map.insert(key.into(), value_to_dynamic(value, &value_kind)?);
            }
            map.into()
        }
    })
}

pub(super) fn message_to_dynamic_via_serde(
    message: &DynamicMessage,
) -> Result<Dynamic, Box<EvalAltResult>> {
    message.serialize_with_options(&mut DynamicSerializer::new(Dynamic::UNIT), &TO_SCRIPT)
}

/// JSON has no NaN or infinities: they are strings.
fn float_to_dynamic(x: f64) -> Dynamic {
    if x.is_finite() {
        x.into()
    } else if x.is_nan() {
        "NaN".into()
    } else if x > 0.0 {
        "Infinity".into()
    } else {
        "-Infinity".into()
    }
}
