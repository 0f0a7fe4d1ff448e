//! The request message of a transcoded call: the body (the whole message, one field, or nothing),
//! then query parameters for the other fields (`?a.b=1&c=2&c=3`), then path variables (a query
//! parameter may not name a field the path binds).
//! Values are read as proto3 JSON reads them: numbers from their text, enums by name or number,
//! well-known types from their JSON strings; every unknown name is INVALID_ARGUMENT naming it.

use std::collections::HashSet;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};
use serde_json::{json, Value as Json};
use tonic::Status;

use crate::protocol::json;
use crate::protos::http_routes::{Bindings, BodyRule, Route};

/// Builds one request message; `body` is the parsed body (`None` when there is none).
pub(super) fn build(
    route: &Route,
    body: Option<Json>,
    bindings: &Bindings,
    query: &[(String, String)],
) -> Result<DynamicMessage, Status> {
    let input = route.method.input();
    let mut message = match (&route.body, body) {
        (BodyRule::Whole, Some(body)) => json::from_value(&input, body)?,
        (BodyRule::Field(field), Some(body)) => {
            json::from_value(&input, json!({ field.name(): body })).map_err(|s| {
                Status::invalid_argument(format!(
                    "request body (the field '{}'): {}",
                    field.name(),
                    s.message()
                ))
            })?
        }
        _ => DynamicMessage::new(input),
    };
    if !matches!(route.body, BodyRule::Whole) {
        apply_query(&mut message, route, query)?;
    }
    for (index, value) in bindings {
        let fields = &route.variables[*index];
        let origin = format!("path variable '{}'", dotted(fields));
        set_leaf(
            nested(&mut message, fields, &origin)?,
            &fields[fields.len() - 1],
            value,
            &origin,
        )?;
    }
    Ok(message)
}

fn dotted(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(FieldDescriptor::name)
        .collect::<Vec<_>>()
        .join(".")
}

/// Query parameters onto the message; names are field paths (proto or JSON names).
fn apply_query(
    message: &mut DynamicMessage,
    route: &Route,
    query: &[(String, String)],
) -> Result<(), Status> {
    let bound: Vec<String> = route.variables.iter().map(|f| dotted(f)).collect();
    let mut seen = HashSet::new();
    for (name, value) in query {
        let origin = format!("query parameter '{name}'");
        let fields = resolve(&message.descriptor(), name, &origin)?;
        let path = dotted(&fields);
        if bound.contains(&path) {
            return Err(Status::invalid_argument(format!(
                "{origin}: the field '{path}' is taken from the path ({})",
                route.pattern
            )));
        }
        if let BodyRule::Field(body) = &route.body {
            if fields[0] == *body {
                return Err(Status::invalid_argument(format!(
                    "{origin}: the field '{}' is taken from the request body",
                    body.name()
                )));
            }
        }
        let leaf = &fields[fields.len() - 1];
        if !leaf.is_list() && !seen.insert(path.clone()) {
            return Err(Status::invalid_argument(format!(
                "{origin} is given more than once, but '{path}' is not a repeated field"
            )));
        }
        set_leaf(nested(message, &fields, &origin)?, leaf, value, &origin)?;
    }
    Ok(())
}

/// The fields `a.b.c` names, from `desc`: every one but the last a singular message.
fn resolve(
    desc: &MessageDescriptor,
    name: &str,
    origin: &str,
) -> Result<Vec<FieldDescriptor>, Status> {
    let mut fields = Vec::new();
    let mut desc = desc.clone();
    let parts: Vec<&str> = name.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = desc
            .get_field_by_name(part)
            .or_else(|| desc.get_field_by_json_name(part))
            .ok_or_else(|| {
                let names: Vec<String> = desc.fields().map(|f| f.name().to_string()).collect();
                let names = names.join(", ");
                Status::invalid_argument(format!(
                    "{origin}: {} has no field '{part}' (fields: {names})",
                    desc.full_name(),
                ))
            })?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() && !has_scalar_json(&inner) => {
                    desc = inner;
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "{origin}: '{}' is not a singular message field, so nothing can be set inside it",
                        field.name()
                    )))
                }
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// The message holding the last of `fields`, created along the way.
fn nested<'m>(
    message: &'m mut DynamicMessage,
    fields: &[FieldDescriptor],
    origin: &str,
) -> Result<&'m mut DynamicMessage, Status> {
    let mut current = message;
    for field in &fields[..fields.len() - 1] {
        match current.get_field_mut(field) {
            Value::Message(inner) => current = inner,
            _ => {
                return Err(Status::internal(format!(
                    "{origin}: '{}' is not a message",
                    field.name()
                )))
            }
        }
    }
    Ok(current)
}

/// Sets (or, on a repeated field, appends) one value given as text.
fn set_leaf(
    message: &mut DynamicMessage,
    field: &FieldDescriptor,
    text: &str,
    origin: &str,
) -> Result<(), Status> {
    if field.is_map() {
        return Err(Status::invalid_argument(format!(
            "{origin}: '{}' is a map field, which query parameters cannot set",
            field.name()
        )));
    }
    let value = text_to_json(field, text, origin)?;
    let wrapped = if field.is_list() {
        json!({ field.name(): [value] })
    } else {
        json!({ field.name(): value })
    };
    let parsed = DynamicMessage::deserialize(message.descriptor(), wrapped)
        .map_err(|e| Status::invalid_argument(format!("{origin}: {e}")))?;
    let value = parsed.get_field(field).into_owned();
    match (value, message.get_field_mut(field)) {
        (Value::List(new), Value::List(list)) => list.extend(new),
        (value, _) => message.set_field(field, value),
    }
    Ok(())
}

/// A text value as the JSON proto3 JSON would write for the field.
fn text_to_json(field: &FieldDescriptor, text: &str, origin: &str) -> Result<Json, Status> {
    let boolean = || match text {
        "true" | "True" | "TRUE" | "t" | "1" => Ok(Json::Bool(true)),
        "false" | "False" | "FALSE" | "f" | "0" => Ok(Json::Bool(false)),
        _ => Err(Status::invalid_argument(format!(
            "{origin}: '{text}' is not true or false"
        ))),
    };
    match field.kind() {
        Kind::Bool => boolean(),
        Kind::Enum(_) => Ok(text
            .parse::<i32>()
            .map(Json::from)
            .unwrap_or_else(|_| Json::String(text.to_string()))),
        Kind::Message(desc) if desc.full_name() == "google.protobuf.BoolValue" => boolean(),
        Kind::Message(desc) if has_scalar_json(&desc) => Ok(Json::String(text.to_string())),
        Kind::Message(desc) => Err(Status::invalid_argument(format!(
            "{origin}: '{}' is a message ({}); set its fields instead, e.g. '{}.{}'",
            field.name(),
            desc.full_name(),
            field.name(),
            desc.fields()
                .next()
                .map_or_else(|| "field".to_string(), |f| f.name().to_string()),
        ))),
        _ => Ok(Json::String(text.to_string())),
    }
}

/// Well-known types written as one JSON string (or number/bool) rather than an object.
fn has_scalar_json(desc: &MessageDescriptor) -> bool {
    matches!(
        desc.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.Value"
    )
}
