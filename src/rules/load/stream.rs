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
