//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP/JSON routes, as a user reads it —
//! the operations of every binding, path and query parameters, request and reply schemas in proto3
//! JSON, comments as summaries — and a path it lists answering when called; the document following
//! a hot reload; a route of the user's own at `/openapi.json` winning over it.

mod common;
mod http_client;

use std::time::Duration;

use common::*;
use http_client::{get, post_json, send};
use serde_json::{json, Value as Json};

const LIBRARY: &str = r#"syntax = "proto3";
package lib.v1;

import "google/api/annotations.proto";
import "google/protobuf/timestamp.proto";

enum Kind {
  KIND_UNSPECIFIED = 0;
  NOVEL = 1;
}

// A book on a shelf.
message Book {
  // shelves/*/books/*
  string name = 1;
  string title = 2;
  int64 pages = 3;
  Kind kind = 4;
  google.protobuf.Timestamp published = 5;
}

message Filter { string author = 1; Kind kind = 2; }
message GetBookRequest { string name = 1; Filter filter = 2; repeated string tags = 3; }
message CreateBookRequest { string parent = 1; Book book = 2; }
message ListBooksResponse { repeated Book books = 1; }

// Books, shelved.
service Library {
  // Gets a book.
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/books/{name}" }
    };
  }
  // Creates a book on a shelf.
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/{parent=shelves/*}/books" body: "book" };
  }
  rpc ListBooks(CreateBookRequest) returns (ListBooksResponse) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books" response_body: "books" };
  }
  rpc Unannotated(GetBookRequest) returns (Book);
}
"#;

const HANDLERS: &str = r#"
[[rule]]
method = "lib.v1.Library/GetBook"
reply = { name = "{{request.name}}", title = "by {{request.filter.author}}", pages = 300 }

[[rule]]
method = "lib.v1.Library/CreateBook"
reply = "{{request.book}}"
"#;

async fn document(s: &Server) -> Json {
    let r = get(s.addr, "/openapi.json").await;
    r.expect(200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    r.json()
}

#[tokio::test]
async fn an_annotated_tree_is_described_at_openapi_json() {
    // The user's routes alone (the admin API's are described too, see the last test).
    let s = Server::start_with(
        &[("lib.proto", LIBRARY)],
        &[("lib.toml", HANDLERS)],
        Options::default().arg("--no-admin"),
    );
    let doc = document(&s).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["tags"],
        json!([{ "name": "lib.v1.Library", "description": "Books, shelved." }])
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<String> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .iter()
                .map(move |(m, op)| format!("{m} {path} {}", op["operationId"].as_str().unwrap()))
        })
        .collect();
    listed.sort();
    // One operation per binding; the method without an annotation is not listed.
    assert_eq!(
        listed,
        [
            "get /v1/books/{name} Library_GetBook2",
            "get /v1/{name} Library_GetBook",
            "get /v1/{parent}/books Library_ListBooks",
            "post /v1/{parent}/books Library_CreateBook",
        ]
    );

    let get_book = &paths["/v1/{name}"]["get"];
    assert_eq!(get_book["summary"], "Gets a book.");
    assert_eq!(get_book["tags"], json!(["lib.v1.Library"]));
    let params = get_book["parameters"].as_array().unwrap();
    let described: Vec<(String, String)> = params
        .iter()
        .map(|p| {
            (
                p["in"].as_str().unwrap().into(),
                p["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("path".into(), "name".into()),
            ("query".into(), "filter.author".into()),
            ("query".into(), "filter.kind".into()),
            ("query".into(), "tags".into()),
        ]
    );
    assert_eq!(params[0]["required"], true);
    assert_eq!(
        params[0]["schema"]["pattern"],
        "^shelves/[^/]+/books/[^/]+$"
    );
    assert_eq!(
        params[2]["schema"]["$ref"],
        "#/components/schemas/lib.v1.Kind"
    );
    assert_eq!(params[3]["schema"]["type"], "array");
    assert_eq!(
        get_book["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/lib.v1.Book"
    );
    assert_eq!(
        get_book["responses"]["default"]["$ref"],
        "#/components/responses/Error"
    );
    assert_eq!(
        doc["components"]["responses"]["Error"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/google.rpc.Status"
    );

    // body: "book"; response_body: "books".
    let create = &paths["/v1/{parent}/books"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/lib.v1.Book"
    );
    let list = &paths["/v1/{parent}/books"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert_eq!(list["type"], "array");

    // The schemas, in proto3 JSON.
    let book = &doc["components"]["schemas"]["lib.v1.Book"];
    assert_eq!(book["description"], "A book on a shelf.");
    assert_eq!(
        book["properties"]["pages"],
        json!({"type": "string", "format": "int64"})
    );
    assert_eq!(
        book["properties"]["published"],
        json!({"type": "string", "format": "date-time"})
    );
    assert_eq!(
        doc["components"]["schemas"]["lib.v1.Kind"]["enum"],
        json!(["KIND_UNSPECIFIED", "NOVEL"])
    );

    // What the document says is what the server answers.
    let r = get(
        s.addr,
        "/v1/shelves/1/books/2?filter.author=Ann&filter.kind=NOVEL&tags=a",
    )
    .await;
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"name": "shelves/1/books/2", "title": "by Ann", "pages": "300"})
    );
    let r = post_json(
        s.addr,
        "/v1/shelves/1/books",
        r#"{"title":"New","pages":"12"}"#,
    )
    .await;
    r.expect(200);
    assert_eq!(r.json(), json!({"title": "New", "pages": "12"}));
}

/// The document is made when first asked for, not at start-up; then kept until a proto reload
/// brings a new one.
#[tokio::test]
async fn the_document_follows_a_hot_reload() {
    /// Log lines are written in batches (within 20 ms): wait for the count, then hold it to be exact.
    async fn made_count_reaches(s: &Server, want: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while s.logs().matches(MADE).count() < want && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(s.logs().matches(MADE).count(), want, "{}", s.logs());
    }
    const MADE: &str = "OpenAPI document made";
    let s = Server::start_with(
        &[("lib.proto", LIBRARY)],
        &[],
        Options::default()
            .env("RUST_LOG", "protodrop=debug")
            .arg("--no-admin"),
    );
    // The server starts watching just after it prints its address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.logs().matches(MADE).count(), 0, "{}", s.logs());
    let before = document(&s).await;
    assert!(before["paths"].get("/v1/shop/items/{id}").is_none());
    assert_eq!(document(&s).await, before);
    made_count_reaches(&s, 1).await;
    s.write_proto(
        "shop.proto",
        r#"syntax = "proto3";
package shop;
import "google/api/annotations.proto";
message ItemRequest { string id = 1; }
message Item { string id = 1; }
service Catalog {
  rpc GetItem(ItemRequest) returns (Item) {
    option (google.api.http) = { get: "/v1/shop/items/{id}" };
  }
}
"#,
    );
    let after = eventually(Duration::from_secs(10), || async {
        let doc = document(&s).await;
        match doc["paths"].get("/v1/shop/items/{id}") {
            Some(_) => Ok(doc),
            None => Err(format!("not listed yet; log:\n{}", s.logs())),
        }
    })
    .await;
    assert_eq!(
        after["paths"]["/v1/shop/items/{id}"]["get"]["operationId"],
        "Catalog_GetItem"
    );
    assert!(after["paths"].get("/v1/{name}").is_some());
    made_count_reaches(&s, 2).await;
}

/// The path is the user's when a route of theirs takes it; a tree without annotations has a
/// document with no paths.
#[tokio::test]
async fn a_route_of_the_users_at_openapi_json_wins() {
    let proto = r#"syntax = "proto3";
package spec;
import "google/api/annotations.proto";
message Empty {}
message Spec { string openapi = 1; }
service Specs {
  rpc Get(Empty) returns (Spec) { option (google.api.http) = { get: "/openapi.json" }; }
}
"#;
    let handlers = "[[rule]]\nmethod = \"spec.Specs/Get\"\nreply = { openapi = \"mine\" }\n";
    let s = Server::start(&[("spec.proto", proto)], &[("spec.toml", handlers)]);
    let r = get(s.addr, "/openapi.json").await;
    r.expect(200);
    assert_eq!(r.json(), json!({"openapi": "mine"}));

    let s = Server::start_with(&t_proto(), &[], Options::default().arg("--no-admin"));
    let doc = document(&s).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["paths"], json!({}));
    // With the admin API on (the default), its routes are described with the user's.
    let s = Server::start(&t_proto(), &[]);
    let doc = document(&s).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/protodrop/admin/v1/calls"), "{paths:?}");
    assert_eq!(
        doc["paths"]["/protodrop/admin/v1/calls"]["get"]["operationId"],
        "Admin_ListCalls"
    );
}

#[tokio::test]
async fn the_document_is_sent_gzipped_to_a_client_that_accepts_gzip() {
    // A large tree's document is tens of megabytes; a browser or `curl --compressed` gets it
    // gzipped, any other client plain, and both read the same document.
    let s = Server::start_with(
        &[("lib.proto", LIBRARY)],
        &[("lib.toml", HANDLERS)],
        Options::default(),
    );
    let plain = get(s.addr, "/openapi.json").await;
    plain.expect(200);
    assert_eq!(plain.header("content-encoding"), None);
    let zipped = send(
        s.addr,
        "GET",
        "/openapi.json",
        &[("accept-encoding", "gzip, br")],
        "",
    )
    .await;
    zipped.expect(200);
    assert_eq!(zipped.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(zipped.header("vary").as_deref(), Some("accept-encoding"));
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&zipped.body[..]),
        &mut inflated,
    )
    .unwrap();
    assert_eq!(inflated, plain.body);
    assert!(
        zipped.body.len() * 3 < plain.body.len(),
        "{} of {}",
        zipped.body.len(),
        plain.body.len()
    );
    // `gzip;q=0` refuses it.
    let refused = send(
        s.addr,
        "GET",
        "/openapi.json",
        &[("accept-encoding", "gzip;q=0")],
        "",
    )
    .await;
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(refused.body, plain.body);
}
