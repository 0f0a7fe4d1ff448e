//! The client commands against a running server (`protodrop calls`, `verify`, `rules …`), run as a
//! shell test runs them: a real server (its journal on, the default), real calls to it, then the
//! binary's subcommands with `--server`, their stdout, stderr and exit codes.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value as Json;

/// `t.toml`: `t.Svc/Unary` answers "file" from line 1.
const FILE_RULES: &str = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"file\" }\n";

/// A runtime rule: `t.Svc/Unary` answers "runtime".
const RUNTIME_RULE: &str =
    "# answers from the test\n[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"runtime\" }\n";

trait ArgsFrom {
    fn args_from(self, args: &[&str]) -> Self;
}

impl ArgsFrom for Options {
    fn args_from(mut self, args: &[&str]) -> Self {
        for a in args {
            self = self.arg(*a);
        }
        self
    }
}

fn start(args: &[&str]) -> Server {
    let options = Options::default().args_from(args);
    Server::start_with(&t_proto(), &[("t.toml", FILE_RULES)], options)
}

fn url(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// Runs `protodrop ARGS --server URL` (in the server's folder), `stdin` fed to it; (code, stdout,
/// stderr).
fn cli(server: &Server, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = command();
    cmd.args(args)
        .arg("--server")
        .arg(url(server))
        .current_dir(server.root());
    run_with_stdin(cmd, stdin)
}

fn run_with_stdin(mut cmd: Command, stdin: Option<&str>) -> (i32, String, String) {
    let Some(input) = stdin else {
        return run(cmd);
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    // `wait_with_output` would block without bound; the commands under test have their own
    // request timeout, and the test's own limit is the harness's.
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `name` in the server's folder.
fn write(server: &Server, name: &str, text: &str) {
    std::fs::write(server.root().join(name), text).unwrap();
}

#[track_caller]
fn ok(result: (i32, String, String)) -> String {
    let (code, out, err) = result;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    out
}

/// What `t.Svc/Unary` answers now.
async fn unary_text(client: &Client) -> String {
    let out = client.unary("t.Svc/Unary", json!({ "name": "x" })).await;
    out.ok();
    out.single()["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the journal holds `n` calls, each ended (a call's end is recorded as its reply
/// goes out, which may be just after the client has it).
async fn settled(server: &Server, n: usize) {
    eventually(std::time::Duration::from_secs(10), || async {
        let out = ok(cli(server, &["calls", "--json"], None));
        let listed: Json = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let calls = listed["calls"].as_array().cloned().unwrap_or_default();
        match calls.len() == n && calls.iter().all(|c| c.get("status").is_some()) {
            true => Ok(()),
            false => Err(out),
        }
    })
    .await;
}

#[tokio::test]
async fn calls_lists_the_calls_a_client_made_and_clear_empties_the_journal() {
    let server = start(&[]);
    let client = server.client().await;
    client
        .unary("t.Svc/Unary", json!({ "name": "tom" }))
        .await
        .ok();
    settled(&server, 1).await;

    let out = ok(cli(&server, &["calls"], None));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line = lines[0];
    let rule = format!("rule={}:1", server.handlers_dir().join("t.toml").display());
    for part in ["grpc", "t.Svc/Unary", "  OK  ", &rule] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }

    // --json: the admin API's answer itself.
    let out = ok(cli(&server, &["calls", "--json"], None));
    let listed: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["calls"][0]["method"], "t.Svc/Unary");
    assert_eq!(
        listed["calls"][0]["frames"][0]["request"]["json"]["name"],
        "tom"
    );
    // --method filters.
    let out = ok(cli(&server, &["calls", "--method", "t.Svc/Echo"], None));
    assert!(out.trim().is_empty(), "{out}");

    let out = ok(cli(&server, &["calls", "clear"], None));
    assert_eq!(out.trim(), "cleared 1 call(s)");
    let out = ok(cli(&server, &["calls"], None));
    assert!(out.trim().is_empty(), "{out}");
}

#[tokio::test]
async fn verify_counts_matching_calls_and_expect_sets_the_exit_code() {
    let server = start(&[]);
    let client = server.client().await;
    for name in ["tom", "tom", "ann"] {
        client
            .unary("t.Svc/Unary", json!({ "name": name }))
            .await
            .ok();
    }
    settled(&server, 3).await;
    write(
        &server,
        "tom.toml",
        "method = \"t.Svc/Unary\"\nwhen.request.name = \"tom\"\nstatus = \"OK\"\n",
    );
    let out = ok(cli(&server, &["verify", "tom.toml", "--expect", "2"], None));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2 matching call(s)"), "{out}");
    assert_eq!(
        lines.filter(|l| l.contains("t.Svc/Unary")).count(),
        2,
        "{out}"
    );

    // The wrong count: printed all the same, and exit 1 saying what was expected.
    let (code, out, err) = cli(&server, &["verify", "tom.toml", "--expect", "3"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("2 matching call(s)"), "{out}");
    assert!(
        err.contains("expected 3 matching call(s), found 2"),
        "{err}"
    );

    // A JSON filter on stdin.
    let filter = r#"{"method": "t.Svc/Unary", "when": {"request": {"name": "ann"}}}"#;
    let out = ok(cli(
        &server,
        &["verify", "-", "--expect", "1", "--json"],
        Some(filter),
    ));
    let answer: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["count"], "1", "{answer}");
    assert_eq!(
        answer["calls"][0]["frames"][0]["request"]["json"]["name"],
        "ann"
    );

    // A bad filter names its own file, line and column.
    write(
        &server,
        "bad.toml",
        "method = \"t.Svc/Unary\"\nwhen.request.nmae = \"tom\"\n",
    );
    let (code, out, err) = cli(&server, &["verify", "bad.toml"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("INVALID_ARGUMENT: bad.toml:2:14:"), "{err}");
    assert!(err.contains("nmae"), "{err}");
}

#[tokio::test]
async fn rules_add_answers_the_next_call_and_delete_and_reset_remove_it() {
    let server = start(&[]);
    let client = server.client().await;
    assert_eq!(unary_text(&client).await, "file");

    write(&server, "runtime.toml", RUNTIME_RULE);
    let out = ok(cli(&server, &["rules", "add", "runtime.toml"], None));
    assert_eq!(out.trim(), "r1  t.Svc/Unary  runtime:r1");
    assert_eq!(unary_text(&client).await, "runtime");

    let out = ok(cli(&server, &["rules", "list"], None));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "r1  t.Svc/Unary  runtime:r1");
    assert!(lines[1].starts_with("-  t.Svc/Unary  "), "{out}");
    let listed: Json =
        serde_json::from_str(&ok(cli(&server, &["rules", "list", "--json"], None))).unwrap();
    assert_eq!(listed["rules"][0]["id"], "r1");

    let out = ok(cli(&server, &["rules", "delete", "r1"], None));
    assert_eq!(out.trim(), "deleted r1");
    assert_eq!(unary_text(&client).await, "file");
    // Deleting it again: the server's NOT_FOUND, exit 1.
    let (code, _, err) = cli(&server, &["rules", "delete", "r1"], None);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND") && err.contains("r1"), "{err}");

    // From stdin, then reset.
    let out = ok(cli(&server, &["rules", "add", "-"], Some(RUNTIME_RULE)));
    assert!(out.starts_with("r2  "), "{out}");
    assert_eq!(unary_text(&client).await, "runtime");
    let out = ok(cli(&server, &["rules", "reset"], None));
    assert_eq!(out.trim(), "deleted 1 runtime rule(s)");
    assert_eq!(unary_text(&client).await, "file");
}

#[tokio::test]
async fn a_bad_rule_file_is_refused_with_its_line_and_changes_nothing() {
    let server = start(&[]);
    let client = server.client().await;
    // Two rules: the first good, the second's reply names a field t.Resp lacks, on line 8.
    let text = format!(
        "{RUNTIME_RULE}\n[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"y\"\nreply = {{ txet = \"bad\" }}\n"
    );
    let line = line_of(&text, "txet");
    write(&server, "bad.toml", &text);
    let (code, out, err) = cli(&server, &["rules", "add", "bad.toml"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("INVALID_ARGUMENT: bad.toml:{line}:11:")),
        "{err}"
    );
    assert!(err.contains("txet") && err.contains("^"), "{err}");
    // All or none: the good rule was not added either.
    let out = ok(cli(&server, &["rules", "list"], None));
    assert!(!out.contains("runtime:"), "{out}");
    assert_eq!(unary_text(&client).await, "file");

    // JSON that is not JSON is named by the CLI itself.
    write(
        &server,
        "bad.json",
        "{\n  \"rule\": [\n    {\"method\": }\n  ]\n}\n",
    );
    let (code, _, err) = cli(&server, &["rules", "add", "bad.json"], None);
    assert_eq!(code, 1);
    assert!(err.contains("bad.json:3:"), "{err}");
}

#[test]
fn an_unreachable_server_is_named_by_its_url() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server_url = format!("http://127.0.0.1:{port}");
    for args in [&["calls"][..], &["rules", "reset"], &["calls", "clear"]] {
        let mut cmd = command();
        cmd.args(args).env("PROTODROP_SERVER", &server_url);
        let (code, out, err) = run(cmd);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains(&format!("cannot reach protodrop at {server_url}")),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_server_started_with_no_journal_says_so() {
    let server = start(&["--no-journal"]);
    let (code, out, err) = cli(&server, &["calls"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("--no-journal"),
        "{err}"
    );
    write(&server, "f.toml", "method = \"t.Svc/Unary\"\n");
    let (code, _, err) = cli(&server, &["verify", "f.toml", "--expect", "0"], None);
    assert_eq!(code, 1);
    assert!(err.contains("--no-journal"), "{err}");
}

#[tokio::test]
async fn a_server_without_the_admin_api_is_told_apart() {
    let server = start(&["--no-admin"]);
    let (code, _, err) = cli(&server, &["rules", "list"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("--no-admin") && err.contains("--admin-listen"),
        "{err}"
    );
}

#[tokio::test]
async fn an_https_server_is_reached_with_cacert_and_a_client_certificate() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let sign = |issuer: &CertifiedIssuer<'static, KeyPair>, sans: Vec<String>, usage| {
        let mut params = CertificateParams::new(sans).unwrap();
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (ours, other) = (ca("test CA"), ca("another CA"));
    let server_pair = sign(
        &ours,
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client_pair = sign(&ours, vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let options = Options::default()
        .file("tls/server.pem", &server_pair.0)
        .file("tls/server.key", &server_pair.1)
        .file("tls/ca.pem", ours.pem())
        .file("tls/other-ca.pem", other.pem())
        .file("tls/client.pem", &client_pair.0)
        .file("tls/client.key", &client_pair.1)
        .args_from(&[
            "--tls-cert",
            "tls/server.pem",
            "--tls-key",
            "tls/server.key",
            "--tls-client-ca",
            "tls/ca.pem",
        ]);
    let server = Server::start_with(&t_proto(), &[("t.toml", FILE_RULES)], options);
    let https = format!("https://{}", server.addr);
    let tls_cli = |extra: &[&str]| {
        let mut cmd = command();
        cmd.args(["rules", "list", "--server", &https])
            .args(extra)
            .current_dir(server.root());
        run(cmd)
    };
    let client_id = [
        "--client-cert",
        "tls/client.pem",
        "--client-key",
        "tls/client.key",
    ];
    let out = ok(tls_cli(
        &[&["--cacert", "tls/ca.pem"][..], &client_id].concat(),
    ));
    assert!(out.starts_with("-  t.Svc/Unary  "), "{out}");

    // The wrong CA: the server's certificate is not trusted, and the error says TLS.
    let (code, _, err) = tls_cli(&[&["--cacert", "tls/other-ca.pem"][..], &client_id].concat());
    assert_eq!(code, 1);
    assert!(err.contains(&format!("TLS with {https} failed")), "{err}");
    // No client certificate where the server asks for one: refused.
    let (code, _, err) = tls_cli(&["--cacert", "tls/ca.pem"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("the request to {https} failed")) && err.contains("Certificate"),
        "{err}"
    );
    // https without a CA: said before connecting.
    let (code, _, err) = tls_cli(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("--cacert"), "{err}");
}
