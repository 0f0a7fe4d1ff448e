//! `error`: an answer that fails the call (or ends a stream): its status code, a templated message,
//! and `details` packed as `google.protobuf.Any` into a `google.rpc.Status`.

use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tonic::Code;

use super::{FileCtx, Reported, Res};
use crate::rules::rule::ErrorTemplate;
use crate::rules::template::{Roots, Text};
use crate::rules::toml_tree::{Node, NodeValue};

impl FileCtx<'_> {
    pub(super) fn error_answer(&mut self, node: &Node, roots: &Roots) -> Res<ErrorTemplate> {
        let Some(table) = node.as_table() else {
            return Err(self.error(
                node.span.clone(),
                "`error` is a table: error.code = \"NOT_FOUND\", error.message = \"…\"",
            ));
        };
        for (key, _) in table {
            if !["code", "message", "details"].contains(&key.name.as_str()) {
                self.error(
                    key.span.clone(),
                    format!(
                        "unknown error key '{}' (expected code, message, details)",
                        key.name
                    ),
                );
            }
        }
        let code = match node.get("code") {
            None => Code::Unknown,
            Some(c) => {
                let code = self.code(c)?;
                if code == Code::Ok {
                    // A unary call would end with status 0 and no message, which clients take for
                    // a broken server; after a `stream` it would say what the stream's end says.
                    return Err(self.error(
                        c.span.clone(),
                        "error.code OK is not an error: answer with `reply` (or a `stream` without `error`), or pick a failing code such as UNKNOWN",
                    ));
                }
                code
            }
        };
        let message = match node.get("message") {
            None => Text::parse("", roots).map_err(|_| Reported)?,
            Some(m) => {
                let Some(s) = m.as_str() else {
                    return Err(self.error(m.span.clone(), "`error.message` is a string"));
                };
                self.text(s, m, roots)?
            }
        };
        let (status_type, details) = match node.get("details") {
            None => (None, vec![]),
            Some(d) => self.details(d)?,
        };
        Ok(ErrorTemplate {
            code,
            message,
            status_type,
            details,
        })
    }

    pub(super) fn code(&mut self, node: &Node) -> Res<Code> {
        let code = match &node.value {
            NodeValue::Int(n) if (0..=16).contains(n) => Some(Code::from_i32(*n as i32)),
            NodeValue::Str(s) => CODE_NAMES
                .iter()
                .position(|c| c.eq_ignore_ascii_case(s.trim()))
                .map(|i| Code::from_i32(i as i32)),
            _ => None,
        };
        code.ok_or_else(|| {
            self.error(
                node.span.clone(),
                format!(
                    "not a gRPC status code: expected a number 0..16 or one of {}",
                    CODE_NAMES.join(", ")
                ),
            )
        })
    }

    pub(super) fn details(
        &mut self,
        node: &Node,
    ) -> Res<(Option<MessageDescriptor>, Vec<DynamicMessage>)> {
        let NodeValue::Array(items) = &node.value else {
            return Err(self.error(
                node.span.clone(),
                "`error.details` is an array of tables, each with an \"@type\"",
            ));
        };
        let status = self
            .pool
            .get_message_by_name("google.rpc.Status")
            .expect("google/rpc/status.proto is always loaded");
        let any = self
            .pool
            .get_message_by_name("google.protobuf.Any")
            .expect("well-known types are always loaded");
        let mut out = Vec::new();
        for item in items {
            let Some(type_node) = item.get("@type") else {
                return Err(self.error(
                    item.span.clone(),
                    "each detail needs \"@type\" = a message name, e.g. \"google.rpc.ErrorInfo\"",
                ));
            };
            let type_name = type_node.as_str().unwrap_or_default();
            let name = type_name.rsplit('/').next().unwrap_or_default();
            let Some(desc) = self.pool.get_message_by_name(name) else {
                return Err(self.error(
                    type_node.span.clone(),
                    format!("no message '{name}' in the loaded protos"),
                ));
            };
            // The rest of the table is the detail message itself.
            let mut fields = item.clone();
            if let NodeValue::Table(t) = &mut fields.value {
                t.retain(|(k, _)| k.name != "@type");
            }
            let message = self.message(&fields, &desc, &Roots::default())?;
            let Some(message) = message.constant else {
                return Err(self.error(item.span.clone(), "error details cannot use templates"));
            };
            let mut packed = DynamicMessage::new(any.clone());
            packed.set_field_by_name(
                "type_url",
                Value::String(format!("type.googleapis.com/{name}")),
            );
            packed.set_field_by_name(
                "value",
                Value::Bytes(prost::Message::encode_to_vec(&message).into()),
            );
            out.push(packed);
        }
        Ok((Some(status), out))
    }
}

/// gRPC status code names, indexed by code.
const CODE_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
