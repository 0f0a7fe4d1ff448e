//! HTTP/JSON transcoding from `google.api.http` annotations: routes (variables, `**`, verbs,
//! `additional_bindings`, the most specific route winning), the request from path, query and body,
//! `response_body`, errors as google.rpc.Status JSON with the mapped HTTP status, server streams as
//! NDJSON, annotation problems skipping their route with a warning, and routes following hot reloads.

mod common;
mod http_client;

use std::time::Duration;

use common::*;
use http_client::{get, post_json, send, Reply};

const LIBRARY: &str = r#"syntax = "proto3";
package lib;

import "google/api/annotations.proto";
import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";

enum Kind {
  KIND_UNSPECIFIED = 0;
  NOVEL = 1;
  ESSAY = 2;
}

message Filter {
  string author = 1;
  int32 min_pages = 2;
}

message Query {
  string name = 1;
  int64 revision = 2;
  Filter filter = 3;
  repeated string tags = 4;
  Kind kind = 5;
  bool deep = 6;
  google.protobuf.Timestamp since = 7;
  repeated int32 years = 8;
}

message Book {
  string name = 1;
  string title = 2;
  int64 pages = 3;
  Kind kind = 4;
  google.protobuf.Timestamp published = 5;
  google.protobuf.Duration read_time = 6;
  google.protobuf.Struct extra = 7;
  google.protobuf.Any attachment = 8;
}

message Update {
  string name = 1;
  Book book = 2;
  string reason = 3;
}

message Name { string name = 1; }
message Path { string path = 1; }
message Shelf { string shelf = 1; int32 count = 2; }
message Wrapped { Book book = 1; string note = 2; repeated Book more = 3; }

service Library {
  rpc Lookup(Query) returns (Query) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/books/{name}" }
    };
  }
  rpc Special(Name) returns (Book) {
    option (google.api.http) = { get: "/v1/books/special" };
  }
  rpc Create(Book) returns (Book) {
    option (google.api.http) = { post: "/v1/books" body: "*" };
  }
  rpc Change(Update) returns (Update) {
    option (google.api.http) = {
      patch: "/v1/books/{name}"
      body: "book"
      additional_bindings { put: "/v1/books/{name}" body: "book" }
    };
  }
  rpc Remove(Name) returns (google.protobuf.Empty) {
    option (google.api.http) = { delete: "/v1/books/{name}" };
  }
  rpc Archive(Name) returns (Book) {
    option (google.api.http) = { post: "/v1/books/{name}:archive" };
  }
  rpc File(Path) returns (Path) {
    option (google.api.http) = { get: "/files/{path=**}" };
  }
  rpc Cover(Name) returns (Wrapped) {
    option (google.api.http) = {
      get: "/v1/covers/{name}"
      response_body: "book"
      additional_bindings { get: "/v1/covers/{name}/more" response_body: "more" }
    };
  }
  rpc List(Shelf) returns (stream Book) {
    option (google.api.http) = { get: "/v1/shelves/{shelf}/books" };
  }
  rpc Missing(Name) returns (Book) {
    option (google.api.http) = { get: "/v1/missing/{name}" };
  }
  rpc Unhandled(Name) returns (Book) {
    option (google.api.http) = { get: "/v1/unhandled" };
  }
  rpc Bulk(stream Book) returns (Wrapped) {
    option (google.api.http) = { post: "/v1/books:bulk" body: "*" };
  }
}
"#;

const HANDLERS: &str = r#"
[[rule]]
method = "lib.Library/Lookup"
reply = "{{request}}"

[[rule]]
method = "lib.Library/Special"
when.metadata.x-tenant = "acme"
reply = { title = "special for acme" }

[[rule]]
method = "lib.Library/Special"
reply = { title = "special" }

[[rule]]
method = "lib.Library/Create"
headers = { x-served-by = "protodrop" }
trailers = { x-cost = "3" }
reply = "{{request}}"

[[rule]]
method = "lib.Library/Change"
reply = "{{request}}"

[[rule]]
method = "lib.Library/Remove"

[[rule]]
method = "lib.Library/Archive"
reply = { name = "{{request.name}}", title = "archived" }

[[rule]]
method = "lib.Library/File"
reply = "{{request}}"

[[rule]]
method = "lib.Library/Cover"
reply = { book = { name = "{{request.name}}", pages = 300 }, note = "not shown", more = [ { title = "a" }, { title = "b" } ] }

[[rule]]
method = "lib.Library/List"
when.request.shelf = "broken"
stream.messages = [ { title = "first" } ]
error = { code = "DATA_LOSS", message = "shelf collapsed" }

[[rule]]
method = "lib.Library/List"
trailers = { x-shelf-size = "3" }
stream.repeat = 3
stream.message = { name = "{{request.shelf}}", pages = "{{index}}" }

[[rule]]
method = "lib.Library/Bulk"
reply = { note = "{{count}} books, first {{first.title}}, last {{request.title}}" }

[[rule]]
method = "lib.Library/Missing"
error = { code = "NOT_FOUND", message = "no book {{request.name}}", details = [
  { "@type" = "google.rpc.ErrorInfo", reason = "NO_BOOK", domain = "lib.example" },
] }
"#;

fn server() -> Server {
    Server::start(&[("lib.proto", LIBRARY)], &[("lib.toml", HANDLERS)])
}

async fn ok_json(r: Reply) -> serde_json::Value {
    r.expect(200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    r.json()
}

#[tokio::test]
async fn the_seed_greeter_answers_its_annotated_route() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = std::fs::read_to_string(root.join("protos/hello_world.proto")).unwrap();
    let handler = std::fs::read_to_string(root.join("handlers/hello_world.toml")).unwrap();
    let s = Server::start(
        &[("hello_world.proto", &proto)],
        &[("hello_world.toml", &handler)],
    );
    let r = post_json(s.addr, "/v1/example/echo", r#"{"name":"you"}"#).await;
    assert_eq!(ok_json(r).await, json!({"message": "Hello, you!"}));
    // No content type at all (curl -d sends a form type): still JSON.
    let r = send(
        s.addr,
        "POST",
        "/v1/example/echo",
        &[],
        r#"{"name":"curl"}"#,
    )
    .await;
    assert_eq!(ok_json(r).await, json!({"message": "Hello, curl!"}));
}

#[tokio::test]
async fn path_variables_with_templates_and_additional_bindings() {
    let s = server();
    let r = get(s.addr, "/v1/shelves/7/books/42").await;
    assert_eq!(ok_json(r).await, json!({"name": "shelves/7/books/42"}));
    let r = get(s.addr, "/v1/books/42").await;
    assert_eq!(ok_json(r).await, json!({"name": "42"}));
    // A percent-encoded single segment is decoded.
    let r = get(s.addr, "/v1/books/a%20b").await;
    assert_eq!(ok_json(r).await, json!({"name": "a b"}));
}

#[tokio::test]
async fn the_most_specific_route_wins() {
    let s = server();
    let r = get(s.addr, "/v1/books/special").await;
    assert_eq!(ok_json(r).await, json!({"title": "special"}));
    let r = send(
        s.addr,
        "GET",
        "/v1/books/special",
        &[("x-tenant", "acme")],
        "",
    )
    .await;
    assert_eq!(ok_json(r).await, json!({"title": "special for acme"}));
    // A verb: POST /v1/books/{name}:archive, not POST /v1/books.
    let r = send(s.addr, "POST", "/v1/books/b1:archive", &[], "").await;
    assert_eq!(ok_json(r).await, json!({"name": "b1", "title": "archived"}));
}

#[tokio::test]
async fn double_star_takes_the_rest_of_the_path() {
    let s = server();
    let r = get(s.addr, "/files/a/b/c.txt").await;
    assert_eq!(ok_json(r).await, json!({"path": "a/b/c.txt"}));
    // In a multi-segment variable %2F stays encoded (http.proto's rule); the rest is decoded.
    let r = get(s.addr, "/files/dir%2Fname/x%20y").await;
    assert_eq!(ok_json(r).await, json!({"path": "dir%2Fname/x y"}));
    let r = get(s.addr, "/files").await;
    assert_eq!(ok_json(r).await, json!({}));
}

#[tokio::test]
async fn query_parameters_nested_repeated_enum_and_well_known() {
    let s = server();
    let r = get(
        s.addr,
        "/v1/books/q?revision=12&filter.author=Le%20Guin&filter.minPages=100\
         &tags=a&tags=b&kind=ESSAY&deep=true&since=2024-01-02T03:04:05Z&years=1969&years=1974",
    )
    .await;
    assert_eq!(
        ok_json(r).await,
        json!({
            "name": "q",
            "revision": "12",
            "filter": {"author": "Le Guin", "minPages": 100},
            "tags": ["a", "b"],
            "kind": "ESSAY",
            "deep": true,
            "since": "2024-01-02T03:04:05Z",
            "years": [1969, 1974],
        })
    );
    // Enums by number too.
    let r = get(s.addr, "/v1/books/q?kind=1").await;
    assert_eq!(ok_json(r).await, json!({"name": "q", "kind": "NOVEL"}));
}

#[tokio::test]
async fn bad_query_parameters_are_invalid_argument_naming_them() {
    let s = server();
    for (query, needle) in [
        ("colour=red", "no field 'colour'"),
        ("filter.nope=1", "no field 'nope'"),
        ("revision=ten", "query parameter 'revision'"),
        ("kind=POEM", "POEM"),
        ("deep=maybe", "'maybe' is not true or false"),
        ("revision=1&revision=2", "more than once"),
        ("filter=x", "is a message"),
        ("name=other", "taken from the path"),
    ] {
        let r = get(s.addr, &format!("/v1/books/q?{query}")).await;
        r.expect(400);
        let body = r.json();
        assert_eq!(body["code"], 3, "{query}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
}

#[tokio::test]
async fn body_star_with_well_known_types_and_any() {
    let s = server();
    let book = json!({
        "name": "b",
        "title": "The Dispossessed",
        "pages": "387",
        "kind": "NOVEL",
        "published": "1974-05-01T00:00:00Z",
        "readTime": "3600s",
        "extra": {"signed": true, "copies": [1.0, 2.5]},
        "attachment": {"@type": "type.googleapis.com/lib.Filter", "author": "ULG", "minPages": 1},
    });
    let r = post_json(s.addr, "/v1/books", &book.to_string()).await;
    r.expect(200);
    assert_eq!(r.header("x-served-by").as_deref(), Some("protodrop"));
    assert_eq!(r.header("x-cost").as_deref(), Some("3"));
    assert_eq!(r.json(), book);
}

#[tokio::test]
async fn unknown_fields_in_the_body_are_invalid_argument_naming_them() {
    let s = server();
    let r = post_json(s.addr, "/v1/books", r#"{"title":"x","auther":"y"}"#).await;
    r.expect(400);
    let body = r.json();
    assert_eq!(body["code"], 3);
    assert!(
        body["message"].as_str().unwrap().contains("'auther'"),
        "{body}"
    );
    let r = post_json(s.addr, "/v1/books", r#"{"title":"#).await;
    r.expect(400);
}

#[tokio::test]
async fn body_field_with_patch_and_put() {
    let s = server();
    for method in ["PATCH", "PUT"] {
        let r = send(
            s.addr,
            method,
            "/v1/books/b7?reason=typo",
            &[("content-type", "application/json")],
            r#"{"title":"New title","pages":12}"#,
        )
        .await;
        assert_eq!(
            ok_json(r).await,
            json!({"name": "b7", "book": {"title": "New title", "pages": "12"}, "reason": "typo"}),
            "{method}"
        );
    }
    let r = send(s.addr, "PATCH", "/v1/books/b7?book.title=x", &[], "{}").await;
    r.expect(400);
    assert!(
        r.text().contains("taken from the request body"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn delete_answers_empty() {
    let s = server();
    let r = send(s.addr, "DELETE", "/v1/books/b7", &[], "").await;
    assert_eq!(ok_json(r).await, json!({}));
}

#[tokio::test]
async fn response_body_picks_a_field() {
    let s = server();
    let r = get(s.addr, "/v1/covers/c1").await;
    assert_eq!(ok_json(r).await, json!({"name": "c1", "pages": "300"}));
    let r = get(s.addr, "/v1/covers/c1/more").await;
    assert_eq!(ok_json(r).await, json!([{"title": "a"}, {"title": "b"}]));
}

#[tokio::test]
async fn errors_are_google_rpc_status_with_the_mapped_http_status() {
    let s = server();
    let r = get(s.addr, "/v1/missing/m1").await;
    r.expect(404);
    assert_eq!(
        r.json(),
        json!({
            "code": 5,
            "message": "no book m1",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "NO_BOOK", "domain": "lib.example"}],
        })
    );
    let r = get(s.addr, "/v1/unhandled").await;
    r.expect(501);
    assert_eq!(r.json()["code"], 12);
    assert!(r.text().contains("no handler for lib.Library/Unhandled"));
}

#[tokio::test]
async fn unmatched_paths_and_methods() {
    let s = server();
    let r = get(s.addr, "/v2/nothing/here").await;
    r.expect(404);
    assert_eq!(r.json()["code"], 5);
    assert!(r.text().contains("GET /v2/nothing/here"), "{}", r.text());
    let r = send(s.addr, "POST", "/v1/books/b1", &[], "{}").await;
    r.expect(405);
    assert_eq!(
        r.header("allow").as_deref(),
        Some("DELETE, GET, PATCH, PUT")
    );
    assert_eq!(r.json()["code"], 12);
}

#[tokio::test]
async fn server_streams_are_newline_delimited_json() {
    let s = server();
    let r = get(s.addr, "/v1/shelves/s1/books").await;
    r.expect(200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(
        r.lines(),
        vec![
            json!({"name": "s1"}),
            json!({"name": "s1", "pages": "1"}),
            json!({"name": "s1", "pages": "2"}),
        ]
    );
    // An error after the first message is the last line.
    let r = get(s.addr, "/v1/shelves/broken/books").await;
    r.expect(200);
    assert_eq!(
        r.lines(),
        vec![
            json!({"title": "first"}),
            json!({"error": {"code": 15, "message": "shelf collapsed", "details": []}}),
        ]
    );
}

#[tokio::test]
async fn a_client_stream_reads_the_body_as_json_values() {
    let s = server();
    let r = post_json(
        s.addr,
        "/v1/books:bulk",
        "{\"title\":\"a\"}\n{\"title\":\"b\"}\n{\"title\":\"c\"}\n",
    )
    .await;
    assert_eq!(
        ok_json(r).await,
        json!({"note": "3 books, first a, last c"})
    );
}

/// Issue 17: a bad annotation made the whole load fail, so one typo in a route took every method
/// down. Now the binding is skipped with a warning at its line; `check` passes; the method answers gRPC.
#[tokio::test]
async fn bad_annotations_skip_their_route_with_a_warning_at_their_line() {
    let bad = LIBRARY
        .replace("get: \"/v1/unhandled\"", "get: \"/v1/{nope}\"")
        .replace("response_body: \"book\"", "response_body: \"cover\"")
        .replace("\"/v1/books/special\"", "\"/v1/books/{name\"");
    let (code, out, err) = check(&[("lib.proto", &bad)], &[("lib.toml", HANDLERS)]);
    let all = format!("{out}{err}");
    assert_eq!(code, 0, "{all}");
    assert!(out.contains("ok: "), "{all}");
    for (needle, says) in [
        ("/v1/{nope}", "lib.Name has no field 'nope'"),
        (
            "response_body: \"cover\"",
            "lib.Wrapped has no field 'cover'",
        ),
        ("/v1/books/{name\"", "bad path template"),
    ] {
        let line = line_of(&bad, needle);
        assert!(
            err.contains(&format!("warning: protos/lib.proto:{line}:")),
            "expected a warning at line {line}:\n{all}"
        );
        assert!(err.contains(says), "{all}");
    }
    assert!(err.contains("3 HTTP route(s) skipped"), "{all}");

    let s = Server::start(&[("lib.proto", &bad)], &[("lib.toml", HANDLERS)]);
    let client = grpc_client(&s).await;
    // The method whose only route is broken still answers gRPC.
    let reply = client.unary("lib.Library/Special", json!({})).await;
    assert_eq!(reply.single(), &json!({"title": "special"}));
    // Cover lost its first binding, not its additional one.
    let r = get(s.addr, "/v1/covers/c1/more").await;
    assert_eq!(ok_json(r).await, json!([{"title": "a"}, {"title": "b"}]));
    let line = line_of(&bad, "/v1/books/{name\"");
    let logs = s.logs();
    assert!(
        logs.contains(&format!("protos/lib.proto:{line}:")),
        "{logs}"
    );
    assert!(logs.contains("3 HTTP route(s) skipped"), "{logs}");
}

/// A gRPC client for the server's protos (with the bundled `google/api` annotations).
async fn grpc_client(s: &Server) -> Client {
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protos/include");
    let pool = compile_protos(&s.protos_dir(), &[include]).unwrap_or_else(|e| panic!("{e}"));
    Client::connect(s.addr, pool).await
}

/// Declares `GET /v1/things/{name}` in package `pkg`; `import` adds an import line.
fn things(pkg: &str, import: &str) -> String {
    format!(
        r#"syntax = "proto3";
package {pkg};
import "google/api/annotations.proto";
{import}
message Name {{ string name = 1; }}
service Things {{
  rpc Get(Name) returns (Name) {{
    option (google.api.http) = {{ get: "/v1/things/{{name}}" }};
  }}
}}
"#
    )
}

const THINGS_HANDLERS: &str = r#"
[[rule]]
method = "alpha.Things/Get"
reply = { name = "alpha {{request.name}}" }

[[rule]]
method = "zeta.Things/Get"
reply = { name = "zeta {{request.name}}" }
"#;

/// Issue 17: googleapis has 453 routes declared by two services of different packages, and each was
/// a load problem ("already bound"): the server refused to start. Now the first file in path order
/// serves the route (`a.proto`, though it imports `z.proto`, which the pool lists first), the other
/// binding is skipped with a warning naming both places, and both methods answer gRPC.
#[tokio::test]
async fn a_route_declared_twice_is_served_by_the_first_file_in_path_order() {
    let alpha = things("alpha", "import \"z.proto\";");
    let zeta = things("zeta", "");
    let protos = [("a.proto", alpha.as_str()), ("z.proto", zeta.as_str())];
    let line = line_of(&alpha, "/v1/things/");

    let (code, out, err) = check(&protos, &[("things.toml", THINGS_HANDLERS)]);
    let all = format!("{out}{err}");
    assert_eq!(code, 0, "{all}");
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning:\n{all}"));
    assert!(
        warning.contains(&format!("protos/z.proto:{line}:"))
            && warning.contains(&format!("protos/a.proto:{line}:"))
            && warning.contains("zeta.Things.Get")
            && warning.contains("alpha.Things.Get"),
        "{all}"
    );
    assert!(err.contains("1 HTTP route(s) skipped"), "{all}");

    let s = Server::start(&protos, &[("things.toml", THINGS_HANDLERS)]);
    let r = get(s.addr, "/v1/things/x").await;
    assert_eq!(ok_json(r).await, json!({"name": "alpha x"}));
    let client = grpc_client(&s).await;
    for pkg in ["alpha", "zeta"] {
        let reply = client
            .unary(&format!("{pkg}.Things/Get"), json!({"name": "y"}))
            .await;
        assert_eq!(reply.single(), &json!({"name": format!("{pkg} y")}));
    }
    let logs = s.logs();
    let warned = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("already served"))
        .unwrap_or_else(|| panic!("no warning in the log:\n{logs}"));
    assert!(
        warned.contains(&format!("protos/z.proto:{line}:"))
            && warned.contains(&format!("protos/a.proto:{line}:")),
        "{warned}"
    );
}

/// A reload that brings a second declaration of a route warns naming both places, keeps the first
/// one serving it, and the newly loaded method answers gRPC.
#[tokio::test]
async fn a_reload_that_declares_a_route_twice_warns_and_keeps_serving() {
    let alpha = things("alpha", "");
    let alpha_handler =
        "[[rule]]\nmethod = \"alpha.Things/Get\"\nreply = { name = \"alpha {{request.name}}\" }\n";
    let s = Server::start(&[("a.proto", &alpha)], &[("a.toml", alpha_handler)]);
    // The server starts watching just after it prints its address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = s.logs().len();
    // Handlers first (a reload between fails and keeps the old state), the proto last.
    s.write_handler("things.toml", THINGS_HANDLERS);
    s.remove("handlers/a.toml");
    s.write_proto("z.proto", &things("zeta", ""));
    let line = line_of(&alpha, "/v1/things/");
    let logs = s
        .wait_for_log(since, "1 HTTP route(s) skipped", Duration::from_secs(10))
        .await;
    assert!(
        logs.contains(&format!("protos/z.proto:{line}:"))
            && logs.contains(&format!("protos/a.proto:{line}:")),
        "{logs}"
    );
    let r = get(s.addr, "/v1/things/x").await;
    assert_eq!(ok_json(r).await, json!({"name": "alpha x"}));
    let client = grpc_client(&s).await;
    let reply = eventually(Duration::from_secs(10), || async {
        let reply = client.unary("zeta.Things/Get", json!({"name": "y"})).await;
        if reply.code() == tonic::Code::Ok {
            Ok(reply.single().clone())
        } else {
            Err(format!("{:?} {}", reply.code(), reply.message()))
        }
    })
    .await;
    assert_eq!(reply, json!({"name": "zeta y"}));
}

/// A reload compiles again only the edited file and makes only its routes again (issue 17: the
/// other files' routes are taken from the load before): the edited route serves, the routes of the
/// files left alone still serve, and a route the edited file gave up goes to the other file that
/// declares it, as a full build decides.
#[tokio::test]
async fn an_edited_route_is_served_and_the_other_files_routes_stay() {
    let s = Server::start(
        &[
            ("a.proto", &things("alpha", "")),
            ("z.proto", &things("zeta", "")),
        ],
        &[("things.toml", THINGS_HANDLERS)],
    );
    let r = get(s.addr, "/v1/things/x").await;
    assert_eq!(ok_json(r).await, json!({"name": "alpha x"}));
    // The server starts watching just after it prints its address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_proto(
        "a.proto",
        &things("alpha", "").replace("/v1/things/{name}", "/v1/alpha/{name}"),
    );
    let body = eventually(Duration::from_secs(10), || async {
        let r = get(s.addr, "/v1/alpha/x").await;
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(format!("{} {}; log:\n{}", r.status, r.text(), s.logs()))
        }
    })
    .await;
    assert_eq!(body, json!({"name": "alpha x"}));
    let r = get(s.addr, "/v1/things/y").await;
    assert_eq!(ok_json(r).await, json!({"name": "zeta y"}));
}

const DOCUMENTS: &str = r#"syntax = "proto3";
package docs;
import "google/api/annotations.proto";
message ListDocumentsRequest { string parent = 1; string collection_id = 2; int32 page_size = 3; }
message Key { string name = 1; }
service Firestore {
  rpc ListDocuments(ListDocumentsRequest) returns (ListDocumentsRequest) {
    option (google.api.http) = {
      get: "/v1/{parent=projects/*/databases/*/documents/**}/{collection_id}"
    };
  }
  rpc Summary(Key) returns (Key) {
    option (google.api.http) = {
      get: "/v1/{name=projects/*/keyRings/*/cryptoKeys/**}/protectedResourcesSummary"
    };
  }
}
"#;

/// Issue 17: googleapis puts segments after `**` (firestore ListDocuments, kms inventory,
/// discoveryengine); those templates were refused ("'**' must be the last segment"). `**` takes the
/// middle of the path, zero segments or more, the segments after it matching the path's end.
#[tokio::test]
async fn segments_after_double_star_route_firestore_style_paths() {
    let handlers =
        "[[rule]]\nmethod = \"docs.Firestore/ListDocuments\"\nreply = \"{{request}}\"\n\n\
                    [[rule]]\nmethod = \"docs.Firestore/Summary\"\nreply = \"{{request}}\"\n";
    let s = Server::start(&[("docs.proto", DOCUMENTS)], &[("docs.toml", handlers)]);
    assert!(!s.logs().contains("skipped"), "{}", s.logs());
    let r = get(
        s.addr,
        "/v1/projects/p/databases/d/documents/a/b/c/coll?page_size=2",
    )
    .await;
    assert_eq!(
        ok_json(r).await,
        json!({"parent": "projects/p/databases/d/documents/a/b/c", "collectionId": "coll", "pageSize": 2})
    );
    // `**` takes no segment: a collection at the root of the database.
    let r = get(s.addr, "/v1/projects/p/databases/d/documents/coll").await;
    assert_eq!(
        ok_json(r).await,
        json!({"parent": "projects/p/databases/d/documents", "collectionId": "coll"})
    );
    // Too short for the segments around `**`.
    get(s.addr, "/v1/projects/p/databases/d/documents")
        .await
        .expect(404);
    let r = get(
        s.addr,
        "/v1/projects/p/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1/protectedResourcesSummary",
    )
    .await;
    assert_eq!(
        ok_json(r).await,
        json!({"name": "projects/p/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"})
    );
    get(s.addr, "/v1/projects/p/keyRings/r/cryptoKeys/k/summary")
        .await
        .expect(404);
}

#[tokio::test]
async fn routes_follow_hot_reloads() {
    let s = Server::start(&t_proto(), &[]);
    // The server starts watching just after it prints its address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(s.addr, "/v1/shop/items/9").await;
    r.expect(404);
    s.write_proto(
        "shop.proto",
        r#"syntax = "proto3";
package shop;
import "google/api/annotations.proto";
message ItemRequest { string id = 1; }
message Item { string id = 1; int64 price_cents = 2; }
service Catalog {
  rpc GetItem(ItemRequest) returns (Item) {
    option (google.api.http) = { get: "/v1/shop/items/{id}" };
  }
}
"#,
    );
    s.write_handler(
        "shop.toml",
        "[[rule]]\nmethod = \"shop.Catalog/GetItem\"\nreply = { id = \"{{request.id}}\", price_cents = 1999 }\n",
    );
    let body = eventually(Duration::from_secs(10), || async {
        let r = get(s.addr, "/v1/shop/items/9").await;
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(format!("{} {}; log:\n{}", r.status, r.text(), s.logs()))
        }
    })
    .await;
    assert_eq!(body, json!({"id": "9", "priceCents": "1999"}));
}

const EDGES: &str = r#"syntax = "proto3";
package edge;

import "google/api/annotations.proto";

message Name { string name = 1; }
message Path { string path = 1; }
message Count { string note = 1; }

service Edge {
  rpc Run(Name) returns (Name) {
    option (google.api.http) = { post: "/v1:run" body: "*" };
  }
  rpc One(Name) returns (Name) {
    option (google.api.http) = { post: "/v1/one" body: "*" };
  }
  rpc Many(stream Name) returns (Count) {
    option (google.api.http) = { post: "/v1/many" body: "*" };
  }
  rpc Upload(Name) returns (Name) {
    option (google.api.http) = { get: "/v1.files/upload" };
  }
  rpc Anything(Path) returns (Path) {
    option (google.api.http) = { get: "/{path=**}" };
  }
  rpc Echo(Name) returns (Name);
}
"#;

const EDGE_HANDLERS: &str = r#"
[[rule]]
method = "edge.Edge/Run"
reply = { name = "ran {{request.name}}" }

[[rule]]
method = "edge.Edge/One"
reply = "{{request}}"

[[rule]]
method = "edge.Edge/Many"
reply = { note = "{{count}}, last {{request.name}}" }

[[rule]]
method = "edge.Edge/Upload"
reply = "{{request}}"

[[rule]]
method = "edge.Edge/Anything"
reply = "{{request}}"

[[rule]]
method = "edge.Edge/Echo"
reply = { name = "echo {{request.name}}" }
"#;

fn edge_server() -> Server {
    Server::start(&[("edge.proto", EDGES)], &[("edge.toml", EDGE_HANDLERS)])
}

/// Regression: a template whose only segment has a verb was indexed under its literal (`v1`) but
/// looked up under the request's first segment (`v1:run`), so it never matched.
#[tokio::test]
async fn a_verb_on_the_only_segment_matches() {
    let s = edge_server();
    let r = post_json(s.addr, "/v1:run", r#"{"name":"x"}"#).await;
    assert_eq!(ok_json(r).await, json!({"name": "ran x"}));
    // Another verb is still no route of this method (the catch-all GET says 405 for POST).
    let r = post_json(s.addr, "/v1:walk", "{}").await;
    r.expect(405);
}

/// Regression: the body was parsed whole into JSON values (and messages) before a method that takes
/// one message refused the second; now reading stops at the second value.
#[tokio::test]
async fn a_body_of_many_values_is_refused_at_the_second_for_a_unary_method() {
    let s = edge_server();
    let body = "1 ".repeat(1_500_000);
    let r = post_json(s.addr, "/v1/one", &body).await;
    r.expect(400);
    assert!(
        r.text().contains("more than one JSON value"),
        "{}",
        r.text()
    );
    // What follows the second value is not read: it need not be JSON.
    let r = post_json(s.addr, "/v1/one", r#"{"name":"a"} {"name":"b"} ]]]"#).await;
    r.expect(400);
    assert!(
        r.text().contains("more than one JSON value"),
        "{}",
        r.text()
    );
    let r = post_json(s.addr, "/v1/one", r#" {"name":"a"} "#).await;
    assert_eq!(ok_json(r).await, json!({"name": "a"}));
}

/// A client stream reads the body's values one at a time, as messages.
#[tokio::test]
async fn a_client_stream_takes_the_body_values_as_they_are_read() {
    let s = edge_server();
    let body = r#"{"name":"a"}"#.repeat(2000);
    let r = post_json(s.addr, "/v1/many", &body).await;
    assert_eq!(ok_json(r).await, json!({"note": "2000, last a"}));
    let r = post_json(s.addr, "/v1/many", "").await;
    assert_eq!(ok_json(r).await, json!({"note": "0, last "}));
    let r = post_json(s.addr, "/v1/many", r#"{"name":"a"} {"name":"#).await;
    r.expect(400);
    assert!(r.text().contains("not JSON"), "{}", r.text());
}

/// Regression: a Connect GET reached Connect only when no route matched, so `/{path=**}` took it.
#[tokio::test]
async fn a_connect_get_comes_before_a_catch_all_route() {
    let s = edge_server();
    let r = get(
        s.addr,
        "/edge.Edge/Echo?encoding=json&message=%7B%22name%22%3A%22got%22%7D",
    )
    .await;
    assert_eq!(ok_json(r).await, json!({"name": "echo got"}));
    // Without `message=` it is no Connect GET: the catch-all route has it.
    let r = get(s.addr, "/edge.Edge/Echo").await;
    assert_eq!(ok_json(r).await, json!({"path": "edge.Edge/Echo"}));
}

/// Regression: a Connect POST to a path whose routes take another HTTP method was 404, not 405.
#[tokio::test]
async fn a_connect_post_to_a_get_route_is_method_not_allowed() {
    let s = edge_server();
    let r = post_json(s.addr, "/v1.files/upload", "{}").await;
    r.expect(405);
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
    let r = get(s.addr, "/v1.files/upload?name=f").await;
    assert_eq!(ok_json(r).await, json!({"name": "f"}));
}

/// One server, GETs of both protocols: each is answered by its own — a Connect GET (a method's
/// path with `message=`) by Connect, a route's path by HTTP/JSON even with a `message` parameter,
/// each in its own error form when nothing is there (Connect's string code, google.rpc.Status's
/// number).
#[tokio::test]
async fn connect_and_http_json_gets_on_one_server_are_each_answered_by_their_protocol() {
    let s = server();
    let r = get(
        s.addr,
        "/lib.Library/Lookup?encoding=json&message=%7B%22name%22%3A%22n1%22%7D",
    )
    .await;
    assert_eq!(ok_json(r).await, json!({"name": "n1"}));
    let r = get(s.addr, "/v1/books/n2").await;
    assert_eq!(ok_json(r).await, json!({"name": "n2"}));
    // `message` on a route's path is a query parameter of the route, and Query has no such field.
    let r = get(s.addr, "/v1/books/n3?message=x").await;
    r.expect(400);
    assert_eq!(r.json()["code"], 3, "{}", r.text());
    assert!(r.text().contains("message"), "{}", r.text());
    let r = get(s.addr, "/lib.Library/Nope?encoding=json&message=%7B%7D").await;
    r.expect(404);
    assert_eq!(r.json()["code"], "unimplemented", "{}", r.text());
    assert!(r.text().contains("has no method 'Nope'"), "{}", r.text());
    let r = get(s.addr, "/v2/nothing").await;
    r.expect(404);
    assert_eq!(r.json()["code"], 5, "{}", r.text());
}
