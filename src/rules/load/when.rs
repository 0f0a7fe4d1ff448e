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
