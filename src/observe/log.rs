//! The call log: one line per call when it ends, at INFO under the target `protodrop::call`;
//! at WARN when no rule matched or a script failed, with the reason. The format (text or JSON) is
//! the process's tracing subscriber's (`--log-format`); `RUST_LOG=protodrop::call=off` silences it.

use std::time::Duration;

use tonic::Code;

use super::Protocol;
use crate::engine::Method;
use crate::rules::Answer;

/// What the line of one call says.
pub(super) struct Line<'a> {
    pub protocol: Protocol,
    pub method: &'a Method,
    pub peer: Option<std::net::SocketAddr>,
    pub code: Code,
    pub message: &'a str,
    /// The first rule that answered.
    pub rule: Option<usize>,
    pub unmatched: bool,
    pub elapsed: Duration,
}

/// Whether a call's line would be written (tracing caches this per call site).
pub(super) fn enabled() -> bool {
    tracing::enabled!(target: "protodrop::call", tracing::Level::INFO)
}

pub(super) fn call_ended(line: Line<'_>) {
    if !enabled() {
        return;
    }
    let Line {
        protocol,
        method: served,
        peer,
        code,
        message,
        rule,
        unmatched,
        elapsed,
    } = line;
    let method = served.name.as_str();
    let protocol = protocol.as_str();
    let code = crate::rules::code_name(code);
    let peer = tracing::field::display(peer.map_or_else(String::new, |p| p.to_string()));
    let rule_text = rule.map(|i| served.rule_origin(i));
    if unmatched || served.rules.is_none() {
        let rules = served.rules.as_ref();
        let tried: Vec<&str> = rules.map_or(Vec::new(), |r| {
            r.rules.iter().map(|r| r.origin.as_str()).collect()
        });
        let reason = if rules.is_none() {
            "no handler file has a rule for this method"
        } else {
            "no rule matched"
        };
        tracing::warn!(target: "protodrop::call", %protocol, %method, %code, rule = "no rule", tried = %tried.join(", "), ?elapsed, %peer, %reason, "call not answered by a rule");
        return;
    }
    let scripted = rule.is_some_and(|i| {
        served
            .rules
            .as_ref()
            .and_then(|r| r.rules.get(i))
            .is_some_and(|r| matches!(r.answer, Answer::Script(_)))
    });
    if scripted && code != "OK" && message.starts_with("script ") {
        tracing::warn!(target: "protodrop::call", %protocol, %method, %code, rule = %rule_text.unwrap_or(""), ?elapsed, %peer, reason = %message, "script failed");
        return;
    }
    tracing::info!(target: "protodrop::call", %protocol, %method, %code, rule = %rule_text.unwrap_or(""), ?elapsed, %peer, "call");
}
