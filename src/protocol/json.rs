//! The JSON side shared by Connect and HTTP transcoding: canonical proto3 JSON for messages
//! (prost-reflect's serde: int64 as strings, enums by name, well-known types and `Any` resolved from the
//! loaded pool, unknown fields rejected), and the two JSON shapes of an error — Connect's
//! `{"code":"not_found",…}` and `google.rpc.Status`'s `{"code":5,…}` — with the HTTP status both map to.

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage as _, SerializeOptions, Value,
};
use serde::Serialize;
use serde_json::{json, Value as Json};
use tonic::{Code, Status};

/// A message from its JSON text. Blank text is the empty message (curl's `-d ''`, a bodiless POST).
pub(crate) fn decode(desc: &MessageDescriptor, text: &[u8]) -> Result<DynamicMessage, Status> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    crate::codec::decoded::check_json(desc.full_name(), text)?;
    let mut de = serde_json::Deserializer::from_slice(text);
    DynamicMessage::deserialize(desc.clone(), &mut de)
        .and_then(|message| de.end().map(|()| message))
        .map_err(|e| invalid_json(desc, e))
}

/// A message from an already parsed JSON value.
pub(crate) fn from_value(desc: &MessageDescriptor, value: Json) -> Result<DynamicMessage, Status> {
    DynamicMessage::deserialize(desc.clone(), value).map_err(|e| invalid_json(desc, e))
}

/// INVALID_ARGUMENT naming the type and, through serde's message, the field (`unrecognized field
/// name 'nmae' at line 1 column 7`).
pub(crate) fn invalid_json(desc: &MessageDescriptor, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid JSON for {}: {e}", desc.full_name()))
}

/// A message as canonical proto3 JSON text.
pub(crate) fn encode(message: &DynamicMessage) -> Result<Vec<u8>, Status> {
    let mut out = Vec::with_capacity(64);
    message
        .serialize_with_options(
            &mut serde_json::Serializer::new(&mut out),
            &SerializeOptions::new(),
        )
        .map_err(|e| encode_error(message, e))?;
    Ok(out)
}

/// A message as a canonical proto3 JSON value.
pub(crate) fn to_value(message: &DynamicMessage) -> Result<Json, Status> {
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map_err(|e| encode_error(message, e))
}

fn encode_error(message: &DynamicMessage, e: impl std::fmt::Display) -> Status {
    Status::internal(format!(
        "cannot write {} as JSON: {e}",
        message.descriptor().full_name()
    ))
}

/// The HTTP status of a gRPC code, as `google.rpc.Code` documents it (Connect uses the same table).
pub(crate) fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
    }
}

/// Connect's name of a code (`canceled` is spelt the American way there).
pub(crate) fn connect_code(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Connect's error JSON: `{"code":"not_found","message":"…","details":[{"type","value","debug"}]}`.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectError {
    code: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<ConnectDetail>,
}

/// Details are unpadded base64 protobuf; `debug` is their JSON when the type is in the pool.
#[derive(Debug, Serialize)]
struct ConnectDetail {
    #[serde(rename = "type")]
    type_name: String,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<Json>,
}

pub(crate) fn connect_error(status: &Status, pool: &DescriptorPool) -> ConnectError {
    ConnectError {
        code: connect_code(status.code()),
        message: status.message().to_string(),
        details: details(status, pool)
            .into_iter()
            .map(|any| ConnectDetail {
                type_name: any.type_name().unwrap_or(&any.type_url).to_string(),
                value: base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
                debug: any.to_json(pool),
            })
            .collect(),
    }
}

/// `google.rpc.Status` as proto3 JSON: `{"code":5,"message":"…","details":[{"@type":…,…}]}`.
#[derive(Debug, Serialize)]
pub(crate) struct RpcStatus {
    code: i32,
    message: String,
    details: Vec<Json>,
}

pub(crate) fn rpc_status(status: &Status, pool: &DescriptorPool) -> RpcStatus {
    RpcStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: details(status, pool)
            .into_iter()
            .map(|any| {
                any.to_any_json(pool).unwrap_or_else(|| {
                    json!({
                        "@type": any.type_url,
                        "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                    })
                })
            })
            .collect(),
    }
}

/// Serializes an error shape (a plain struct of strings and JSON values cannot fail to serialize).
pub(crate) fn to_vec(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// One `google.protobuf.Any` of a status' details.
struct AnyDetail {
    type_url: String,
    value: Vec<u8>,
}

impl AnyDetail {
    /// The message name after the last `/` of the type URL.
    fn type_name(&self) -> Option<&str> {
        self.type_url.rsplit_once('/').map(|(_, name)| name)
    }

    fn message(&self, pool: &DescriptorPool) -> Option<DynamicMessage> {
        let desc = pool.get_message_by_name(self.type_name().unwrap_or(&self.type_url))?;
        DynamicMessage::decode(desc, self.value.as_slice()).ok()
    }

    /// The detail's own JSON (no `@type`).
    fn to_json(&self, pool: &DescriptorPool) -> Option<Json> {
        to_value(&self.message(pool)?).ok()
    }

    /// The detail as `Any` JSON: `@type` and the message's fields (or `value` for well-known types).
    fn to_any_json(&self, pool: &DescriptorPool) -> Option<Json> {
        let desc = pool.get_message_by_name("google.protobuf.Any")?;
        self.message(pool)?;
        let mut any = DynamicMessage::new(desc);
        any.set_field_by_name("type_url", Value::String(self.type_url.clone()));
        any.set_field_by_name("value", Value::Bytes(self.value.clone().into()));
        to_value(&any).ok()
    }
}

/// The details a status carries in `grpc-status-details-bin` (an encoded `google.rpc.Status`).
fn details(status: &Status, pool: &DescriptorPool) -> Vec<AnyDetail> {
    if status.details().is_empty() {
        return Vec::new();
    }
    let Some(desc) = pool.get_message_by_name("google.rpc.Status") else {
        return Vec::new();
    };
    let Ok(decoded) = DynamicMessage::decode(desc, status.details()) else {
        return Vec::new();
    };
    let Some(Value::List(items)) = decoded.get_field_by_name("details").map(|v| v.into_owned())
    else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Message(any) = item else {
                return None;
            };
            let type_url = any.get_field_by_name("type_url")?.as_str()?.to_string();
            let value = any.get_field_by_name("value")?.as_bytes()?.to_vec();
            Some(AnyDetail { type_url, value })
        })
        .collect()
}
