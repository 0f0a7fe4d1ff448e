//! Replies as HTTP/JSON writes them: the whole message or its `response_body` field as proto3 JSON,
//! and errors as the HTTP status of their code with a `google.rpc.Status` JSON body.

use http::header::HeaderMap;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};
use serde_json::Value as Json;
use tonic::Status;

use super::JSON;
use crate::protocol::wire;
use crate::protocol::{json, HttpResponse};

/// The last line of a stream that failed after its first message.
#[derive(serde::Serialize)]
pub(super) struct ErrorLine {
    pub error: json::RpcStatus,
}

/// The reply as JSON text: the whole message, or its `response_body` field. Messages are written
/// directly so their fields keep proto order.
pub(super) fn reply_json(
    message: &DynamicMessage,
    field: Option<&FieldDescriptor>,
) -> Result<Vec<u8>, Status> {
    let Some(field) = field else {
        return json::encode(message);
    };
    let value = message.get_field(field);
    match value.as_ref() {
        Value::Message(inner) if !field.is_list() => return json::encode(inner),
        Value::List(items) if field.is_list() && matches!(field.kind(), Kind::Message(_)) => {
            let mut out = b"[".to_vec();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Value::Message(m) = item {
                    out.extend(json::encode(m)?);
                }
            }
            out.push(b']');
            return Ok(out);
        }
        _ => {}
    }
    let whole = json::to_value(message)?;
    // Canonical JSON leaves default values out; the field alone is still written.
    let value = whole
        .get(field.json_name())
        .cloned()
        .unwrap_or_else(|| default_json(field));
    Ok(to_bytes(&value))
}

fn default_json(field: &FieldDescriptor) -> Json {
    if field.is_list() {
        return Json::Array(Vec::new());
    }
    if field.is_map() {
        return Json::Object(Default::default());
    }
    match field.kind() {
        Kind::Message(desc) => json::to_value(&DynamicMessage::new(desc)).unwrap_or(Json::Null),
        Kind::String | Kind::Bytes => Json::String(String::new()),
        Kind::Bool => Json::Bool(false),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            Json::String("0".into())
        }
        Kind::Enum(e) => Json::String(e.default_value().name().to_string()),
        _ => Json::from(0),
    }
}

fn to_bytes(json: &Json) -> Vec<u8> {
    // Serializing a `serde_json::Value` cannot fail.
    serde_json::to_vec(json).unwrap_or_default()
}

/// An error as HTTP: the code's status and `google.rpc.Status` JSON; the status' metadata as headers.
pub(crate) fn error(
    status: &Status,
    pool: &prost_reflect::DescriptorPool,
    mut headers: HeaderMap,
) -> HttpResponse {
    wire::add_metadata(&mut headers, status.metadata(), "");
    wire::full_response(
        json::http_status(status.code()),
        headers,
        JSON,
        json::to_vec(&json::rpc_status(status, pool)),
    )
}
