//! Text submitted while serving — runtime rules, a verification filter — read by the same loader as
//! handler files, with the same diagnostics, pointing into what was submitted.
//!
//! TOML is read as a handler file is: a problem is at `submitted.toml:LINE:COLUMN` of the text. A
//! JSON value (the same structure: `{"rule": [{"method": …, "reply": {…}}]}`) has no text of its
//! own once it has crossed the admin API (a `google.protobuf.Struct` keeps no layout), so it is
//! printed one key per line, that print is the text read — its nodes carry their spans in it, the
//! loader cannot tell it from TOML — and a problem is at `submitted.json:LINE:COLUMN` of that print
//! (the line is quoted) with the JSON path of what it points at: `(at rule[0].reply.price)`. JSON
//! numbers that are whole are integers (a Struct holds every number as a double), `null` is
//! refused (TOML has none: leave the key out).
//!
//! A submission is kept (shared) with each rule read from it, so that a rule can be checked again
//! against new protos after a reload ([`Written::compile`]), its problems then pointing into the
//! same text under the rule's own name (`runtime:r3:4:9`).

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use prost_reflect::DescriptorPool;

use super::FileCtx;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::rules::toml_tree::{self, Key, Node, NodeValue};
use crate::rules::Rule;
use crate::script::ScriptEngine;

/// Text submitted as rules or a filter, parsed into the tree handler files are read from.
#[derive(Clone, Debug)]
pub(crate) struct Submitted {
    json: bool,
    /// The TOML as written; for JSON, the value printed one key per line.
    source: Arc<str>,
    root: Arc<Node>,
    /// JSON only: every key's and value's span in `source`, with its JSON path.
    paths: Arc<Vec<(Range<usize>, String)>>,
}

impl Submitted {
    /// TOML text; a syntax error is a diagnostic at its line and column.
    pub(crate) fn toml(text: &str) -> Result<Submitted, Diagnostics> {
        let root = toml_tree::parse(text).map_err(|(message, span)| {
            Diagnostics(vec![Diagnostic::at(
                SUBMITTED_TOML,
                text,
                span,
                format!("invalid TOML: {}", message.trim()),
            )])
        })?;
        Ok(Submitted {
            json: false,
            source: Arc::from(text),
            root: Arc::new(root),
            paths: Arc::default(),
        })
    }

    /// A JSON object of the same structure (see the module's doc).
    pub(crate) fn json(value: &serde_json::Value) -> Result<Submitted, Diagnostics> {
        let mut printer = JsonPrinter::default();
        let root = printer.value(value, 0, String::new());
        let source: Arc<str> = Arc::from(printer.out.as_str());
        let mut problems: Vec<Diagnostic> = printer
            .nulls
            .iter()
            .map(|(span, path)| {
                Diagnostic::at(
                    SUBMITTED_JSON,
                    &source,
                    span.clone(),
                    format!("null has no TOML equivalent: leave `{path}` out"),
                )
            })
            .collect();
        if !value.is_object() {
            problems.push(Diagnostic::at(
                SUBMITTED_JSON,
                &source,
                0..1,
                "expected a JSON object, as a handler file's top level is a table",
            ));
        }
        let submitted = Submitted {
            json: true,
            source,
            root: Arc::new(root),
            paths: Arc::new(printer.paths),
        };
        if problems.is_empty() {
            Ok(submitted)
        } else {
            Err(submitted.explain(Diagnostics(problems)))
        }
    }

    /// What problems found while reading the submission name.
    pub(crate) fn name(&self) -> &'static FsPath {
        FsPath::new(if self.json {
            SUBMITTED_JSON
        } else {
            SUBMITTED_TOML
        })
    }

    pub(super) fn source(&self) -> &str {
        &self.source
    }

    pub(super) fn root(&self) -> &Node {
        &self.root
    }

    /// For JSON, each problem pointing into the print gets the JSON path of what it points at.
    pub(super) fn explain(&self, mut problems: Diagnostics) -> Diagnostics {
        if !self.json {
            return problems;
        }
        for d in &mut problems.0 {
            if d.line == 0 {
                continue;
            }
            let Some(offset) = offset_of(&self.source, d.line, d.column) else {
                continue;
            };
            let innermost = self
                .paths
                .iter()
                .filter(|(span, _)| span.start <= offset && offset < span.end.max(span.start + 1))
                .min_by_key(|(span, _)| span.len());
            if let Some((_, path)) = innermost {
                if !path.is_empty() {
                    d.message.push_str(&format!(" (at {path})"));
                }
            }
        }
        problems
    }
}

const SUBMITTED_TOML: &str = "submitted.toml";
const SUBMITTED_JSON: &str = "submitted.json";

/// The byte offset of a 1-based line and column (in characters).
fn offset_of(source: &str, line: usize, column: usize) -> Option<usize> {
    let start = if line == 1 {
        0
    } else {
        source.match_indices('\n').nth(line - 2)?.0 + 1
    };
    let rest = &source[start..];
    let within = rest
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(rest.len(), |(i, _)| i);
    Some(start + within)
}

/// Prints a JSON value two spaces an indent, building the tree the loader reads with each node's
/// span in the print, and noting each node's path.
#[derive(Default)]
struct JsonPrinter {
    out: String,
    paths: Vec<(Range<usize>, String)>,
    nulls: Vec<(Range<usize>, String)>,
}

impl JsonPrinter {
    fn value(&mut self, value: &serde_json::Value, indent: usize, path: String) -> Node {
        use serde_json::Value as J;
        let start = self.out.len();
        let node = match value {
            J::Null => {
                self.out.push_str("null");
                self.nulls.push((start..self.out.len(), path.clone()));
                NodeValue::Str(String::new())
            }
            J::Bool(b) => {
                self.out.push_str(if *b { "true" } else { "false" });
                NodeValue::Bool(*b)
            }
            J::Number(n) => {
                self.out.push_str(&n.to_string());
                if let Some(i) = n.as_i64() {
                    NodeValue::Int(i)
                } else if let Some(u) = n.as_u64() {
                    // Beyond i64 (a large uint64): the digits, as the TOML reader keeps them.
                    NodeValue::Str(u.to_string())
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    // A Struct holds every number as a double: a whole one is an integer.
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        NodeValue::Int(f as i64)
                    } else {
                        NodeValue::Float(f)
                    }
                }
            }
            J::String(s) => {
                self.out
                    .push_str(&serde_json::to_string(s).unwrap_or_default());
                NodeValue::Str(s.clone())
            }
            J::Array(items) if items.is_empty() => {
                self.out.push_str("[]");
                NodeValue::Array(vec![])
            }
            J::Array(items) => {
                self.out.push('[');
                let mut nodes = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.newline(indent + 1);
                    nodes.push(self.value(item, indent + 1, format!("{path}[{i}]")));
                }
                self.newline(indent);
                self.out.push(']');
                NodeValue::Array(nodes)
            }
            J::Object(map) if map.is_empty() => {
                self.out.push_str("{}");
                NodeValue::Table(vec![])
            }
            J::Object(map) => {
                self.out.push('{');
                let mut entries = Vec::with_capacity(map.len());
                for (i, (name, item)) in map.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.newline(indent + 1);
                    let key_start = self.out.len();
                    self.out
                        .push_str(&serde_json::to_string(name).unwrap_or_default());
                    let key_span = key_start..self.out.len();
                    let item_path = join_path(&path, name);
                    self.paths.push((key_span.clone(), item_path.clone()));
                    self.out.push_str(": ");
                    let node = self.value(item, indent + 1, item_path);
                    entries.push((
                        Key {
                            name: name.clone(),
                            span: key_span,
                        },
                        node,
                    ));
                }
                self.newline(indent);
                self.out.push('}');
                NodeValue::Table(entries)
            }
        };
        let span = start..self.out.len();
        self.paths.push((span.clone(), path));
        Node { span, value: node }
    }

    fn newline(&mut self, indent: usize) {
        self.out.push('\n');
        self.out.extend(std::iter::repeat_n("  ", indent));
    }
}

/// `parent.name`, or `parent["a.b"]` for a name that is not a plain identifier.
fn join_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '@');
    match (parent.is_empty(), plain) {
        (true, true) => name.to_string(),
        (false, true) => format!("{parent}.{name}"),
        (_, false) => format!(
            "{parent}[{}]",
            serde_json::to_string(name).unwrap_or_default()
        ),
    }
}

/// One rule of a submission as written: kept to be read again against other protos.
#[derive(Clone, Debug)]
pub(crate) struct Written {
    submitted: Submitted,
    /// Its place in the submission's `rule` array.
    index: usize,
    /// Its method as written (`pkg.Service/Method`), known even when it no longer loads.
    method: String,
    /// The rule's own text: its `[[rule]]` table, or for JSON its object printed alone.
    text: Arc<str>,
}

impl Written {
    pub(crate) fn method(&self) -> &str {
        &self.method
    }

    pub(crate) fn text(&self) -> &Arc<str> {
        &self.text
    }

    fn node(&self) -> Option<&Node> {
        match &self.submitted.root.get("rule")?.value {
            NodeValue::Array(items) => items.get(self.index),
            _ => None,
        }
    }

    /// The rule read again against `pool`, its problems named `name` (`runtime:r3`), its origin
    /// `name` too.
    pub(crate) fn compile(
        &self,
        name: &str,
        pool: &DescriptorPool,
        engine: &ScriptEngine,
        script_dir: &FsPath,
    ) -> Result<(String, Rule), Diagnostics> {
        let path = FsPath::new(name);
        let mut problems = Diagnostics::default();
        let mut ctx = FileCtx {
            path,
            script_dir,
            confined: true,
            source: &self.submitted.source,
            pool,
            engine,
            problems: &mut problems,
        };
        let read = match self.node() {
            Some(node) => ctx.rule(node).ok(),
            None => None,
        };
        match read {
            Some((method, mut rule)) if problems.0.is_empty() => {
                rule.origin = name.to_string();
                rule.text = self.text.clone();
                Ok((method, rule))
            }
            _ => {
                if problems.0.is_empty() {
                    problems.push(Diagnostic::file(path, "the rule could not be read again"));
                }
                Err(self.submitted.explain(problems))
            }
        }
    }
}

/// The rules of a submission, in the order written, each with its method and what it was written
/// as; every problem of every rule, or none. Origins are `submitted:LINE` until the caller names
/// each rule.
pub(crate) fn rules(
    submitted: &Submitted,
    pool: &DescriptorPool,
    engine: &ScriptEngine,
    script_dir: &FsPath,
) -> Result<Vec<(String, Rule, Written)>, Diagnostics> {
    let mut problems = Diagnostics::default();
    let mut ctx = FileCtx {
        path: submitted.name(),
        script_dir,
        confined: true,
        source: &submitted.source,
        pool,
        engine,
        problems: &mut problems,
    };
    let read = ctx.read_root(&submitted.root, None);
    if read.is_empty() && ctx.problems.0.is_empty() {
        let span = submitted.root.span.start..submitted.root.span.start;
        ctx.error(
            span,
            if submitted.json {
                "no rules: write {\"rule\": [{\"method\": \"pkg.Service/Method\", …}]}"
            } else {
                "no rules: write [[rule]] tables, each with method = \"pkg.Service/Method\""
            },
        );
    }
    let json_rules = if submitted.json {
        submitted_json_rules(&submitted.root)
    } else {
        vec![]
    };
    let mut out = Vec::new();
    for (index, (_, result)) in read.into_iter().enumerate() {
        let Ok((method, mut rule)) = result else {
            continue;
        };
        if let Some(text) = json_rules.get(index) {
            rule.text = Arc::from(text.as_str());
        }
        out.push((
            method.clone(),
            rule.clone(),
            Written {
                submitted: submitted.clone(),
                index,
                method,
                text: rule.text.clone(),
            },
        ));
    }
    if !problems.0.is_empty() {
        return Err(submitted.explain(problems));
    }
    Ok(out)
}

/// Each rule of a JSON submission printed alone, for listings (the whole print indents it).
fn submitted_json_rules(root: &Node) -> Vec<String> {
    match root.get("rule").map(|r| &r.value) {
        Some(NodeValue::Array(items)) => items
            .iter()
            .map(|n| serde_json::to_string_pretty(&n.to_json()).unwrap_or_default())
            .collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testkit::pool;
    use super::*;

    fn engine() -> ScriptEngine {
        ScriptEngine::new(Default::default())
    }

    fn read_toml(text: &str) -> Result<Vec<(String, Rule, Written)>, Diagnostics> {
        rules(&Submitted::toml(text)?, pool(), &engine(), FsPath::new("."))
    }

    fn read_json(value: serde_json::Value) -> Result<Vec<(String, Rule, Written)>, Diagnostics> {
        rules(
            &Submitted::json(&value)?,
            pool(),
            &engine(),
            FsPath::new("."),
        )
    }

    #[test]
    fn submitted_rules_are_read_in_order_each_with_its_own_text() {
        let text = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"a\"\nreply = { text = \"A\" }\n\n# the default\n[[rule]]\nmethod = \"/t.Svc/Unary\"\n[rule.reply]\ntext = \"other\"\n";
        let read = read_toml(text).unwrap();
        let methods: Vec<&str> = read.iter().map(|(m, _, _)| m.as_str()).collect();
        assert_eq!(methods, ["t.Svc/Unary", "t.Svc/Unary"]);
        assert_eq!(
            &*read[0].1.text,
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"a\"\nreply = { text = \"A\" }"
        );
        assert_eq!(
            &*read[1].1.text,
            "[[rule]]\nmethod = \"/t.Svc/Unary\"\n[rule.reply]\ntext = \"other\""
        );
        assert_eq!(read[1].2.method(), "t.Svc/Unary");
    }

    #[test]
    fn a_bad_submission_names_line_and_column_of_the_text() {
        let text = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { txt = \"x\" }\n";
        let problems = read_toml(text).unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        let d = &problems[0];
        assert_eq!(
            (d.file.to_str().unwrap(), d.line, d.column),
            ("submitted.toml", 3, 11)
        );
        assert!(d.message.contains("no field 'txt'"), "{}", d.message);
        // Every rule's problems, not the first only.
        let text = "[[rule]]\nmethod = \"t.Svc/Nope\"\n[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = \"soon\"\n";
        let lines: Vec<usize> = read_toml(text)
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.line)
            .collect();
        assert_eq!(lines, [2, 5]);
        let d = &read_toml("[[rule]\n").unwrap_err().0[0];
        assert_eq!((d.line, d.message.starts_with("invalid TOML")), (1, true));
    }

    #[test]
    fn a_submission_holds_rules_only() {
        let d = &read_toml("[health]\n\"t.Svc\" = \"NOT_SERVING\"\n")
            .unwrap_err()
            .0[0];
        assert!(d.message.contains("[[rule]] tables only"), "{}", d.message);
        let d = &read_toml("# nothing\n").unwrap_err().0[0];
        assert!(d.message.starts_with("no rules"), "{}", d.message);
    }

    #[test]
    fn json_reads_as_the_same_toml() {
        let toml = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.num = 3\nwhen.request.\"inner.id\" = 7\nreply = { text = \"{{request.name}}\", num = 2 }\ndelay = 5\n";
        let json = json!({"rule": [{
            "method": "t.Svc/Unary",
            "when": {"request": {"num": 3.0, "inner.id": 7}},
            "reply": {"text": "{{request.name}}", "num": 2},
            "delay": 5
        }]});
        let (a, b) = (read_toml(toml).unwrap(), read_json(json).unwrap());
        let req =
            super::super::testkit::request(json!({"name": "n", "num": 3, "inner": {"id": 7}}));
        let md = tonic::metadata::MetadataMap::new();
        for (_, rule, _) in [&a[0], &b[0]] {
            assert!(super::super::testkit::matches(rule, &req, &md));
            assert_eq!(
                super::super::testkit::reply(rule, &req),
                json!({"text": "n", "num": 2})
            );
            assert_eq!(rule.delay, Some(std::time::Duration::from_millis(5)));
        }
        // JSON objects hold no order: the rule's own text lists its keys sorted.
        assert!(
            b[0].1.text.starts_with("{\n  \"delay\": 5,\n  \"method\""),
            "{}",
            b[0].1.text
        );
    }

    #[test]
    fn a_json_problem_names_its_path_and_line_of_the_print() {
        let json = json!({"rule": [{"method": "t.Svc/Unary", "reply": {"txt": "x"}}]});
        let d = &read_json(json).unwrap_err().0[0];
        assert_eq!(d.file.to_str().unwrap(), "submitted.json");
        assert!(d.message.contains("no field 'txt'"), "{}", d.message);
        assert!(
            d.message.ends_with("(at rule[0].reply.txt)"),
            "{}",
            d.message
        );
        assert_eq!(d.source_line.as_deref(), Some("        \"txt\": \"x\""));
        let d = &read_json(json!({"rule": [{"method": "t.Svc/Unary", "delay": null}]}))
            .unwrap_err()
            .0[0];
        assert!(
            d.message.contains("leave `rule[0].delay` out"),
            "{}",
            d.message
        );
        let d = &read_json(
            json!({"rule": [{"method": "t.Svc/Unary", "when": {"request": {"inner.nope": 1}}}]}),
        )
        .unwrap_err()
        .0[0];
        assert!(
            d.message
                .ends_with("(at rule[0].when.request[\"inner.nope\"])"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_runtime_rules_script_file_stays_inside_the_handlers_folder() {
        for path in ["../x.rhai", "/etc/passwd", "a/../../x.rhai"] {
            let text = format!("[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"{path}\"\n");
            let d = &read_toml(&text).unwrap_err().0[0];
            assert_eq!((d.line, d.column), (3, 10), "{path}");
            assert!(
                d.message.contains("inside the handlers folder"),
                "{}",
                d.message
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/x.rhai"), "#{ text: \"s\" }").unwrap();
        let text = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"./s/x.rhai\"\n";
        let sub = Submitted::toml(text).unwrap();
        assert!(rules(&sub, pool(), &engine(), dir.path()).is_ok());
    }

    #[test]
    fn a_written_rule_reads_again_under_its_name() {
        let read =
            read_toml("[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"x\" }\n").unwrap();
        let (method, rule) = read[0]
            .2
            .compile("runtime:r7", pool(), &engine(), FsPath::new("."))
            .unwrap();
        assert_eq!(
            (method.as_str(), rule.origin.as_str()),
            ("t.Svc/Unary", "runtime:r7")
        );
        let other = crate::protos::compile_texts(&[(
            "o.proto",
            "syntax = \"proto3\";\npackage t;\nmessage M {}\nservice Svc { rpc Other(M) returns (M); }\n",
        )]);
        let d = &read[0]
            .2
            .compile("runtime:r7", &other, &engine(), FsPath::new("."))
            .unwrap_err()
            .0[0];
        assert_eq!((d.file.to_str().unwrap(), d.line), ("runtime:r7", 2));
        assert!(d.message.contains("no method 'Unary'"), "{}", d.message);
    }
}
