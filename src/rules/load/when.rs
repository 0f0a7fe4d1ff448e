//! `when`: a rule's matching conditions on request fields (`when.request.a.b = …`, nested tables
//! for nested fields) and on metadata (`when.metadata.key = …`), with their operators (`eq`,
//! `contains`, `regex`, `present`).

use prost_reflect::{Kind, MessageDescriptor, Value};

use super::{FileCtx, Reported, Res};
use crate::rules::matcher::{Condition, Op, Subject, OPERATORS};
use crate::rules::template::{kind_name, Path, Roots};
use crate::rules::toml_tree::{Key, Node, NodeValue};

impl FileCtx<'_> {
    pub(super) fn conditions(
        &mut self,
        when: &Node,
        input: &MessageDescriptor,
    ) -> Res<Vec<Condition>> {
        let Some(table) = when.as_table() else {
            return Err(self.error(
                when.span.clone(),
                "`when` must be a table, e.g. when.request.name = \"x\"",
            ));
        };
        let roots = Roots {
            request: Some(input.clone()),
            ..Roots::default()
        };
        let mut out = Vec::new();
        let mut failed = false;
        for (key, node) in table {
            let res = match key.name.as_str() {
                "request" => self.field_conditions(node, "request", &roots, &mut out),
                "metadata" => self.metadata_conditions(node, &mut out),
                other => Err(self.error(
                    key.span.clone(),
                    format!("unknown condition '{other}' (expected `request` or `metadata`)"),
                )),
            };
            failed |= res.is_err();
        }
        if failed {
            Err(Reported)
        } else {
            Ok(out)
        }
    }

    pub(super) fn field_conditions(
        &mut self,
        node: &Node,
        prefix: &str,
        roots: &Roots,
        out: &mut Vec<Condition>,
    ) -> Res<()> {
        let Some(table) = node.as_table() else {
            return Err(self.error(
                node.span.clone(),
                "conditions on the request are a table: when.request.FIELD = VALUE",
            ));
        };
        let mut failed = false;
        for (key, value) in table {
            let path_text = format!("{prefix}.{}", key.name);
            let is_nested = value
                .as_table()
                .is_some_and(|t| !t.iter().any(|(k, _)| OPERATORS.contains(&k.name.as_str())));
            let res = if is_nested {
                self.field_conditions(value, &path_text, roots, out)
            } else {
                self.field_condition(key, value, &path_text, roots)
                    .map(|c| out.push(c))
            };
            failed |= res.is_err();
        }
        if failed {
            Err(Reported)
        } else {
            Ok(())
        }
    }

    pub(super) fn field_condition(
        &mut self,
        key: &Key,
        value: &Node,
        path_text: &str,
        roots: &Roots,
    ) -> Res<Condition> {
        let path = Path::parse(path_text, roots).map_err(|e| self.error(key.span.clone(), e))?;
        let Some((field, element)) = path.last_field() else {
            return Err(self.error(key.span.clone(), format!("'{path_text}' is not a field")));
        };
        let (op_name, operand) = self.operator(value)?;
        let list = field.is_list() && !element;
        let op = match op_name {
            "eq" => Op::Eq(self.const_value(operand, &field, !list)?),
            "contains" if list => Op::Contains(self.const_value(operand, &field, true)?),
            "contains" if field.kind() == Kind::String => {
                Op::Contains(self.const_value(operand, &field, true)?)
            }
            "contains" => {
                return Err(self.error(
                    operand.span.clone(),
                    format!(
                        "`contains` needs a string or repeated field; '{path_text}' is {}",
                        kind_name(&field.kind())
                    ),
                ))
            }
            "regex" => Op::Regex(self.regex(operand)?),
            "present" => Op::Present(self.bool(operand)?),
            _ => unreachable!(),
        };
        Ok(Condition {
            subject: Subject::Field(path),
            op,
        })
    }

    pub(super) fn metadata_conditions(&mut self, node: &Node, out: &mut Vec<Condition>) -> Res<()> {
        let Some(table) = node.as_table() else {
            return Err(self.error(
                node.span.clone(),
                "conditions on metadata are a table: when.metadata.KEY = \"value\"",
            ));
        };
        for (key, value) in table {
            let (op_name, operand) = self.operator(value)?;
            let op = match op_name {
                "eq" | "contains" => {
                    let Some(s) = operand.as_str() else {
                        return Err(self.error(
                            operand.span.clone(),
                            format!("metadata values are strings, not {}", operand.type_name()),
                        ));
                    };
                    let binary = crate::rules::metadata::is_binary(&key.name.to_ascii_lowercase());
                    if op_name == "eq" && binary {
                        // Binary values are seen as padded base64; any padding is fine here.
                        let Some(v) = crate::rules::metadata::normalized_base64(s) else {
                            return Err(self.error(
                                operand.span.clone(),
                                format!("'{}' is a binary (-bin) key: its value is written in base64, which '{s}' is not", key.name),
                            ));
                        };
                        Op::Eq(Value::String(v))
                    } else if op_name == "eq" {
                        Op::Eq(Value::String(s.to_string()))
                    } else {
                        Op::Contains(Value::String(s.to_string()))
                    }
                }
                "regex" => Op::Regex(self.regex(operand)?),
                "present" => Op::Present(self.bool(operand)?),
                _ => unreachable!(),
            };
            out.push(Condition {
                subject: Subject::Metadata(key.name.to_ascii_lowercase()),
                op,
            });
        }
        Ok(())
    }

    /// `value` → ("eq", value); `{ op = operand }` → (op, operand).
    pub(super) fn operator<'n>(&mut self, value: &'n Node) -> Res<(&'static str, &'n Node)> {
        let Some(table) = value.as_table() else {
            return Ok(("eq", value));
        };
        match table.as_slice() {
            [(k, operand)] => match OPERATORS.iter().find(|o| **o == k.name) {
                Some(op) => Ok((op, operand)),
                None => Err(self.error(
                    k.span.clone(),
                    format!(
                        "unknown operator '{}' (expected one of: {})",
                        k.name,
                        OPERATORS.join(", ")
                    ),
                )),
            },
            _ => Err(self.error(
                value.span.clone(),
                format!(
                    "a condition table has exactly one operator: {}",
                    OPERATORS.join(", ")
                ),
            )),
        }
    }

    pub(super) fn regex(&mut self, node: &Node) -> Res<regex::Regex> {
        let Some(s) = node.as_str() else {
            return Err(self.error(node.span.clone(), "`regex` takes a string"));
        };
        regex::Regex::new(s).map_err(|e| {
            self.error(
                node.span.clone(),
                format!("invalid regex: {}", one_line_regex_error(&e)),
            )
        })
    }

    pub(super) fn bool(&mut self, node: &Node) -> Res<bool> {
        match node.value {
            NodeValue::Bool(b) => Ok(b),
            _ => Err(self.error(
                node.span.clone(),
                format!("expected true or false, not {}", node.type_name()),
            )),
        }
    }
}

/// The regex crate's errors span several lines (pattern, caret, "error: …"); keep the last one.
fn one_line_regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testkit::*;

    /// The one rule of a `t.Svc/Unary` rule whose `when` lines are `when`.
    #[track_caller]
    fn when(when: &str) -> crate::rules::Rule {
        rule(
            &format!("[[rule]]\nmethod = \"t.Svc/Unary\"\n{when}\nreply = {{}}\n"),
            "Svc/Unary",
        )
    }

    #[test]
    fn field_conditions_hold_for_the_requests_they_describe() {
        let none = metadata(&[]);
        let r = when("when.request.name = \"x\"\nwhen.request.inner.id = 3");
        assert!(matches(
            &r,
            &request(json!({ "name": "x", "inner": { "id": 3 } })),
            &none
        ));
        assert!(!matches(
            &r,
            &request(json!({ "name": "x", "inner": { "id": 4 } })),
            &none
        ));
        assert!(!matches(
            &r,
            &request(json!({ "name": "y", "inner": { "id": 3 } })),
            &none
        ));

        // A nested table is a path into a nested message; the same condition written so.
        let r = when("[rule.when.request.inner]\nid = 3");
        assert!(matches(
            &r,
            &request(json!({ "inner": { "id": 3 } })),
            &none
        ));
        assert!(!matches(&r, &request(json!({})), &none));

        let r = when("when.request.color = \"RED\"");
        assert!(matches(&r, &request(json!({ "color": "RED" })), &none));
        assert!(!matches(&r, &request(json!({ "color": "GREEN" })), &none));
    }

    #[test]
    fn each_operator_means_what_it_says() {
        let none = metadata(&[]);
        let r = when("when.request.name = { contains = \"ell\" }");
        assert!(matches(&r, &request(json!({ "name": "hello" })), &none));
        assert!(!matches(&r, &request(json!({ "name": "help" })), &none));

        let r = when("when.request.tags = { contains = \"b\" }");
        assert!(matches(&r, &request(json!({ "tags": ["a", "b"] })), &none));
        assert!(!matches(
            &r,
            &request(json!({ "tags": ["a", "bb"] })),
            &none
        ));

        let r = when("when.request.name = { regex = \"^a[0-9]+$\" }");
        assert!(matches(&r, &request(json!({ "name": "a12" })), &none));
        assert!(!matches(&r, &request(json!({ "name": "a12b" })), &none));

        let r = when("when.request.inner = { present = true }");
        assert!(matches(&r, &request(json!({ "inner": {} })), &none));
        assert!(!matches(&r, &request(json!({})), &none));
        let r = when("when.request.inner = { present = false }");
        assert!(matches(&r, &request(json!({})), &none));
    }

    #[test]
    fn metadata_conditions_take_keys_in_any_case() {
        let req = request(json!({}));
        let r = when("when.metadata.X-Tenant = \"acme\"");
        assert!(matches(&r, &req, &metadata(&[("x-tenant", "acme")])));
        assert!(!matches(&r, &req, &metadata(&[("x-tenant", "other")])));
        assert!(!matches(&r, &req, &metadata(&[])));

        let r = when("when.metadata.x-tenant = { contains = \"cm\" }");
        assert!(matches(&r, &req, &metadata(&[("x-tenant", "acme")])));
        let r = when("when.metadata.x-tenant = { regex = \"^a\" }");
        assert!(matches(&r, &req, &metadata(&[("x-tenant", "acme")])));
        assert!(!matches(&r, &req, &metadata(&[("x-tenant", "bacme")])));
        let r = when("when.metadata.x-tenant = { present = false }");
        assert!(matches(&r, &req, &metadata(&[])));
        assert!(!matches(&r, &req, &metadata(&[("x-tenant", "acme")])));
    }

    #[test]
    fn a_binary_metadata_condition_compares_base64_with_any_padding() {
        let r = when("when.metadata.\"x-t-bin\" = \"aGk\"");
        let mut md = metadata(&[]);
        md.insert_bin(
            "x-t-bin",
            tonic::metadata::BinaryMetadataValue::from_bytes(b"hi"),
        );
        assert!(matches(&r, &request(json!({})), &md));
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.metadata.\"x-t-bin\" = \"not base64!\"\n";
        problem_at(
            h,
            "\"not base64!\"",
            &["'x-t-bin' is a binary (-bin) key", "base64"],
        );
    }

    #[test]
    fn a_bad_condition_is_refused_where_it_is_written() {
        let h = |w: &str| format!("[[rule]]\nmethod = \"t.Svc/Unary\"\n{w}\n");
        problem_at(&h("when = 1"), "1", &["`when` must be a table"]);
        problem_at(
            &h("when.body.name = \"x\""),
            "body",
            &["unknown condition 'body'", "`request` or `metadata`"],
        );
        problem_at(&h("when.request = 1"), "1", &["when.request.FIELD = VALUE"]);
        problem_at(&h("when.metadata = 1"), "1", &["when.metadata.KEY"]);
        problem_at(&h("when.request.nam = \"x\""), "nam", &["nam", "t.Req"]);
        problem_at(
            &h("when.request.num = \"abc\""),
            "\"abc\"",
            &["not a valid value for t.Req.num (int32)"],
        );
        problem_at(
            &h("when.request.num = { contains = 1 }"),
            "1 }",
            &["`contains` needs a string or repeated field", "request.num"],
        );
        // On a request field a table without an operator is a path into a nested message...
        problem_at(
            &h("when.request.name = { like = \"x\" }"),
            "like",
            &["'request.name.like'", "string has no field 'like'"],
        );
        // ...on a metadata key it can only be an operator.
        problem_at(
            &h("when.metadata.k = { like = \"x\" }"),
            "like",
            &["unknown operator 'like'", "eq, contains, regex, present"],
        );
        problem_at(
            &h("when.request.name = { eq = \"x\", regex = \"y\" }"),
            "{ eq",
            &["exactly one operator"],
        );
        problem_at(
            &h("when.request.flag = { present = \"yes\" }"),
            "\"yes\"",
            &["expected true or false"],
        );
        problem_at(
            &h("when.metadata.k = 1"),
            "1",
            &["metadata values are strings"],
        );
    }

    #[test]
    fn a_bad_regex_is_reported_on_one_line() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = { regex = \"([a-z\" }\n";
        let message = problem_at(h, "\"([a-z\"", &["invalid regex: "]);
        assert!(!message.contains('\n'), "{message}");
    }
}
