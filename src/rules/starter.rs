//! Starter rules: for a method without a handler, a rule a user can paste into a handler file as it
//! is — it must load without a problem and answer. `protodrop check --starter-rules` prints one per
//! unhandled method, and an UNIMPLEMENTED answer shows the one for its method.
//!
//! A reply is written in the message's JSON form (as every handler value is), so each field gets the
//! simplest valid value of that form: a well-known type its own (a Timestamp is an RFC 3339 string,
//! a wrapper its bare value, an `Any` needs its `@type`), a nested message `{}`, and of each oneof
//! only the first member (two members of one oneof would be refused at load).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

/// `[[rule]]` with `method` and a reply (or one stream message) every field of which is set.
pub(crate) fn rule(method: &MethodDescriptor) -> String {
    let name = format!("{}/{}", method.parent_service().full_name(), method.name());
    let example = message_value(&method.output());
    let body = if method.is_server_streaming() {
        format!("stream.messages = [ {example} ]")
    } else {
        format!("reply = {example}")
    };
    format!("[[rule]]\nmethod = \"{name}\"\n{body}\n")
}

/// The message as a TOML inline table: `{ a = "", b = 0 }`, or a well-known type's own form.
fn message_value(desc: &MessageDescriptor) -> String {
    if let Some(value) = well_known_value(desc) {
        return value;
    }
    let mut oneofs_seen = Vec::new();
    let fields: Vec<String> = desc
        .fields()
        .filter(|f| match f.containing_oneof() {
            // `optional` fields are synthetic oneofs of one member: always shown.
            Some(oneof) if !oneof.is_synthetic() => {
                let first = !oneofs_seen.contains(&oneof.name().to_string());
                oneofs_seen.push(oneof.name().to_string());
                first
            }
            _ => true,
        })
        .filter_map(|f| Some(format!("{} = {}", f.name(), field_value(&f)?)))
        .collect();
    if fields.is_empty() {
        "{}".to_string()
    } else {
        format!("{{ {} }}", fields.join(", "))
    }
}

/// `None` for a field left out: an `Any` when the pool has no `google.protobuf.Empty` to name.
fn field_value(field: &FieldDescriptor) -> Option<String> {
    if field.is_list() {
        return Some("[]".to_string());
    }
    if field.is_map() {
        return Some("{}".to_string());
    }
    Some(match field.kind() {
        Kind::String | Kind::Bytes => "\"\"".to_string(),
        Kind::Bool => "false".to_string(),
        Kind::Float | Kind::Double => "0.0".to_string(),
        Kind::Enum(e) => format!(
            "\"{}\"",
            e.values()
                .next()
                .map(|v| v.name().to_string())
                .unwrap_or_default()
        ),
        // Nested messages stay empty: their own fields would multiply the size of a starter (and
        // recurse forever on a recursive type); a well-known type still needs its own form.
        Kind::Message(m) if m.full_name() == "google.protobuf.Any" => well_known_value(&m)?,
        Kind::Message(m) => well_known_value(&m).unwrap_or_else(|| "{}".to_string()),
        _ => "0".to_string(),
    })
}

/// The JSON form of a well-known type's zero value (an `Any` holds an `Empty`, when the pool has it).
fn well_known_value(desc: &MessageDescriptor) -> Option<String> {
    let value = match desc.full_name() {
        "google.protobuf.Timestamp" => "\"1970-01-01T00:00:00Z\"",
        "google.protobuf.Duration" => "\"0s\"",
        "google.protobuf.FieldMask" => "\"\"",
        "google.protobuf.Any" => {
            desc.parent_pool()
                .get_message_by_name("google.protobuf.Empty")?;
            "{ \"@type\" = \"type.googleapis.com/google.protobuf.Empty\", value = {} }"
        }
        "google.protobuf.Struct" | "google.protobuf.Empty" => "{}",
        "google.protobuf.Value" => "\"\"",
        "google.protobuf.ListValue" => "[]",
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => "\"\"",
        "google.protobuf.BoolValue" => "false",
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => "0.0",
        "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value" => "0",
        _ => return None,
    };
    Some(value.to_string())
}
