//! gRPC-Web (binary and `-text`) over plain HTTP/1.1, frames and the trailer frame decoded here by
//! hand, and CORS: preflights, exposed headers, `--cors-origin` lists, `none`, refused origins.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value as Json;

fn handlers() -> String {
    rules(&[
        (
            "t.Svc/Unary",
            r#"when.request.name = "missing"
error = { code = "NOT_FOUND", message = "no such thing: {{request.name}}" }"#,
        ),
        (
            "t.Svc/Unary",
            r#"reply = { text = "hello {{request.name}}", num = 7 }
headers = { x-head = "h-{{request.name}}" }
trailers = { x-trail = "t-{{request.name}}" }"#,
        ),
        (
            "t.Svc/ServerStream",
            r#"when.request.flag = true
stream.repeat = 3
stream.message = { text = "slow {{index}}", num = "{{index}}" }
stream.delay = "300ms""#,
        ),
        (
            "t.Svc/ServerStream",
            r#"when.request.name = "fail"
stream.repeat = 2
stream.message = { text = "before {{index}}" }
error = { code = "ABORTED", message = "stopped after two" }"#,
        ),
        (
            "t.Svc/ServerStream",
            r#"stream.repeat = 3
stream.message = { text = "{{request.name}} #{{index}}", num = "{{index}}" }"#,
        ),
    ])
}

const BINARY: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";

/// A server on [`handlers`], and the descriptors to write its requests and read its replies.
struct Web {
    server: Server,
    pool: DescriptorPool,
}

impl Web {
    /// With these extra `serve` arguments.
    fn start(args: &[&str]) -> Web {
        let mut options = Options::default();
        for a in args {
            options = options.arg(*a);
        }
        Self::start_with(options)
    }

    fn start_with(options: Options) -> Web {
        let server = Server::start_with(&t_proto(), &[("t.toml", &handlers())], options);
        let pool = compile_protos(&server.protos_dir(), &[]).unwrap();
        Web { server, pool }
    }

    /// A gRPC-Web call to `path` with `extra` headers, its request the `t.Req` written as `request`.
    async fn call(
        &self,
        path: &str,
        content_type: &str,
        extra: Headers<'_>,
        request: Json,
    ) -> WebReply {
        let desc = self.pool.get_message_by_name("t.Req").unwrap();
        let body = DynamicMessage::deserialize(desc, request)
            .unwrap()
            .encode_to_vec();
        grpc_web(&self.server, path, content_type, extra, &body).await
    }

    /// [`Web::call`] that accepts its own content type, as gRPC-Web clients send.
    async fn call_accepting(&self, path: &str, content_type: &str, request: Json) -> WebReply {
        let accept = [("accept", content_type)];
        self.call(path, content_type, &accept, request).await
    }

    /// A `t.Svc/Unary` call from a page of `origin`, for `{ name }`.
    async fn unary_from(&self, content_type: &str, origin: &str, name: &str) -> WebReply {
        let origin = [("origin", origin)];
        let request = json!({ "name": name });
        self.call("/t.Svc/Unary", content_type, &origin, request)
            .await
    }

    /// The reply's messages, read as `t.Resp`.
    fn replies(&self, reply: &WebReply) -> Vec<Json> {
        reply.decode(&self.pool, "t.Resp")
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// One gRPC-Web answer, taken apart.
#[derive(Debug)]
struct WebReply {
    status: http::StatusCode,
    headers: http::HeaderMap,
    /// Message frames (flag 0x00), payloads as received.
    messages: Vec<Bytes>,
    /// The trailer frame (flag 0x80) as `key: value` pairs, lower-case keys; `None` if there was none.
    trailers: Option<Vec<(String, String)>>,
    /// When each message frame was complete, since the request was sent.
    arrivals: Vec<Duration>,
    elapsed: Duration,
}

impl WebReply {
    fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(|v| v.to_str().unwrap())
    }
    fn trailer(&self, key: &str) -> Option<&str> {
        self.trailers
            .as_ref()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// The call's status: from the trailer frame, or from the headers of a trailers-only answer.
    fn grpc_status(&self) -> (String, String) {
        let get = |k: &str| {
            self.trailer(k)
                .or_else(|| self.header(k))
                .map(str::to_string)
        };
        let code = get("grpc-status").unwrap_or_else(|| panic!("no grpc-status in {self:#?}"));
        let message = get("grpc-message").unwrap_or_default();
        (code, percent_decode(&message))
    }
    fn decode(&self, pool: &DescriptorPool, message: &str) -> Vec<Json> {
        let desc = pool.get_message_by_name(message).unwrap();
        self.messages
            .iter()
            .map(|m| to_json(&DynamicMessage::decode(desc.clone(), m.as_ref()).unwrap()))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A gRPC-Web frame: flag, 4-byte big-endian length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a `-text` body as it grows: base64 in 4-character groups (each group stands alone, so
/// separately padded chunks — one per frame — decode as well as one long string).
#[derive(Default)]
struct TextDecoder {
    pending: Vec<u8>,
}

impl TextDecoder {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.pending
            .extend(chunk.iter().copied().filter(|c| !c.is_ascii_whitespace()));
        let whole = self.pending.len() / 4 * 4;
        for group in self.pending[..whole].chunks(4) {
            out.extend(
                b64()
                    .decode(group)
                    .unwrap_or_else(|e| panic!("bad base64 group {group:?}: {e}")),
            );
        }
        self.pending.drain(..whole);
    }
}

/// Splits complete frames off the front of `buf`.
fn take_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let payload = buf[5..5 + len].to_vec();
        frames.push((buf[0], payload));
        buf.drain(..5 + len);
    }
    frames
}

fn parse_trailers(block: &[u8]) -> Vec<(String, String)> {
    String::from_utf8(block.to_vec())
        .expect("trailer frame is text")
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad trailer line {l:?}"));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect()
}

type Headers<'a> = &'a [(&'a str, &'a str)];

/// Sends one HTTP/1.1 request and returns status, headers and the whole body.
async fn http1(
    server: &Server,
    method: &str,
    path: &str,
    headers: Headers<'_>,
    body: Vec<u8>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", server.addr))
        .version(http::Version::HTTP_11);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let call = async {
        let response = client.request(request).await.expect("HTTP request");
        assert_eq!(response.version(), http::Version::HTTP_11);
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        (parts.status, parts.headers, body)
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .expect("HTTP call timed out")
}

/// A gRPC-Web call over HTTP/1.1 with one request message, read frame by frame as it arrives.
async fn grpc_web(
    server: &Server,
    path: &str,
    content_type: &str,
    extra: Headers<'_>,
    request: &[u8],
) -> WebReply {
    let mut body = frame(0, request);
    if content_type.starts_with(TEXT) {
        body = b64().encode(&body).into_bytes();
    }
    grpc_web_body(server, path, content_type, extra, body).await
}

/// [`grpc_web`] with the request body as it is sent (already framed, and base64 for `-text`).
async fn grpc_web_body(
    server: &Server,
    path: &str,
    content_type: &str,
    extra: Headers<'_>,
    body: Vec<u8>,
) -> WebReply {
    let text = content_type.starts_with(TEXT);
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", server.addr))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("x-user-agent", "protodrop-test");
    for (k, v) in extra {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::from(body))).unwrap();
    let started = Instant::now();
    let call = async {
        let response = client.request(request).await.expect("HTTP request");
        assert_eq!(response.version(), http::Version::HTTP_11);
        let (parts, mut body) = response.into_parts();
        let mut reply = WebReply {
            status: parts.status,
            headers: parts.headers,
            messages: Vec::new(),
            trailers: None,
            arrivals: Vec::new(),
            elapsed: Duration::ZERO,
        };
        if reply.status != 200 {
            // Not a gRPC-Web answer (e.g. 403 for a refused origin): no frames to read.
            let _ = body.collect().await;
            reply.elapsed = started.elapsed();
            return reply;
        }
        let mut text_decoder = TextDecoder::default();
        let mut buf = Vec::new();
        while let Some(f) = body.frame().await {
            let Ok(data) = f.expect("response body").into_data() else {
                panic!("gRPC-Web answers carry no HTTP trailers");
            };
            if text {
                text_decoder.push(&data, &mut buf);
            } else {
                buf.extend_from_slice(&data);
            }
            for (flag, payload) in take_frames(&mut buf) {
                assert!(reply.trailers.is_none(), "a frame after the trailer frame");
                match flag {
                    0x00 => {
                        reply.messages.push(payload.into());
                        reply.arrivals.push(started.elapsed());
                    }
                    0x80 => reply.trailers = Some(parse_trailers(&payload)),
                    other => panic!("unexpected frame flag {other:#x}"),
                }
            }
        }
        assert!(buf.is_empty(), "{} bytes after the last frame", buf.len());
        assert!(text_decoder.pending.is_empty(), "base64 left over");
        reply.elapsed = started.elapsed();
        reply
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .expect("gRPC-Web call timed out")
}

#[tokio::test]
async fn unary_in_binary_and_text_framing() {
    let w = Web::start(&[]);
    for (content_type, accept) in [
        (BINARY, None),
        ("application/grpc-web", None),
        (TEXT, Some(TEXT)),
        (
            "application/grpc-web-text+proto",
            Some("application/grpc-web-text+proto"),
        ),
        // curl-like: a text request with `Accept: */*` is answered in text too.
        (TEXT, Some("*/*")),
    ] {
        let extra: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let request = json!({ "name": "web" });
        let r = w.call("/t.Svc/Unary", content_type, &extra, request).await;
        let what = format!("{content_type} (accept {accept:?})");
        assert_eq!(r.status, 200, "{what}: {r:#?}");
        let expected_type = if content_type.starts_with(TEXT) {
            "application/grpc-web-text+proto"
        } else {
            BINARY
        };
        assert_eq!(r.header("content-type"), Some(expected_type), "{what}");
        assert_eq!(r.header("x-head"), Some("h-web"), "{what}: handler header");
        assert_eq!(
            w.replies(&r),
            vec![json!({ "text": "hello web", "num": 7 })],
            "{what}"
        );
        assert!(r.trailers.is_some(), "{what}: no trailer frame");
        assert_eq!(r.grpc_status(), ("0".into(), String::new()), "{what}");
        assert_eq!(
            r.trailer("x-trail"),
            Some("t-web"),
            "{what}: handler trailer"
        );
    }
}

#[tokio::test]
async fn server_stream_in_binary_and_text_framing() {
    let w = Web::start(&[]);
    for content_type in [BINARY, TEXT] {
        let r = w
            .call_accepting("/t.Svc/ServerStream", content_type, json!({ "name": "s" }))
            .await;
        assert_eq!(r.status, 200, "{content_type}: {r:#?}");
        assert_eq!(
            w.replies(&r),
            vec![
                json!({ "text": "s #0" }),
                json!({ "text": "s #1", "num": 1 }),
                json!({ "text": "s #2", "num": 2 }),
            ],
            "{content_type}"
        );
        assert_eq!(r.grpc_status().0, "0", "{content_type}");
    }
}

#[tokio::test]
async fn server_stream_messages_arrive_as_they_are_sent() {
    let w = Web::start(&[]);
    for content_type in [BINARY, TEXT] {
        let r = w
            .call_accepting("/t.Svc/ServerStream", content_type, json!({ "flag": true }))
            .await;
        assert_eq!(r.messages.len(), 3, "{r:#?}");
        assert_eq!(r.grpc_status().0, "0");
        // 300 ms before each message: the first is read about 600 ms before the end, not with it.
        assert!(
            r.elapsed - r.arrivals[0] >= Duration::from_millis(450),
            "{content_type}: first message at {:?}, end at {:?}: the stream was buffered",
            r.arrivals[0],
            r.elapsed
        );
    }
}

#[tokio::test]
async fn errors_end_the_call_with_a_status() {
    let w = Web::start(&[]);
    for content_type in [BINARY, TEXT] {
        // A unary error: no message, the status (trailers-only answers put it in the headers).
        let r = w
            .call_accepting("/t.Svc/Unary", content_type, json!({ "name": "missing" }))
            .await;
        assert_eq!(r.status, 200);
        assert!(r.messages.is_empty(), "{r:#?}");
        assert_eq!(
            r.grpc_status(),
            ("5".into(), "no such thing: missing".into()),
            "{content_type}"
        );

        // Messages, then an error in the trailer frame.
        let r = w
            .call_accepting(
                "/t.Svc/ServerStream",
                content_type,
                json!({ "name": "fail" }),
            )
            .await;
        assert_eq!(r.messages.len(), 2, "{r:#?}");
        assert_eq!(
            r.trailer("grpc-status"),
            Some("10"),
            "{content_type}: {r:#?}"
        );
        assert_eq!(r.grpc_status().1, "stopped after two");

        // An unknown method (an empty request body).
        let accept = [("accept", content_type)];
        let r = grpc_web(&w.server, "/t.Svc/Nope", content_type, &accept, &[]).await;
        let (code, message) = r.grpc_status();
        assert_eq!(code, "12", "{r:#?}");
        assert!(message.contains("no method 'Nope'"), "{message}");
    }
}

#[tokio::test]
async fn health_answers_over_grpc_web() {
    let w = Web::start(&[]);
    let s = &w.server;
    // grpc.health.v1.HealthCheckRequest{service: "t.Svc"}; the answer is {status: SERVING (1)}.
    let mut request = vec![0x0a, 5];
    request.extend_from_slice(b"t.Svc");
    let r = grpc_web(s, "/grpc.health.v1.Health/Check", BINARY, &[], &request).await;
    assert_eq!(r.grpc_status().0, "0", "{r:#?}");
    assert_eq!(r.messages, vec![Bytes::from_static(&[0x08, 0x01])]);
}

#[tokio::test]
async fn other_http1_requests_are_not_taken_for_grpc_web() {
    let w = Web::start(&[]);
    let s = &w.server;
    // tonic-web alone answers 400 to every HTTP/1.1 request that is not gRPC-Web: Connect and
    // HTTP/JSON requests must reach their own fronts instead.
    let (status, _, _) = http1(
        s,
        "POST",
        "/t.Svc/Unary",
        &[("content-type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_ne!(status, 400, "Connect request refused by the gRPC-Web layer");
    let (status, _, _) = http1(s, "GET", "/no/such/route", &[], Vec::new()).await;
    assert_ne!(
        status, 400,
        "plain HTTP request refused by the gRPC-Web layer"
    );
    // A gRPC-Web content type tonic-web cannot answer.
    let (status, _, _) = http1(
        s,
        "POST",
        "/t.Svc/Unary",
        &[("content-type", "application/grpc-web+json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 415);
}

const BROWSER_HEADERS: &str =
    "content-type,x-grpc-web,x-user-agent,grpc-timeout,connect-protocol-version,x-custom-thing";

async fn preflight(s: &Server, origin: &str) -> (http::StatusCode, http::HeaderMap) {
    let (status, headers, _) = http1(
        s,
        "OPTIONS",
        "/t.Svc/Unary",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", BROWSER_HEADERS),
        ],
        Vec::new(),
    )
    .await;
    (status, headers)
}

fn header_list(headers: &http::HeaderMap, key: &str) -> Vec<String> {
    headers
        .get_all(key)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test]
async fn any_origin_by_default() {
    let w = Web::start(&[]);
    let s = &w.server;
    let (status, h) = preflight(s, "http://page.example:8080").await;
    assert!(status.is_success(), "{status} {h:#?}");
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "*");
    let methods = header_list(&h, "access-control-allow-methods");
    assert!(methods.contains(&"post".to_string()), "{methods:?}");
    let allowed = header_list(&h, "access-control-allow-headers");
    for wanted in BROWSER_HEADERS.split(',') {
        assert!(
            allowed.contains(&wanted.to_string()),
            "{wanted} not allowed: {allowed:?}"
        );
    }
    assert!(h.contains_key("access-control-max-age"));

    // The call itself: the origin may read the answer, the status headers and the handler's header.
    let r = w.unary_from(BINARY, "http://page.example:8080", "x").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let exposed = header_list(&r.headers, "access-control-expose-headers");
    for wanted in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-head",
    ] {
        assert!(
            exposed.contains(&wanted.to_string()),
            "{wanted} not exposed: {exposed:?}"
        );
    }
    assert_eq!(r.grpc_status().0, "0");
}

#[tokio::test]
async fn restricted_origins_allow_only_those() {
    let w = Web::start(&[
        "--cors-origin",
        "http://allowed.test:3000/",
        "--cors-origin",
        "HTTP://Other.test",
    ]);
    let s = &w.server;
    for origin in ["http://allowed.test:3000", "http://other.test"] {
        let (status, h) = preflight(s, origin).await;
        assert!(status.is_success(), "{origin}: {status}");
        assert_eq!(h.get("access-control-allow-origin").unwrap(), origin);
        assert!(
            header_list(&h, "vary").contains(&"origin".to_string()),
            "{h:#?}"
        );
        let allowed = header_list(&h, "access-control-allow-headers");
        assert!(allowed.contains(&"x-grpc-web".to_string()), "{allowed:?}");
    }
    for origin in [
        "http://allowed.test:3001",
        "https://allowed.test:3000",
        "http://evil.test",
        "null",
    ] {
        let (status, h, body) = http1(
            s,
            "OPTIONS",
            "/t.Svc/Unary",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
            Vec::new(),
        )
        .await;
        assert_eq!(status, 403, "{origin}");
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains(origin) && body.contains("http://allowed.test:3000, http://other.test"),
            "the refusal says why: {body}"
        );
        assert!(
            !h.contains_key("access-control-allow-origin"),
            "{origin}: {h:#?}"
        );
        let r = w.unary_from(BINARY, origin, "x").await;
        assert_eq!(r.status, 403, "{origin}: the call itself is refused too");
    }
    // An allowed origin's call, and a call with no Origin at all (not from a browser page).
    let r = w.unary_from(TEXT, "http://other.test", "ok").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://other.test")
    );
    assert_eq!(w.replies(&r)[0]["text"], "hello ok");
    let r = w
        .call("/t.Svc/Unary", BINARY, &[], json!({ "name": "ok" }))
        .await;
    assert_eq!(r.grpc_status().0, "0");
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn origins_from_the_environment() {
    let options = Options::default().env(
        "PROTODROP_CORS_ORIGIN",
        "http://one.test,http://two.test:8080",
    );
    let w = Web::start_with(options);
    let s = &w.server;
    assert!(preflight(s, "http://two.test:8080").await.0.is_success());
    assert_eq!(preflight(s, "http://three.test").await.0, 403);
}

#[tokio::test]
async fn cors_none_sends_no_cors_headers() {
    let w = Web::start(&["--cors-origin", "none"]);
    let s = &w.server;
    let (_, h) = preflight(s, "http://page.test").await;
    assert!(
        !h.keys().any(|k| k.as_str().starts_with("access-control-")),
        "{h:#?}"
    );
    // gRPC-Web itself still works (for same-origin pages or proxies).
    let r = w.unary_from(BINARY, "http://page.test", "n").await;
    assert_eq!(r.grpc_status().0, "0");
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

#[test]
fn bad_cors_origins_are_refused_at_start() {
    let (code, _, stderr) = protodrop(&["serve", "--cors-origin", "localhost:3000"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--cors-origin") && stderr.contains("scheme://host"),
        "{stderr}"
    );

    let (code, _, stderr) = protodrop(&["serve", "--cors-origin", "http://a.test/path"], None, &[]);
    assert_eq!(code, 2, "{stderr}");

    let (code, _, stderr) = protodrop(
        &[
            "serve",
            "--cors-origin",
            "*",
            "--cors-origin",
            "http://a.test",
        ],
        None,
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot be combined"), "{stderr}");
}

/// Issue 16 (9): a `-text` body that is not base64 is a broken request, INTERNAL (tonic-web's own
/// status for it, and what grpc-go's gRPC-Web wrappers answer), for a unary call as for a stream.
/// Regression: the unary path answered CANCELLED, which reads as if the client had given up.
#[tokio::test]
async fn malformed_base64_is_internal() {
    let w = Web::start(&[]);
    for path in ["/t.Svc/Unary", "/t.Svc/ServerStream"] {
        for body in ["!!!!", "AAAA####"] {
            let r = grpc_web_body(&w.server, path, TEXT, &[], body.as_bytes().to_vec()).await;
            let what = format!("{path} {body:?}");
            assert_eq!(r.status, 200, "{what}: {r:#?}");
            let (code, message) = r.grpc_status();
            assert_eq!(code, "13", "{what}: INTERNAL, got {code} {message:?}");
            assert!(
                !message.contains("reading the request"),
                "{what}: {message}"
            );
        }
    }
    // The server serves on.
    let r = w
        .call("/t.Svc/Unary", TEXT, &[], json!({ "name": "x" }))
        .await;
    assert_eq!(w.replies(&r), vec![json!({ "text": "hello x", "num": 7 })]);
}
