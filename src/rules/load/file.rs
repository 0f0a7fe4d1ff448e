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
        self.read_root(&root, Some(health))
            .into_iter()
            .filter_map(|(_, rule)| rule.ok())
            .collect()
    }

    /// The rules of a parsed file, each with the node it was read from (`Err`: reported). Without
    /// `health` (runtime rules), a `[health]` table is refused.
    pub(super) fn read_root<'n>(
        &mut self,
        root: &'n Node,
        mut health: Option<&mut BTreeMap<String, ServingStatus>>,
    ) -> Vec<(&'n Node, Res<(String, Rule)>)> {
        let mut out = Vec::new();
        for (key, node) in root.as_table().into_iter().flatten() {
            if key.name == "health" {
                match health.as_deref_mut() {
                    Some(health) => self.health(node, health),
                    None => {
                        self.error(
                            key.span.clone(),
                            "runtime rules hold [[rule]] tables only: health is set in a handler file",
                        );
                    }
                }
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
                out.push((rule, self.rule(rule)));
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
                text: self.rule_text(node),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tonic_health::ServingStatus;

    use super::super::testkit::*;
    use crate::rules::Answer;

    #[test]
    fn each_rule_is_filed_under_its_method_with_the_line_it_starts_on() {
        let h = "# two methods\n[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"a\" }\n\n[[rule]]\nmethod = \"/t.Svc/Echo\"\nreply = { name = \"b\" }\n";
        let handlers = load(h).unwrap();
        assert_eq!(handlers.rule_count(), 2);
        assert_eq!(handlers.files, [std::path::PathBuf::from(FILE)]);
        let unary = &handlers.methods["t.Svc/Unary"].rules[0];
        assert_eq!(unary.origin, format!("{FILE}:2"));
        assert_eq!(reply(unary, &request(json!({}))), json!({ "text": "a" }));
        // A leading slash, as the HTTP/2 path has it, names the same method.
        let echo = &handlers.methods["t.Svc/Echo"].rules[0];
        assert_eq!(echo.origin, format!("{FILE}:6"));
        assert_eq!(reply(echo, &request(json!({}))), json!({ "name": "b" }));
    }

    #[test]
    fn a_rule_keeps_its_text_from_its_header_to_its_last_value() {
        let first = "[[rule]]\nmethod = \"t.Svc/Unary\"\n# inside\nreply = { text = \"a\" }\n[rule.when]\nrequest.name = \"x\"";
        let second = "[[rule]]\nmethod = \"t.Svc/Echo\"\ncode = \"\"\"\n[1, 2]\n\"\"\"";
        let h = format!(
            "# the first\n{first}\n\n# the second\n{second}\n\n[health]\n\"\" = \"SERVING\"\n"
        );
        let handlers = load(&h).unwrap();
        assert_eq!(&*handlers.methods["t.Svc/Unary"].rules[0].text, first);
        // A line starting with `[` inside a string is not the next table.
        assert_eq!(&*handlers.methods["t.Svc/Echo"].rules[0].text, second);
    }

    #[test]
    fn a_rule_without_an_answer_replies_with_the_empty_message() {
        let r = rule("[[rule]]\nmethod = \"t.Svc/Unary\"\n", "Svc/Unary");
        assert_eq!(reply(&r, &request(json!({ "name": "x" }))), json!({}));
        assert!(r.headers.is_empty() && r.trailers.is_empty() && r.delay.is_none());
    }

    #[test]
    fn a_rule_takes_its_delay() {
        let r = rule(
            "[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = \"150ms\"\n",
            "Svc/Unary",
        );
        assert_eq!(r.delay, Some(Duration::from_millis(150)));
        let r = rule(
            "[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = 20\n",
            "Svc/Unary",
        );
        assert_eq!(
            r.delay,
            Some(Duration::from_millis(20)),
            "a number is milliseconds"
        );
    }

    #[test]
    fn a_bad_delay_says_how_to_write_one() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = \"soon\"\n";
        problem_at(h, "\"soon\"", &["invalid duration 'soon'", "150ms"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = -5\n";
        problem_at(h, "-5", &["a duration is a string"]);
    }

    #[test]
    fn health_overrides_name_a_service_or_the_server() {
        let h = "[health]\n\"\" = \"NOT_SERVING\"\n\"t.Svc\" = \"SERVING\"\n\"t.Other\" = \"UNKNOWN\"\n";
        let handlers = load(h).unwrap();
        assert_eq!(handlers.rule_count(), 0);
        assert_eq!(handlers.health[""], ServingStatus::NotServing);
        assert_eq!(handlers.health["t.Svc"], ServingStatus::Serving);
        assert_eq!(handlers.health["t.Other"], ServingStatus::Unknown);
    }

    #[test]
    fn a_bad_health_table_is_refused_where_it_is_written() {
        problem_at(
            "[health]\n\"t.Nope\" = \"NOT_SERVING\"\n",
            "\"t.Nope\"",
            &["no service 't.Nope'", "t.Svc", "t.Other"],
        );
        problem_at(
            "[health]\n\"t.Svc\" = \"DOWN\"\n",
            "\"DOWN\"",
            &["\"SERVING\", \"NOT_SERVING\" or \"UNKNOWN\""],
        );
        problem_at("health = 1\n", "1", &["`health` is a table"]);
    }

    #[test]
    fn the_top_level_holds_rules_and_health_only() {
        problem_at(
            "[[rules]]\nmethod = \"t.Svc/Unary\"\n",
            "rules",
            &[
                "unknown key 'rules'",
                "[[rule]] tables and a [health] table",
            ],
        );
        problem_at(
            "rule = 1\n",
            "1",
            &["'rule' must be written as [[rule]] tables"],
        );
    }

    #[test]
    fn invalid_toml_is_reported_at_its_line() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"x\" \n";
        let all = problems(h);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (all[0].line, &*all[0].message.get(..13).unwrap()),
            (3, "invalid TOML:")
        );
    }

    #[test]
    fn an_unknown_rule_key_lists_the_keys() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nrepli = { text = \"x\" }\n";
        problem_at(
            h,
            "repli",
            &["unknown rule key 'repli'", "reply", "trailers", "delay"],
        );
    }

    #[test]
    fn a_rule_needs_a_method_that_exists() {
        let h = "[[rule]]\nreply = {}\n";
        let all = problems(h);
        assert!(
            all.iter().any(|d| d
                .message
                .contains("rule has no `method = \"package.Service/Method\"`")),
            "{all:?}"
        );
        let h = "[[rule]]\nmethod = 3\n";
        problem_at(h, "3", &["`method` must be a string", "not an integer"]);
        let h = "[[rule]]\nmethod = \"Unary\"\n";
        problem_at(
            h,
            "\"Unary\"",
            &["'Unary' is not of the form package.Service/Method"],
        );
        let h = "[[rule]]\nmethod = \"t.Nope/Unary\"\n";
        problem_at(
            h,
            "\"t.Nope/Unary\"",
            &["no service 't.Nope'", "t.Svc", "t.Other"],
        );
        let h = "[[rule]]\nmethod = \"t.Svc/Nope\"\n";
        problem_at(
            h,
            "\"t.Svc/Nope\"",
            &[
                "service t.Svc has no method 'Nope'",
                "Unary",
                "ServerStream",
                "Bidi",
            ],
        );
    }

    #[test]
    fn a_rule_has_one_answer() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = {}\nerror.code = \"NOT_FOUND\"\n";
        let all = problems(h);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].line, 1, "at the rule");
        assert!(
            all[0].message.contains("this one has reply and error"),
            "{}",
            all[0].message
        );
        // `stream` followed by `error` is the one pair allowed.
        let h = "[[rule]]\nmethod = \"t.Svc/ServerStream\"\nstream.messages = [{}]\nerror.code = \"ABORTED\"\n";
        let r = rule(h, "Svc/ServerStream");
        let Answer::Stream(stream) = r.answer else {
            panic!("a stream: {:?}", r.answer)
        };
        assert_eq!(stream.then.unwrap().code, tonic::Code::Aborted);
    }

    #[test]
    fn a_stream_answers_only_a_streaming_method() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nstream.messages = [{ text = \"x\" }]\n";
        problem_at(
            h,
            "stream",
            &["t.Svc/Unary returns a single message, not a stream: use `reply`"],
        );
    }
}
