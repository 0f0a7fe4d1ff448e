//! A handler file's TOML as an owned tree in which every key and value keeps its byte span, so every
//! later check can point at file:line:column.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A TOML value with the byte range it was written at.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub span: Range<usize>,
    pub value: NodeValue,
}

#[derive(Clone, Debug)]
pub(super) enum NodeValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// TOML datetimes, kept as written (they map to `google.protobuf.Timestamp` strings).
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

/// A table's entries in the order they were written.
pub(super) type Table = Vec<(Key, Node)>;

#[derive(Clone, Debug)]
pub(super) struct Key {
    pub name: String,
    pub span: Range<usize>,
}

/// Parses a whole file; a syntax error comes back as a message and a byte range.
pub(super) fn parse(source: &str) -> Result<Node, (String, Range<usize>)> {
    let root =
        DeTable::parse(source).map_err(|e| (e.message().to_string(), e.span().unwrap_or(0..0)))?;
    let span = root.span();
    Ok(Node {
        span,
        value: NodeValue::Table(table(root.into_inner())),
    })
}

fn table(t: DeTable<'_>) -> Table {
    let mut entries: Table = t
        .into_iter()
        .map(|(k, v)| {
            (
                Key {
                    span: k.span(),
                    name: k.into_inner().into_owned(),
                },
                node(v),
            )
        })
        .collect();
    // Keep the order the user wrote, whatever order the map iterates in.
    entries.sort_by_key(|(k, _)| k.span.start);
    entries
}

fn node(v: Spanned<DeValue<'_>>) -> Node {
    let span = v.span();
    let value = match v.into_inner() {
        DeValue::String(s) => NodeValue::Str(s.into_owned()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => NodeValue::Int(n),
            // Beyond i64 (a large uint64): keep the digits; typed conversion decides.
            Err(_) => NodeValue::Str(i.as_str().to_string()),
        },
        DeValue::Float(f) => NodeValue::Float(parse_float(f.as_str())),
        DeValue::Boolean(b) => NodeValue::Bool(b),
        DeValue::Datetime(d) => NodeValue::Datetime(d.to_string()),
        DeValue::Array(a) => NodeValue::Array(a.into_iter().map(node).collect()),
        DeValue::Table(t) => NodeValue::Table(table(t)),
    };
    Node { span, value }
}

fn parse_float(s: &str) -> f64 {
    match s.trim_start_matches('+') {
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        "nan" | "-nan" => f64::NAN,
        other => other.replace('_', "").parse().unwrap_or(f64::NAN),
    }
}

impl Node {
    pub(super) fn type_name(&self) -> &'static str {
        match self.value {
            NodeValue::Str(_) => "a string",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a float",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Datetime(_) => "a datetime",
            NodeValue::Array(_) => "an array",
            NodeValue::Table(_) => "a table",
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_table(&self) -> Option<&Table> {
        match &self.value {
            NodeValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The entry `name` of a table node.
    pub(super) fn get(&self, name: &str) -> Option<&Node> {
        self.as_table()?
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    /// Whether any string below this node holds a `{{…}}` template.
    pub(super) fn has_template(&self) -> bool {
        match &self.value {
            NodeValue::Str(s) => s.contains("{{"),
            NodeValue::Array(items) => items.iter().any(Node::has_template),
            NodeValue::Table(t) => t.iter().any(|(_, v)| v.has_template()),
            _ => false,
        }
    }

    /// The node as JSON, for prost-reflect's canonical proto3 JSON parsing of constant values.
    pub(super) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            NodeValue::Str(s) | NodeValue::Datetime(s) => J::String(s.clone()),
            NodeValue::Int(n) => J::from(*n),
            NodeValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| {
                    // proto3 JSON spells the non-finite floats as strings.
                    J::String(
                        if f.is_nan() {
                            "NaN"
                        } else if *f > 0.0 {
                            "Infinity"
                        } else {
                            "-Infinity"
                        }
                        .into(),
                    )
                }),
            NodeValue::Bool(b) => J::Bool(*b),
            NodeValue::Array(items) => J::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Table(t) => J::Object(
                t.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}
