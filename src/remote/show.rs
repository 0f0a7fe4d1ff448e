//! The admin API's answers as people read them: a line per call or rule. `--json` prints the
//! answer itself instead ([`raw`]), which is what scripts should read.

use std::io::Write as _;

use serde_json::Value as Json;

use super::http::Answer;

/// The answer's JSON as the server sent it.
pub(super) fn raw(answer: &Answer) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(&answer.body)?;
    if !answer.body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A proto3 JSON integer (64-bit ones are strings).
pub(super) fn number(value: &Json) -> u64 {
    match value {
        Json::String(s) => s.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    }
}

/// One line per call: start time, protocol, method, code, rules, duration.
pub(super) fn calls(calls: &[Json]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for call in calls {
        writeln!(out, "{}", call_line(call))?;
    }
    Ok(())
}

fn call_line(call: &Json) -> String {
    let text = |v: &Json| v.as_str().unwrap_or("-").to_string();
    let code = match call.get("status") {
        Some(status) => status["codeName"].as_str().unwrap_or("OK").to_string(),
        None => "(in flight)".to_string(),
    };
    let rules: Vec<&str> = call["rules"]
        .as_array()
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let rule = match rules.is_empty() {
        true => "none".to_string(),
        false => rules.join(","),
    };
    let duration = call
        .get("duration")
        .and_then(Json::as_str)
        .map(duration)
        .unwrap_or_else(|| "-".to_string());
    format!(
        "{}  {:<9} {}  {}  rule={}  {}",
        text(&call["startTime"]),
        text(&call["protocol"]),
        text(&call["method"]),
        code,
        rule,
        duration
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

/// Says on stderr how many calls the journal dropped, when it did: a count may miss them.
pub(super) fn dropped(answer: &Json) {
    let dropped = number(&answer["dropped"]);
    if dropped > 0 {
        eprintln!(
            "note: the journal dropped {dropped} older call(s) to stay within its caps (--journal-max-calls, --journal-max-bytes)"
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
        write!(out, "{id}  {method}  {origin}")?;
        if let Some(problem) = rule["problem"].as_str().filter(|p| !p.is_empty()) {
            write!(out, "  (not served: {problem})")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_is_one_line() {
        let call = json!({"id":"1","protocol":"grpc","method":"t.Svc/Unary","startTime":"2026-12-06T14:42:10.697191Z",
            "duration":"0.000158s","status":{"code":0,"codeName":"OK"},"rules":["handlers/t.toml:1"]});
        assert_eq!(
            call_line(&call),
            "2026-12-06T14:42:10.697191Z  grpc      t.Svc/Unary  OK  rule=handlers/t.toml:1  158µs"
        );
        let unmatched = json!({"protocol":"connect","method":"t.Svc/Unary","startTime":"t",
            "duration":"1.5s","status":{"code":12,"codeName":"UNIMPLEMENTED"}});
        assert!(call_line(&unmatched).ends_with("UNIMPLEMENTED  rule=none  1.50s"));
        let in_flight = json!({"protocol":"grpc","method":"m","startTime":"t"});
        assert!(call_line(&in_flight).contains("(in flight)"));
        assert_eq!(duration("0.0123s"), "12.3ms");
    }
}
