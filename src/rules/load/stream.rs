//! `stream`: a server-streaming answer — a list of messages, or one message repeated or written
//! for each element of a request list — with its delay between messages (the `error` that may end
//! it is read by [`super::error`]).

use prost_reflect::MessageDescriptor;

use super::{FileCtx, Res};
use crate::rules::rule::{ErrorTemplate, StreamAnswer, StreamSource};
use crate::rules::template::Roots;
use crate::rules::toml_tree::{Node, NodeValue};

impl FileCtx<'_> {
    pub(super) fn stream(
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::super::testkit::*;
    use crate::rules::rule::{StreamAnswer, StreamSource};
    use crate::rules::template::Scope;
    use crate::rules::Answer;

    #[track_caller]
    fn stream(text: &str) -> StreamAnswer {
        let h = format!("[[rule]]\nmethod = \"t.Svc/ServerStream\"\n{text}\n");
        match rule(&h, "Svc/ServerStream").answer {
            Answer::Stream(s) => s,
            other => panic!("a stream: {other:?}"),
        }
    }

    /// The messages `source` sends for `request`, as JSON (what a client receives).
    fn sent(source: &StreamSource, req: Value) -> Vec<Value> {
        let req = request(req);
        let md = metadata(&[]);
        let scope = Scope::new(Some(&req), &md);
        match source {
            StreamSource::Messages(ms) => ms.iter().map(|m| render(m, &req)).collect(),
            StreamSource::Repeat(n, m) => (0..*n)
                .map(|i| {
                    let scope = Scope {
                        index: Some(i),
                        ..scope
                    };
                    serde_json::to_value(m.render(&scope).unwrap()).unwrap()
                })
                .collect(),
            StreamSource::ForEach(path, m) => {
                let list = path.resolve(&scope).unwrap().into_owned();
                let items = list.as_list().unwrap().to_vec();
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let scope = Scope {
                            item: Some(item),
                            index: Some(i as u64),
                            ..scope
                        };
                        serde_json::to_value(m.render(&scope).unwrap()).unwrap()
                    })
                    .collect()
            }
        }
    }

    #[test]
    fn a_list_of_messages_is_sent_in_order_with_its_delay() {
        let s = stream("stream.messages = [{ text = \"a\" }, { text = \"{{request.name}}\" }]\nstream.delay = \"10ms\"");
        assert_eq!(s.delay, Some(Duration::from_millis(10)));
        assert!(s.then.is_none(), "ends with OK");
        assert_eq!(
            sent(&s.source, json!({ "name": "n" })),
            [json!({ "text": "a" }), json!({ "text": "n" })]
        );
        // One `message` alone is a stream of one.
        let s = stream("stream.message = { text = \"one\" }");
        assert_eq!(sent(&s.source, json!({})), [json!({ "text": "one" })]);
    }

    #[test]
    fn a_message_is_repeated_with_its_index_or_written_for_each_element() {
        let s = stream("stream.message = { num = \"{{index}}\" }\nstream.repeat = 3");
        assert!(matches!(s.source, StreamSource::Repeat(3, _)));
        assert_eq!(
            sent(&s.source, json!({})),
            [json!({}), json!({ "num": 1 }), json!({ "num": 2 })]
        );
        let s = stream("stream.message = { text = \"{{index}}={{item}}\" }\nstream.for_each = \"request.tags\"");
        assert_eq!(
            sent(&s.source, json!({ "tags": ["x", "y"] })),
            [json!({ "text": "0=x" }), json!({ "text": "1=y" })]
        );
    }

    #[test]
    fn a_bad_stream_says_how_to_write_one() {
        let h = |s: &str| format!("[[rule]]\nmethod = \"t.Svc/ServerStream\"\n{s}\n");
        problem_at(&h("stream = 1"), "1", &["`stream` is a table"]);
        problem_at(
            &h("stream = { messages = [], every = \"1s\" }"),
            "every",
            &[
                "unknown stream key 'every'",
                "messages, message, repeat, for_each, delay",
            ],
        );
        problem_at(
            &h("stream.messages = 1"),
            "1",
            &["`stream.messages` is an array of messages"],
        );
        problem_at(
            &h("stream.message = {}\nstream.repeat = -1"),
            "-1",
            &["`stream.repeat` is a count (0 or more)"],
        );
        problem_at(
            &h("stream = { messages = [], message = {} }"),
            "{ messages",
            &["a stream has `messages = [...]`, or `message` with `repeat = N` or `for_each"],
        );
        problem_at(
            &h("stream.messages = [{ txt = \"a\" }]"),
            "txt",
            &["t.Resp has no field 'txt'"],
        );
        problem_at(
            &h("stream.message = {}\nstream.for_each = \"request.name\""),
            "\"request.name\"",
            &["`for_each` needs a repeated field"],
        );
    }
}
