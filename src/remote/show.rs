//! The admin API's answers as people read them: a line per call or rule. `--json` prints the
//! answer itself instead ([`raw`]), which is what scripts should read.

use std::io::Write as _;

use serde::Deserialize;
use serde_json::Value as Json;

use super::http::Answer;

/// The answer's JSON as the server sent it.
pub(super) fn raw(answer: &Answer) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut write = || {
        out.write_all(&answer.body)?;
        if !answer.body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    write().or_else(closed_early)
}

/// One line on stdout (a closed pipe ends the output quietly).
pub(super) fn line(text: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{text}").or_else(closed_early)
}

/// A proto3 JSON integer (64-bit ones are strings).
pub(super) fn number(value: &Json) -> u64 {
    match value {
        Json::String(s) => s.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    }
}

/// What a summary reads of `ListCalls` and `Verify` answers: every call's frames are skipped while
/// parsing, not kept (a full journal is tens of megabytes of JSON).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Listing {
    pub(super) calls: Vec<CallLine>,
    pub(super) dropped: Json,
    pub(super) omitted: Json,
    pub(super) count: Json,
}

/// One call, as its summary line shows it.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct CallLine {
    start_time: String,
    protocol: String,
    method: String,
    duration: Option<String>,
    status: Option<StatusLine>,
    rules: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StatusLine {
    code_name: String,
}

/// One line per call: start time, protocol, method, code, rules, duration.
pub(super) fn calls(calls: &[CallLine]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for call in calls {
        if let Err(e) = writeln!(out, "{}", call_line(call)) {
            return closed_early(e);
        }
    }
    Ok(())
}

/// A reader that stopped reading (`| head`) is not an error: the rest is not wanted.
fn closed_early(e: std::io::Error) -> anyhow::Result<()> {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e.into()),
    }
}

fn call_line(call: &CallLine) -> String {
    let code = match &call.status {
        Some(status) if status.code_name.is_empty() => "OK",
        Some(status) => &status.code_name,
        None => "(in flight)",
    };
    let rule = match call.rules.is_empty() {
        true => "none".to_string(),
        false => call.rules.join(","),
    };
    let duration = call
        .duration
        .as_deref()
        .map(duration)
        .unwrap_or_else(|| "-".to_string());
    format!(
        "{}  {:<9} {}  {}  rule={}  {}",
        call.start_time, call.protocol, call.method, code, rule, duration
    )
}

/// A proto3 JSON duration (`"0.000158s"`) as people read it (`158µs`, `12.3ms`, `1.50s`).
fn duration(text: &str) -> String {
    let Some(seconds) = text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()) else {
        return text.to_string();
    };
    if seconds < 1e-3 {
        format!("{:.0}µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{seconds:.2}s")
    }
}

/// Says on stderr how many calls the journal dropped, when it did (a count may miss them), and
/// how many the answer left out to stay within the server's message size.
pub(super) fn notes(listing: &Listing) {
    let dropped = number(&listing.dropped);
    if dropped > 0 {
        eprintln!(
            "note: the journal dropped {dropped} older call(s) to stay within its caps (--journal-max-calls, --journal-max-bytes)"
        );
    }
    let omitted = number(&listing.omitted);
    if omitted > 0 {
        eprintln!(
            "note: {omitted} older call(s) left out of this answer to keep it within the server's --max-message-size (ask for fewer: --limit, --method)"
        );
    }
}

/// One line per rule: its id (or `-` for a file's), where it came from, its method, and its
/// problem if it is kept aside.
pub(super) fn rules(rules: &[Json]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for rule in rules {
        let id = rule["id"].as_str().filter(|s| !s.is_empty()).unwrap_or("-");
        let origin = rule["origin"].as_str().unwrap_or("-");
        let method = rule["method"].as_str().unwrap_or("-");
        let problem = match rule["problem"].as_str().filter(|p| !p.is_empty()) {
            Some(problem) => format!("  (not served: {problem})"),
            None => String::new(),
        };
        if let Err(e) = writeln!(out, "{id}  {method}  {origin}{problem}") {
            return closed_early(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_is_one_line() {
        let line = |call: Json| call_line(&serde_json::from_value(call).unwrap());
        let call = json!({"id":"1","protocol":"grpc","method":"t.Svc/Unary","startTime":"2026-12-06T14:42:10.697191Z",
            "duration":"0.000158s","status":{"code":0,"codeName":"OK"},"rules":["handlers/t.toml:1"]});
        assert_eq!(
            line(call),
            "2026-12-06T14:42:10.697191Z  grpc      t.Svc/Unary  OK  rule=handlers/t.toml:1  158µs"
        );
        let unmatched = json!({"protocol":"connect","method":"t.Svc/Unary","startTime":"t",
            "duration":"1.5s","status":{"code":12,"codeName":"UNIMPLEMENTED"}});
        assert!(line(unmatched).ends_with("UNIMPLEMENTED  rule=none  1.50s"));
        let in_flight = json!({"protocol":"grpc","method":"m","startTime":"t"});
        assert!(line(in_flight).contains("(in flight)"));
        assert_eq!(duration("0.0123s"), "12.3ms");
    }
}
