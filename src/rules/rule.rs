//! A compiled rule: when it applies and what it answers. Built by `load`, used per call by the engine.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataKey, MetadataMap};
use tonic::{Code, Status};

use super::matcher::Condition;
use super::template::{MessageTemplate, Path, Scope, Text};
use crate::script::Script;

/// One `[[rule]]` of a handler file.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `handlers/x.toml:12`, for messages that name the rule.
    pub(crate) origin: String,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) answer: Answer,
    pub(crate) headers: Vec<MetadataTemplate>,
    pub(crate) trailers: Vec<MetadataTemplate>,
    pub(crate) delay: Option<Duration>,
}

/// See [`Rule::near_miss`].
pub(crate) struct NearMiss {
    pub held: usize,
    pub conditions: usize,
    /// The first condition that failed, as written; empty when all held.
    pub failed: String,
}

#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Reply(MessageTemplate),
    Stream(StreamAnswer),
    Error(ErrorTemplate),
    Script(Script),
}

#[derive(Clone, Debug)]
pub(crate) struct StreamAnswer {
    pub source: StreamSource,
    /// Waited before each message.
    pub delay: Option<Duration>,
    /// The status the stream ends with, when not OK.
    pub then: Option<ErrorTemplate>,
}

#[derive(Clone, Debug)]
pub(crate) enum StreamSource {
    Messages(Vec<MessageTemplate>),
    Repeat(u64, MessageTemplate),
    ForEach(Path, MessageTemplate),
}

/// `error = { code, message, details }`.
#[derive(Clone, Debug)]
pub(crate) struct ErrorTemplate {
    pub code: Code,
    pub message: Text,
    /// `google.rpc.Status` to carry the details (`None` when there are none).
    pub status_type: Option<MessageDescriptor>,
    /// Each detail already packed as a `google.protobuf.Any`.
    pub details: Vec<DynamicMessage>,
}

/// A header or trailer whose value may be templated.
#[derive(Clone, Debug)]
pub(crate) struct MetadataTemplate {
    pub key: String,
    pub value: Text,
}

impl Rule {
    pub(crate) fn matches(&self, scope: &Scope<'_>) -> bool {
        self.conditions.iter().all(|c| c.holds(scope))
    }

    /// How close a request came to this rule: its conditions that held, and the first that did
    /// not (as written), for a call no rule matched.
    pub(crate) fn near_miss(
        &self,
        request: Option<&DynamicMessage>,
        metadata: &MetadataMap,
    ) -> NearMiss {
        let scope = Scope::new(request, metadata);
        let failed: Vec<&Condition> = self
            .conditions
            .iter()
            .filter(|c| !c.holds(&scope))
            .collect();
        NearMiss {
            held: self.conditions.len() - failed.len(),
            conditions: self.conditions.len(),
            failed: failed.first().map(|c| c.describe()).unwrap_or_default(),
        }
    }

    pub(crate) fn is_default(&self) -> bool {
        self.conditions.is_empty()
    }

    pub(crate) fn headers(&self, scope: &Scope<'_>) -> Result<MetadataMap, Status> {
        render_metadata(&self.headers, scope)
    }

    pub(crate) fn trailers(&self, scope: &Scope<'_>) -> Result<MetadataMap, Status> {
        render_metadata(&self.trailers, scope)
    }
}

impl ErrorTemplate {
    pub(crate) fn render(&self, scope: &Scope<'_>) -> Status {
        let message = self.message.render(scope);
        let Some(status_type) = &self.status_type else {
            return Status::new(self.code, message);
        };
        let mut status = DynamicMessage::new(status_type.clone());
        status.set_field_by_name("code", Value::I32(self.code as i32));
        status.set_field_by_name("message", Value::String(message.clone()));
        status.set_field_by_name(
            "details",
            Value::List(self.details.iter().cloned().map(Value::Message).collect()),
        );
        Status::with_details(self.code, message, Bytes::from(status.encode_to_vec()))
    }
}

fn render_metadata(
    templates: &[MetadataTemplate],
    scope: &Scope<'_>,
) -> Result<MetadataMap, Status> {
    let mut map = MetadataMap::new();
    for t in templates {
        insert_metadata(&mut map, &t.key, &t.value.render(scope))?;
    }
    Ok(map)
}

/// Adds `key: value` to `map`; `-bin` keys take base64 text and carry the decoded bytes.
pub(crate) fn insert_metadata(map: &mut MetadataMap, key: &str, value: &str) -> Result<(), Status> {
    let bad = |what: String| Status::internal(format!("response metadata '{key}': {what}"));
    if key.ends_with("-bin") {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(value.trim_end_matches('='))
            })
            .map_err(|e| bad(format!("value is not base64: {e}")))?;
        let key = MetadataKey::from_bytes(key.as_bytes()).map_err(|e| bad(e.to_string()))?;
        map.append_bin(key, BinaryMetadataValue::from_bytes(&bytes));
    } else {
        let key = MetadataKey::from_bytes(key.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let value = AsciiMetadataValue::try_from(value).map_err(|e| bad(e.to_string()))?;
        map.append(key, value);
    }
    Ok(())
}

/// The rules of one method, in the order they are tried.
#[derive(Clone, Debug, Default)]
pub struct MethodRules {
    /// Rules with conditions first (file order), then default rules (file order).
    pub rules: Vec<Rule>,
}

impl MethodRules {
    pub(crate) fn select(&self, scope: &Scope<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(scope))
    }

    /// The script that handles a whole client or bidi stream, if this method has one, and its rule.
    pub(crate) fn stream_script(&self) -> Option<(&Rule, &Script)> {
        self.rules.iter().find_map(|r| match &r.answer {
            Answer::Script(s) => Some((r, s)),
            _ => None,
        })
    }

    /// Why no rule answered, for the `UNIMPLEMENTED` message.
    pub(crate) fn no_match_message(&self, method: &str) -> String {
        let tried: Vec<&str> = self.rules.iter().map(|r| r.origin.as_str()).collect();
        format!(
            "no rule for {method} matched the request (rules tried: {}); add a rule without `when` to answer every other request",
            tried.join(", ")
        )
    }
}

/// A script rule's own `headers` or `trailers` (`base`) with the script's (`over`) on top: a key the
/// script sets replaces every entry of that key the rule has; the rule's other keys stay.
pub(crate) fn overlay(base: MetadataMap, over: MetadataMap) -> MetadataMap {
    if base.is_empty() {
        return over;
    }
    if over.is_empty() {
        return base;
    }
    let mut merged = base.into_headers();
    let over = over.into_headers();
    for name in over.keys() {
        merged.remove(name);
    }
    for (name, value) in over.iter() {
        merged.append(name.clone(), value.clone());
    }
    MetadataMap::from_headers(merged)
}

/// A script rule's `headers` and `trailers`, rendered for one call; the script's own go on top
/// ([`overlay`]), on success and on failure alike (an `error` rule's status carries them too).
pub(crate) struct ScriptMetadata {
    pub headers: MetadataMap,
    pub trailers: MetadataMap,
}

impl ScriptMetadata {
    pub(crate) fn render(rule: &Rule, scope: &Scope<'_>) -> Result<Self, Status> {
        Ok(Self {
            headers: crate::budget::bounded_metadata("headers", || rule.headers(scope))?,
            trailers: crate::budget::bounded_metadata("trailers", || rule.trailers(scope))?,
        })
    }

    /// The response headers: the rule's, then the script's.
    pub(crate) fn headers(&self, script: MetadataMap) -> MetadataMap {
        overlay(self.headers.clone(), script)
    }

    /// The end of the call: the rule's trailers under the script's, in its outcome or its error.
    pub(crate) fn finish<T>(
        &self,
        result: Result<T, Status>,
        trailers_of: impl FnOnce(&mut T) -> &mut MetadataMap,
    ) -> Result<T, Status> {
        match result {
            Ok(mut outcome) => {
                let trailers = trailers_of(&mut outcome);
                *trailers = overlay(self.trailers.clone(), std::mem::take(trailers));
                Ok(outcome)
            }
            Err(mut status) => {
                let script = std::mem::take(status.metadata_mut());
                *status.metadata_mut() = overlay(self.trailers.clone(), script);
                Err(status)
            }
        }
    }
}
