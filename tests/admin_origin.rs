//! The admin API refuses browsers' cross-origin calls: with the default `--cors-origin *` any page
//! the user has open could otherwise add or reset rules on the main port. A request to an admin
//! path (`/protodrop.admin.v1.Admin/*` in any protocol, `/protodrop/admin/v1/*` routes) that
//! carries an `Origin` not named by `--admin-cors-origin` is answered PERMISSION_DENIED in its
//! protocol's form, its preflight grants nothing, and nothing changes; clients that send no
//! `Origin` (curl, grpcio, buf curl, grpcurl) and the user's methods are not affected.

mod common;
mod http_client;

use std::net::SocketAddr;

use common::*;
use tonic::Code;

const RULES: &str = "/protodrop/admin/v1/rules";
const RESET: &str = "/protodrop/admin/v1/rules:reset";
const ADD_RULES: &str = "/protodrop.admin.v1.Admin/AddRules";
const RESET_RULES: &str = "/protodrop.admin.v1.Admin/ResetRules";
const PAGE: &str = "http://page.example:8080";

/// The one rule in the files: `t.Svc/Unary` answers "file".
const FILE_RULES: &str = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"file\" }\n";

/// AddRules' body: a rule that makes `t.Svc/Unary` answer "runtime".
const ADD_BODY: &str =
    r#"{"toml": "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"runtime\" }\n"}"#;

fn start(args: &[&str]) -> Server {
    let mut options = Options::default();
    for a in args {
        options = options.arg(*a);
    }
    Server::start_with(&t_proto(), &[("t.toml", FILE_RULES)], options)
}

/// The runtime rules served, asked as curl does (no `Origin`).
async fn runtime_rules(addr: SocketAddr) -> Vec<String> {
    let reply = http_client::get(addr, RULES).await;
    reply.expect(200);
    let listed = reply.json();
    listed["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().filter(|id| !id.is_empty()))
        .map(str::to_string)
        .collect()
}

/// What `t.Svc/Unary` answers now, over gRPC.
async fn unary_text(server: &Server) -> String {
    let client = server.client().await;
    let out = client.unary("t.Svc/Unary", json!({})).await;
    out.ok();
    out.single()["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A preflight from `origin` for a POST to `path`.
async fn preflight(addr: SocketAddr, path: &str, origin: &str) -> http_client::Reply {
    http_client::send(
        addr,
        "OPTIONS",
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        Vec::new(),
    )
    .await
}

/// A POST of `body` as `content_type` to `path`, from a page of `origin`.
async fn post_from(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    origin: &str,
    body: impl Into<bytes::Bytes>,
) -> http_client::Reply {
    let headers = [("content-type", content_type), ("origin", origin)];
    http_client::send(addr, "POST", path, &headers, body).await
}

/// An empty message in a gRPC-Web frame, POSTed to `path` from `origin`.
async fn grpc_web_empty(addr: SocketAddr, path: &str, origin: &str) -> http_client::Reply {
    let body = http_client::envelope(0, &[]);
    http_client::send(
        addr,
        "POST",
        path,
        &[
            ("content-type", "application/grpc-web+proto"),
            ("origin", origin),
        ],
        body,
    )
    .await
}

/// The `grpc-status` of a gRPC-Web answer: in its headers (trailers-only) or its trailer frame.
fn grpc_web_status(reply: &http_client::Reply) -> String {
    if let Some(status) = reply.header("grpc-status") {
        return status;
    }
    let frames = http_client::envelopes(&reply.body);
    let trailers = frames
        .iter()
        .find(|(flags, _)| flags & 0x80 != 0)
        .map(|(_, t)| String::from_utf8_lossy(t).to_string())
        .unwrap_or_default();
    trailers
        .lines()
        .find_map(|l| l.trim().strip_prefix("grpc-status:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| format!("no status in {reply:?}"))
}

#[tokio::test]
async fn cross_origin_admin_calls_are_refused_in_every_protocol_and_change_nothing() {
    let server = start(&[]);
    let addr = server.addr;
    // A runtime rule added without an Origin (as curl does): allowed, and what a page would reset.
    http_client::post_json(addr, RULES, ADD_BODY)
        .await
        .expect(200);
    assert_eq!(runtime_rules(addr).await, ["r1"]);

    // Preflights for admin paths grant nothing, whatever the path's form.
    for path in [RULES, RESET, ADD_RULES, RESET_RULES] {
        let reply = preflight(addr, path, PAGE).await;
        assert!(
            !(200..300).contains(&reply.status),
            "{path}: preflight granted: {} {:?}",
            reply.status,
            reply.headers
        );
        assert!(
            reply.header("access-control-allow-origin").is_none(),
            "{path}: {:?}",
            reply.headers
        );
    }

    // HTTP/JSON, as a page's fetch() sends it: 403 with google.rpc.Status naming the flag.
    let reply = post_from(addr, RULES, "application/json", PAGE, ADD_BODY.to_string()).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["code"], 7, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("--admin-cors-origin") && message.contains(PAGE),
        "{message}"
    );
    // A "simple" request (text/plain: no preflight at all) is refused the same way.
    let reply = post_from(addr, RESET, "text/plain", PAGE, "{}").await;
    assert_eq!(reply.status, 403, "{}", reply.text());

    // Connect.
    let reply = post_from(
        addr,
        ADD_RULES,
        "application/json",
        PAGE,
        ADD_BODY.to_string(),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["code"], "permission_denied", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--admin-cors-origin"),
        "{body}"
    );

    // gRPC-Web.
    let reply = grpc_web_empty(addr, RESET_RULES, PAGE).await;
    assert_eq!(grpc_web_status(&reply), "7", "{reply:?}");

    // gRPC with an Origin header (no browser sends gRPC, but the rule is the path's, not the
    // protocol's).
    let client = Client::connect(addr, admin_pool()).await;
    let out = client
        .unary_md(
            "protodrop.admin.v1.Admin/ResetRules",
            json!({}),
            &[("origin", PAGE)],
        )
        .await;
    assert!(
        out.err(Code::PermissionDenied)
            .contains("--admin-cors-origin"),
        "{out:?}"
    );

    // Escapes the route table decodes do not get past the guard.
    for path in [
        "/%70rotodrop/admin/v1/rules:reset",
        "/protodrop/%61dmin/v1/rules:reset",
    ] {
        let reply = post_from(addr, path, "text/plain", PAGE, "{}").await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text());
    }

    // Nothing changed: the one runtime rule is still there and still answers.
    assert_eq!(runtime_rules(addr).await, ["r1"]);
    assert_eq!(unary_text(&server).await, "runtime");
}

#[tokio::test]
async fn an_origin_named_by_admin_cors_origin_may_call_the_admin_api() {
    let tool = "http://admin-ui.test:3000";
    let server = start(&["--admin-cors-origin", tool]);
    let addr = server.addr;

    let reply = preflight(addr, RULES, tool).await;
    assert!(
        (200..300).contains(&reply.status),
        "{} {:?}",
        reply.status,
        reply.headers
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let reply = post_from(addr, RULES, "application/json", tool, ADD_BODY.to_string()).await;
    reply.expect(200);
    assert!(reply.header("access-control-allow-origin").is_some());
    assert_eq!(unary_text(&server).await, "runtime");
    let reply = grpc_web_empty(addr, RESET_RULES, tool).await;
    assert_eq!(grpc_web_status(&reply), "0", "{reply:?}");
    assert!(runtime_rules(addr).await.is_empty());

    // Another origin still may not.
    let reply = post_from(addr, RULES, "application/json", PAGE, ADD_BODY.to_string()).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(runtime_rules(addr).await.is_empty());
}

#[tokio::test]
async fn user_methods_still_answer_cross_origin() {
    let server = start(&[]);
    let addr = server.addr;
    let reply = preflight(addr, "/t.Svc/Unary", PAGE).await;
    assert!((200..300).contains(&reply.status), "{}", reply.status);
    let reply = post_from(addr, "/t.Svc/Unary", "application/json", PAGE, "{}").await;
    reply.expect(200);
    assert_eq!(reply.json()["text"], "file");
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[tokio::test]
async fn with_cors_off_a_cross_origin_admin_call_is_still_refused() {
    // `--cors-origin none` stops pages reading answers, not sending simple requests: the admin
    // guard must not depend on CORS being on.
    let server = start(&["--cors-origin", "none"]);
    let addr = server.addr;
    let reply = post_from(addr, RULES, "text/plain", PAGE, ADD_BODY.to_string()).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(runtime_rules(addr).await.is_empty());
}

#[test]
fn an_admin_origin_that_cors_does_not_allow_is_refused_at_start_up() {
    for cors in ["none", "http://other.test"] {
        let result = Server::try_start(
            &t_proto(),
            &[("t.toml", FILE_RULES)],
            Options::default()
                .arg("--cors-origin")
                .arg(cors)
                .arg("--admin-cors-origin")
                .arg("http://admin-ui.test"),
        );
        let Err(e) = result else {
            panic!("started with --cors-origin {cors}")
        };
        assert!(
            e.contains("--admin-cors-origin") && e.contains("--cors-origin"),
            "{e}"
        );
    }
}
