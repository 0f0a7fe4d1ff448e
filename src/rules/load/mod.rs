//! Handler files → rules, checked against the descriptor pool. Every problem is reported with its file,
//! line and column, and what was expected there.
//!
//! A handler file is read by one [`FileCtx`] (the file's text, the pool, where problems go), whose
//! methods are spread over one file per part of a handler file: [`file`] the top level (`[[rule]]`
//! tables, `[health]`) and one rule's keys and method; [`when`] matching conditions; [`reply`]
//! messages (replies, stream messages, error details); [`stream`] and [`error`] those answers;
//! [`metadata`] headers and trailers; [`script`] Rhai scripts. This file drives them — a folder or one
//! text in, [`Handlers`] out — and holds what they share: where a problem goes, a rule's origin,
//! template texts and durations. A problem is reported where it is found and the part being read is
//! skipped ([`Reported`]), so one load lists every problem of every file.

mod error;
mod file;
mod metadata;
mod reply;
mod script;
mod stream;
mod when;

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
pub fn load(
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
/// `script = "…"` file is still read relative to `path`). Public so the fuzz targets need no disk I/O.
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
        let reads_stream = name
            .rsplit_once('/')
            .and_then(|(svc, m)| {
                pool.get_service_by_name(svc)?
                    .methods()
                    .find(|x| x.name() == m)
            })
            .is_some_and(|m| m.is_client_streaming());
        let has_script = rules
            .rules
            .iter()
            .any(|r| matches!(r.answer, Answer::Script(_)));
        if reads_stream && has_script && rules.rules.len() > 1 {
            let origins: Vec<&str> = rules.rules.iter().map(|r| r.origin.as_str()).collect();
            let file = origins[0].rsplit_once(':').map_or(origins[0], |(f, _)| f);
            problems.push(Diagnostic::file(
                PathBuf::from(file),
                format!(
                    "{name} is a client/bidi stream answered by a script, which reads the whole stream, so it can have only that one rule (found {}: {})",
                    rules.rules.len(),
                    origins.join(", ")
                ),
            ));
        }
    }
}

/// One handler file being read: its text, what it is checked against, and where its problems go.
struct FileCtx<'a> {
    path: &'a FsPath,
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
