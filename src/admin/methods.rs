//! The admin API's methods: one function each, all in this file, dispatched by [`AdminMethod`].
//!
//! Each takes the call (the decoded request, its metadata, the reply's descriptor, the
//! [`Context`]) and gives the reply message or a status. They are answered natively: no rule is
//! selected for them and (see `engine::Method::is_native`) they are not calls to the mock.
//!
//! The journal's methods (`ListCalls`, `ClearCalls`, `Verify`) read `observe::journal`, whose
//! calls are already in the API's JSON form; the rules' (`AddRules`, `ListRules`, `ReplaceRule`,
//! `DeleteRule`, `ResetRules`) are the registry's runtime rules (`state::runtime`). Replies are
//! built from proto3 JSON: the admin API is not a hot path, and the JSON is the contract.

use futures::future::BoxFuture;
use prost_reflect::{
    DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, SerializeOptions, Value,
};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::Context;
use crate::engine::Native;
use crate::rules::Filter;
use crate::state::runtime::{Listed, Refused, Submission};

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
    /// The most bytes the reply may encode to (`--max-message-size`).
    pub limit: usize,
}

type Answer = Result<DynamicMessage, Status>;

impl Native for AdminMethod {
    fn answer(
        &self,
        request: DynamicMessage,
        metadata: MetadataMap,
        limit: usize,
    ) -> BoxFuture<'_, Answer> {
        let call = Call {
            context: &self.context,
            request,
            metadata,
            output: &self.output,
            limit,
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

/// The reply, built from its proto3 JSON form (the form the journal gives its calls in).
fn from_json(output: &MessageDescriptor, value: serde_json::Value) -> Answer {
    DynamicMessage::deserialize(output.clone(), value)
        .map_err(|e| Status::internal(format!("cannot build the reply: {e}")))
}

/// A method name as the API takes it: `pkg.S/M`, a leading `/` allowed; `None` when empty.
fn method_of(message: &DynamicMessage) -> Option<String> {
    let method = string(message, "method");
    let method = method.trim_start_matches('/');
    (!method.is_empty()).then(|| method.to_string())
}

async fn list_calls(call: Call<'_>) -> Answer {
    let journal = call.context.journal()?;
    let limit = call
        .request
        .get_field_by_name("limit")
        .and_then(|v| v.as_u32())
        .unwrap_or(0) as usize;
    let listed = journal.listing(method_of(&call.request).as_deref(), limit);
    let newest_first = listed.iter().rev().map(|r| r.to_json());
    let dropped = journal.dropped().to_string();
    let reply = serde_json::json!({ "dropped": dropped });
    with_calls(&call, reply, listed.len(), newest_first)
}

async fn clear_calls(call: Call<'_>) -> Answer {
    let cleared = call.context.journal()?.clear();
    from_json(
        call.output,
        serde_json::json!({ "cleared": cleared.to_string() }),
    )
}

/// Counts (and lists) the journaled calls the filter matches: its method and status, and — for
/// request conditions — any of a call's request messages, read as the filter's method's input.
async fn verify(call: Call<'_>) -> Answer {
    let journal = call.context.journal()?;
    let state = call.context.state()?;
    let pool = &state.protos.pool;
    let filter = match json_field_of(&call.request, "filter_json")? {
        Some(value) => Filter::json(&value, pool),
        None => Filter::toml(&string(&call.request, "filter"), pool),
    }
    .map_err(|problems| Status::invalid_argument(problems.to_string()))?;
    let list = call
        .request
        .get_field_by_name("list")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut matched = Vec::new();
    let mut count = 0u64;
    let listed = journal.listing(filter.method.as_deref(), 0);
    for index in 0..listed.len() {
        let Some(record) = listed.get(index) else {
            continue;
        };
        // A call in flight has no status yet: it is not counted.
        let Some(code) = record.code() else { continue };
        let method = record.method_name();
        let requests: Vec<DynamicMessage> = match &filter.input {
            Some(input) if !filter.conditions.is_empty() => record
                .request_bytes()
                .into_iter()
                .filter_map(|bytes| DynamicMessage::decode(input.clone(), bytes).ok())
                .collect(),
            _ => Vec::new(),
        };
        let metadata = record.metadata();
        let hit = if requests.is_empty() {
            filter.matches(&method, &metadata, None, code)
        } else {
            requests
                .iter()
                .any(|r| filter.matches(&method, &metadata, Some(r), code))
        };
        if hit {
            count += 1;
            if list {
                // Decoded again if it is shown: kept, every call matched was held at once.
                matched.push(index);
            }
        }
    }
    let dropped = journal.dropped().to_string();
    let reply = serde_json::json!({ "count": count.to_string(), "dropped": dropped });
    let newest_first = matched.iter().rev().filter_map(|&i| listed.get(i));
    with_calls(
        &call,
        reply,
        matched.len(),
        newest_first.map(|r| r.to_json()),
    )
}

/// `reply` (proto3 JSON) with the `total` calls `newest_first` renders in its `calls` field
/// (oldest first): the newest of them that fit in the reply's size limit, each whole, or without
/// its messages when only that fits (the first that fits neither way and every older one are
/// counted in `omitted`, and not rendered). A journal keeps calls of up to 64 MiB, a reply is
/// refused past 4 MiB by default: without this, one large call made the journal unreadable.
fn with_calls(
    call: &Call<'_>,
    reply: serde_json::Value,
    total: usize,
    newest_first: impl Iterator<Item = serde_json::Value>,
) -> Answer {
    let mut reply = from_json(call.output, reply)?;
    let field = call
        .output
        .get_field_by_name("calls")
        .ok_or_else(|| Status::internal("the reply has no calls field"))?;
    let Kind::Message(call_desc) = field.kind() else {
        return Err(Status::internal("the reply's calls are not messages"));
    };
    // Room for the reply's other fields and for `omitted`.
    let mut room = call
        .limit
        .saturating_sub(prost::Message::encoded_len(&reply) + 16);
    let mut kept = Vec::new();
    for mut json in newest_first {
        let mut message = call_message(&call_desc, &json)?;
        if entry_len(&message) > room {
            without_messages(&mut json);
            message = call_message(&call_desc, &json)?;
        }
        let size = entry_len(&message);
        if size > room {
            break;
        }
        room -= size;
        kept.push(Value::Message(message));
    }
    let omitted = total - kept.len();
    kept.reverse();
    reply.set_field(&field, Value::List(kept));
    if omitted > 0 {
        reply.set_field_by_name("omitted", Value::U32(omitted as u32));
    }
    Ok(reply)
}

fn call_message(desc: &MessageDescriptor, json: &serde_json::Value) -> Answer {
    DynamicMessage::deserialize(desc.clone(), json)
        .map_err(|e| Status::internal(format!("cannot build the reply: {e}")))
}

/// What a message adds to a repeated field: a tag, its length and its bytes.
fn entry_len(message: &DynamicMessage) -> usize {
    let len = prost::Message::encoded_len(message);
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Leaves out each message of a call (`json`, `binary`), giving its size (`omittedSize`).
fn without_messages(call: &mut serde_json::Value) {
    let Some(frames) = call["frames"].as_array_mut() else {
        return;
    };
    for frame in frames {
        for key in ["request", "reply"] {
            if let Some(payload) = frame.get_mut(key) {
                let binary = payload["binary"].as_str().unwrap_or_default();
                let padding = binary.bytes().rev().take_while(|&b| b == b'=').count();
                let size = (binary.len() / 4 * 3).saturating_sub(padding);
                *payload = serde_json::json!({ "omittedSize": size.to_string() });
            }
        }
    }
}

// ---- rules ----

/// A submission of rules: `toml`, or the same structure as the JSON object `json_field`.
fn submitted(
    request: &DynamicMessage,
    json_field: &str,
) -> Result<(String, Option<serde_json::Value>), Status> {
    Ok((string(request, "toml"), json_field_of(request, json_field)?))
}

fn submission<'a>(toml: &'a str, json: &'a Option<serde_json::Value>) -> Submission<'a> {
    match json {
        Some(value) => Submission::Json(value),
        None => Submission::Toml(toml),
    }
}

/// A refused change as a status: its diagnostics, or the unknown id.
fn refused(refused: Refused) -> Status {
    match refused {
        Refused::Invalid(problems) => Status::invalid_argument(problems.to_string()),
        Refused::UnknownId(_) => Status::not_found(refused.to_string()),
        Refused::TooMany { .. } => Status::resource_exhausted(refused.to_string()),
    }
}

/// One listed rule as `RuleInfo` JSON.
fn rule_json(listed: &Listed) -> serde_json::Value {
    serde_json::json!({
        "id": listed.id,
        "method": listed.method,
        "origin": listed.origin,
        "text": listed.text,
        "problem": listed.problem.clone().unwrap_or_default(),
    })
}

async fn add_rules(call: Call<'_>) -> Answer {
    let registry = call.context.registry()?;
    let (toml, json) = submitted(&call.request, "json")?;
    let added = registry
        .add_rules(submission(&toml, &json))
        .map_err(refused)?;
    let rules: Vec<_> = added.iter().map(rule_json).collect();
    from_json(call.output, serde_json::json!({ "rules": rules }))
}

/// Every rule served, per method in the order tried: runtime rules (id `r1`…, origin
/// `runtime:r1`), then the handler files' (no id, origin `file:line`), each with its text.
async fn list_rules(call: Call<'_>) -> Answer {
    let registry = call.context.registry()?;
    let listed = registry.list_rules(method_of(&call.request).as_deref());
    let rules: Vec<_> = listed.iter().map(rule_json).collect();
    from_json(call.output, serde_json::json!({ "rules": rules }))
}

async fn replace_rule(call: Call<'_>) -> Answer {
    let registry = call.context.registry()?;
    let id = string(&call.request, "id");
    let (toml, json) = submitted(&call.request, "json")?;
    let replaced = registry
        .replace_rule(&id, submission(&toml, &json))
        .map_err(refused)?;
    from_json(
        call.output,
        serde_json::json!({ "rule": rule_json(&replaced) }),
    )
}

async fn delete_rule(call: Call<'_>) -> Answer {
    let registry = call.context.registry()?;
    registry
        .delete_rule(&string(&call.request, "id"))
        .map_err(refused)?;
    Ok(DynamicMessage::new(call.output.clone()))
}

async fn reset_rules(call: Call<'_>) -> Answer {
    let deleted = call.context.registry()?.reset_rules();
    from_json(call.output, serde_json::json!({ "deleted": deleted }))
}

// ---- helpers ----

/// A `google.protobuf.Struct` field as the JSON object it holds; `None` when unset.
fn json_field_of(
    message: &DynamicMessage,
    field: &str,
) -> Result<Option<serde_json::Value>, Status> {
    if !message.has_field_by_name(field) {
        return Ok(None);
    }
    let Some(value) = message.get_field_by_name(field) else {
        return Ok(None);
    };
    let Some(object) = value.as_message() else {
        return Ok(None);
    };
    object
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A string field of a request ("" when unset).
fn string(message: &DynamicMessage, field: &str) -> String {
    message
        .get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
