//! Handler files → rules, checked against the descriptor pool. Every problem is reported with its file,
//! line and column, and what was expected there.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, MethodDescriptor, Value,
};
use tonic::metadata::{Ascii, Binary, MetadataKey};
use tonic::Code;
use tonic_health::ServingStatus;
use walkdir::WalkDir;

use super::matcher::{Condition, Op, Subject, OPERATORS};
use super::rule::{
    Answer, ErrorTemplate, MetadataTemplate, MethodRules, Rule, StreamAnswer, StreamSource,
};
use super::template::{
    check_assignable, field_names, find_field, kind_name, MessageTemplate, Path, Roots, Text, Ty,
    ValueTemplate,
};
use super::toml_tree::{self, Key, Node, NodeValue};
use super::Handlers;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::script::ScriptEngine;

const RULE_KEYS: &[&str] = &[
    "method", "when", "reply", "stream", "error", "script", "code", "headers", "trailers", "delay",
];

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
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) -> Reported {
        self.problems
            .push(Diagnostic::at(self.path, self.source, span, message));
        Reported
    }

    fn origin(&self, span: &Range<usize>) -> String {
        let (line, _, _) = crate::diagnostic::locate(self.source, span.start);
        format!("{}:{line}", self.path.display())
    }

    /// The file's rules; its `[health]` overrides go into `health`.
    fn read(&mut self, health: &mut BTreeMap<String, ServingStatus>) -> Vec<(String, Rule)> {
        let root = match toml_tree::parse(self.source) {
            Ok(root) => root,
            Err((message, span)) => {
                self.error(span, format!("invalid TOML: {}", message.trim()));
                return vec![];
            }
        };
        let mut out = Vec::new();
        for (key, node) in root.as_table().into_iter().flatten() {
            if key.name == "health" {
                self.health(node, health);
                continue;
            }
            if key.name != "rule" {
                self.error(
                    key.span.clone(),
                    format!(
                        "unknown key '{}': a handler file holds [[rule]] tables and a [health] table",
                        key.name
                    ),
                );
                continue;
            }
            let NodeValue::Array(rules) = &node.value else {
                self.error(
                    node.span.clone(),
                    "'rule' must be written as [[rule]] tables",
                );
                continue;
            };
            for rule in rules {
                if let Ok(r) = self.rule(rule) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// `[health]`: `"pkg.Service" = "NOT_SERVING"`; the empty name is the server as a whole.
    fn health(&mut self, node: &Node, health: &mut BTreeMap<String, ServingStatus>) {
        let Some(table) = node.as_table() else {
            self.error(
                node.span.clone(),
                "`health` is a table: [health] then \"pkg.Service\" = \"NOT_SERVING\"",
            );
            return;
        };
        for (key, value) in table {
            if !key.name.is_empty() && self.pool.get_service_by_name(&key.name).is_none() {
                let known: Vec<String> = self
                    .pool
                    .services()
                    .map(|s| s.full_name().to_string())
                    .collect();
                self.error(
                    key.span.clone(),
                    format!(
                        "no service '{}' in the loaded protos (services: {})",
                        key.name,
                        known.join(", ")
                    ),
                );
                continue;
            }
            let status = match value.as_str() {
                Some("SERVING") => ServingStatus::Serving,
                Some("NOT_SERVING") => ServingStatus::NotServing,
                Some("UNKNOWN") => ServingStatus::Unknown,
                _ => {
                    self.error(
                        value.span.clone(),
                        "a health status is \"SERVING\", \"NOT_SERVING\" or \"UNKNOWN\"",
                    );
                    continue;
                }
            };
            health.insert(key.name.clone(), status);
        }
    }

    fn rule(&mut self, node: &Node) -> Res<(String, Rule)> {
        let Some(table) = node.as_table() else {
            return Err(self.error(node.span.clone(), "a rule must be a table"));
        };
        for (key, _) in table {
            if !RULE_KEYS.contains(&key.name.as_str()) {
                let span = key.span.clone();
                self.error(
                    span,
                    format!(
                        "unknown rule key '{}' (expected one of: {})",
                        key.name,
                        RULE_KEYS.join(", ")
                    ),
                );
            }
        }
        let Some(method_node) = node.get("method") else {
            return Err(self.error(
                node.span.start..node.span.start + 1,
                "rule has no `method = \"package.Service/Method\"`",
            ));
        };
        let method = self.method(method_node)?;
        let input = method.input();
        let output = method.output();
        let (client, server) = (method.is_client_streaming(), method.is_server_streaming());
        let roots = Roots {
            request: Some(input.clone()),
            first: client && !server,
            count: client,
            item: None,
            index: false,
        };
        let full = format!("{}/{}", method.parent_service().full_name(), method.name());

        let conditions = match node.get("when") {
            Some(when) => self.conditions(when, &input)?,
            None => vec![],
        };
        let answers: Vec<&str> = ["reply", "stream", "error", "script", "code"]
            .into_iter()
            .filter(|k| node.get(k).is_some())
            .collect();
        if answers.len() > 1 && answers != ["stream", "error"] {
            return Err(self.error(
                node.span.start..node.span.start + 1,
                format!("a rule has one answer, this one has {}: keep one of them (only `stream` may be followed by `error`)", answers.join(" and ")),
            ));
        }
        let answer = if let Some(reply) = node.get("reply") {
            Answer::Reply(self.reply(reply, &output, &roots)?)
        } else if let Some(stream) = node.get("stream") {
            if !server {
                return Err(self.error(
                    stream.span.clone(),
                    format!("{full} returns a single message, not a stream: use `reply`"),
                ));
            }
            let then = node
                .get("error")
                .map(|e| self.error_answer(e, &roots))
                .transpose()?;
            Answer::Stream(self.stream(stream, &output, &roots, then)?)
        } else if let Some(error) = node.get("error") {
            Answer::Error(self.error_answer(error, &roots)?)
        } else if let Some(script) = node.get("script").or(node.get("code")) {
            if client && !conditions.is_empty() {
                return Err(self.error(
                    script.span.clone(),
                    format!("{full} is a client/bidi stream: its script reads every message with next(), so the rule cannot have `when` (decide inside the script)"),
                ));
            }
            Answer::Script(self.script(script, node.get("script").is_some())?)
        } else {
            Answer::Reply(MessageTemplate::constant(DynamicMessage::new(
                output.clone(),
            )))
        };
        // A client/bidi stream's script reads the messages itself: its headers and trailers are
        // rendered before it starts (and after it ends), from metadata alone.
        let metadata_roots = if client && matches!(answer, Answer::Script(_)) {
            Roots::default()
        } else {
            roots
        };
        let headers = self.metadata(node.get("headers"), &metadata_roots)?;
        let trailers = self.metadata(node.get("trailers"), &metadata_roots)?;
        let delay = node.get("delay").map(|d| self.duration(d)).transpose()?;
        let origin = self.origin(&node.span);
        Ok((
            full,
            Rule {
                origin,
                conditions,
                answer,
                headers,
                trailers,
                delay,
            },
        ))
    }

    fn method(&mut self, node: &Node) -> Res<MethodDescriptor> {
        let Some(text) = node.as_str() else {
            return Err(self.error(
                node.span.clone(),
                format!(
                    "`method` must be a string like \"package.Service/Method\", not {}",
                    node.type_name()
                ),
            ));
        };
        let name = text.trim_start_matches('/');
        let Some((service_name, method_name)) = name.rsplit_once('/') else {
            return Err(self.error(
                node.span.clone(),
                format!("'{text}' is not of the form package.Service/Method"),
            ));
        };
        let Some(service) = self.pool.get_service_by_name(service_name) else {
            let known: Vec<String> = self
                .pool
                .services()
                .map(|s| s.full_name().to_string())
                .collect();
            return Err(self.error(
                node.span.clone(),
                format!(
                    "no service '{service_name}' in the loaded protos (services: {})",
                    known.join(", ")
                ),
            ));
        };
        let found = service.methods().find(|m| m.name() == method_name);
        match found {
            Some(m) => Ok(m),
            None => {
                let known: Vec<String> = service.methods().map(|m| m.name().to_string()).collect();
                Err(self.error(
                    node.span.clone(),
                    format!(
                        "service {service_name} has no method '{method_name}' (methods: {})",
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    // ---- conditions ----

    fn conditions(&mut self, when: &Node, input: &MessageDescriptor) -> Res<Vec<Condition>> {
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

    fn field_conditions(
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

    fn field_condition(
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

    fn metadata_conditions(&mut self, node: &Node, out: &mut Vec<Condition>) -> Res<()> {
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
                    let binary = super::metadata::is_binary(&key.name.to_ascii_lowercase());
                    if op_name == "eq" && binary {
                        // Binary values are seen as padded base64; any padding is fine here.
                        let Some(v) = super::metadata::normalized_base64(s) else {
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
    fn operator<'n>(&mut self, value: &'n Node) -> Res<(&'static str, &'n Node)> {
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

    fn regex(&mut self, node: &Node) -> Res<regex::Regex> {
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

    fn bool(&mut self, node: &Node) -> Res<bool> {
        match node.value {
            NodeValue::Bool(b) => Ok(b),
            _ => Err(self.error(
                node.span.clone(),
                format!("expected true or false, not {}", node.type_name()),
            )),
        }
    }

    // ---- messages ----

    /// A constant value for `field` (one element of it when `element`), read as canonical proto3 JSON.
    fn const_value(
        &mut self,
        node: &Node,
        field: &prost_reflect::FieldDescriptor,
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

    fn reply(
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

    fn message(
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

    fn field_value(
        &mut self,
        node: &Node,
        field: &prost_reflect::FieldDescriptor,
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
    fn element(
        &mut self,
        node: &Node,
        field: &prost_reflect::FieldDescriptor,
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
    fn for_each(&mut self, node: &Node, roots: &Roots) -> Res<(Path, Roots)> {
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

    fn text(&mut self, s: &str, node: &Node, roots: &Roots) -> Res<Text> {
        Text::parse(s, roots).map_err(|(message, offset)| {
            // +1 skips the opening quote of a basic string.
            let start = (node.span.start + 1 + offset).min(node.span.end);
            self.error(start..start + 1, message)
        })
    }

    // ---- streams, errors, scripts, metadata ----

    fn stream(
        &mut self,
        node: &Node,
        output: &MessageDescriptor,
        roots: &Roots,
        then: Option<ErrorTemplate>,
    ) -> Res<StreamAnswer> {
        let Some(table) = node.as_table() else {
            return Err(self.error(node.span.clone(), "`stream` is a table: stream.messages = [...], or stream.message with stream.repeat / stream.for_each"));
        };
        for (key, _) in table {
            if !["messages", "message", "repeat", "for_each", "delay"].contains(&key.name.as_str())
            {
                self.error(key.span.clone(), format!("unknown stream key '{}' (expected messages, message, repeat, for_each, delay)", key.name));
            }
        }
        let delay = node.get("delay").map(|d| self.duration(d)).transpose()?;
        let source = match (
            node.get("messages"),
            node.get("message"),
            node.get("repeat"),
            node.get("for_each"),
        ) {
            (Some(list), None, None, None) => {
                let NodeValue::Array(items) = &list.value else {
                    return Err(self.error(
                        list.span.clone(),
                        "`stream.messages` is an array of messages",
                    ));
                };
                let mut out = Vec::new();
                for item in items {
                    out.push(self.reply(item, output, roots)?);
                }
                StreamSource::Messages(out)
            }
            (None, Some(message), Some(repeat), None) => {
                let NodeValue::Int(n @ 0..) = repeat.value else {
                    return Err(self.error(
                        repeat.span.clone(),
                        "`stream.repeat` is a count (0 or more)",
                    ));
                };
                let with_index = Roots {
                    index: true,
                    ..roots.clone()
                };
                StreamSource::Repeat(n as u64, self.reply(message, output, &with_index)?)
            }
            (None, Some(message), None, Some(source)) => {
                let (path, inner) = self.for_each(source, roots)?;
                StreamSource::ForEach(path, self.reply(message, output, &inner)?)
            }
            (None, Some(message), None, None) => {
                StreamSource::Messages(vec![self.reply(message, output, roots)?])
            }
            _ => {
                return Err(self.error(node.span.clone(), "a stream has `messages = [...]`, or `message` with `repeat = N` or `for_each = \"request.LIST\"`"));
            }
        };
        Ok(StreamAnswer {
            source,
            delay,
            then,
        })
    }

    fn error_answer(&mut self, node: &Node, roots: &Roots) -> Res<ErrorTemplate> {
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

    fn code(&mut self, node: &Node) -> Res<Code> {
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

    fn details(&mut self, node: &Node) -> Res<(Option<MessageDescriptor>, Vec<DynamicMessage>)> {
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

    fn script(&mut self, node: &Node, is_file: bool) -> Res<crate::script::Script> {
        let Some(text) = node.as_str() else {
            return Err(self.error(
                node.span.clone(),
                "a script is a string: a file name, or Rhai code with `code = \"\"\"…\"\"\"`",
            ));
        };
        if is_file {
            let path = self.path.parent().unwrap_or(FsPath::new(".")).join(text);
            // Only a regular file: `/dev/zero` or a FIFO would hang the load (found by fuzzing).
            if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
                return Err(self.error(
                    node.span.clone(),
                    format!("cannot read script {}: not a regular file", path.display()),
                ));
            }
            let source = std::fs::read_to_string(&path).map_err(|e| {
                self.error(
                    node.span.clone(),
                    format!("cannot read script {}: {e}", path.display()),
                )
            })?;
            self.engine.compile(&path, &source, 0).map_err(|d| {
                self.problems.push(d);
                Reported
            })
        } else {
            // Inline code: positions count from the line the string starts on (after `"""` and its newline).
            let (line, _, _) = crate::diagnostic::locate(self.source, node.span.start);
            let starts_on_next_line = self.source[node.span.start..].starts_with("\"\"\"\n")
                || self.source[node.span.start..].starts_with("'''\n");
            let offset = line - 1 + usize::from(starts_on_next_line);
            self.engine.compile(self.path, text, offset).map_err(|d| {
                self.problems.push(d);
                Reported
            })
        }
    }

    fn metadata(&mut self, node: Option<&Node>, roots: &Roots) -> Res<Vec<MetadataTemplate>> {
        let Some(node) = node else { return Ok(vec![]) };
        let Some(table) = node.as_table() else {
            return Err(self.error(
                node.span.clone(),
                "headers and trailers are tables of strings: { x-name = \"value\" }",
            ));
        };
        let mut out = Vec::new();
        for (key, value) in table {
            let name = key.name.to_ascii_lowercase();
            let valid_key = if name.ends_with("-bin") {
                MetadataKey::<Binary>::from_bytes(name.as_bytes()).is_ok()
            } else {
                MetadataKey::<Ascii>::from_bytes(name.as_bytes()).is_ok()
            };
            if !valid_key {
                return Err(self.error(
                    key.span.clone(),
                    format!(
                        "'{}' is not a valid metadata key (lower-case letters, digits, - _ .)",
                        key.name
                    ),
                ));
            }
            let Some(s) = value.as_str() else {
                return Err(self.error(
                    value.span.clone(),
                    format!("metadata values are strings, not {}", value.type_name()),
                ));
            };
            let text = self.text(s, value, roots)?;
            if text.is_constant() {
                let mut probe = tonic::metadata::MetadataMap::new();
                if let Err(e) = super::rule::insert_metadata(&mut probe, &name, s) {
                    return Err(self.error(value.span.clone(), e.message().to_string()));
                }
            }
            out.push(MetadataTemplate {
                key: name,
                value: text,
            });
        }
        Ok(out)
    }

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

/// serde_json errors end with " at line 1 column 0", meaningless for a value built from TOML.
fn json_error(e: &str) -> String {
    match e.rfind(" at line ") {
        Some(i) => e[..i].to_string(),
        None => e.to_string(),
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

/// Reads `node` as a value of `field` through prost-reflect's proto3 JSON parser.
fn convert_const(
    node: &Node,
    field: &prost_reflect::FieldDescriptor,
    element: bool,
) -> Result<Value, String> {
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
    field: &prost_reflect::FieldDescriptor,
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
