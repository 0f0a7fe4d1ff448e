//! Handler files → rules, checked against the descriptor pool. Every problem is reported with its file,
//! line and column, and what was expected there.
//!
//! A handler file is read by one [`FileCtx`] (the file's text, the pool, where problems go), whose
//! methods are spread over one file per part of a handler file: [`file`](mod@file) the top level (`[[rule]]`
//! tables, `[health]`) and one rule's keys and method; [`when`] matching conditions; [`reply`]
//! messages (replies, stream messages, error details); [`stream`] and [`error`] those answers;
//! [`metadata`] headers and trailers; [`script`] Rhai scripts. This file drives them — a folder or one
//! text in, [`Handlers`] out — and holds what they share: where a problem goes, a rule's origin,
//! template texts and durations. A problem is reported where it is found and the part being read is
//! skipped ([`Reported`]), so one load lists every problem of every file.

mod error;
mod file;
mod filter;
mod metadata;
mod reply;
mod runtime;
mod script;
mod stream;
mod when;

pub(crate) use runtime::{rules as runtime_rules, Submitted, Written};

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use prost_reflect::DescriptorPool;
use walkdir::WalkDir;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::rules::rule::{Answer, MethodRules, Rule};
use crate::rules::template::{Roots, Text};
use crate::rules::toml_tree::{Node, NodeValue};
use crate::rules::Handlers;
use crate::script::ScriptEngine;

/// Reads every `*.toml` under `dir` (sorted by path) into rules for the methods of `pool`.
pub(crate) fn load(
    dir: &FsPath,
    pool: &DescriptorPool,
    engine: &ScriptEngine,
) -> Result<Handlers, Diagnostics> {
    let mut problems = Diagnostics::default();
    let mut files = Vec::new();
    if !dir.is_dir() {
        problems.push(Diagnostic::file(dir, "handlers folder not found"));
        return Err(problems);
    }
    for entry in WalkDir::new(dir).follow_links(true).sort_by_file_name() {
        match entry {
            Ok(e)
                if e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "toml") =>
            {
                files.push(e.into_path())
            }
            Ok(_) => {}
            Err(e) => problems.push(Diagnostic::file(e.path().unwrap_or(dir), e.to_string())),
        }
    }
    let mut sources = Vec::new();
    for path in &files {
        match std::fs::read_to_string(path) {
            Ok(s) => sources.push((path.clone(), s)),
            Err(e) => problems.push(Diagnostic::file(path, format!("cannot read: {e}"))),
        }
    }
    check_sources(&sources, files, pool, engine, problems)
}

/// Checks one handler file given as text, exactly as [`load`] checks each file of a folder (a
/// `script = "…"` file is still read relative to `path`). For the fuzz targets (no disk I/O) and tests.
#[cfg(any(test, feature = "fuzzing"))]
pub fn load_source(
    path: &FsPath,
    source: &str,
    pool: &DescriptorPool,
    engine: &ScriptEngine,
) -> Result<Handlers, Diagnostics> {
    let sources = [(path.to_path_buf(), source.to_string())];
    let files = vec![path.to_path_buf()];
    check_sources(&sources, files, pool, engine, Diagnostics::default())
}

/// The rules of the handler files' texts, in order; `files` is what [`Handlers::files`] reports.
fn check_sources(
    sources: &[(PathBuf, String)],
    files: Vec<PathBuf>,
    pool: &DescriptorPool,
    engine: &ScriptEngine,
    mut problems: Diagnostics,
) -> Result<Handlers, Diagnostics> {
    let mut methods: HashMap<String, MethodRules> = HashMap::new();
    let mut defaults: HashMap<String, Vec<Rule>> = HashMap::new();
    let mut health = BTreeMap::new();
    for (path, source) in sources {
        let mut file = FileCtx {
            path,
            script_dir: path.parent().unwrap_or(FsPath::new(".")),
            confined: false,
            source,
            pool,
            engine,
            problems: &mut problems,
        };
        for (method, rule) in file.read(&mut health) {
            if rule.is_default() {
                defaults.entry(method).or_default().push(rule);
            } else {
                methods.entry(method).or_default().rules.push(rule);
            }
        }
    }
    for (method, rules) in defaults {
        methods.entry(method).or_default().rules.extend(rules);
    }
    check_stream_scripts(&methods, pool, &mut problems);
    problems.into_result()?;
    Ok(Handlers {
        methods,
        files,
        health,
    })
}

/// A client or bidi stream read by a script is the script's alone: other rules could never run.
fn check_stream_scripts(
    methods: &HashMap<String, MethodRules>,
    pool: &DescriptorPool,
    problems: &mut Diagnostics,
) {
    for (name, rules) in methods {
        let desc = name.rsplit_once('/').and_then(|(svc, m)| {
            pool.get_service_by_name(svc)?
                .methods()
                .find(|x| x.name() == m)
        });
        if let Some(message) = desc.and_then(|d| lone_script_problem(&d, rules)) {
            let first = rules.rules[0].origin.as_str();
            let file = first.rsplit_once(':').map_or(first, |(f, _)| f);
            problems.push(Diagnostic::file(PathBuf::from(file), message));
        }
    }
}

/// Why `rules` cannot answer `method` together: a client or bidi stream answered by a script has
/// that one rule (the script reads the whole stream, so no other rule could ever run). Shared by
/// the handler files and the runtime rules layered over them.
pub(crate) fn lone_script_problem(
    method: &prost_reflect::MethodDescriptor,
    rules: &MethodRules,
) -> Option<String> {
    let has_script = rules
        .rules
        .iter()
        .any(|r| matches!(r.answer, Answer::Script(_)));
    if !(method.is_client_streaming() && has_script && rules.rules.len() > 1) {
        return None;
    }
    let origins: Vec<&str> = rules.rules.iter().map(|r| r.origin.as_str()).collect();
    Some(format!(
        "{}/{} is a client/bidi stream answered by a script, which reads the whole stream, so it can have only that one rule (found {}: {})",
        method.parent_service().full_name(),
        method.name(),
        rules.rules.len(),
        origins.join(", ")
    ))
}

/// One handler file being read: its text, what it is checked against, and where its problems go.
struct FileCtx<'a> {
    /// What problems name: the file, or a submission's name.
    path: &'a FsPath,
    /// Where `script = "…"` files are read from: the handler file's folder (a runtime rule's is
    /// the handlers folder).
    script_dir: &'a FsPath,
    /// Text that came over the network (runtime rules): a `script = "…"` file must be inside
    /// `script_dir`, so that the admin API reads no other file.
    confined: bool,
    source: &'a str,
    pool: &'a DescriptorPool,
    engine: &'a ScriptEngine,
    problems: &'a mut Diagnostics,
}

/// A problem was reported; the caller skips what it was building.
struct Reported;
type Res<T> = Result<T, Reported>;

impl FileCtx<'_> {
    /// Reports a problem at `span` of this file; the caller then skips what it was reading.
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) -> Reported {
        self.problems
            .push(Diagnostic::at(self.path, self.source, span, message));
        Reported
    }

    /// `file:line` of what starts at `span`: a rule's name in logs and in problems about several rules.
    fn origin(&self, span: &Range<usize>) -> String {
        let (line, _, _) = crate::diagnostic::locate(self.source, span.start);
        format!("{}:{line}", self.path.display())
    }

    /// The rule written at `node`, as written: an inline table's text, or a `[[rule]]` table from
    /// its header to the end of its last entry's line (its sub-tables included). For listings.
    fn rule_text(&self, node: &Node) -> std::sync::Arc<str> {
        fn extent(node: &Node) -> usize {
            let inner = match &node.value {
                NodeValue::Array(items) => items.iter().map(extent).max(),
                NodeValue::Table(t) => t.iter().map(|(k, v)| k.span.end.max(extent(v))).max(),
                _ => None,
            };
            node.span.end.max(inner.unwrap_or(0))
        }
        let start = node.span.start.min(self.source.len());
        let mut end = extent(node).clamp(start, self.source.len());
        if self.source[start..].starts_with("[[") {
            end += self.source[end..]
                .find('\n')
                .unwrap_or(self.source.len() - end);
        }
        std::sync::Arc::from(self.source[start..end].trim_end())
    }

    /// A template text written as the TOML string `node`; a problem points inside the string.
    fn text(&mut self, s: &str, node: &Node, roots: &Roots) -> Res<Text> {
        Text::parse(s, roots).map_err(|(message, offset)| {
            // +1 skips the opening quote of a basic string.
            let start = (node.span.start + 1 + offset).min(node.span.end);
            self.error(start..start + 1, message)
        })
    }

    /// A delay: a string such as `"150ms"` or `"2s"`, or a number of milliseconds.
    fn duration(&mut self, node: &Node) -> Res<Duration> {
        match &node.value {
            NodeValue::Str(s) => humantime::parse_duration(s).map_err(|e| {
                self.error(
                    node.span.clone(),
                    format!("invalid duration '{s}': {e} (write e.g. \"150ms\", \"2s\")"),
                )
            }),
            NodeValue::Int(ms @ 0..) => Ok(Duration::from_millis(*ms as u64)),
            _ => Err(self.error(
                node.span.clone(),
                "a duration is a string such as \"150ms\" or \"2s\"",
            )),
        }
    }
}

/// What the section tests share: a small proto loaded as the server loads one (`t.Svc` with every
/// RPC shape, like tests/common's `T_PROTO`), a handler file checked as [`load_source`] checks it,
/// and what a user looks at: the rules a method gets, or a problem at `file:line:column`.
#[cfg(test)]
pub(in crate::rules) mod testkit {
    use std::path::Path;
    use std::sync::OnceLock;

    use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
    use tonic::metadata::MetadataMap;

    use crate::diagnostic::{Diagnostic, Diagnostics};
    use crate::rules::template::{MessageTemplate, Scope};
    use crate::rules::{Answer, Handlers, Rule};
    use crate::script::ScriptEngine;

    pub const PROTO: &str = r#"syntax = "proto3";
package t;

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
  GREEN = 2;
}

message Inner {
  int32 id = 1;
  string label = 2;
}

message Req {
  string name = 1;
  int32 num = 2;
  bool flag = 4;
  Color color = 5;
  repeated string tags = 6;
  Inner inner = 7;
  repeated Inner items = 8;
}

message Resp {
  string text = 1;
  int32 num = 2;
  Color color = 4;
  repeated string list = 5;
  Inner inner = 6;
  repeated Inner items = 7;
  map<string, int32> counts = 12;
}

service Svc {
  rpc Unary(Req) returns (Resp);
  rpc Echo(Req) returns (Req);
  rpc ServerStream(Req) returns (stream Resp);
  rpc ClientStream(stream Req) returns (Resp);
  rpc Bidi(stream Req) returns (stream Resp);
}

service Other {
  rpc Ping(Req) returns (Req);
}
"#;

    /// Where the handler file is said to be: problems name it.
    pub const FILE: &str = "handlers/t.toml";

    /// `t.proto` loaded by [`crate::protos::load`], with the bundled includes (`google.rpc.Status`
    /// for error details) a served tree has.
    pub fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("t.proto"), PROTO).unwrap();
            crate::protos::load(dir.path(), &[]).unwrap().pool
        })
    }

    /// `text` checked as the handler file [`FILE`].
    pub fn load(text: &str) -> Result<Handlers, Diagnostics> {
        load_at(Path::new(FILE), text)
    }

    /// `text` checked as the handler file `path` (a `script = "…"` is read next to it).
    pub fn load_at(path: &Path, text: &str) -> Result<Handlers, Diagnostics> {
        let engine = ScriptEngine::new(Default::default());
        super::load_source(path, text, pool(), &engine)
    }

    /// The rules `text` gives `method` (`Svc/Unary` is `t.Svc/Unary`); fails on any problem.
    #[track_caller]
    pub fn rules(text: &str, method: &str) -> Vec<Rule> {
        let handlers = load(text).unwrap_or_else(|d| panic!("the file should load:\n{d}"));
        let method = format!("t.{method}");
        handlers
            .methods
            .get(&method)
            .unwrap_or_else(|| panic!("no rules for {method}"))
            .rules
            .clone()
    }

    /// The one rule `text` gives `method`.
    #[track_caller]
    pub fn rule(text: &str, method: &str) -> Rule {
        let mut rules = rules(text, method);
        assert_eq!(rules.len(), 1, "one rule: {rules:?}");
        rules.remove(0)
    }

    /// 1-based (line, column in characters) of the first `needle` in `text`.
    #[track_caller]
    pub fn pos(text: &str, needle: &str) -> (usize, usize) {
        let offset = text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the file"));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
            .chars()
            .count()
            + 1;
        (line, column)
    }

    /// The problems of a file that must not load.
    #[track_caller]
    pub fn problems(text: &str) -> Vec<Diagnostic> {
        match load(text) {
            Ok(_) => panic!("the file should not load:\n{text}"),
            Err(d) => d.0,
        }
    }

    /// Asserts that `text` fails with a problem in [`FILE`] at `needle`'s line and column whose
    /// message has every one of `words`, and that it quotes that line; returns the message.
    #[track_caller]
    pub fn problem_at(text: &str, needle: &str, words: &[&str]) -> String {
        let (line, column) = pos(text, needle);
        let all = problems(text);
        let shown = Diagnostics(all.clone()).to_string();
        let Some(d) = all.iter().find(|d| d.line == line && d.column == column) else {
            panic!("expected a problem at {FILE}:{line}:{column}; got:\n{shown}");
        };
        assert_eq!(d.file, Path::new(FILE), "{shown}");
        for w in words {
            assert!(
                d.message.contains(w),
                "the message at {line}:{column} should mention {w:?}: {}",
                d.message
            );
        }
        assert_eq!(
            d.source_line.as_deref(),
            text.lines().nth(line - 1),
            "quotes the line"
        );
        d.message.clone()
    }

    /// A `t.Req` written as JSON.
    pub fn request(json: serde_json::Value) -> DynamicMessage {
        let desc = pool().get_message_by_name("t.Req").unwrap();
        DynamicMessage::deserialize(desc, json).unwrap()
    }

    /// Request metadata from `(key, value)` pairs.
    pub fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    /// `template` rendered for `request`, as JSON (with its type's name).
    pub fn render(template: &MessageTemplate, request: &DynamicMessage) -> serde_json::Value {
        let md = MetadataMap::new();
        let message = template
            .render(&Scope::new(Some(request), &md))
            .expect("renders");
        assert_eq!(message.descriptor(), template.desc);
        serde_json::to_value(&message).unwrap()
    }

    /// The reply `rule` gives `request`, as JSON.
    #[track_caller]
    pub fn reply(rule: &Rule, request: &DynamicMessage) -> serde_json::Value {
        let Answer::Reply(template) = &rule.answer else {
            panic!("a reply: {:?}", rule.answer);
        };
        render(template, request)
    }

    /// Whether `rule` applies to `request` with `md`.
    pub fn matches(rule: &Rule, request: &DynamicMessage, md: &MetadataMap) -> bool {
        rule.matches(&Scope::new(Some(request), md))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::testkit::*;

    #[test]
    fn a_folder_is_read_in_path_order_and_every_problem_of_every_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "b.toml",
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"b\" }\n",
        );
        write("a/x.toml", "[[rule]]\nmethod = \"t.Svc/Echo\"\n");
        write("notes.txt", "not a handler file");
        let engine = crate::script::ScriptEngine::new(Default::default());
        let handlers = super::load(dir.path(), pool(), &engine).unwrap();
        assert_eq!(
            handlers.files,
            [dir.path().join("a/x.toml"), dir.path().join("b.toml")]
        );
        assert_eq!(handlers.rule_count(), 2);

        write("a/x.toml", "[[rule]]\nmethod = \"t.Svc/Nope\"\n");
        write("c.toml", "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { txt = \"x\" }\n\n[[rule]]\nmethod = \"t.Svc/Echo\"\nreply = { nam = \"x\" }\n");
        let problems = super::load(dir.path(), pool(), &engine).unwrap_err().0;
        let at: Vec<_> = problems
            .iter()
            .map(|d| (d.file.strip_prefix(dir.path()).unwrap().to_owned(), d.line))
            .collect();
        assert_eq!(
            at,
            [
                (Path::new("a/x.toml").to_owned(), 2),
                (Path::new("c.toml").to_owned(), 3),
                (Path::new("c.toml").to_owned(), 7),
            ]
        );
    }

    #[test]
    fn a_missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("handlers");
        let engine = crate::script::ScriptEngine::new(Default::default());
        let problems = super::load(&missing, pool(), &engine).unwrap_err().0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, missing);
        assert_eq!(problems[0].message, "handlers folder not found");
    }

    /// Rules with conditions are tried first, in file order; the unconditional ones after them.
    #[test]
    fn conditional_rules_come_before_the_default() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"default\" }\n\n[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"a\"\nreply = { text = \"a\" }\n";
        let rules = rules(h, "Svc/Unary");
        let origins: Vec<&str> = rules.iter().map(|r| r.origin.as_str()).collect();
        assert_eq!(origins, [format!("{FILE}:5"), format!("{FILE}:1")]);
        let none = metadata(&[]);
        let first = |name: &str| {
            let req = request(json!({ "name": name }));
            let r = rules.iter().find(|r| matches(r, &req, &none)).unwrap();
            reply(r, &req)
        };
        assert_eq!(first("a"), json!({ "text": "a" }));
        assert_eq!(first("b"), json!({ "text": "default" }));
    }

    /// A client or bidi stream's script reads the whole stream, so no other rule could ever run.
    #[test]
    fn a_stream_script_is_its_methods_only_rule() {
        let h = "[[rule]]\nmethod = \"t.Svc/Bidi\"\ncode = \"()\"\n\n[[rule]]\nmethod = \"t.Svc/Bidi\"\nstream.messages = []\n";
        let problems = problems(h);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, Path::new(FILE));
        assert_eq!(
            problems[0].message,
            format!("t.Svc/Bidi is a client/bidi stream answered by a script, which reads the whole stream, so it can have only that one rule (found 2: {FILE}:1, {FILE}:5)")
        );
        // Alone, it loads.
        rule(
            "[[rule]]\nmethod = \"t.Svc/Bidi\"\ncode = \"()\"\n",
            "Svc/Bidi",
        );
    }
}
