//! Server reflection as a client sees it: a real protodrop, asked over gRPC with the reflection
//! protocol's own messages (tonic-reflection's generated types; its generated clients for the
//! v1/v1alpha test), with a client's default 4 MiB receive limit.

mod common;

use std::collections::BTreeSet;

use common::{Server, CALL_TIMEOUT};
use prost::Message;
use prost_types::FileDescriptorProto;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{
    ErrorResponse, ExtensionRequest, ServerReflectionRequest, ServerReflectionResponse,
};

const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// One reflection stream: questions go out one at a time, each answer is awaited.
struct Reflector {
    questions: mpsc::Sender<ServerReflectionRequest>,
    answers: Streaming<ServerReflectionResponse>,
}

impl Reflector {
    /// Opens a stream on `path` (v1 or v1alpha: the same messages on the wire).
    async fn open(server: &Server, path: &'static str) -> Reflector {
        let channel = channel(server).await;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (questions, rx) = mpsc::channel(4);
        let codec =
            tonic_prost::ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
        let response = tokio::time::timeout(
            CALL_TIMEOUT,
            grpc.streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static(path),
                codec,
            ),
        )
        .await
        .expect("opening a reflection stream timed out")
        .expect("a reflection stream");
        Reflector {
            questions,
            answers: response.into_inner(),
        }
    }

    /// The answer to `question`; `Err` when the stream ends with an error status.
    async fn ask(&mut self, question: MessageRequest) -> Result<MessageResponse, Status> {
        let request = ServerReflectionRequest {
            host: "localhost".into(),
            message_request: Some(question.clone()),
        };
        self.questions.send(request.clone()).await.unwrap();
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.answers.message())
            .await
            .expect("a reflection answer timed out")?
            .expect("the stream ended without an answer");
        assert_eq!(answer.original_request, Some(request));
        assert_eq!(answer.valid_host, "localhost");
        Ok(answer.message_response.expect("an answer"))
    }

    /// The files of a file answer, decoded, in the order sent.
    async fn files(&mut self, question: MessageRequest) -> Vec<FileDescriptorProto> {
        match self.ask(question.clone()).await.unwrap() {
            MessageResponse::FileDescriptorResponse(r) => r
                .file_descriptor_proto
                .iter()
                .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).unwrap())
                .collect(),
            other => panic!("{question:?}: expected files, got {other:?}"),
        }
    }

    /// The names of the files of a file answer, in the order sent.
    async fn file_names(&mut self, question: MessageRequest) -> Vec<String> {
        self.files(question)
            .await
            .into_iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    /// The error response to `question` (the stream goes on).
    async fn error(&mut self, question: MessageRequest) -> ErrorResponse {
        match self.ask(question.clone()).await.unwrap() {
            MessageResponse::ErrorResponse(e) => e,
            other => panic!("{question:?}: expected an error response, got {other:?}"),
        }
    }

    async fn services(&mut self) -> Vec<String> {
        match self
            .ask(MessageRequest::ListServices(String::new()))
            .await
            .unwrap()
        {
            MessageResponse::ListServicesResponse(r) => {
                r.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("expected a service list, got {other:?}"),
        }
    }

    async fn extension_numbers(&mut self, message: &str) -> Vec<i32> {
        match self
            .ask(MessageRequest::AllExtensionNumbersOfType(message.into()))
            .await
            .unwrap()
        {
            MessageResponse::AllExtensionNumbersResponse(r) => {
                assert_eq!(r.base_type_name, message);
                r.extension_number
            }
            other => panic!("expected extension numbers, got {other:?}"),
        }
    }
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn symbol(name: &str) -> MessageRequest {
    MessageRequest::FileContainingSymbol(name.into())
}

fn file(name: &str) -> MessageRequest {
    MessageRequest::FileByFilename(name.into())
}

fn extension(message: &str, number: i32) -> MessageRequest {
    MessageRequest::FileContainingExtension(ExtensionRequest {
        containing_type: message.into(),
        extension_number: number,
    })
}

/// A proto2 message extended in two other files, one of them in a nested scope.
const BASE: &str = r#"syntax = "proto2";
package p;
message Base {
  optional string id = 1;
  extensions 100 to 199;
}
message Plain { optional string id = 1; }
"#;
const EXT_A: &str = r#"syntax = "proto2";
package p;
import "base.proto";
extend Base { optional int32 a = 150; }
"#;
const EXT_B: &str = r#"syntax = "proto2";
package q;
import "base.proto";
extend p.Base { optional string b = 100; }
message Holder {
  extend p.Base { optional Holder holder = 120; }
  optional string note = 1;
}
"#;

fn extension_tree() -> Server {
    Server::start(
        &[
            ("base.proto", BASE),
            ("ext_a.proto", EXT_A),
            ("ext_b.proto", EXT_B),
        ],
        &[],
    )
}

#[tokio::test]
async fn extension_numbers_come_from_every_file_that_extends_the_message() {
    let server = extension_tree();
    for path in [V1, V1ALPHA] {
        let mut r = Reflector::open(&server, path).await;
        assert_eq!(r.extension_numbers("p.Base").await, vec![100, 120, 150]);
        // A known message without extensions: an empty list, as grpc-go answers.
        assert_eq!(r.extension_numbers("p.Plain").await, Vec::<i32>::new());
        let e = r
            .error(MessageRequest::AllExtensionNumbersOfType("p.Nope".into()))
            .await;
        assert_eq!(e.error_code, Code::NotFound as i32);
        assert!(e.error_message.contains("p.Nope"), "{e:?}");
    }
}

#[tokio::test]
async fn file_containing_extension_is_the_declaring_file_with_its_imports() {
    let server = extension_tree();
    let mut r = Reflector::open(&server, V1).await;
    assert_eq!(
        r.file_names(extension("p.Base", 150)).await,
        ["ext_a.proto", "base.proto"]
    );
    // base.proto went with the first answer.
    assert_eq!(
        r.file_names(extension("p.Base", 120)).await,
        ["ext_b.proto"]
    );
    let e = r.error(extension("p.Base", 199)).await;
    assert_eq!(e.error_code, Code::NotFound as i32);
    assert!(
        e.error_message.contains("p.Base") && e.error_message.contains("199"),
        "{e:?}"
    );
    let e = r.error(extension("p.Nope", 100)).await;
    assert_eq!(e.error_code, Code::NotFound as i32);
    // The stream goes on after an error response.
    assert_eq!(
        r.file_names(extension("p.Base", 100)).await,
        ["ext_b.proto"]
    );

    // What the client builds from the answers knows the extensions (what grpcurl needs to send them).
    let mut r = Reflector::open(&server, V1ALPHA).await;
    let mut files = r.files(extension("p.Base", 150)).await;
    files.extend(r.files(extension("p.Base", 120)).await);
    files.reverse(); // imports first
    let pool =
        prost_reflect::DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet {
            file: files,
        })
        .unwrap();
    let base = pool.get_message_by_name("p.Base").unwrap();
    let numbers: BTreeSet<u32> = base.extensions().map(|e| e.number()).collect();
    assert_eq!(numbers, BTreeSet::from([100, 120, 150]));
}

const NAMES: &str = r#"syntax = "proto3";
package p.names;
import "dep.proto";
enum Top { TOP_UNSPECIFIED = 0; TOP_ONE = 1; }
message Outer {
  message Inner { string label = 1; }
  enum Kind { KIND_UNSPECIFIED = 0; KIND_A = 1; }
  string name = 1;
  oneof choice { int32 n = 2; string s = 3; }
  Inner inner = 4;
  p.dep.Dep dep = 5;
}
service Svc {
  rpc Call(Outer) returns (Outer.Inner);
}
"#;
const DEP: &str = r#"syntax = "proto3";
package p.dep;
message Dep { string id = 1; }
"#;

#[tokio::test]
async fn symbols_resolve_as_grpc_go_resolves_them() {
    let server = Server::start(&[("names.proto", NAMES), ("dep.proto", DEP)], &[]);
    let mut r = Reflector::open(&server, V1).await;
    // The first answer brings the import; later ones the file alone.
    assert_eq!(
        r.file_names(symbol("p.names.Outer.Inner")).await,
        ["names.proto", "dep.proto"]
    );
    for found in [
        "p.names.Outer",
        "p.names.Outer.Kind",
        "p.names.Top",
        // Enum values are scoped beside their enum, as protoc scopes them…
        "p.names.TOP_ONE",
        "p.names.Outer.KIND_A",
        // …and the enum's own scope is accepted too.
        "p.names.Top.TOP_ONE",
        "p.names.Svc",
        "p.names.Svc.Call",
        "p.names.Outer.name",
        "p.names.Outer.choice",
        "p.names.Outer.Inner.label",
    ] {
        assert_eq!(
            r.file_names(symbol(found)).await,
            ["names.proto"],
            "{found}"
        );
    }
    assert_eq!(r.file_names(symbol("p.dep.Dep.id")).await, ["dep.proto"]);
    for missing in [
        "p.names.Nope",
        "p.names.Outer.nope",
        "p.names.Svc.Nope",
        "p.names.NOPE",
        // A package is not a symbol, in grpc-go either.
        "p.names",
        "",
    ] {
        let e = r.error(symbol(missing)).await;
        assert_eq!(e.error_code, Code::NotFound as i32, "{missing}: {e:?}");
        assert!(e.error_message.contains(missing), "{e:?}");
    }
    let e = r.error(file("nope.proto")).await;
    assert_eq!(e.error_code, Code::NotFound as i32);
    assert!(e.error_message.contains("nope.proto"), "{e:?}");

    // A request with no question ends the stream: INVALID_ARGUMENT, as grpc-go.
    r.questions
        .send(ServerReflectionRequest::default())
        .await
        .unwrap();
    let status = tokio::time::timeout(CALL_TIMEOUT, r.answers.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn imports_are_sent_once_per_stream_and_the_file_asked_for_always() {
    let a = "syntax = \"proto3\"; package a; import \"b.proto\"; message A { b.B b = 1; }";
    let b = "syntax = \"proto3\"; package b; import \"c.proto\"; message B { c.C c = 1; }";
    let c = "syntax = \"proto3\"; package c; message C { string x = 1; }";
    let d = "syntax = \"proto3\"; package d; import \"c.proto\"; message D { c.C c = 1; }";
    let server = Server::start(
        &[
            ("a.proto", a),
            ("b.proto", b),
            ("c.proto", c),
            ("d.proto", d),
        ],
        &[],
    );
    let mut r = Reflector::open(&server, V1).await;
    assert_eq!(
        r.file_names(symbol("a.A")).await,
        ["a.proto", "b.proto", "c.proto"]
    );
    assert_eq!(r.file_names(file("d.proto")).await, ["d.proto"]);
    assert_eq!(r.file_names(file("a.proto")).await, ["a.proto"]);
    assert_eq!(r.file_names(symbol("c.C.x")).await, ["c.proto"]);
    // Another stream starts afresh.
    let mut r = Reflector::open(&server, V1ALPHA).await;
    assert_eq!(r.file_names(file("d.proto")).await, ["d.proto", "c.proto"]);
}

/// A proto3 file of `fields` fields, each with a comment of `comment` bytes: its source info is
/// about `fields * comment` bytes, the rest small.
fn commented(package: &str, import: Option<&str>, fields: usize, comment: usize) -> String {
    let line = format!("// {}\n", "c".repeat(comment.min(1000)));
    let lines = line.repeat(comment / line.len() + 1);
    let mut text = format!("syntax = \"proto3\";\npackage {package};\n");
    if let Some(import) = import {
        text += &format!("import \"{import}\";\n");
    }
    text += "message Big {\n";
    for i in 1..=fields {
        text += &format!("{lines}  string f{i} = {i};\n");
    }
    text += "}\nservice Svc { rpc Get(Big) returns (Big); }\n";
    text
}

#[tokio::test]
async fn an_answer_over_4_mib_comes_without_source_info_and_the_client_can_use_it() {
    // 5 MiB of comments: the file alone is over the limit with its source info, well under without.
    let big = commented("big", Some("other.proto"), 80, 64 * 1024);
    let other = commented("other", None, 2, 100);
    let small =
        "syntax = \"proto3\";\npackage small;\n// A comment kept.\nmessage S { string id = 1; }\n";
    let server = Server::start(
        &[
            ("big.proto", &big),
            ("other.proto", &other),
            ("small.proto", small),
        ],
        &[],
    );
    for path in [V1, V1ALPHA] {
        let mut r = Reflector::open(&server, path).await;
        // Within the limit, source info stays (describe shows comments from it).
        let files = r.files(file("small.proto")).await;
        let info = files[0].source_code_info.as_ref().expect("source info");
        assert!(
            info.location
                .iter()
                .any(|l| l.leading_comments().contains("A comment kept.")),
            "{info:?}"
        );

        let files = r.files(symbol("big.Svc")).await;
        let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["big.proto", "other.proto"]);
        assert!(files.iter().all(|f| f.source_code_info.is_none()));
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(
            prost_types::FileDescriptorSet {
                file: files.into_iter().rev().collect(),
            },
        )
        .unwrap();
        let method = pool
            .get_service_by_name("big.Svc")
            .unwrap()
            .methods()
            .next()
            .unwrap();
        assert_eq!(method.input().fields().count(), 80);
    }
}

/// A proto2 file whose descriptor alone is about `size` bytes (a long default value), importing
/// `import`.
fn heavy(package: &str, import: Option<&str>, size: usize) -> String {
    let mut text = format!("syntax = \"proto2\";\npackage {package};\n");
    if let Some(import) = import {
        text += &format!("import \"{import}\";\n");
    }
    text += &format!(
        "message M {{ optional string s = 1 [default = \"{}\"]; }}\n",
        "d".repeat(size)
    );
    text
}

#[tokio::test]
async fn imports_that_cannot_fit_are_left_for_the_client_to_ask_and_a_file_too_large_is_an_error() {
    let mib = 1024 * 1024;
    let server = Server::start(
        &[
            ("a.proto", &heavy("a", Some("b.proto"), 3 * mib)),
            ("b.proto", &heavy("b", None, 3 * mib)),
            ("huge.proto", &heavy("huge", None, 5 * mib)),
        ],
        &[],
    );
    let mut r = Reflector::open(&server, V1).await;
    // a.proto and b.proto do not fit one answer: a.proto comes alone, and b.proto, not counted as
    // sent, when asked for (as a client asks for an import it misses).
    assert_eq!(r.file_names(file("a.proto")).await, ["a.proto"]);
    assert_eq!(r.file_names(file("b.proto")).await, ["b.proto"]);

    let e = r.error(file("huge.proto")).await;
    assert_eq!(e.error_code, Code::ResourceExhausted as i32, "{e:?}");
    assert!(e.error_message.contains("huge.proto"), "{e:?}");
    // The stream goes on.
    assert_eq!(r.file_names(symbol("a.M")).await, ["a.proto"]);
}

#[tokio::test]
async fn v1_and_v1alpha_clients_both_list_every_service_once_with_the_built_in_ones() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = Server::start(&[("names.proto", NAMES), ("dep.proto", DEP)], &[]);
    let expected: Vec<String> = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "p.names.Svc",
        // The admin API, served on the same port by default.
        "protodrop.admin.v1.Admin",
    ]
    .map(String::from)
    .to_vec();

    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let requests = [
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "grpc.health.v1.Health.Check".into(),
                ),
            ),
        },
    ];
    let mut answers = client
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(r)) => {
            let names: Vec<String> = r.service.into_iter().map(|s| s.name).collect();
            assert_eq!(names, expected);
        }
        other => panic!("{other:?}"),
    }
    match answers.message().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(r)) => {
            let file = FileDescriptorProto::decode(r.file_descriptor_proto[0].as_slice()).unwrap();
            assert_eq!(file.name(), "grpc/health/v1/health.proto");
        }
        other => panic!("{other:?}"),
    }

    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let requests = [v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    }];
    let mut answers = client
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(r)) => {
            let names: Vec<String> = r.service.into_iter().map(|s| s.name).collect();
            assert_eq!(names, expected);
        }
        other => panic!("{other:?}"),
    }
}

/// grpc-proto's copy of the health proto (one more method than the built-in one's).
const VENDORED_HEALTH: &str = r#"syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
message HealthListRequest {}
message HealthListResponse { map<string, HealthCheckResponse> statuses = 1; }
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc List(HealthListRequest) returns (HealthListResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"#;

#[tokio::test]
async fn a_tree_that_vendors_the_health_proto_has_it_listed_and_served_once() {
    let uses = "syntax = \"proto3\";\npackage app;\nimport \"grpc/health/v1/health.proto\";\n\
                service App { rpc Get(grpc.health.v1.HealthListRequest) returns (grpc.health.v1.HealthListResponse); }\n";
    let server = Server::start(
        &[
            ("grpc/health/v1/health.proto", VENDORED_HEALTH),
            ("app.proto", uses),
        ],
        &[],
    );
    let mut r = Reflector::open(&server, V1).await;
    let services = r.services().await;
    let unique: BTreeSet<&String> = services.iter().collect();
    assert_eq!(unique.len(), services.len(), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health".to_string()));
    // One file of that name, consistent with the files that import it.
    let files = r.files(symbol("app.App")).await;
    let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
    assert_eq!(names, ["app.proto", "grpc/health/v1/health.proto"]);
    let pool =
        prost_reflect::DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet {
            file: files.into_iter().rev().collect(),
        })
        .unwrap();
    assert!(pool
        .get_message_by_name("grpc.health.v1.HealthListRequest")
        .is_some());
    assert_eq!(
        r.file_names(symbol("grpc.health.v1.Health.Check")).await,
        ["grpc/health/v1/health.proto"]
    );
}
