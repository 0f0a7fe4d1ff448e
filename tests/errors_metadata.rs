//! `error` answers (codes, messages, google.rpc details), headers and trailers, `delay`.

mod common;
mod http_client;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use tonic::Code;

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn every_code_by_name_and_by_number() {
    let mut rules = String::new();
    for (n, name) in CODES.iter().enumerate().skip(1) {
        // Names in any case: every other one in lower case.
        let written = if n % 2 == 0 {
            name.to_lowercase()
        } else {
            name.to_string()
        };
        rules += &rule(
            "t.Svc/Unary",
            &format!("when.request.num = {n}\nerror.code = \"{written}\"\nerror.message = \"by name {n}\""),
        );
        rules += &rule(
            "t.Svc/Echo",
            &format!("when.request.num = {n}\nerror.code = {n}\nerror.message = \"by number {n}\""),
        );
    }
    let (_s, c) = serve_t(&rules).await;
    for n in 1..=16i32 {
        for (method, by) in [("t.Svc/Unary", "by name"), ("t.Svc/Echo", "by number")] {
            let out = c.unary(method, json!({ "num": n })).await;
            assert_eq!(
                out.code(),
                Code::from_i32(n),
                "{} (code {n}) {by}: got {:?}",
                CODES[n as usize],
                out.status
            );
            assert_eq!(out.message(), format!("{by} {n}"));
        }
    }
}

#[tokio::test]
async fn templated_error_message() {
    let (_s, c) = serve_t(&rule(
        "t.Svc/Unary",
        r#"error = { code = "NOT_FOUND", message = "unknown user: {{request.name}} ({{request.num}}, {{request.color}}, {{metadata.x-trace}})" }"#,
    ))
    .await;
    let out = c
        .unary_md(
            "t.Svc/Unary",
            json!({ "name": "zoé", "num": 4, "color": "RED" }),
            &[("x-trace", "t1")],
        )
        .await;
    assert_eq!(out.err(Code::NotFound), "unknown user: zoé (4, RED, t1)");
    assert!(out.messages.is_empty());
}

#[tokio::test]
async fn error_details_are_a_google_rpc_status() {
    let (_s, c) = serve_t(&rule(
        "t.Svc/Unary",
        r#"error.code = "NOT_FOUND"
error.message = "no user {{request.name}}"
error.details = [
  { "@type" = "google.rpc.ErrorInfo", reason = "USER_UNKNOWN", domain = "example.com", metadata = { user = "u1" } },
  { "@type" = "type.googleapis.com/google.rpc.BadRequest", field_violations = [{ field = "name", description = "unknown" }] },
]"#,
    ))
    .await;
    let out = c.unary("t.Svc/Unary", json!({ "name": "bob" })).await;
    assert_eq!(out.err(Code::NotFound), "no user bob");
    let details = status_details(&out.status);
    assert_eq!(details["code"], json!(5), "{details}");
    assert_eq!(details["message"], json!("no user bob"), "{details}");
    assert_eq!(
        details["details"],
        json!([
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "USER_UNKNOWN",
                "domain": "example.com",
                "metadata": { "user": "u1" },
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{ "field": "name", "description": "unknown" }],
            },
        ])
    );
}

fn metadata_rules() -> String {
    rules(&[
        (
            "t.Svc/Unary",
            r#"when.request.name = "ok"
reply.text = "fine"
headers = { x-greeting = "hi {{request.num}}" }
trailers = { x-done = "yes {{request.name}}" }"#,
        ),
        (
            "t.Svc/Unary",
            r#"when.request.name = "fail"
error.code = "ABORTED"
headers = { x-greeting = "hi" }
trailers = { x-why = "because" }"#,
        ),
        (
            "t.Svc/ServerStream",
            r#"stream.messages = [{ num = 1 }, { num = 2 }]
headers = { x-h = "stream" }
trailers = { x-t = "end {{request.name}}" }"#,
        ),
    ])
}

#[tokio::test]
async fn headers_and_trailers() {
    let (_s, c) = serve_t(&metadata_rules()).await;
    let out = c
        .unary("t.Svc/Unary", json!({ "name": "ok", "num": 3 }))
        .await;
    assert_eq!(out.single(), &json!({ "text": "fine" }));
    out.expect_header("x-greeting", "hi 3");
    out.expect_trailer("x-done", "yes ok");
    assert!(
        out.headers.get("x-done").is_none(),
        "trailers are not sent as headers"
    );
    assert!(
        out.trailers.get("x-greeting").is_none(),
        "headers are not sent as trailers"
    );

    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "s" }))
        .await;
    out.ok();
    assert_eq!(out.messages.len(), 2);
    out.expect_header("x-h", "stream");
    out.expect_trailer("x-t", "end s");
}

/// Keys ending in `-bin` take base64 values and carry the decoded bytes (README.md, "Handler reference").
#[tokio::test]
async fn binary_headers_and_trailers() {
    let (_s, c) = serve_t(&rule(
        "t.Svc/Unary",
        r#"reply.text = "fine"
headers = { x-raw-bin = "AAH/" }
trailers = { x-sum-bin = "3q2+7w==" }"#,
    ))
    .await;
    let out = c.unary("t.Svc/Unary", json!({})).await;
    assert_eq!(out.single(), &json!({ "text": "fine" }));
    let raw = out
        .headers
        .get_bin("x-raw-bin")
        .expect("x-raw-bin header")
        .to_bytes()
        .unwrap();
    assert_eq!(&raw[..], &[0x00, 0x01, 0xff], "AAH/ is base64 for 00 01 ff");
    let sum = out
        .trailers
        .get_bin("x-sum-bin")
        .expect("x-sum-bin trailer")
        .to_bytes()
        .unwrap();
    assert_eq!(b64(&sum), "3q2+7w==");
}

#[tokio::test]
async fn an_error_carries_the_rules_headers_and_trailers() {
    let (_s, c) = serve_t(&metadata_rules()).await;
    let out = c.unary("t.Svc/Unary", json!({ "name": "fail" })).await;
    out.err(Code::Aborted);
    // A trailers-only error response: everything arrives with the status.
    let status_md = |key| out.status.metadata().get(key).map(|v| v.to_str().unwrap());
    assert_eq!(
        status_md("x-greeting"),
        Some("hi"),
        "{:?}",
        out.status.metadata()
    );
    assert_eq!(status_md("x-why"), Some("because"));
}

/// The call took at least `ms` milliseconds.
#[track_caller]
fn answered_after(out: &Outcome, ms: u64) {
    assert!(
        out.elapsed >= Duration::from_millis(ms),
        "answered after {:?}",
        out.elapsed
    );
}

#[tokio::test]
async fn delay_waits_before_answering() {
    let (_s, c) = serve_t(&rules(&[
        (
            "t.Svc/Unary",
            r#"when.request.name = "slow"
delay = "400ms"
reply.text = "late""#,
        ),
        (
            "t.Svc/Unary",
            r#"when.request.name = "slow-error"
delay = "300ms"
error.code = "UNAVAILABLE""#,
        ),
        ("t.Svc/Unary", r#"reply.text = "now""#),
    ]))
    .await;
    let fast = c.unary("t.Svc/Unary", json!({})).await;
    assert_eq!(fast.single(), &json!({ "text": "now" }));
    let out = c.unary("t.Svc/Unary", json!({ "name": "slow" })).await;
    assert_eq!(out.single(), &json!({ "text": "late" }));
    answered_after(&out, 400);
    let out = c
        .unary("t.Svc/Unary", json!({ "name": "slow-error" }))
        .await;
    out.err(Code::Unavailable);
    answered_after(&out, 300);
}

#[tokio::test]
async fn stream_then_error() {
    let (_s, c) = serve_t(&rule(
        "t.Svc/ServerStream",
        r#"stream.messages = [{ text = "one" }, { text = "two {{request.name}}" }]
error = { code = "DATA_LOSS", message = "lost after two for {{request.name}}" }"#,
    ))
    .await;
    let out = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "n" }))
        .await;
    assert_eq!(
        out.messages,
        vec![json!({ "text": "one" }), json!({ "text": "two n" })]
    );
    assert_eq!(out.err(Code::DataLoss), "lost after two for n");
}

/// A proto with a `bytes` field, for binary metadata copied into a message.
const BLOB_PROTO: &str = r#"syntax = "proto3";
package b;
message Blob { bytes data = 1; string text = 2; }
service Bin { rpc Get(Blob) returns (Blob); }
"#;

/// Issue 16 (9): binary (`-bin`) request metadata is seen as base64 — the standard alphabet, padded
/// whatever padding the client sent (tonic sends none) — by `when.metadata`, by `{{metadata.KEY}}`
/// and by scripts' `metadata`, the form a handler's own `-bin` headers take; copied whole into a
/// `bytes` field it is the decoded bytes. Regression: invisible (tonic's `MetadataMap::get` is for
/// text keys only), so the condition never held and the template rendered empty.
#[tokio::test]
async fn binary_request_metadata_is_seen_as_base64() {
    let handler = rules(&[
        (
            "t.Svc/Unary",
            r#"when.metadata."x-t-bin" = "aGk="
reply.text = "matched {{metadata.x-t-bin}}"
headers = { x-echo-bin = "{{metadata.x-t-bin}}" }"#,
        ),
        (
            "t.Svc/Unary",
            r#"when.metadata."x-t-bin" = { regex = "^[A-Za-z0-9+/]+=*$" }
reply.text = "other {{metadata.x-t-bin}}""#,
        ),
        (
            "t.Svc/Unary",
            r#"reply.text = "none [{{metadata.x-t-bin}}]""#,
        ),
        (
            "t.Svc/Echo",
            r#"code = '''#{ name: metadata["x-t-bin"] }'''"#,
        ),
        (
            "b.Bin/Get",
            r#"reply = { data = "{{metadata.x-t-bin}}", text = "{{metadata.x-t-bin}}" }"#,
        ),
    ]);
    let s = Server::start(
        &[("t.proto", T_PROTO), ("b.proto", BLOB_PROTO)],
        &[("t.toml", &handler)],
    );
    let c = s.client().await;
    // "hi" is aGk= in padded base64; tonic sends aGk.
    let out = c
        .unary_md("t.Svc/Unary", json!({}), &[("x-t-bin", "hi")])
        .await;
    assert_eq!(out.single(), &json!({ "text": "matched aGk=" }));
    let echoed = out.headers.get_bin("x-echo-bin").expect("x-echo-bin");
    assert_eq!(&echoed.to_bytes().unwrap()[..], b"hi");
    let out = c
        .unary_md("t.Svc/Unary", json!({}), &[("x-t-bin", "h")])
        .await;
    assert_eq!(out.single(), &json!({ "text": "other aA==" }));
    let out = c.unary("t.Svc/Unary", json!({})).await;
    assert_eq!(out.single(), &json!({ "text": "none []" }));
    // Scripts saw it so already: the same text.
    let out = c
        .unary_md("t.Svc/Echo", json!({}), &[("x-t-bin", "hi")])
        .await;
    assert_eq!(out.single(), &json!({ "name": "aGk=" }));
    // Into a bytes field: the bytes (JSON shows bytes as base64); into a string: the base64 text.
    let out = c
        .unary_md("b.Bin/Get", json!({}), &[("x-t-bin", "hi!")])
        .await;
    assert_eq!(
        out.single(),
        &json!({ "data": b64(b"hi!"), "text": "aGkh" })
    );

    // Over Connect (headers are metadata there too), padded or not, the same.
    for sent in ["aGk", "aGk="] {
        let reply = http_client::send(
            s.addr,
            "POST",
            "/t.Svc/Unary",
            &[("content-type", "application/json"), ("x-t-bin", sent)],
            "{}",
        )
        .await;
        reply.expect(200);
        assert_eq!(
            reply.json(),
            json!({ "text": "matched aGk=" }),
            "sent {sent}"
        );
    }
}

/// Issue 16 (9): a rule answered by a script keeps its TOML `headers` and `trailers` (templated as
/// for any rule). A key the script sets with `header()`/`trailer()` replaces the TOML value of that
/// key; the others stay. Every shape, the inline unary path, a script that waits, a failing script.
/// Regression: they were dropped without a word while `check` said ok.
#[tokio::test]
async fn a_script_rule_keeps_its_toml_headers_and_trailers() {
    const TOML: &str = r#"headers = { x-from = "toml", x-over = "toml", x-meta = "{{metadata.x-m}}" }
trailers = { x-t = "toml", x-t-over = "toml" }"#;
    const SETS: &str = r#"header("x-over", "script"); trailer("x-t-over", "script");"#;
    let script = |body: &str| format!("code = '''\n{SETS}\n{body}\n'''\n{TOML}");
    let handler = rules(&[
        (
            "t.Svc/Unary",
            &format!(
                "when.request.name = \"fail\"\n{}",
                script(r#"fail("ABORTED", "no")"#)
            ),
        ),
        ("t.Svc/Unary", &script(r#"#{ text: "hi " + request.name }"#)),
        // Waits (so it runs on a thread of its own); a header reads the request.
        (
            "t.Svc/Echo",
            &format!(
                "code = '''\nsleep(1); {SETS} request\n'''\nheaders = {{ x-name = \"{{{{request.name}}}}\" }}\ntrailers = {{ x-t = \"toml\", x-t-over = \"toml\" }}"
            ),
        ),
        (
            "t.Svc/ServerStream",
            &script(r#"send(#{ text: "one" }); #{ text: "two" }"#),
        ),
        (
            "t.Svc/ClientStream",
            &script("let n = 0; while next() != () { n += 1; } #{ num: n }"),
        ),
        (
            "t.Svc/Bidi",
            &script("loop { let m = next(); if m == () { break; } send(#{ text: m.name }); }"),
        ),
    ]);
    let (_s, c) = serve_t(&handler).await;
    let md = [("x-m", "m1")];
    let expect_all = |out: &Outcome, what: &str| {
        out.ok();
        for (key, want) in [("x-from", "toml"), ("x-over", "script"), ("x-meta", "m1")] {
            assert_eq!(
                out.header(key).as_deref(),
                Some(want),
                "{what}: header {key}: {:?}",
                out.headers
            );
        }
        let n = out.headers.get_all("x-over").iter().count();
        assert_eq!(n, 1, "{what}: replaced, not added");
        for (key, want) in [("x-t", "toml"), ("x-t-over", "script")] {
            assert_eq!(
                out.trailer(key).as_deref(),
                Some(want),
                "{what}: trailer {key}: {:?}",
                out.trailers
            );
        }
        let n = out.trailers.get_all("x-t-over").iter().count();
        assert_eq!(n, 1, "{what}: replaced, not added");
    };

    let out = c.unary_md("t.Svc/Unary", json!({ "name": "u" }), &md).await;
    assert_eq!(out.messages, vec![json!({ "text": "hi u" })]);
    expect_all(&out, "unary");
    let out = c.unary_md("t.Svc/ServerStream", json!({}), &md).await;
    assert_eq!(
        out.messages,
        vec![json!({ "text": "one" }), json!({ "text": "two" })]
    );
    expect_all(&out, "server stream");
    let out = c
        .client_stream_md("t.Svc/ClientStream", vec![json!({}), json!({})], &md)
        .await;
    assert_eq!(out.messages, vec![json!({ "num": 2 })]);
    expect_all(&out, "client stream");
    let two = vec![json!({ "name": "a" }), json!({ "name": "b" })];
    let out = c.client_stream_md("t.Svc/Bidi", two, &md).await;
    assert_eq!(
        out.messages,
        vec![json!({ "text": "a" }), json!({ "text": "b" })]
    );
    expect_all(&out, "bidi");

    let out = c.unary_md("t.Svc/Echo", json!({ "name": "e" }), &md).await;
    assert_eq!(out.messages, vec![json!({ "name": "e" })]);
    out.expect_header("x-name", "e");
    out.expect_trailer("x-t", "toml");
    out.expect_trailer("x-t-over", "script");

    // A failing script: its status carries the rule's metadata as an `error` rule's does.
    let out = c
        .unary_md("t.Svc/Unary", json!({ "name": "fail" }), &md)
        .await;
    assert_eq!(out.err(Code::Aborted), "no");
    for (key, want) in [
        ("x-from", "toml"),
        ("x-over", "script"),
        ("x-t", "toml"),
        ("x-t-over", "script"),
    ] {
        let got = out.headers.get(key).or_else(|| out.trailers.get(key));
        assert_eq!(
            got.map(|v| v.to_str().unwrap()),
            Some(want),
            "failed script: {key}: {:?} {:?}",
            out.headers,
            out.trailers
        );
    }
}
