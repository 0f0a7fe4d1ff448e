//! Memory a single call can make the server hold (issue 16, items 4 and 7): requests that decode to
//! far more than their size, replies and headers templated from a large request field, scripts that
//! build large values. Each case ends its own call with a clear status, and the server's peak RSS
//! (VmHWM of the real process) shows that the memory was never taken. The journal (on by default)
//! keeps what the calls sent, up to its byte cap, which the last test holds it to; the tests of
//! what one call takes run without it (`--no-journal`), so that their bounds measure the call
//! alone, as the journal's cap is a bound of its own.
//!
//! The servers whose peak is bounded by what a call adds run with `MIMALLOC_PURGE_DELAY=0`
//! (`common::held`): the allocator then gives memory back as it is freed, and the peak is what the server
//! held. By its default, mimalloc keeps freed memory resident a few milliseconds, and with calls of
//! megabytes that moved the peak by tens of MiB from run to run: the journal's test below read +71
//! to +97 MiB here and +108 once in CI, where the server held +28 to +30; the test of empty entries
//! +46 to +52, where it held +17.

mod common;
mod http_client;
mod raw;

use common::*;
use futures::future::join_all;
use raw::*;
use tonic::Code;

/// Peak RSS of the server so far, in MiB.
fn peak_mib(s: &Server) -> u64 {
    proc_status_kib(s.pid(), "VmHWM") / 1024
}

/// A Rhai map of 1 MB strings (issue 16 item 7: 100k of them reached 790 MB in one call, 1.56 GB for
/// four): each string is within `--script-max-string-size` and the map is grown by index, which Rhai
/// does not size-check, so only the total bounds it. 500 strings are plenty to pass the default
/// `--script-max-memory` of 64 MiB, and small enough that the test can be run without the limit.
#[tokio::test]
async fn a_script_map_of_large_strings_stops_at_the_memory_limit() {
    let code = r#"
let s = "x";
s.pad(1000000, 'y');
let m = #{};
for i in 0..500 { m[`k${i}`] = s + i; }
#{ text: `${m.len()}` }
"#;
    let s = Server::start(
        &t_proto(),
        &[(
            "t.toml",
            &rule("t.Svc/Unary", &format!("code = '''\n{code}\n'''")),
        )],
    );
    let c = s.client().await;
    let calls = (0..4).map(|_| c.unary("t.Svc/Unary", json!({})));
    for out in join_all(calls).await {
        let message = out.err(Code::ResourceExhausted);
        assert!(message.contains("--script-max-memory"), "{message}");
    }
    // Four calls at once, each stopped at 64 MiB (plus at most one string past it).
    let peak = peak_mib(&s);
    eprintln!("peak RSS {peak} MiB");
    assert!(peak < 4 * 64 + 64, "the server's peak RSS was {peak} MiB");
}

/// The bundled seeds, as shipped in protos/ and handlers/, without the journal, their peak what
/// they hold (see the module's docs).
fn seeds() -> Server {
    Server::start_with(
        &[
            ("users.proto", include_str!("../protos/users.proto")),
            (
                "faceserver.proto",
                include_str!("../protos/faceserver.proto"),
            ),
        ],
        &[
            ("users.toml", include_str!("../handlers/users.toml")),
            (
                "faceserver.toml",
                include_str!("../handlers/faceserver.toml"),
            ),
        ],
        held().arg("--no-journal"),
    )
}

/// 2,000,000 empty entries of field 1 (`0a 00` each): a 4 MB request, under the 4 MiB
/// `--max-message-size`, that decodes to over a hundred megabytes.
fn empty_entries() -> bytes::Bytes {
    frame(false, &[0x0a, 0x00].repeat(2_000_000))
}

/// Issue 16 item 4: `users.Users/GetUsers` (a server stream, one reply per entry) held ~120 MB per
/// call while its replies were unread, 1.2 GB for ten calls on one connection;
/// `faceserver.Recognition/registration` (a reply listing one id per entry) peaked at 283 MB. Both
/// requests are now refused before they are decoded, four at once on one connection, and the
/// server's peak RSS grows by about the requests' own bytes.
#[tokio::test]
async fn requests_of_millions_of_empty_entries_are_refused_before_decoding() {
    let s = seeds();
    let conn = Conn::connect(s.addr).await;
    let before = peak_mib(&s);
    for path in [
        "/users.Users/GetUsers",
        "/faceserver.Recognition/registration",
    ] {
        let calls = (0..4).map(|_| {
            let mut conn = conn.clone();
            async move { conn.call(path, &[], empty_entries()).await }
        });
        for answer in join_all(calls).await {
            let message = answer.expect_status(Code::ResourceExhausted);
            assert!(
                message.contains("--max-request-memory"),
                "{path}: {message}"
            );
        }
    }
    let peak = peak_mib(&s);
    eprintln!("peak RSS {before} -> {peak} MiB");
    assert!(
        peak < before + 64,
        "the server's peak RSS grew from {before} MiB to {peak} MiB"
    );
    // A request of ordinary size is answered as before.
    let mut conn = conn.clone();
    let one_user = frame(false, &[0x0a, 0x05, 0x0a, 0x01, b'a', 0x10, 0x07]);
    let answer = conn.call("/users.Users/GetUsers", &[], one_user).await;
    assert_eq!(answer.grpc_status(), Some(0), "{}", answer.grpc_message());
    assert_eq!(answer.messages().len(), 1);
}

/// The same over Connect with JSON: `{"path_list":["","",…]}` (4 MB, 1,333,333 empty strings)
/// decoded to over a hundred megabytes too; it is now refused before it is parsed.
#[tokio::test]
async fn a_json_request_of_millions_of_empty_entries_is_refused_before_parsing() {
    let s = seeds();
    let mut body = String::from("{\"path_list\":[\"\"");
    body.push_str(&",\"\"".repeat(1_333_332));
    body.push_str("]}");
    let before = peak_mib(&s);
    let reply = http_client::send(
        s.addr,
        "POST",
        "/faceserver.Recognition/registration",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    let error = reply.json();
    assert_eq!(error["code"], "resource_exhausted", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("--max-request-memory"), "{message}");
    let peak = peak_mib(&s);
    eprintln!("peak RSS {before} -> {peak} MiB");
    assert!(
        peak < before + 32,
        "the server's peak RSS grew from {before} MiB to {peak} MiB"
    );
}

/// A `t.Req` whose `name` is `len` bytes.
fn named(len: usize) -> bytes::Bytes {
    frame(false, &string_field(1, &vec![b'n'; len]))
}

/// Issue 16 item 4: a reply repeating `{{request.name}}` 100 times was built whole (400 MB for a 4 MB
/// name: 905 MB peak for one call, 2.78 GB for eight) before the 4 MiB check. It now stops as soon
/// as it passes `--max-message-size`, on the direct path (unary, server stream: compiled emitters)
/// and on the general one (a client stream renders the template), four calls at once.
#[tokio::test]
async fn a_reply_repeating_a_large_field_stops_at_the_message_size_limit() {
    let text = "{{request.name}}".repeat(100);
    let handler = rules(&[
        ("t.Svc/Unary", &format!("reply.text = \"{text}\"")),
        (
            "t.Svc/ServerStream",
            &format!("stream.repeat = 2\nstream.message.text = \"{text}\""),
        ),
        ("t.Svc/ClientStream", &format!("reply.text = \"{text}\"")),
    ]);
    // Held +29 to +32 MiB; +49 to +68 with the allocator's default (see the module's docs).
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", &handler)],
        held().arg("--no-journal"),
    );
    let conn = Conn::connect(s.addr).await;
    let before = peak_mib(&s);
    for path in ["/t.Svc/Unary", "/t.Svc/ServerStream", "/t.Svc/ClientStream"] {
        let calls = (0..4).map(|_| {
            let mut conn = conn.clone();
            async move { conn.call(path, &[], named(4_000_000)).await }
        });
        for answer in join_all(calls).await {
            let message = answer.expect_status(Code::ResourceExhausted);
            assert!(message.contains("--max-message-size"), "{path}: {message}");
        }
    }
    let peak = peak_mib(&s);
    eprintln!("peak RSS {before} -> {peak} MiB");
    assert!(
        peak < before + 100,
        "the server's peak RSS grew from {before} MiB to {peak} MiB"
    );
    // Under the limit, the same template answers.
    let mut conn = conn.clone();
    let answer = conn.call("/t.Svc/Unary", &[], named(1000)).await;
    assert_eq!(answer.grpc_status(), Some(0), "{}", answer.grpc_message());
}

/// Issue 16 item 4: a response header templated from a 4 MB request field was sent as it was. A
/// header, trailer or error message built from templates, or headers a script sets, are now bounded
/// (16 KiB for each set): past it the call ends with RESOURCE_EXHAUSTED saying which.
#[tokio::test]
async fn headers_trailers_and_error_messages_built_from_a_large_field_are_refused() {
    let handler = rules(&[
        (
            "t.Svc/Unary",
            "headers.x-name = \"{{request.name}}\"\nreply.text = \"hi\"",
        ),
        (
            "t.Svc/Echo",
            "trailers.x-name = \"{{request.name}}\"\nreply = \"{{request}}\"",
        ),
        (
            "t.Svc/ClientStream",
            "error.code = \"NOT_FOUND\"\nerror.message = \"no {{request.name}}\"",
        ),
        (
            "t.Svc/ServerStream",
            "code = '''\nheader(\"x-name\", request.name);\nsend(#{ text: \"hi\" });\n'''",
        ),
    ]);
    let s = start_t(&handler);
    let mut conn = Conn::connect(s.addr).await;
    // A script is shown strings up to --script-max-string-size (1 MiB): 100 kB for it.
    for (path, what, len) in [
        ("/t.Svc/Unary", "headers", 4_000_000),
        ("/t.Svc/Echo", "trailers", 4_000_000),
        ("/t.Svc/ClientStream", "error message", 4_000_000),
        ("/t.Svc/ServerStream", "headers", 100_000),
    ] {
        let answer = conn.call(path, &[], named(len)).await;
        let message = answer.expect_status(Code::ResourceExhausted);
        assert!(message.contains(what), "{path}: {message}");
        assert!(
            answer.headers.values().all(|v| v.len() < 16 << 10),
            "{path}: {:?}",
            answer.headers.keys().collect::<Vec<_>>()
        );
        // A name of ordinary length is still copied.
        let answer = conn.call(path, &[], named(100)).await;
        let name = "n".repeat(100);
        let all: Vec<String> = answer
            .headers
            .values()
            .chain(answer.trailers.iter().flat_map(|t| t.values()))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        assert!(
            all.iter().any(|v| v.contains(&name)),
            "{path}: {all:?} {}",
            answer.grpc_message()
        );
    }
}

/// `--max-reply-metadata-size` is that bound: a 20 kB header templated from the request (or set by
/// a script) is refused at the default (16 KiB) and sent with the flag raised; lowered to 1 KiB, a
/// 2 kB one is refused.
#[tokio::test]
async fn max_reply_metadata_size_moves_the_bound_on_built_headers() {
    let handler = rules(&[
        (
            "t.Svc/Unary",
            "headers.x-name = \"{{request.name}}\"\nreply.text = \"hi\"",
        ),
        (
            "t.Svc/ServerStream",
            "code = '''\nheader(\"x-name\", request.name);\nsend(#{ text: \"hi\" });\n'''",
        ),
    ]);
    let start = |size: &str| {
        Server::start_with(
            &t_proto(),
            &[("t.toml", &handler)],
            Options::default().arg(format!("--max-reply-metadata-size={size}")),
        )
    };
    let (default, raised, lowered) = (start_t(&handler), start("32KiB"), start("1KiB"));
    let name = "n".repeat(20_000);
    for path in ["/t.Svc/Unary", "/t.Svc/ServerStream"] {
        let mut conn = Conn::connect(default.addr).await;
        let answer = conn.call(path, &[], named(20_000)).await;
        let message = answer.expect_status(Code::ResourceExhausted);
        assert!(
            message.contains("--max-reply-metadata-size"),
            "{path}: {message}"
        );

        let mut conn = Conn::connect(raised.addr).await;
        let answer = conn.call(path, &[], named(20_000)).await;
        assert_eq!(
            answer.grpc_status(),
            Some(0),
            "{path}: {}",
            answer.grpc_message()
        );
        let header = answer.headers.get("x-name").map(|v| v.as_bytes());
        assert_eq!(header, Some(name.as_bytes()), "{path}");

        let mut conn = Conn::connect(lowered.addr).await;
        let answer = conn.call(path, &[], named(2_000)).await;
        let message = answer.expect_status(Code::ResourceExhausted);
        assert!(message.contains("1024 bytes"), "{path}: {message}");
    }
}

/// `--script-max-memory` counts what a call holds, not what it has sent: a streaming script (run
/// on a helper thread of its own) may send far more than the limit in total, and is still stopped
/// when it holds too much.
#[tokio::test]
async fn a_streaming_script_is_metered_on_its_own_thread_and_what_it_sends_is_not_held() {
    let send_much = r#"
let s = "x";
s.pad(200000, 'y');
for i in 0..500 { send(#{ text: s }); }
"#;
    let hold_much = r#"
let s = "x";
s.pad(1000000, 'y');
let kept = #{};
for i in 0..500 { kept[`k${i}`] = s + i; send(#{ num: i }); }
"#;
    let s = Server::start_with(
        &t_proto(),
        &[(
            "t.toml",
            &rules(&[
                (
                    "t.Svc/ServerStream",
                    &format!("when.request.name = \"send\"\ncode = '''\n{send_much}\n'''"),
                ),
                (
                    "t.Svc/ServerStream",
                    &format!("code = '''\n{hold_much}\n'''"),
                ),
            ]),
        )],
        Options::default().arg("--script-max-memory").arg("16MiB"),
    );
    let c = s.client().await;
    let sent = c
        .server_stream("t.Svc/ServerStream", json!({ "name": "send" }))
        .await;
    sent.ok();
    assert_eq!(sent.messages.len(), 500);
    let held = c.server_stream("t.Svc/ServerStream", json!({})).await;
    let message = held.err(Code::ResourceExhausted);
    assert!(message.contains("--script-max-memory"), "{message}");
    assert!(
        (10..30).contains(&held.messages.len()),
        "stopped after {} messages of 1 MB held",
        held.messages.len()
    );
}

/// With a journal, a server keeps what its calls sent, and no more than `--journal-max-bytes` of
/// it: twenty-four requests of 4 MB, four at a time, raise what it holds by about what four in
/// flight take and the cap, not by the 96 MB they sent.
#[tokio::test]
async fn the_journal_keeps_large_requests_within_its_byte_cap() {
    let handler = rules(&[("t.Svc/Unary", "reply.text = \"ok\"")]);
    let s = Server::start_with(
        &t_proto(),
        &[("t.toml", &handler)],
        held().arg("--journal-max-bytes=8MiB"),
    );
    let conn = Conn::connect(s.addr).await;
    let before = peak_mib(&s);
    for _ in 0..6 {
        let calls = (0..4).map(|_| {
            let mut conn = conn.clone();
            async move { conn.call("/t.Svc/Unary", &[], named(4_000_000)).await }
        });
        for answer in join_all(calls).await {
            assert_eq!(answer.grpc_status(), Some(0), "{}", answer.grpc_message());
        }
    }
    let peak = peak_mib(&s);
    eprintln!("peak RSS {before} -> {peak} MiB");
    // Held without a journal, the same calls peak at 17-19 MiB more (the four in flight); with
    // it, 28-30 (the cap, and the newest call, kept before the oldest are dropped). Twice what is
    // in flight, and the cap, leaves room for a slower machine; a journal keeping every call would
    // hold 96 MB more.
    let in_flight = 4 * 4;
    assert!(
        peak < before + 2 * in_flight + 8,
        "the server's peak RSS grew from {before} MiB to {peak} MiB"
    );
    // The calls kept, as Verify counts them.
    let filter = serde_json::json!({ "filter": "method = \"t.Svc/Unary\"" }).to_string();
    let verified =
        http_client::post_json(s.addr, "/protodrop/admin/v1/calls:verify", &filter).await;
    let kept = verified.expect(200).json()["count"]
        .as_str()
        .map(str::to_owned);
    assert!(
        matches!(kept.as_deref(), Some("1" | "2")),
        "{kept:?} calls of 4 MB kept under 8 MiB"
    );
}
