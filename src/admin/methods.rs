//! The admin API's methods: one function each, all in this file, dispatched by [`AdminMethod`].
//!
//! Each takes the call (the decoded request, its metadata, the reply's descriptor, the
//! [`Context`]) and gives the reply message or a status. They are answered natively: no rule is
//! selected for them and (see `engine::Method::is_native`) they are not calls to the mock.
//!
//! `ListRules` lists the handler files' rules. The journal's methods (`ListCalls`, `ClearCalls`,
//! `Verify`) and the runtime rules' (`AddRules`, `ReplaceRule`, `DeleteRule`, `ResetRules`) answer
//! UNIMPLEMENTED until this build has them ([`not_available`]).

use std::path::Path;

use futures::future::BoxFuture;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor, Value};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::Context;
use crate::engine::Native;

/// One admin method: which function answers it.
#[derive(Debug)]
pub(super) struct AdminMethod {
    /// The method's name in the proto (`ListRules`), what [`AdminMethod::answer`] dispatches on.
    name: String,
    output: MessageDescriptor,
    context: std::sync::Arc<Context>,
}

impl AdminMethod {
    pub(super) fn new(desc: &MethodDescriptor, context: std::sync::Arc<Context>) -> Self {
        AdminMethod {
            name: desc.name().to_string(),
            output: desc.output(),
            context,
        }
    }
}

/// One call of an admin method, as its function gets it.
pub(super) struct Call<'a> {
    pub context: &'a Context,
    pub request: DynamicMessage,
    #[allow(dead_code, reason = "for the methods still to come (who asks)")]
    pub metadata: MetadataMap,
    /// The reply's type, to build it with.
    pub output: &'a MessageDescriptor,
}

type Answer = Result<DynamicMessage, Status>;

impl Native for AdminMethod {
    fn answer(&self, request: DynamicMessage, metadata: MetadataMap) -> BoxFuture<'_, Answer> {
        let call = Call {
            context: &self.context,
            request,
            metadata,
            output: &self.output,
        };
        Box::pin(async move {
            match self.name.as_str() {
                "ListCalls" => list_calls(call).await,
                "ClearCalls" => clear_calls(call).await,
                "Verify" => verify(call).await,
                "AddRules" => add_rules(call).await,
                "ListRules" => list_rules(call).await,
                "ReplaceRule" => replace_rule(call).await,
                "DeleteRule" => delete_rule(call).await,
                "ResetRules" => reset_rules(call).await,
                other => Err(not_available(other)),
            }
        })
    }
}

/// Whether a method of the proto has its function here (a test holds the dispatch to the proto).
#[cfg(test)]
pub(super) fn known(name: &str) -> bool {
    [
        "ListCalls",
        "ClearCalls",
        "Verify",
        "AddRules",
        "ListRules",
        "ReplaceRule",
        "DeleteRule",
        "ResetRules",
    ]
    .contains(&name)
}

/// UNIMPLEMENTED, for a method this build does not have yet.
fn not_available(method: &str) -> Status {
    Status::unimplemented(format!(
        "protodrop.admin.v1.Admin/{method} is not available in this build"
    ))
}

// ---- the journal ----

async fn list_calls(_call: Call<'_>) -> Answer {
    Err(not_available("ListCalls"))
}

async fn clear_calls(_call: Call<'_>) -> Answer {
    Err(not_available("ClearCalls"))
}

async fn verify(_call: Call<'_>) -> Answer {
    Err(not_available("Verify"))
}

// ---- rules ----

async fn add_rules(_call: Call<'_>) -> Answer {
    Err(not_available("AddRules"))
}

/// Every rule served, in the order written: handler files by path, rules by line. A file's rule
/// has no id; its origin is `file:line`, its text the `[[rule]]` table as written.
async fn list_rules(call: Call<'_>) -> Answer {
    let state = call.context.state()?;
    let only = string(&call.request, "method");
    let only = only.trim_start_matches('/');
    let mut listed: Vec<(&str, u32, &str, &crate::rules::Rule)> = Vec::new();
    for method in state.methods.values() {
        let Some(rules) = &method.rules else { continue };
        if !only.is_empty() && method.name != only {
            continue;
        }
        for rule in &rules.rules {
            let (file, line) = rule.origin.rsplit_once(':').unwrap_or((&rule.origin, ""));
            listed.push((file, line.parse().unwrap_or(0), &method.name, rule));
        }
    }
    listed.sort_by(|a, b| Path::new(a.0).cmp(Path::new(b.0)).then(a.1.cmp(&b.1)));
    let info = message_field(call.output, "rules")?;
    let rules = listed
        .into_iter()
        .map(|(_, _, method, rule)| {
            let mut m = DynamicMessage::new(info.clone());
            m.set_field_by_name("method", Value::String(method.to_string()));
            m.set_field_by_name("origin", Value::String(rule.origin.clone()));
            m.set_field_by_name("text", Value::String(rule.text.to_string()));
            Value::Message(m)
        })
        .collect();
    let mut reply = DynamicMessage::new(call.output.clone());
    reply.set_field_by_name("rules", Value::List(rules));
    Ok(reply)
}

async fn replace_rule(_call: Call<'_>) -> Answer {
    Err(not_available("ReplaceRule"))
}

async fn delete_rule(_call: Call<'_>) -> Answer {
    Err(not_available("DeleteRule"))
}

async fn reset_rules(_call: Call<'_>) -> Answer {
    Err(not_available("ResetRules"))
}

// ---- helpers ----

/// A string field of a request ("" when unset).
fn string(message: &DynamicMessage, field: &str) -> String {
    message
        .get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The message type of a field of `desc` (a reply's list of `RuleInfo`, say).
fn message_field(desc: &MessageDescriptor, field: &str) -> Result<MessageDescriptor, Status> {
    desc.get_field_by_name(field)
        .and_then(|f| f.kind().as_message().cloned())
        .ok_or_else(|| {
            Status::internal(format!(
                "{} has no message field '{field}'",
                desc.full_name()
            ))
        })
}
