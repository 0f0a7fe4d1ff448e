//! Soak (issue 5, part 4), run by hand, not in CI: a million mixed calls (every RPC shape, rules and
//! scripts) against one server while its handler file is rewritten every second. Every call must
//! succeed with an answer of one version or the other (a call keeps the state it started with, so
//! never a mix), every write must be reloaded, and the server's RSS must stay flat.
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! SOAK_CALLS=100000 SOAK_WORKERS=64 SOAK_CONNECTIONS=4 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! An ignored test rather than a tool: it reuses the test harness (the server under test, its log,
//! the dynamic client) and the same build, and it is compiled with every `cargo test`, so it cannot
//! rot unnoticed. RELIABILITY.md records its last figures.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use tonic::Code;

const L_PROTO: &str = r#"syntax = "proto3";
package l;
import "t.proto";
service Rules {
  rpc Unary(t.Req) returns (t.Resp);
  rpc ServerStream(t.Req) returns (stream t.Resp);
  rpc ClientStream(stream t.Req) returns (t.Resp);
  rpc Bidi(stream t.Req) returns (stream t.Resp);
}
service Scripts {
  rpc Unary(t.Req) returns (t.Resp);
  rpc Bidi(stream t.Req) returns (stream t.Resp);
}
"#;

/// The handler file, version `v` (every answer's text starts with `v{v} `).
fn handler(v: u64) -> String {
    format!(
        r#"
[[rule]]
method = "l.Rules/Unary"
reply = {{ text = "v{v} u {{{{request.name}}}}" }}

[[rule]]
method = "l.Rules/ServerStream"
stream.repeat = 3
stream.message = {{ text = "v{v} s {{{{request.name}}}}", num = "{{{{index}}}}" }}

[[rule]]
method = "l.Rules/ClientStream"
reply = {{ text = "v{v} c {{{{request.name}}}}", num = "{{{{count}}}}" }}

[[rule]]
method = "l.Rules/Bidi"
reply = {{ text = "v{v} b {{{{request.name}}}}", num = "{{{{count}}}}" }}

[[rule]]
method = "l.Scripts/Unary"
code = '#{{ text: "v{v} u " + request.name }}'

[[rule]]
method = "l.Scripts/Bidi"
code = '''
let n = 0;
loop {{ let m = next(); if m == () {{ break; }} n += 1; send(#{{ text: "v{v} b " + m.name, num: n }}); }}
'''
"#
    )
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// The answer a call expects, given the handler version it was served by ("v1", "v2").
type Expected = Box<dyn Fn(&str) -> Vec<Json> + Send>;

/// Call `i`: its method, requests, and the answer expected once the version is known.
fn case(i: u64) -> (&'static str, Vec<Json>, Expected) {
    let name = format!("n{i}");
    let three = |name: &str| -> Vec<Json> {
        (0..3)
            .map(|k| json!({ "name": format!("{name}.{k}") }))
            .collect()
    };
    let text = |v: &str, what: &str, name: &str| format!("{v} {what} {name}");
    match i % 6 {
        0 => (
            "l.Rules/Unary",
            vec![json!({ "name": name })],
            Box::new(move |v| vec![json!({ "text": text(v, "u", &name) })]),
        ),
        1 => (
            "l.Rules/ServerStream",
            vec![json!({ "name": name })],
            Box::new(move |v| {
                (0..3)
                    .map(|k| match k {
                        0 => json!({ "text": text(v, "s", &name) }),
                        k => json!({ "text": text(v, "s", &name), "num": k }),
                    })
                    .collect()
            }),
        ),
        2 => (
            "l.Rules/ClientStream",
            three(&name),
            Box::new(move |v| {
                vec![json!({ "text": text(v, "c", &format!("{name}.2")), "num": 3 })]
            }),
        ),
        3 => (
            "l.Rules/Bidi",
            three(&name),
            Box::new(move |v| {
                (0..3)
                    .map(|k| json!({ "text": text(v, "b", &format!("{name}.{k}")), "num": k + 1 }))
                    .collect()
            }),
        ),
        4 => (
            "l.Scripts/Unary",
            vec![json!({ "name": name })],
            Box::new(move |v| vec![json!({ "text": text(v, "u", &name) })]),
        ),
        _ => (
            "l.Scripts/Bidi",
            three(&name),
            Box::new(move |v| {
                (0..3)
                    .map(|k| json!({ "text": text(v, "b", &format!("{name}.{k}")), "num": k + 1 }))
                    .collect()
            }),
        ),
    }
}

/// Whether `out` is the right answer to call `i` under one version (all its messages alike).
fn check(
    i: u64,
    method: &str,
    out: &Outcome,
    want: &dyn Fn(&str) -> Vec<Json>,
) -> Result<(), String> {
    if out.code() != Code::Ok {
        return Err(format!("#{i} {method}: {:?} {}", out.code(), out.message()));
    }
    let version = out
        .messages
        .first()
        .and_then(|m| m["text"].as_str())
        .and_then(|t| t.split(' ').next())
        .unwrap_or("none")
        .to_string();
    if out.messages == want(&version) {
        Ok(())
    } else {
        Err(format!(
            "#{i} {method}: got {:?}, want {:?}",
            out.messages,
            want(&version)
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: run by hand, see the module comment"]
async fn a_million_mixed_calls_with_a_reload_every_second() {
    let calls = env("SOAK_CALLS", 1_000_000);
    let workers = env("SOAK_WORKERS", 64) as usize;
    let connections = env("SOAK_CONNECTIONS", 4) as usize;
    let warmup = (calls / 50).max(1000);

    let s = Server::start(
        &[("t.proto", T_PROTO), ("l.proto", L_PROTO)],
        &[("l.toml", &handler(1))],
    );
    let pid = s.pid();
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(s.client().await);
    }

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();

    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = clients[w % connections].clone();
        let (next, done, failures, samples) = (
            next.clone(),
            done.clone(),
            failures.clone(),
            samples.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return;
                }
                let (method, requests, want) = case(i);
                let out = client.client_stream(method, requests).await;
                if let Err(e) = check(i, method, &out, &*want) {
                    if failures.fetch_add(1, Ordering::Relaxed) < 10 {
                        samples.lock().unwrap().push(e);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Warm up before the first RSS reading (allocator pools, thread stacks, caches).
    while done.load(Ordering::Relaxed) < warmup.min(calls) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_start = proc_status_kib(pid, "VmRSS");
    let mut rss_max = rss_start;
    let warm_at = Instant::now();
    eprintln!(
        "warm after {warmup} calls ({:?}): RSS {rss_start} KiB",
        started.elapsed()
    );

    // One reload a second until the calls are done; a line every ten seconds.
    let mut writes = 0u64;
    let mut last_report = Instant::now();
    while done.load(Ordering::Relaxed) < calls {
        tokio::time::sleep(Duration::from_secs(1)).await;
        writes += 1;
        s.write_handler("l.toml", &handler(1 + writes % 2));
        let rss = proc_status_kib(pid, "VmRSS");
        rss_max = rss_max.max(rss);
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "{n} calls, {} failed, {writes} reloads, {:.0} calls/s, RSS {rss} KiB",
                failures.load(Ordering::Relaxed),
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Let the last write be reloaded before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = proc_status_kib(pid, "VmRSS");
    let logs = s.logs();
    let reloaded = logs.matches("reloaded services=").count() as u64;
    let reload_failed = logs.matches("reload failed").count();
    let failed = failures.load(Ordering::Relaxed);
    eprintln!(
        "SOAK: {calls} calls in {elapsed:?} ({:.0} calls/s, {workers} workers on {connections} connections), \
         {failed} failed; {writes} handler writes, {reloaded} reloads, {reload_failed} failed reloads; \
         RSS after warm-up {rss_start} KiB, at the end {rss_end} KiB, highest {rss_max} KiB \
         (steady phase {:?})",
        calls as f64 / elapsed.as_secs_f64(),
        warm_at.elapsed()
    );
    assert_eq!(
        failed,
        0,
        "failed calls, e.g.:\n{}",
        samples.lock().unwrap().join("\n")
    );
    assert_eq!(reload_failed, 0, "a reload failed; log:\n{logs}");
    // Writes that land within one debounce window are one reload; most writes are their own.
    assert!(
        reloaded * 10 >= writes * 9,
        "{writes} writes but only {reloaded} reloads"
    );
    assert!(
        rss_end <= rss_start + rss_start / 5 + 10 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}
