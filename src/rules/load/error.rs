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
            NodeValue::Str(s) => crate::codes::NAMES
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
                    crate::codes::NAMES.join(", ")
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

#[cfg(test)]
mod tests {
    use prost_reflect::{DynamicMessage, Value};
    use serde_json::json;
    use tonic::Code;

    use super::super::testkit::*;
    use crate::rules::rule::ErrorTemplate;
    use crate::rules::template::Scope;
    use crate::rules::Answer;

    #[track_caller]
    fn error(text: &str) -> ErrorTemplate {
        let h = format!("[[rule]]\nmethod = \"t.Svc/Unary\"\n{text}\n");
        match rule(&h, "Svc/Unary").answer {
            Answer::Error(e) => e,
            other => panic!("an error: {other:?}"),
        }
    }

    /// The status the client gets for `request`.
    fn status(e: &ErrorTemplate, req: serde_json::Value) -> tonic::Status {
        let req = request(req);
        let md = metadata(&[]);
        e.render(&Scope::new(Some(&req), &md))
    }

    #[test]
    fn an_error_has_a_code_by_name_or_number_and_a_templated_message() {
        let s = status(
            &error("error = { code = \" not_found \", message = \"no {{request.name}}\" }"),
            json!({ "name": "bob" }),
        );
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no bob"));
        let s = status(&error("error.code = 14"), json!({}));
        assert_eq!((s.code(), s.message()), (Code::Unavailable, ""));
        let s = status(&error("error.message = \"broken\""), json!({}));
        assert_eq!(s.code(), Code::Unknown, "UNKNOWN when no code is given");
        assert!(s.details().is_empty());
    }

    #[test]
    fn details_travel_packed_in_a_google_rpc_status() {
        let e = error(
            "error.code = \"FAILED_PRECONDITION\"\nerror.message = \"m\"\nerror.details = [{ \"@type\" = \"type.googleapis.com/t.Inner\", id = 5 }]",
        );
        let s = status(&e, json!({}));
        let desc = pool().get_message_by_name("google.rpc.Status").unwrap();
        let sent = DynamicMessage::decode(desc, s.details()).unwrap();
        assert_eq!(sent.get_field_by_name("code").unwrap().as_i32(), Some(9));
        let details = sent.get_field_by_name("details").unwrap();
        let Value::List(details) = &*details else {
            panic!("{details:?}")
        };
        let any = details[0].as_message().unwrap();
        assert_eq!(
            any.get_field_by_name("type_url").unwrap().as_str(),
            Some("type.googleapis.com/t.Inner")
        );
        let inner = pool().get_message_by_name("t.Inner").unwrap();
        let bytes = any.get_field_by_name("value").unwrap();
        let detail = DynamicMessage::decode(inner, bytes.as_bytes().unwrap().clone()).unwrap();
        assert_eq!(serde_json::to_value(&detail).unwrap(), json!({ "id": 5 }));
    }

    #[test]
    fn a_bad_error_is_refused_where_it_is_written() {
        let h = |e: &str| format!("[[rule]]\nmethod = \"t.Svc/Unary\"\n{e}\n");
        problem_at(
            &h("error = \"NOT_FOUND\""),
            "\"NOT_FOUND\"",
            &["`error` is a table"],
        );
        problem_at(
            &h("error = { code = 5, reason = \"x\" }"),
            "reason",
            &["unknown error key 'reason'", "code, message, details"],
        );
        problem_at(
            &h("error.code = \"NOT_FUOND\""),
            "\"NOT_FUOND\"",
            &["not a gRPC status code", "0..16", "NOT_FOUND"],
        );
        problem_at(&h("error.code = 17"), "17", &["not a gRPC status code"]);
        problem_at(
            &h("error.message = 3"),
            "3",
            &["`error.message` is a string"],
        );
        problem_at(
            &h("error.message = \"{{request.nope}}\""),
            "{{request.nope}}",
            &["nope"],
        );
    }

    #[test]
    fn ok_is_not_an_error() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nerror.code = \"OK\"\n";
        problem_at(h, "\"OK\"", &["error.code OK is not an error", "reply"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nerror = { code = 0 }\n";
        problem_at(h, "0 }", &["OK is not an error"]);
    }

    #[test]
    fn bad_details_are_refused_where_they_are_written() {
        let h = |d: &str| {
            format!("[[rule]]\nmethod = \"t.Svc/Unary\"\nerror.code = 3\nerror.details = {d}\n")
        };
        problem_at(
            &h("{ id = 1 }"),
            "{ id",
            &["`error.details` is an array of tables"],
        );
        problem_at(&h("[{ id = 1 }]"), "{ id", &["each detail needs \"@type\""]);
        problem_at(
            &h("[{ \"@type\" = \"t.Nope\" }]"),
            "\"t.Nope\"",
            &["no message 't.Nope' in the loaded protos"],
        );
        problem_at(
            &h("[{ \"@type\" = \"t.Inner\", nope = 1 }]"),
            "nope",
            &["t.Inner has no field 'nope'"],
        );
        problem_at(
            &h("[{ \"@type\" = \"t.Inner\", label = \"{{metadata.x}}\" }]"),
            "{ \"@type\"",
            &["error details cannot use templates"],
        );
    }
}
