//! A handler file's top level — `[[rule]]` tables and the `[health]` table — and one rule: its
//! keys, its method, which answer it gives, and the parts every answer may have (`when`, headers,
//! trailers, `delay`), each read by its own section.

use std::collections::BTreeMap;

use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic_health::ServingStatus;

use super::{FileCtx, Res};
use crate::rules::rule::{Answer, Rule};
use crate::rules::template::{MessageTemplate, Roots};
use crate::rules::toml_tree::{self, Node, NodeValue};

/// The keys a `[[rule]]` table may have.
const RULE_KEYS: &[&str] = &[
    "method", "when", "reply", "stream", "error", "script", "code", "headers", "trailers", "delay",
];

impl FileCtx<'_> {
    /// The file's rules; its `[health]` overrides go into `health`.
    pub(super) fn read(
        &mut self,
        health: &mut BTreeMap<String, ServingStatus>,
    ) -> Vec<(String, Rule)> {
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
    pub(super) fn health(&mut self, node: &Node, health: &mut BTreeMap<String, ServingStatus>) {
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

    pub(super) fn rule(&mut self, node: &Node) -> Res<(String, Rule)> {
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

    pub(super) fn method(&mut self, node: &Node) -> Res<MethodDescriptor> {
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
}
