//! The command line: `--help` (and its snapshot), environment variables, include roots, message size,
//! listen errors, signals.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tonic::Code;

const SNAPSHOT: &str = "tests/snapshots/help.txt";

#[test]
fn help_lists_every_flag_and_the_check_command() {
    let (code, stdout, stderr) = protodrop(&["--help"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    for flag in [
        "--protos",
        "--handlers",
        "--listen",
        "-I, --proto-path",
        "--max-message-size",
        "--no-watch",
        "--threads",
        "--script-max-operations",
        "--script-max-call-depth",
        "--script-max-string-size",
        "--script-max-array-size",
        "--script-max-map-size",
        "PROTODROP_LISTEN",
        "PROTODROP_PROTOS",
        "PROTODROP_HANDLERS",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "PROTODROP_TLS_CERT",
    ] {
        assert!(
            stdout.contains(flag),
            "--help should mention {flag}:\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.trim_start().starts_with("check ")),
        "--help lists the check command:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim_start().starts_with("serve ")),
        "--help lists the serve command:\n{stdout}"
    );

    let (code, stdout, stderr) = protodrop(&["check", "--help"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    for flag in [
        "--protos",
        "--handlers",
        "--proto-path",
        "--script-max-operations",
    ] {
        assert!(
            stdout.contains(flag),
            "check --help should mention {flag}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("--listen") && !stdout.contains("--tls-"),
        "check does not listen:\n{stdout}"
    );
}

/// `protodrop --help` must match tests/snapshots/help.txt. After an intended change, update it with
/// `UPDATE_SNAPSHOTS=1 cargo test --test cli help_matches_the_snapshot`, and review the diff.
#[test]
fn help_matches_the_snapshot() {
    let (code, stdout, stderr) = protodrop(&["--help"], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SNAPSHOT);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &stdout).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the snapshot {}: {e}\nCreate it with: UPDATE_SNAPSHOTS=1 cargo test --test cli help_matches_the_snapshot",
            path.display()
        )
    });
    if expected != stdout {
        panic!(
            "`protodrop --help` differs from {SNAPSHOT} (- snapshot, + now):\n{}\n\
             If the change is intended, update the snapshot with:\n    \
             UPDATE_SNAPSHOTS=1 cargo test --test cli help_matches_the_snapshot\nand commit it.",
            line_diff(&expected, &stdout)
        );
    }
}

/// A line diff (longest common subsequence), `-` for lines only in `old`, `+` only in `new`.
fn line_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    if old.ends_with('\n') != new.ends_with('\n') {
        out.push_str("(the final newline differs)\n");
    }
    out
}

#[test]
fn version_names_the_program() {
    let (code, stdout, _) = protodrop(&["--version"], None, &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("protodrop "), "{stdout}");
}

const HANDLER: &str = "[[rule]]\nmethod = \"t.Svc/Echo\"\nreply = \"{{request}}\"\n";

/// No arguments at all: `serve`, with folders and address from PROTODROP_PROTOS / _HANDLERS / _LISTEN.
#[tokio::test]
async fn environment_variables_configure_serve() {
    let options = Options {
        via_env: true,
        ..Options::default()
    }
    .env("PROTODROP_MAX_MESSAGE_SIZE", "1KiB");
    let s = Server::start_with(&t_proto(), &[("t.toml", HANDLER)], options);
    let c = s.client().await;
    let out = c.unary("t.Svc/Echo", json!({ "name": "small" })).await;
    assert_eq!(out.single(), &json!({ "name": "small" }));
    let out = c
        .unary("t.Svc/Echo", json!({ "name": "x".repeat(2000) }))
        .await;
    assert_ne!(
        out.code(),
        Code::Ok,
        "PROTODROP_MAX_MESSAGE_SIZE=1KiB refuses a 2 kB request"
    );
}

#[tokio::test]
async fn environment_variables_configure_check() {
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("p"), &t_proto());
    write_files(&dir.path().join("h"), &[("t.toml", HANDLER)]);
    let p = dir.path().join("p");
    let h = dir.path().join("h");
    let (code, stdout, stderr) = protodrop(
        &["check"],
        Some(dir.path()),
        &[
            ("PROTODROP_PROTOS", p.to_str().unwrap()),
            ("PROTODROP_HANDLERS", h.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

const SHARED: &str = "syntax = \"proto3\";\npackage shared;\nmessage Tag { string value = 1; }\n";
const EXTRA: &str = "syntax = \"proto3\";\npackage extra;\nmessage Note { string text = 1; }\n";
const USES_INCLUDES: &str = r#"syntax = "proto3";
package u;
import "shared/tag.proto";
import "extra/note.proto";
service U { rpc Get(shared.Tag) returns (extra.Note); }
"#;
const USES_INCLUDES_HANDLER: &str =
    "[[rule]]\nmethod = \"u.U/Get\"\nreply.text = \"tag {{request.value}}\"\n";

#[tokio::test]
async fn include_roots_from_flags() {
    let options = Options {
        include: vec!["inc1".into(), "inc2".into()],
        ..Options::default()
    }
    .file("inc1/shared/tag.proto", SHARED)
    .file("inc2/extra/note.proto", EXTRA);
    let s = Server::start_with(
        &[("u.proto", USES_INCLUDES)],
        &[("u.toml", USES_INCLUDES_HANDLER)],
        options,
    );
    let c = s.client().await;
    assert_eq!(
        c.unary("u.U/Get", json!({ "value": "v" })).await.single(),
        &json!({ "text": "tag v" })
    );
}

#[tokio::test]
async fn include_roots_from_the_environment_colon_separated() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("inc1/shared/tag.proto", SHARED),
            ("inc2/extra/note.proto", EXTRA),
        ],
    );
    let list = format!(
        "{}:{}",
        dir.path().join("inc1").display(),
        dir.path().join("inc2").display()
    );
    let options = Options::default().env("PROTODROP_PROTO_PATH", list);
    let mut s = Server::start_with(
        &[("u.proto", USES_INCLUDES)],
        &[("u.toml", USES_INCLUDES_HANDLER)],
        options,
    );
    // The test client needs the roots too.
    let pool = compile_protos(
        &s.protos_dir(),
        &[dir.path().join("inc1"), dir.path().join("inc2")],
    )
    .unwrap();
    let c = Client::connect(s.addr, pool).await;
    assert_eq!(
        c.unary("u.U/Get", json!({ "value": "w" })).await.single(),
        &json!({ "text": "tag w" })
    );
    assert!(s.is_running());
}

const SIZE_HANDLER: &str = r#"
[[rule]]
method = "t.Svc/Echo"
reply = "{{request}}"

[[rule]]
method = "t.Svc/Unary"
reply.text = "{{request.name}}{{request.name}}{{request.name}}{{request.name}}{{request.name}}"
"#;

/// `--max-message-size`: "larger ones get RESOURCE_EXHAUSTED" (its --help): a request over the limit.
#[tokio::test]
async fn max_message_size_refuses_a_larger_request_with_resource_exhausted() {
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", SIZE_HANDLER)],
        Options::default().arg("--max-message-size").arg("1KiB"),
    );
    let c = s.client().await;
    let ok = "y".repeat(900);
    assert_eq!(
        c.unary("t.Svc/Echo", json!({ "name": ok })).await.single(),
        &json!({ "name": ok }),
        "under the limit"
    );
    let out = c
        .unary("t.Svc/Echo", json!({ "name": "x".repeat(2000) }))
        .await;
    out.err(Code::ResourceExhausted);
}

/// The same for a reply over the limit: a 300-byte request whose reply would be 1500 bytes.
#[tokio::test]
async fn max_message_size_refuses_a_larger_reply_with_resource_exhausted() {
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", SIZE_HANDLER)],
        Options::default().arg("--max-message-size").arg("1KiB"),
    );
    let c = s.client().await;
    let out = c
        .unary("t.Svc/Unary", json!({ "name": "z".repeat(100) }))
        .await;
    assert_eq!(
        out.single()["text"].as_str().unwrap().len(),
        500,
        "under the limit"
    );
    let out = c
        .unary("t.Svc/Unary", json!({ "name": "z".repeat(300) }))
        .await;
    out.err(Code::ResourceExhausted);
}

#[test]
fn listening_on_a_busy_address_fails_with_a_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("protos"), &t_proto());
    write_files(&dir.path().join("handlers"), &[("t.toml", HANDLER)]);
    let (code, stdout, stderr) = protodrop(
        &[
            "serve",
            "--protos",
            "protos",
            "--handlers",
            "handlers",
            "--listen",
            &addr,
        ],
        Some(dir.path()),
        &[],
    );
    assert_ne!(code, 0, "stdout: {stdout}");
    assert!(stderr.contains(&addr), "names the address: {stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
}

#[test]
fn bad_flag_values_are_refused() {
    let (code, _, stderr) = protodrop(&["serve", "--max-message-size", "4 parsecs"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-message-size"), "{stderr}");
    let (code, _, stderr) = protodrop(&["serve", "--listen", "nowhere"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    // Below one default HTTP/2 stream window, the send budget could not hold a full window's
    // reply; the environment variable is checked the same way.
    let (code, _, stderr) = protodrop(&["serve", "--max-send-buffer", "32KiB"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--max-send-buffer") && stderr.contains("between 64KiB and 1GiB"),
        "{stderr}"
    );
    let (code, _, stderr) = protodrop(&["serve"], None, &[("PROTODROP_MAX_SEND_BUFFER", "2GiB")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("between 64KiB and 1GiB"), "{stderr}");
    let (code, _, stderr) = protodrop(&["serve", "--max-reply-metadata-size", "100"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-reply-metadata-size"), "{stderr}");
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_server() {
    for signal in ["TERM", "INT"] {
        let mut s = Server::start(&t_proto(), &[("t.toml", HANDLER)]);
        let c = s.client().await;
        c.unary("t.Svc/Echo", json!({})).await.ok();
        let status = s.signal_and_wait(signal, Duration::from_secs(5)).await;
        let status = status
            .unwrap_or_else(|| panic!("still running 5 s after SIG{signal}; log:\n{}", s.logs()));
        assert!(
            status.success(),
            "SIG{signal}: exits cleanly, got {status}; log:\n{}",
            s.logs()
        );
    }
}

#[tokio::test]
async fn no_watch_ignores_edits() {
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", HANDLER)],
        Options::default().arg("--no-watch"),
    );
    let c = s.client().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_handler(
        "t.toml",
        "[[rule]]\nmethod = \"t.Svc/Echo\"\nreply.name = \"changed\"\n",
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let out = c.unary("t.Svc/Echo", json!({ "name": "same" })).await;
    assert_eq!(out.single(), &json!({ "name": "same" }));
}

#[tokio::test]
async fn listen_line_is_the_only_stdout_line() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER)]);
    let c = s.client().await;
    c.unary("t.Svc/Echo", json!({})).await.ok();
    assert_eq!(s.stdout_rest(), "", "logs go to stderr");
    // Log lines are written in batches, within 20 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.logs().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!s.logs().is_empty(), "logs go to stderr");
}

/// A call in flight at SIGTERM may finish within `--shutdown-grace`; one that takes longer is cut when
/// the grace period is over, and the process still exits 0 (it used to wait for the call forever).
#[tokio::test]
async fn sigterm_waits_for_calls_in_flight_only_for_the_grace_period() {
    let slow = "[[rule]]\nmethod = \"t.Svc/ServerStream\"\nstream.repeat = 100\nstream.message = { text = \"tick\" }\nstream.delay = \"100ms\"\n";
    let mut s = Server::start_with(
        &t_proto(),
        &[("slow.toml", slow)],
        Options {
            args: vec!["--shutdown-grace".into(), "500ms".into()],
            ..Options::default()
        },
    );
    let c = s.client().await;
    let call = tokio::spawn(async move { c.server_stream("t.Svc/ServerStream", json!({})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let status = s.signal_and_wait("TERM", Duration::from_secs(5)).await;
    let status =
        status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", s.logs()));
    assert!(status.success(), "exits 0, got {status}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "waited for the call in flight: only {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "stopped waiting after the grace period: {took:?}"
    );
    let out = call.await.unwrap();
    assert!(
        !out.messages.is_empty() && out.messages.len() < 100,
        "cut mid-stream: {} messages",
        out.messages.len()
    );
}

/// Issue 16 (9): `--script-max-string-size` takes sizes as `--max-message-size` does (`1KiB`).
/// Regression: only a plain number was accepted, so `1KiB` stopped the server at start.
#[tokio::test]
async fn script_max_string_size_takes_a_size_with_a_unit() {
    let handler = "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = '''\nlet s = \"\"; s.pad(request.num, 'y'); #{ text: s }\n'''\n";
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", handler)],
        Options::default()
            .arg("--script-max-string-size")
            .arg("1KiB"),
    );
    let c = s.client().await;
    let out = c.unary("t.Svc/Unary", json!({ "num": 1024 })).await;
    assert_eq!(out.single()["text"].as_str().unwrap().len(), 1024);
    let out = c.unary("t.Svc/Unary", json!({ "num": 1025 })).await;
    let message = out.err(Code::ResourceExhausted);
    assert!(message.contains("--script-max-string-size"), "{message}");
    let (code, _, stderr) = protodrop(
        &["check", "--script-max-string-size", "2 parsecs"],
        None,
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KiB"), "says which units: {stderr}");
}
