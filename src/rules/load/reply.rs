//! Messages in a handler file: a `reply` (a table, or one whole template such as
//! `"{{request}}"`), and every message inside other answers (a stream's messages, error details):
//! fields checked against the descriptor, constants read as proto3 JSON, templates checked for type.
//! A message with no template is one constant, built once here.

use std::ops::Range;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};

use super::{FileCtx, Reported, Res};
use crate::rules::template::{
    check_assignable, field_names, find_field, kind_name, MessageTemplate, Path, Roots, Ty,
    ValueTemplate,
};
use crate::rules::toml_tree::{Node, NodeValue};

impl FileCtx<'_> {
    /// A constant value for `field` (one element of it when `element`), read as canonical proto3 JSON.
    pub(super) fn const_value(
        &mut self,
        node: &Node,
        field: &FieldDescriptor,
        element: bool,
    ) -> Res<Value> {
        match convert_const(node, field, element) {
            Ok(v) => Ok(v),
            Err(message) => {
                // Point at the innermost value at fault, not at the table that holds it.
                let (span, message) = locate_const_error(node, field, element)
                    .unwrap_or((node.span.clone(), message));
                Err(self.error(span, message))
            }
        }
    }

    pub(super) fn reply(
        &mut self,
        node: &Node,
        output: &MessageDescriptor,
        roots: &Roots,
    ) -> Res<MessageTemplate> {
        if let Some(s) = node.as_str() {
            let text = self.text(s, node, roots)?;
            let Some(path) = text.as_whole() else {
                return Err(self.error(node.span.clone(), format!("a reply written as a string must be one template such as \"{{{{request}}}}\"; write a table for {}", output.full_name())));
            };
            check_assignable(&path.ty, &Kind::Message(output.clone()), false)
                .map_err(|e| self.error(node.span.clone(), e))?;
            return Ok(MessageTemplate {
                desc: output.clone(),
                fields: vec![],
                constant: None,
                whole: Some(path.clone()),
            });
        }
        self.message(node, output, roots)
    }

    pub(super) fn message(
        &mut self,
        node: &Node,
        desc: &MessageDescriptor,
        roots: &Roots,
    ) -> Res<MessageTemplate> {
        let Some(table) = node.as_table() else {
            return Err(self.error(
                node.span.clone(),
                format!(
                    "expected a table for message {}, found {}",
                    desc.full_name(),
                    node.type_name()
                ),
            ));
        };
        let mut fields = Vec::new();
        let mut failed = false;
        for (key, value) in table {
            let Some(field) = find_field(desc, &key.name) else {
                if key.name.starts_with('@') && desc.full_name() == "google.protobuf.Any" {
                    // `@type` belongs to Any's JSON form.
                    continue;
                }
                self.error(
                    key.span.clone(),
                    format!(
                        "{} has no field '{}' (fields: {})",
                        desc.full_name(),
                        key.name,
                        field_names(desc)
                    ),
                );
                failed = true;
                continue;
            };
            match self.field_value(value, &field, roots) {
                Ok(t) => fields.push((field, t)),
                Err(_) => failed = true,
            }
        }
        if failed {
            return Err(Reported);
        }
        if !node.has_template() {
            let json = node.to_json();
            return match DynamicMessage::deserialize(desc.clone(), json) {
                Ok(m) => Ok(MessageTemplate::constant(m)),
                Err(e) => Err(self.error(
                    node.span.clone(),
                    format!(
                        "not a valid {}: {}",
                        desc.full_name(),
                        json_error(&e.to_string())
                    ),
                )),
            };
        }
        Ok(MessageTemplate {
            desc: desc.clone(),
            fields,
            constant: None,
            whole: None,
        })
    }

    pub(super) fn field_value(
        &mut self,
        node: &Node,
        field: &FieldDescriptor,
        roots: &Roots,
    ) -> Res<ValueTemplate> {
        if !node.has_template() {
            return self
                .const_value(node, field, false)
                .map(ValueTemplate::Const);
        }
        let kind = field.kind();
        match &node.value {
            NodeValue::Str(s) => {
                let text = self.text(s, node, roots)?;
                if let Some(path) = text.as_whole() {
                    check_assignable(&path.ty, &kind, field.is_list()).map_err(|e| {
                        self.error(node.span.clone(), format!("{}: {e}", field.name()))
                    })?;
                    return Ok(ValueTemplate::Whole(path.clone()));
                }
                if matches!(kind, Kind::Message(_)) || field.is_map() {
                    return Err(self.error(node.span.clone(), format!("{} is {}: write a table, or a single template such as \"{{{{request.x}}}}\"", field.name(), kind_name(&kind))));
                }
                Ok(ValueTemplate::Text(text))
            }
            NodeValue::Table(t) if field.is_map() => {
                let Kind::Message(entry) = &kind else {
                    unreachable!()
                };
                let (key_field, value_field) =
                    (entry.map_entry_key_field(), entry.map_entry_value_field());
                let mut entries = Vec::new();
                for (k, v) in t {
                    let key = match self.const_value(
                        &Node {
                            span: k.span.clone(),
                            value: NodeValue::Str(k.name.clone()),
                        },
                        &key_field,
                        false,
                    )? {
                        Value::String(s) => MapKey::String(s),
                        Value::I32(n) => MapKey::I32(n),
                        Value::I64(n) => MapKey::I64(n),
                        Value::U32(n) => MapKey::U32(n),
                        Value::U64(n) => MapKey::U64(n),
                        Value::Bool(b) => MapKey::Bool(b),
                        _ => return Err(self.error(k.span.clone(), "unsupported map key")),
                    };
                    let value = self.element(v, &value_field, roots)?;
                    entries.push((key, value));
                }
                Ok(ValueTemplate::Map(entries))
            }
            NodeValue::Table(_) if field.is_list() => {
                let (Some(source), Some(value)) = (node.get("for_each"), node.get("value")) else {
                    return Err(self.error(node.span.clone(), format!("{} is a list: write an array, or {{ for_each = \"request.LIST\", value = … }}", field.name())));
                };
                let (path, item_roots) = self.for_each(source, roots)?;
                let value = self.element(value, field, &item_roots)?;
                Ok(ValueTemplate::ForEach {
                    source: path,
                    value: Box::new(value),
                })
            }
            NodeValue::Table(_) => match &kind {
                Kind::Message(desc) => Ok(ValueTemplate::Message(self.message(node, desc, roots)?)),
                other => Err(self.error(
                    node.span.clone(),
                    format!("{} is {}, not a message", field.name(), kind_name(other)),
                )),
            },
            NodeValue::Array(items) if field.is_list() => {
                let mut out = Vec::new();
                for item in items {
                    out.push(self.element(item, field, roots)?);
                }
                Ok(ValueTemplate::List(out))
            }
            _ => Err(self.error(
                node.span.clone(),
                format!("{} cannot be {}", field.name(), node.type_name()),
            )),
        }
    }

    /// One element of a repeated field, or a map value.
    pub(super) fn element(
        &mut self,
        node: &Node,
        field: &FieldDescriptor,
        roots: &Roots,
    ) -> Res<ValueTemplate> {
        if !node.has_template() {
            return self
                .const_value(node, field, true)
                .map(ValueTemplate::Const);
        }
        let kind = field.kind();
        match (&node.value, &kind) {
            (NodeValue::Str(s), _) => {
                let text = self.text(s, node, roots)?;
                if let Some(path) = text.as_whole() {
                    check_assignable(&path.ty, &kind, false)
                        .map_err(|e| self.error(node.span.clone(), e))?;
                    return Ok(ValueTemplate::Whole(path.clone()));
                }
                if matches!(kind, Kind::Message(_)) {
                    return Err(self.error(
                        node.span.clone(),
                        format!(
                            "elements of {} are messages: write a table or a single template",
                            field.name()
                        ),
                    ));
                }
                Ok(ValueTemplate::Text(text))
            }
            (NodeValue::Table(_), Kind::Message(desc)) => {
                Ok(ValueTemplate::Message(self.message(node, desc, roots)?))
            }
            _ => Err(self.error(
                node.span.clone(),
                format!(
                    "an element of {} cannot be {}",
                    field.name(),
                    node.type_name()
                ),
            )),
        }
    }

    /// `for_each = "request.xs"` → the list's path and the roots inside (`item`, `index`).
    pub(super) fn for_each(&mut self, node: &Node, roots: &Roots) -> Res<(Path, Roots)> {
        let Some(s) = node.as_str() else {
            return Err(self.error(
                node.span.clone(),
                "`for_each` takes a path such as \"request.items\"",
            ));
        };
        let s = s.trim().trim_start_matches("{{").trim_end_matches("}}");
        let path = Path::parse(s, roots).map_err(|e| self.error(node.span.clone(), e))?;
        let Ty::Proto {
            kind, list: true, ..
        } = &path.ty
        else {
            return Err(self.error(
                node.span.clone(),
                format!("`for_each` needs a repeated field; '{s}' is not one"),
            ));
        };
        let inner = Roots {
            item: Some(kind.clone()),
            index: true,
            ..roots.clone()
        };
        Ok((path, inner))
    }
}

/// serde_json errors end with " at line 1 column 0", meaningless for a value built from TOML.
fn json_error(e: &str) -> String {
    match e.rfind(" at line ") {
        Some(i) => e[..i].to_string(),
        None => e.to_string(),
    }
}

/// Reads `node` as a value of `field` through prost-reflect's proto3 JSON parser.
fn convert_const(node: &Node, field: &FieldDescriptor, element: bool) -> Result<Value, String> {
    let json = if element && field.is_list() {
        serde_json::Value::Array(vec![node.to_json()])
    } else {
        node.to_json()
    };
    let mut object = serde_json::Map::new();
    object.insert(field.name().to_string(), json);
    match DynamicMessage::deserialize(
        field.parent_message().clone(),
        serde_json::Value::Object(object),
    ) {
        Ok(m) => Ok(match m.get_field(field).into_owned() {
            Value::List(mut items) if element && field.is_list() => items
                .pop()
                .unwrap_or_else(|| Value::default_value(&field.kind())),
            v => v,
        }),
        Err(e) => Err(format!(
            "{} is not a valid value for {} ({}{}): {}",
            node.type_name(),
            field.full_name(),
            if field.is_list() && !element {
                "list of "
            } else {
                ""
            },
            kind_name(&field.kind()),
            json_error(&e.to_string())
        )),
    }
}

/// The innermost part of a constant that does not fit its field: an unknown field name, or a leaf
/// of the wrong type. Well-known types are leaves (they have JSON forms of their own).
fn locate_const_error(
    node: &Node,
    field: &FieldDescriptor,
    element: bool,
) -> Option<(Range<usize>, String)> {
    if field.is_map() {
        return None;
    }
    if field.is_list() && !element {
        let NodeValue::Array(items) = &node.value else {
            return None;
        };
        return items
            .iter()
            .find_map(|item| locate_const_error(item, field, true));
    }
    if let (Kind::Message(desc), Some(table)) = (field.kind(), node.as_table()) {
        if !desc.full_name().starts_with("google.protobuf.") {
            for (key, value) in table {
                let Some(inner) = find_field(&desc, &key.name) else {
                    let fields = field_names(&desc);
                    return Some((
                        key.span.clone(),
                        format!(
                            "{} has no field '{}' (fields: {fields})",
                            desc.full_name(),
                            key.name
                        ),
                    ));
                };
                if let Some(found) = locate_const_error(value, &inner, false) {
                    return Some(found);
                }
                if let Err(message) = convert_const(value, &inner, false) {
                    return Some((value.span.clone(), message));
                }
            }
            return None;
        }
    }
    convert_const(node, field, element)
        .err()
        .map(|m| (node.span.clone(), m))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testkit::*;
    use crate::rules::Answer;

    /// The one rule of `t.Svc/{method}` answering `reply`.
    #[track_caller]
    fn replying(method: &str, reply: &str) -> crate::rules::Rule {
        rule(
            &format!("[[rule]]\nmethod = \"t.Svc/{method}\"\n{reply}\n"),
            &format!("Svc/{method}"),
        )
    }

    #[test]
    fn a_reply_without_templates_is_one_constant_built_at_load() {
        let r = replying(
            "Unary",
            "reply = { text = \"a\", num = 7, color = \"GREEN\", list = [\"x\", \"y\"], inner = { id = 1 }, counts = { a = 1 } }",
        );
        let Answer::Reply(template) = &r.answer else {
            panic!("{:?}", r.answer)
        };
        assert!(template.constant.is_some(), "built once, at load");
        assert_eq!(
            reply(&r, &request(json!({ "name": "ignored" }))),
            json!({ "text": "a", "num": 7, "color": "GREEN", "list": ["x", "y"], "inner": { "id": 1 }, "counts": { "a": 1 } })
        );
    }

    #[test]
    fn templates_are_filled_from_the_request() {
        let r = replying(
            "Unary",
            "[rule.reply]\ntext = \"hi {{request.name}}\"\nnum = \"{{request.num}}\"\ninner = { id = \"{{request.num}}\", label = \"{{request.name}}!\" }\nitems = [{ id = 1 }, \"{{request.inner}}\"]\ncounts = { n = \"{{request.num}}\" }",
        );
        let req = request(json!({ "name": "Ann", "num": 4, "inner": { "id": 9 } }));
        assert_eq!(
            reply(&r, &req),
            json!({
                "text": "hi Ann",
                "num": 4,
                "inner": { "id": 4, "label": "Ann!" },
                "items": [{ "id": 1 }, { "id": 9 }],
                "counts": { "n": 4 },
            })
        );
    }

    #[test]
    fn a_reply_may_be_one_whole_template() {
        let r = replying("Echo", "reply = \"{{request}}\"");
        let req = json!({ "name": "x", "tags": ["a"], "inner": { "id": 2 } });
        assert_eq!(reply(&r, &request(req.clone())), req);
    }

    #[test]
    fn for_each_writes_one_element_per_element_of_a_request_list() {
        let r = replying(
            "Unary",
            "reply.list = { for_each = \"request.tags\", value = \"{{index}}:{{item}}\" }\nreply.items = { for_each = \"{{request.tags}}\", value = { label = \"{{item}}\" } }",
        );
        assert_eq!(
            reply(&r, &request(json!({ "tags": ["a", "b"] }))),
            json!({
                "list": ["0:a", "1:b"],
                "items": [{ "label": "a" }, { "label": "b" }],
            })
        );
    }

    #[test]
    fn a_field_that_does_not_exist_is_refused_at_its_key_with_the_fields_there_are() {
        let h = "# comment\n[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"a\", txt = \"b\" }\n";
        problem_at(h, "txt", &["t.Resp has no field 'txt'", "text", "counts"]);
        // A nested message written as its own table: the line of the bad key, not the header's.
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\n[rule.reply]\ntext = \"x\"\n[rule.reply.inner]\nid = 1\nname = \"b\"\n";
        problem_at(h, "name", &["t.Inner has no field 'name'", "label"]);
        // In a templated message too.
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"{{request.name}}\", inner = { nope = 1 } }\n";
        problem_at(h, "nope", &["t.Inner has no field 'nope'"]);
    }

    #[test]
    fn a_constant_of_the_wrong_type_is_refused_at_the_value() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.items = [\n  { id = 1 },\n  { id = \"x\" },\n]\n";
        problem_at(h, "\"x\"", &["not a valid value for t.Inner.id (int32)"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\n\nreply = { num = \"abc\" }\n";
        problem_at(h, "\"abc\"", &["num", "int32"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { color = \"PURPLE\" }\n";
        problem_at(h, "\"PURPLE\"", &["t.Color"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = 3\n";
        problem_at(
            h,
            "3",
            &["expected a table for message t.Resp, found an integer"],
        );
    }

    #[test]
    fn a_template_is_checked_where_it_is_written() {
        let h =
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"hello {{request.nme}}\" }\n";
        problem_at(h, "{{request.nme}}", &["nme", "t.Req", "name"]);
        // `count` exists in client streams only.
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"{{count}}\" }\n";
        problem_at(h, "{{count}}", &["count", "request"]);
        // A whole template must fit its field.
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { num = \"{{request.inner}}\" }\n";
        problem_at(h, "\"{{request.inner}}\"", &["num: "]);
    }

    #[test]
    fn a_reply_written_as_a_string_is_one_whole_template() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = \"hi {{request.name}}\"\n";
        problem_at(h, "\"hi", &["must be one template", "t.Resp"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = \"{{request}}\"\n";
        let message = problem_at(h, "\"{{request}}\"", &[]);
        assert!(
            message.contains("t.Req") && message.contains("t.Resp"),
            "{message}"
        );
    }

    #[test]
    fn lists_and_messages_say_how_to_write_them() {
        let h =
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.list = { value = \"{{request.name}}\" }\n";
        problem_at(
            h,
            "{ value",
            &["list is a list: write an array, or { for_each"],
        );
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.list = { for_each = \"request.name\", value = \"{{item}}\" }\n";
        problem_at(
            h,
            "\"request.name\"",
            &["`for_each` needs a repeated field; 'request.name'"],
        );
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.inner = \"id {{request.num}}\"\n";
        problem_at(
            h,
            "\"id",
            &["inner is", "write a table, or a single template"],
        );
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.items = [\"x {{request.num}}\"]\n";
        problem_at(h, "\"x", &["elements of items are messages"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { num = { a = 1 } }\n";
        problem_at(
            h,
            "{ a",
            &["a table is not a valid value for t.Resp.num (int32)"],
        );
        let h =
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { num = { a = \"{{request.name}}\" } }\n";
        problem_at(h, "{ a", &["num is int32, not a message"]);
    }
}
