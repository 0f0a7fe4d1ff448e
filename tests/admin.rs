//! The admin API (`protodrop.admin.v1.Admin`) as clients see it: served by protodrop's own
//! machinery on every protocol — gRPC, gRPC-Web, Connect, HTTP/JSON by its `google.api.http`
//! routes — and listed by reflection; on the main port by default, on a listener of its own with
//! `--admin-listen`, not at all with `--no-admin`. `ListRules` lists the handler files' rules, in
//! the order written, with their `file:line` and their text.

mod common;
mod http_client;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde_json::Value as Json;
use tonic::Code;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const LIST_RULES: &str = "protodrop.admin.v1.Admin/ListRules";
const RULES_ROUTE: &str = "/protodrop/admin/v1/rules";

/// `t.toml`: a default rule written before a conditional one (tried after it), with a comment
/// inside one rule and around both.
const T_RULES: &str = r#"# answers for t.Svc
[[rule]]
method = "t.Svc/Unary"
# the default
reply = { text = "any" }

# the special case
[[rule]]
method = "t.Svc/Unary"
when.request.name = "x"
reply = { text = "x" }
"#;

/// `a/echo.toml`, first in path order (`a/` before `t.toml`).
const ECHO_RULES: &str = "[[rule]]\nmethod = \"t.Svc/Echo\"\nreply = \"{{request}}\"\n";

fn start(args: &[&str]) -> Server {
    let mut options = Options::default();
    for a in args {
        options = options.arg(*a);
    }
    Server::start_with(
        &t_proto(),
        &[("t.toml", T_RULES), ("a/echo.toml", ECHO_RULES)],
        options,
    )
}

/// What `ListRules` should list for [`start`]'s handlers: files in path order, rules by line.
fn expected(server: &Server) -> Json {
    let origin =
        |file: &str, line: usize| format!("{}:{line}", server.handlers_dir().join(file).display());
    let unary_default =
        "[[rule]]\nmethod = \"t.Svc/Unary\"\n# the default\nreply = { text = \"any\" }";
    let unary_x =
        "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"x\"\nreply = { text = \"x\" }";
    // By method, each method's rules in the order they are tried: those with `when` first.
    json!({ "rules": [
        { "method": "t.Svc/Echo", "origin": origin("a/echo.toml", 1), "text": ECHO_RULES.trim_end() },
        { "method": "t.Svc/Unary", "origin": origin("t.toml", 8), "text": unary_x },
        { "method": "t.Svc/Unary", "origin": origin("t.toml", line_of(T_RULES, "[[rule]]")), "text": unary_default },
    ]})
}

async fn grpc_list_rules(addr: SocketAddr, request: Json) -> Outcome {
    let client = Client::connect(addr, admin_pool()).await;
    client.unary(LIST_RULES, request).await
}

async fn grpc_web_list_rules(addr: SocketAddr) -> Json {
    let pool = admin_pool();
    let request = DynamicMessage::new(
        pool.get_message_by_name("protodrop.admin.v1.ListRulesRequest")
            .unwrap(),
    );
    let body = http_client::envelope(0, &request.encode_to_vec());
    let reply = http_client::send(
        addr,
        "POST",
        &format!("/{LIST_RULES}"),
        &[("content-type", "application/grpc-web+proto")],
        body,
    )
    .await;
    reply.expect(200);
    let frames = http_client::envelopes(&reply.body);
    assert_eq!(
        frames.len(),
        2,
        "a message and the trailer frame: {frames:?}"
    );
    let trailers = String::from_utf8_lossy(&frames[1].1).to_string();
    assert_eq!(frames[1].0, 0x80);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let desc = pool
        .get_message_by_name("protodrop.admin.v1.ListRulesResponse")
        .unwrap();
    to_json(&DynamicMessage::decode(desc, frames[0].1.as_slice()).unwrap())
}

/// The services reflection lists at `addr`.
async fn listed(addr: SocketAddr) -> Vec<String> {
    match reflect(addr, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

async fn reflect(addr: SocketAddr, question: MessageRequest) -> MessageResponse {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(question),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = tokio::time::timeout(CALL_TIMEOUT, replies.message());
    reply
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

/// The `admin listening on ADDR` line `--admin-listen` prints after the main listen line.
async fn admin_addr(server: &Server) -> SocketAddr {
    eventually(Duration::from_secs(10), || async {
        server
            .stdout_rest()
            .lines()
            .find_map(|l| l.strip_prefix("admin listening on "))
            .map(|a| a.parse::<SocketAddr>().unwrap())
            .ok_or_else(|| format!("stdout: {:?}", server.stdout_rest()))
    })
    .await
}

#[tokio::test]
async fn list_rules_answers_alike_over_grpc_grpc_web_connect_and_http_json() {
    let server = start(&[]);
    let want = expected(&server);
    let grpc = grpc_list_rules(server.addr, json!({})).await;
    assert_eq!(grpc.single(), &want, "gRPC");
    assert_eq!(grpc_web_list_rules(server.addr).await, want, "gRPC-Web");
    let connect = http_client::post_json(server.addr, &format!("/{LIST_RULES}"), "{}").await;
    assert_eq!(connect.expect(200).json(), want, "Connect JSON");
    let http = http_client::get(server.addr, RULES_ROUTE).await;
    assert_eq!(http.expect(200).json(), want, "HTTP/JSON");

    // Only one method's rules: a query parameter over HTTP/JSON, a field over gRPC.
    let only_echo = json!({ "rules": [want["rules"][0].clone()] });
    let http = http_client::get(server.addr, &format!("{RULES_ROUTE}?method=t.Svc/Echo")).await;
    assert_eq!(http.expect(200).json(), only_echo);
    let grpc = grpc_list_rules(server.addr, json!({ "method": "/t.Svc/Echo" })).await;
    assert_eq!(grpc.single(), &only_echo);
}

#[tokio::test]
async fn list_rules_follows_a_handler_reload() {
    let server = start(&[]);
    let added = "[[rule]]\nmethod = \"t.Svc/Ping\"";
    server.write_handler("z.toml", &format!("{added}\n"));
    let origin = format!("{}:1", server.handlers_dir().join("z.toml").display());
    eventually(Duration::from_secs(10), || async {
        let reply = http_client::get(server.addr, RULES_ROUTE).await.json();
        let listed = reply["rules"].as_array().into_iter().flatten();
        match listed
            .filter(|r| r["origin"] == origin.as_str() && r["text"] == added)
            .count()
        {
            1 => Ok(()),
            _ => Err(reply.to_string()),
        }
    })
    .await;
}

#[tokio::test]
async fn reflection_lists_the_admin_api_and_describes_it() {
    let server = start(&[]);
    let services = listed(server.addr).await;
    assert!(
        services.contains(&"protodrop.admin.v1.Admin".to_string()),
        "{services:?}"
    );
    assert!(services.contains(&"t.Svc".to_string()), "{services:?}");
    // What `grpcurl describe` asks: the file declaring the symbol, with its imports.
    let question = MessageRequest::FileContainingSymbol("protodrop.admin.v1.Admin".into());
    let MessageResponse::FileDescriptorResponse(files) = reflect(server.addr, question).await
    else {
        panic!("no file for the admin service")
    };
    let names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| {
            prost_types::FileDescriptorProto::decode(b.as_slice())
                .unwrap()
                .name()
                .to_string()
        })
        .collect();
    assert_eq!(names[0], "protodrop/admin/v1/admin.proto", "{names:?}");
    assert!(
        names.contains(&"google/api/annotations.proto".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn admin_listen_moves_the_admin_api_to_its_own_port() {
    let server = start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&server).await;
    assert_ne!(admin, server.addr);

    // The main port does not know it, in any protocol.
    let grpc = grpc_list_rules(server.addr, json!({})).await;
    assert!(
        grpc.err(Code::Unimplemented)
            .contains("unknown service 'protodrop.admin.v1.Admin'"),
        "{}",
        grpc.message()
    );
    http_client::get(server.addr, RULES_ROUTE).await.expect(404);
    http_client::post_json(server.addr, &format!("/{LIST_RULES}"), "{}")
        .await
        .expect(404);
    let main = listed(server.addr).await;
    assert!(
        !main.iter().any(|s| s.starts_with("protodrop.")),
        "{main:?}"
    );
    assert!(main.contains(&"t.Svc".to_string()), "{main:?}");

    // The admin port answers about the main port's rules, and serves nothing else of the user's.
    let want = expected(&server);
    assert_eq!(grpc_list_rules(admin, json!({})).await.single(), &want);
    assert_eq!(
        http_client::get(admin, RULES_ROUTE)
            .await
            .expect(200)
            .json(),
        want
    );
    let on_admin = listed(admin).await;
    assert!(
        on_admin.contains(&"protodrop.admin.v1.Admin".to_string()),
        "{on_admin:?}"
    );
    assert!(!on_admin.contains(&"t.Svc".to_string()), "{on_admin:?}");
    let client = Client::connect(admin, compile_protos(&server.protos_dir(), &[]).unwrap()).await;
    client
        .unary("t.Svc/Unary", json!({}))
        .await
        .err(Code::Unimplemented);
}

#[tokio::test]
async fn no_admin_turns_it_off() {
    let server = start(&["--no-admin"]);
    let grpc = grpc_list_rules(server.addr, json!({})).await;
    grpc.err(Code::Unimplemented);
    http_client::get(server.addr, RULES_ROUTE).await.expect(404);
    let services = listed(server.addr).await;
    assert!(
        !services.iter().any(|s| s.starts_with("protodrop.")),
        "{services:?}"
    );
    // The user's services are as ever.
    let client = server.client().await;
    let out = client.unary("t.Svc/Unary", json!({})).await;
    assert_eq!(out.single(), &json!({ "text": "any" }));
}

#[tokio::test]
async fn a_users_copy_of_the_admin_service_gives_way_to_the_built_in_with_a_warning() {
    let copy = "syntax = \"proto3\";\npackage protodrop.admin.v1;\n\
                service Admin { rpc ListRules(Mine) returns (Mine); }\nmessage Mine { string x = 1; }\n";
    let server = Server::start(
        &[("t.proto", T_PROTO), ("mine/admin.proto", copy)],
        &[("t.toml", T_RULES)],
    );
    let logs = server
        .wait_for_log(0, "built-in admin API", Duration::from_secs(5))
        .await;
    assert!(logs.contains("mine/admin.proto"), "{logs}");
    let reply = http_client::post_json(server.addr, &format!("/{LIST_RULES}"), "{}").await;
    let rules = reply.expect(200).json();
    assert_eq!(rules["rules"][0]["method"], "t.Svc/Unary", "{rules}");
}
