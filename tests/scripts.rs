//! Rhai scripts (`script = "x.rhai"` / `code = """…"""`), per README.md, "Handler reference" → "Scripts".

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

async fn serve(handlers: &[(&str, &str)]) -> (Server, Client) {
    let s = Server::start(&t_proto(), handlers);
    let c = s.client().await;
    (s, c)
}

#[tokio::test]
async fn unary_reply_is_the_map_the_script_ends_with() {
    let h = r#"
[[rule]]
method = "t.Svc/Unary"
code = """
let greeting = "hi " + request.name;
#{ text: greeting, num: request.num * 2, big: request.big + 1, color: "GREEN", list: ["a", "b"], inner: #{ id: 3 } }
"""
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let out = c
        .unary(
            "t.Svc/Unary",
            json!({ "name": "ann", "num": 21, "big": "9007199254740993" }),
        )
        .await;
    assert_eq!(
        out.single(),
        &json!({ "text": "hi ann", "num": 42, "big": "9007199254740994", "color": "GREEN", "list": ["a", "b"], "inner": { "id": 3 } }),
        "64-bit integers reach the script as numbers, exactly"
    );
}

#[tokio::test]
async fn script_file_next_to_the_handler_and_metadata() {
    let script = r#"
let user = metadata["x-user"];
#{ text: `${user}/${request.name}` }
"#;
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"scripts/who.rhai\"\n";
    let (_s, c) = serve(&[("sub/t.toml", h), ("sub/scripts/who.rhai", script)]).await;
    let out = c
        .unary_md(
            "t.Svc/Unary",
            json!({ "name": "n" }),
            &[("x-user", "alice")],
        )
        .await;
    assert_eq!(out.single(), &json!({ "text": "alice/n" }));
}

#[tokio::test]
async fn scripts_and_rules_share_a_method() {
    let h = r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "script"
code = '#{ text: "from script" }'

[[rule]]
method = "t.Svc/Unary"
reply.text = "from rule"
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    assert_eq!(
        c.unary("t.Svc/Unary", json!({ "name": "script" }))
            .await
            .single(),
        &json!({ "text": "from script" })
    );
    assert_eq!(
        c.unary("t.Svc/Unary", json!({ "name": "x" }))
            .await
            .single(),
        &json!({ "text": "from rule" })
    );
}

#[tokio::test]
async fn fail_ends_the_call_with_that_status() {
    let h = r#"
[[rule]]
method = "t.Svc/Unary"
code = '''
if request.num == 1 { fail("INVALID_ARGUMENT", "num 1 is refused") }
fail("NOT_FOUND", "no such user " + request.name)
'''
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let out = c.unary("t.Svc/Unary", json!({ "name": "bob" })).await;
    assert_eq!(out.err(Code::NotFound), "no such user bob");
    let out = c
        .unary("t.Svc/Unary", json!({ "name": "bob", "num": 1 }))
        .await;
    assert_eq!(out.err(Code::InvalidArgument), "num 1 is refused");
}

#[tokio::test]
async fn throw_ends_the_call_with_unknown() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = 'throw \"boom \" + request.num'\n";
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let out = c.unary("t.Svc/Unary", json!({ "num": 7 })).await;
    let msg = out.err(Code::Unknown);
    assert!(msg.contains("boom 7"), "{msg}");
}

#[tokio::test]
async fn send_streams_messages_from_a_server_stream() {
    let h = r#"
[[rule]]
method = "t.Svc/ServerStream"
when.request.name = "last"
code = '''
send(#{ num: 1 });
#{ num: 2, text: "last" }
'''

[[rule]]
method = "t.Svc/ServerStream"
code = '''
for i in 0..request.num {
    send(#{ num: i, text: request.name });
    sleep(100);
}
'''
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "s", "num": 3 }))
        .await;
    out.ok();
    assert_eq!(
        out.messages,
        vec![
            json!({ "text": "s" }),
            json!({ "num": 1, "text": "s" }),
            json!({ "num": 2, "text": "s" })
        ]
    );
    assert!(
        out.arrivals[2].saturating_sub(out.arrivals[0]) >= Duration::from_millis(150),
        "send() sends at once, not at the end: {:?}",
        out.arrivals
    );
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "last" }))
        .await;
    out.ok();
    assert_eq!(
        out.messages,
        vec![json!({ "num": 1 }), json!({ "num": 2, "text": "last" })],
        "a non-() end value is sent last"
    );
}

#[tokio::test]
async fn next_reads_a_client_stream() {
    let h = r#"
[[rule]]
method = "t.Svc/ClientStream"
code = '''
let sum = 0;
let n = 0;
loop {
    let m = next();
    if type_of(m) == "()" { break; }
    sum += m.num;
    n += 1;
}
#{ num: sum, text: `${n} messages` }
'''
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let reqs = vec![
        json!({ "num": 1 }),
        json!({ "num": 2 }),
        json!({ "num": 39 }),
    ];
    let out = c.client_stream("t.Svc/ClientStream", reqs).await;
    assert_eq!(out.single(), &json!({ "num": 42, "text": "3 messages" }));
    let out = c.client_stream("t.Svc/ClientStream", vec![]).await;
    assert_eq!(out.single(), &json!({ "text": "0 messages" }));
}

#[tokio::test]
async fn bidi_script_echoes_each_message_as_it_comes() {
    let h = r#"
[[rule]]
method = "t.Svc/Bidi"
code = '''
header("x-started", "yes");
loop {
    let m = next();
    if type_of(m) == "()" { break; }
    send(#{ text: "echo " + m.name });
}
'''
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let mut call = c.session("t.Svc/Bidi");
    call.send(json!({ "name": "one" }));
    assert_eq!(
        call.recv_within(Duration::from_secs(5)).await,
        Ok(Some(json!({ "text": "echo one" })))
    );
    call.send(json!({ "name": "two" }));
    assert_eq!(
        call.recv_within(Duration::from_secs(5)).await,
        Ok(Some(json!({ "text": "echo two" })))
    );
    let headers = call
        .headers
        .clone()
        .expect("headers came before the first reply");
    assert_eq!(
        headers.get("x-started").map(|v| v.to_str().unwrap()),
        Some("yes")
    );
    let (rest, _, status) = call.finish().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(status.code(), Code::Ok, "{status:?}");
}

#[tokio::test]
async fn header_and_trailer_from_a_script() {
    let h = r#"
[[rule]]
method = "t.Svc/Unary"
code = '''
header("x-h", "h-" + request.name);
trailer("x-t", "t-" + request.name);
#{ text: "ok" }
'''
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let out = c.unary("t.Svc/Unary", json!({ "name": "n" })).await;
    assert_eq!(out.single(), &json!({ "text": "ok" }));
    assert_eq!(
        out.header("x-h").as_deref(),
        Some("h-n"),
        "headers: {:?}",
        out.headers
    );
    assert_eq!(
        out.trailer("x-t").as_deref(),
        Some("t-n"),
        "trailers: {:?}",
        out.trailers
    );
}

#[tokio::test]
async fn sleep_waits() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = 'sleep(300); #{ text: \"awake\" }'\n";
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let out = c.unary("t.Svc/Unary", json!({})).await;
    assert_eq!(out.single(), &json!({ "text": "awake" }));
    assert!(
        out.elapsed >= Duration::from_millis(300),
        "{:?}",
        out.elapsed
    );
}

#[tokio::test]
async fn runaway_loop_is_stopped_with_resource_exhausted_and_the_server_still_answers() {
    let h = r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "spin"
code = "loop {}"

[[rule]]
method = "t.Svc/Unary"
reply.text = "alive"
"#;
    let (_s, c) = serve(&[("t.toml", h)]).await;
    let start = Instant::now();
    let out = c.unary("t.Svc/Unary", json!({ "name": "spin" })).await;
    let took = start.elapsed();
    out.err(Code::ResourceExhausted);
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert_eq!(
        c.unary("t.Svc/Unary", json!({})).await.single(),
        &json!({ "text": "alive" })
    );
    // And again: the engine is not left broken.
    c.unary("t.Svc/Unary", json!({ "name": "spin" }))
        .await
        .err(Code::ResourceExhausted);
}

#[tokio::test]
async fn script_limits_come_from_the_flags() {
    let h = r#"
[[rule]]
method = "t.Svc/Unary"
code = '''
let n = 0;
for i in 0..request.num { n += 1; }
#{ num: n }
'''
"#;
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", h)],
        Options::default().arg("--script-max-operations").arg("500"),
    );
    let c = s.client().await;
    assert_eq!(
        c.unary("t.Svc/Unary", json!({ "num": 10 })).await.single(),
        &json!({ "num": 10 })
    );
    c.unary("t.Svc/Unary", json!({ "num": 100000 }))
        .await
        .err(Code::ResourceExhausted);
}

#[test]
fn inline_code_syntax_error_points_at_the_toml_line() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = \"\"\"\nlet x = 1;\nlet y = ;\n#{ num: x }\n\"\"\"\n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("t.toml", h)]);
    assert_eq!(code, 1, "{stderr}");
    let line = line_of(h, "let y = ;");
    let want = format!("handlers/t.toml:{line}:");
    assert!(
        stderr.lines().any(|l| l.starts_with(&want)),
        "expected a problem at {want}…; stderr:\n{stderr}"
    );
    assert!(stderr.contains("let y = ;"), "quotes the line: {stderr}");
}

#[test]
fn script_file_syntax_error_points_at_the_script_line() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"bad.rhai\"\n";
    let script = "let a = 1;\nlet b = a +;\na\n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("t.toml", h), ("bad.rhai", script)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("handlers/bad.rhai:2:")),
        "expected handlers/bad.rhai:2:…; stderr:\n{stderr}"
    );
}

#[test]
fn missing_script_file_is_reported() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"nowhere.rhai\"\n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("t.toml", h)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("handlers/t.toml:3:") && l.contains("nowhere.rhai")),
        "{stderr}"
    );
}

#[test]
fn a_clean_script_passes_check() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = '#{ text: request.name }'\n";
    let (code, stdout, stderr) = check(&t_proto(), &[("t.toml", h)]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Editing a `.rhai` file reloads it.
#[tokio::test]
async fn editing_a_script_file_reloads_it() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"s.rhai\"\n";
    let (s, c) = serve(&[("t.toml", h), ("s.rhai", "#{ text: \"v1\" }")]).await;
    assert_eq!(
        c.unary("t.Svc/Unary", json!({})).await.single(),
        &json!({ "text": "v1" })
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // see reload.rs: settle()
    s.write_handler("s.rhai", "#{ text: \"v2\" }");
    eventually(Duration::from_secs(5), || async {
        let out = c.unary("t.Svc/Unary", json!({})).await;
        if out.messages == vec![json!({ "text": "v2" })] {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", out.code(), out.messages))
        }
    })
    .await;
}

/// Runs `code` for requests named "late" under `--script-timeout 300ms` (plus `args`): the call ends
/// with DEADLINE_EXCEEDED within 3 s, and the server still answers the next call. Returns the message.
async fn assert_stopped_by_script_timeout(code: &str, args: &[&str]) -> String {
    let h = format!(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "late"
code = "{}"

[[rule]]
method = "t.Svc/Unary"
reply.text = "alive"
"#,
        code.replace('"', "\\\"")
    );
    let options = args.iter().fold(
        Options::default().arg("--script-timeout").arg("300ms"),
        |o, a| o.arg(*a),
    );
    let s = Server::start_with(&t_proto(), &[("t.toml", h.as_str())], options);
    let c = s.client().await;
    let start = Instant::now();
    let out = c.unary("t.Svc/Unary", json!({ "name": "late" })).await;
    let took = start.elapsed();
    let message = out.err(Code::DeadlineExceeded).to_string();
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert_eq!(
        c.unary("t.Svc/Unary", json!({})).await.single(),
        &json!({ "text": "alive" })
    );
    message
}

/// A script within its operation budget can still run long (here it sleeps): `--script-timeout` ends
/// it with DEADLINE_EXCEEDED naming the flag, and the server answers the next call.
#[tokio::test]
async fn a_script_over_its_wall_clock_limit_ends_with_deadline_exceeded() {
    let message = assert_stopped_by_script_timeout(r#"sleep(10000); #{ text: "late" }"#, &[]).await;
    assert!(message.contains("--script-timeout"), "{message}");
}

/// Without an operation budget, a busy loop is still ended by `--script-timeout` (checked by the
/// engine between operations), and the server answers the next call.
#[tokio::test]
async fn an_endless_loop_without_an_operation_budget_ends_at_the_script_timeout() {
    let message =
        assert_stopped_by_script_timeout("loop {}", &["--script-max-operations", "0"]).await;
    assert_eq!(message, "script ran longer than 300ms (--script-timeout)");
}
