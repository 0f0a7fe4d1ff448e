//! Editions and descriptor sets (issue 17, item 5): `edition = "2023"` files compile from source and
//! behave as protoc defines them; `FileDescriptorSet` files (`*.binpb`, `*.pb` in the protos folder, or
//! `--descriptor-set`) join the pool next to the compiled `.proto` files. The wire and JSON forms are
//! compared with protoc's own generated Python code in tests/e2e/test_editions.py.

mod common;

use std::time::{Duration, Instant};

use common::*;
use prost_reflect::DescriptorPool;
use serde_json::json;
use tonic::Code;

/// A `FileDescriptorSet` of `files` (imports included), as `protoc --include_imports -o` writes it.
fn descriptor_set(files: &[(&str, &str)], open: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
    compiler.include_imports(true);
    compiler.open_files(open).unwrap();
    compiler.encode_file_descriptor_set()
}

fn pool_of(set: &[u8]) -> DescriptorPool {
    DescriptorPool::decode(set).unwrap()
}

const DEP: &str = r#"syntax = "proto3";
package dep;
import "google/protobuf/timestamp.proto";
message Msg { string name = 1; google.protobuf.Timestamp at = 2; }
service Svc { rpc Get (Msg) returns (Msg); }
"#;

const GET_RULE: &str = r#"[[rule]]
method = "dep.Svc/Get"
reply = { name = "got {{request.name}}" }
"#;

/// The service names reflection lists.
async fn listed_services(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match replies.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn a_descriptor_set_alone_in_the_protos_folder_is_served_and_listed() {
    let set = descriptor_set(&[("dep.proto", DEP)], &["dep.proto"]);
    let s = Server::start_with(
        &[],
        &[("dep.toml", GET_RULE)],
        Options::default().binary("protos/dep.binpb", set.clone()),
    );
    let client = Client::connect(s.addr, pool_of(&set)).await;
    let out = client.unary("dep.Svc/Get", json!({"name": "a"})).await;
    assert_eq!(out.ok().single(), &json!({"name": "got a"}));
    assert!(
        listed_services(s.addr)
            .await
            .contains(&"dep.Svc".to_string()),
        "reflection lists the set's service"
    );
}

/// A `.proto` of the folder imports a file only a set gives, and a set's file imports a `.proto` of the
/// folder's include root; the set comes from `--descriptor-set`, outside the folder.
#[tokio::test]
async fn protos_and_a_descriptor_set_import_each_other() {
    let set = descriptor_set(&[("dep.proto", DEP)], &["dep.proto"]);
    let uses_dep = r#"syntax = "proto3";
package top;
import "dep.proto";
service Top { rpc Wrap (dep.Msg) returns (dep.Msg); }
"#;
    let s = Server::start_with(
        &[("top.proto", uses_dep)],
        &[(
            "top.toml",
            "[[rule]]\nmethod = \"top.Top/Wrap\"\nreply = { name = \"wrapped {{request.name}}\" }\n",
        )],
        Options::default()
            .binary("sets/dep.pb", set.clone())
            .arg("--descriptor-set")
            .arg("sets/dep.pb"),
    );
    let all = descriptor_set(
        &[("dep.proto", DEP), ("top.proto", uses_dep)],
        &["top.proto"],
    );
    let client = Client::connect(s.addr, pool_of(&all)).await;
    let out = client.unary("top.Top/Wrap", json!({"name": "x"})).await;
    assert_eq!(out.ok().single(), &json!({"name": "wrapped x"}));
    let out = client.unary("dep.Svc/Get", json!({"name": "y"})).await;
    assert_eq!(out.code(), Code::Unimplemented, "served, with no rule");
    let listed = listed_services(s.addr).await;
    assert!(listed.contains(&"top.Top".to_string()), "{listed:?}");
    assert!(listed.contains(&"dep.Svc".to_string()), "{listed:?}");
}

/// `check` in a folder holding these files (binary ones allowed); (exit code, stderr).
fn check_dir(files: &[(&str, Vec<u8>)], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("protos")).unwrap();
    std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let mut all = vec!["check", "--protos", "protos", "--handlers", "handlers"];
    all.extend_from_slice(args);
    let (code, _, err) = protodrop(&all, Some(dir.path()), &[]);
    (code, err)
}

#[test]
fn bad_and_conflicting_descriptor_sets_are_named_and_copies_are_fine() {
    let dep = descriptor_set(&[("dep.proto", DEP)], &["dep.proto"]);
    // Another set carrying the same well-known type (as every `--include_imports` set does).
    let other = descriptor_set(
        &[(
            "other.proto",
            "syntax = \"proto3\";\npackage other;\nimport \"google/protobuf/timestamp.proto\";\n\
             message O { google.protobuf.Timestamp t = 1; }\n",
        )],
        &["other.proto"],
    );
    let (code, err) = check_dir(
        &[
            ("protos/dep.binpb", dep.clone()),
            ("protos/other.pb", other),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");

    let (code, err) = check_dir(
        &[("protos/junk.binpb", b"\xff\xff\xff not a set".to_vec())],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/junk.binpb:"), "{err}");
    assert!(err.contains("not a FileDescriptorSet"), "{err}");

    // A set built from the folder it sits in: the sources win, with a warning.
    let (code, err) = check_dir(
        &[
            ("protos/dep.proto", DEP.as_bytes().to_vec()),
            (
                "protos/all.binpb",
                descriptor_set(&[("dep.proto", DEP)], &["dep.proto"]),
            ),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("also .proto files in protos (dep.proto)"),
        "{err}"
    );

    // Written without its imports (`protoc -o` without --include_imports).
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("dep.proto", DEP),
            (
                "top.proto",
                "syntax = \"proto3\";\nimport \"dep.proto\";\nmessage T { dep.Msg m = 1; }\n",
            ),
        ],
    );
    let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
    compiler.open_files(["top.proto"]).unwrap();
    let (code, err) = check_dir(
        &[("protos/top.binpb", compiler.encode_file_descriptor_set())],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "protos/top.binpb: top.proto (in this descriptor set): import 'dep.proto' not found"
        ),
        "{err}"
    );
    assert!(err.contains("--include_imports"), "{err}");

    // The same name, another file.
    let changed = descriptor_set(
        &[(
            "dep.proto",
            &DEP.replace("string name = 1;", "string name = 1; int32 n = 3;"),
        )],
        &["dep.proto"],
    );
    let (code, err) = check_dir(
        &[("protos/a.binpb", dep), ("sets/b.binpb", changed)],
        &["--descriptor-set", "sets/b.binpb"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sets/b.binpb"), "{err}");
    assert!(
        err.contains("dep.proto is also in protos/a.binpb with different contents"),
        "{err}"
    );
}

/// A set changed in the folder is reloaded: a rule for a method only the new set has loads once the set
/// is picked up (until then the handler reload fails and the old state serves on).
#[tokio::test]
async fn a_changed_descriptor_set_in_the_folder_is_reloaded() {
    let before = descriptor_set(&[("dep.proto", DEP)], &["dep.proto"]);
    let after_source = DEP.replace(
        "rpc Get (Msg) returns (Msg);",
        "rpc Get (Msg) returns (Msg); rpc Put (Msg) returns (Msg);",
    );
    let after = descriptor_set(&[("dep.proto", &after_source)], &["dep.proto"]);
    let s = Server::start_with(
        &[],
        &[("dep.toml", GET_RULE)],
        Options::default().binary("protos/dep.binpb", before),
    );
    let client = Client::connect(s.addr, pool_of(&after)).await;
    assert_eq!(
        client.unary("dep.Svc/Put", json!({})).await.code(),
        Code::Unimplemented,
        "not in the first set"
    );
    std::fs::write(s.protos_dir().join("dep.binpb"), &after).unwrap();
    s.write_handler(
        "put.toml",
        "[[rule]]\nmethod = \"dep.Svc/Put\"\nreply = { name = \"put\" }\n",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = client.unary("dep.Svc/Put", json!({})).await;
        if out.code() == Code::Ok {
            assert_eq!(out.single(), &json!({"name": "put"}));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new set was not served: {}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// An editions proto served (its encoding against proto2 and proto3 twins is a unit test now:
// src/tests/editions.rs, as it drives the crate's loader and encoder).

/// Every editions feature protodrop resolves per field (shared with src/tests/editions.rs).
const EDITIONS: &str = include_str!("fixtures/editions/ed.proto");

/// The editions file is served: a reply with an explicit zero keeps it, the echo reads DELIMITED and
/// packed fields as they were sent.
#[tokio::test]
async fn an_editions_proto_is_served_with_its_features() {
    let s = Server::start(
        &[("ed.proto", EDITIONS)],
        &[(
            "ed.toml",
            r#"[[rule]]
method = "ed.Ed/Echo"
when.request.name = "zero"
reply = { explicit_zero = 0, required = 0 }

[[rule]]
method = "ed.Ed/Echo"
reply = "{{request}}"
"#,
        )],
    );
    let client = s.client().await;
    let out = client.unary("ed.Ed/Echo", json!({"name": "zero"})).await;
    assert_eq!(
        out.ok().single(),
        &json!({"explicitZero": 0, "required": 0})
    );
    let sent =
        json!({"required": 1, "packed": [1, 300], "delimited": {"x": 2}, "many": [{"x": 3}]});
    let out = client.unary("ed.Ed/Echo", sent.clone()).await;
    assert_eq!(out.ok().single(), &sent);
    assert!(listed_services(s.addr).await.contains(&"ed.Ed".to_string()));
}

#[test]
fn editions_mistakes_are_reported_at_their_place() {
    let later = "edition = \"2024\";\npackage x;\nmessage M {}\n";
    let (code, _, err) = check(&[("x.proto", later)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/x.proto:1:11"), "{err}");
    assert!(err.contains("--descriptor-set"), "{err}");

    let label = "edition = \"2023\";\npackage x;\nmessage M {\n  optional int32 a = 1;\n}\n";
    let (code, _, err) = check(&[("x.proto", label)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/x.proto:4:3"), "{err}");
    assert!(err.contains("field_presence"), "{err}");

    let cpp = "edition = \"2023\";\npackage x;\nimport \"google/protobuf/cpp_features.proto\";\n\
               message M { string s = 1 [features.(pb.cpp).string_type = VIEW]; }\n";
    let (code, _, err) = check(&[("x.proto", cpp)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/x.proto:3:1"), "{err}");
    assert!(
        err.contains("load this schema as a descriptor set"),
        "{err}"
    );
}
