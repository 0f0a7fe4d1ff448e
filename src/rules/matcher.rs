//! `when` conditions: on request fields (typed as the field is) and on request metadata.

use prost_reflect::Value;
use regex::Regex;

use super::template::{Path, Scope, Text};

/// Operator keys of a condition table; a table without any of them is a path into a nested message.
pub(crate) const OPERATORS: &[&str] = &["eq", "contains", "regex", "present"];

#[derive(Clone, Debug)]
pub(crate) struct Condition {
    pub subject: Subject,
    pub op: Op,
}

#[derive(Clone, Debug)]
pub(crate) enum Subject {
    /// A request field path, `request.…`.
    Field(Path),
    /// A metadata key, lower case.
    Metadata(String),
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Equal to a value already converted to the field's kind (or a metadata string).
    Eq(Value),
    /// String fields: substring. Repeated fields: has an element equal to the value.
    Contains(Value),
    Regex(Regex),
    Present(bool),
}

impl Condition {
    pub(crate) fn holds(&self, scope: &Scope<'_>) -> bool {
        match &self.subject {
            Subject::Metadata(key) => {
                let value = super::metadata::text(scope.metadata, key);
                match (&self.op, value) {
                    (Op::Present(want), v) => v.is_some() == *want,
                    (_, None) => false,
                    (Op::Eq(Value::String(want)), Some(v)) => *v == **want,
                    (Op::Contains(Value::String(want)), Some(v)) => v.contains(want.as_str()),
                    (Op::Regex(re), Some(v)) => re.is_match(&v),
                    _ => false,
                }
            }
            Subject::Field(path) => match &self.op {
                Op::Present(want) => path.is_present(scope) == *want,
                op => {
                    let Some(value) = path.resolve(scope) else {
                        return false;
                    };
                    match (op, value.as_ref()) {
                        (Op::Eq(want), v) => v == want,
                        (Op::Contains(Value::String(want)), Value::String(s)) => {
                            s.contains(want.as_str())
                        }
                        (Op::Contains(want), Value::List(items)) => items.contains(want),
                        (Op::Regex(re), Value::String(s)) => re.is_match(s),
                        (Op::Regex(re), _) => re.is_match(&path_text(path, scope)),
                        _ => false,
                    }
                }
            },
        }
    }
}

impl Condition {
    /// The condition as a handler file writes it (`request.name = "tom"`), for near misses.
    pub(crate) fn describe(&self) -> String {
        let subject = match &self.subject {
            Subject::Field(path) => path.text().to_owned(),
            Subject::Metadata(key) => format!("metadata.{key}"),
        };
        let value = |v: &Value| match v {
            Value::String(s) => format!("{s:?}"),
            Value::Bool(b) => b.to_string(),
            Value::I32(n) | Value::EnumNumber(n) => n.to_string(),
            Value::I64(n) => n.to_string(),
            Value::U32(n) => n.to_string(),
            Value::U64(n) => n.to_string(),
            Value::F32(n) => n.to_string(),
            Value::F64(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        match &self.op {
            Op::Eq(v) => format!("{subject} = {}", value(v)),
            Op::Contains(v) => format!("{subject} = {{ contains = {} }}", value(v)),
            Op::Regex(re) => format!("{subject} = {{ regex = {:?} }}", re.as_str()),
            Op::Present(p) => format!("{subject} = {{ present = {p} }}"),
        }
    }
}

/// The value at `path` written as text (numbers in decimal, enums by name), for regexes on non-strings.
fn path_text(path: &Path, scope: &Scope<'_>) -> String {
    Text::whole(path.clone()).render(scope)
}
