"""GET /openapi.json validated by openapi-spec-validator (OpenAPI 3.1), on the seeds, on a small
annotated tree, and on a googleapis-like sample: services in two packages with one simple name, get,
post, patch, custom verbs, additional_bindings that come to one OpenAPI path, `**` mid-template, a
custom method, server streams, well-known types. Every operation the document lists is then called
at a path made from its parameters' patterns: the server must have that route (no 404 or 405).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from harness import _stop, start_protodrop
from test_http import curl

LIBRARY_PROTO = """syntax = "proto3";
package library.v1;
import "google/api/annotations.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// A book.
message Book {
  // shelves/*/books/*
  string name = 1;
  string title = 2;
  int64 pages = 3;
  bytes cover = 4;
  google.protobuf.Timestamp published = 5;
  google.protobuf.Duration read_time = 6;
  google.protobuf.Struct extra = 7;
  google.protobuf.Int32Value rating = 8;
  map<string, string> labels = 9;
  repeated Book related = 10;
  enum Format { FORMAT_UNSPECIFIED = 0; PAPER = 1; }
  Format format = 11;
}
message GetBookRequest { string name = 1; google.protobuf.FieldMask read_mask = 2; }
message ListBooksRequest { string parent = 1; int32 page_size = 2; string page_token = 3; }
message ListBooksResponse { repeated Book books = 1; string next_page_token = 2; }
message UpdateBookRequest { Book book = 1; google.protobuf.FieldMask update_mask = 2; }

// The library.
service Library {
  // Gets a book.
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = { get: "/v1/{name=shelves/*/books/*}" };
  }
  rpc ListBooks(ListBooksRequest) returns (ListBooksResponse) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books" };
  }
  rpc UpdateBook(UpdateBookRequest) returns (Book) {
    option (google.api.http) = { patch: "/v1/{book.name=shelves/*/books/*}" body: "book" };
  }
  rpc DeleteBook(GetBookRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { delete: "/v1/{name=shelves/*/books/*}" };
  }
  rpc WatchBooks(ListBooksRequest) returns (stream Book) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books:watch" };
  }
  rpc TitleOf(GetBookRequest) returns (Book) {
    option (google.api.http) = { get: "/v1/{name=shelves/*/books/*}/title" response_body: "title" };
  }
}
"""

LIBRARY_HANDLERS = """
[[rule]]
method = "library.v1.Library/GetBook"
reply = { name = "{{request.name}}", title = "A title", pages = 7 }
"""

# Shaped as googleapis writes its APIs (firestore's `**` mid-template, resource names under
# several parents, `:verb` custom methods, v1 and v1beta services of one name).
GOOGLEAPIS_LIKE = {
    "acme/store/v1/store.proto": """syntax = "proto3";
package acme.store.v1;
import "google/api/annotations.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/timestamp.proto";

message Document { string name = 1; map<string, string> fields = 2; google.protobuf.Timestamp update_time = 3; }
message GetDocumentRequest { string name = 1; repeated string mask = 2; }
message ListDocumentsRequest { string parent = 1; string collection_id = 2; int32 page_size = 3; }
message ListDocumentsResponse { repeated Document documents = 1; string next_page_token = 2; }
message CreateDocumentRequest { string parent = 1; string collection_id = 2; Document document = 3; }
message UpdateDocumentRequest { Document document = 1; repeated string update_mask = 2; }
message OperationRequest { string name = 1; }
message Operation { string name = 1; bool done = 2; }
message Location { string name = 1; string display_name = 2; }

// Documents, as firestore stores them.
service Store {
  // Gets a document.
  rpc GetDocument(GetDocumentRequest) returns (Document) {
    option (google.api.http) = { get: "/v1/{name=projects/*/databases/*/documents/*/**}" };
  }
  // Lists documents of a collection.
  rpc ListDocuments(ListDocumentsRequest) returns (ListDocumentsResponse) {
    option (google.api.http) = {
      get: "/v1/{parent=projects/*/databases/*/documents/*/**}/{collection_id}"
      additional_bindings { get: "/v1/{parent=projects/*/databases/*/documents}/{collection_id}" }
    };
  }
  rpc CreateDocument(CreateDocumentRequest) returns (Document) {
    option (google.api.http) = {
      post: "/v1/{parent=projects/*/databases/*/documents/**}/{collection_id}"
      body: "document"
    };
  }
  rpc UpdateDocument(UpdateDocumentRequest) returns (Document) {
    option (google.api.http) = {
      patch: "/v1/{document.name=projects/*/databases/*/documents/*/**}"
      body: "document"
    };
  }
  rpc DeleteDocument(GetDocumentRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { delete: "/v1/{name=projects/*/databases/*/documents/*/**}" };
  }
  // Starts an export.
  rpc ExportDocuments(OperationRequest) returns (Operation) {
    option (google.api.http) = { post: "/v1/{name=projects/*/databases/*}:exportDocuments" body: "*" };
  }
  // A location under a project, a folder or an organization: three bindings, one OpenAPI path.
  rpc GetLocation(OperationRequest) returns (Location) {
    option (google.api.http) = {
      get: "/v1/{name=projects/*/locations/*}"
      additional_bindings { get: "/v1/{name=folders/*/locations/*}" }
      additional_bindings { get: "/v1/{name=organizations/*/locations/*}" }
    };
  }
  rpc RunQuery(ListDocumentsRequest) returns (stream Document) {
    option (google.api.http) = { post: "/v1/{parent=projects/*/databases/*/documents}:runQuery" body: "*" };
  }
  rpc Check(OperationRequest) returns (Operation) {
    option (google.api.http) = { custom { kind: "HEAD" path: "/v1/{name=operations/**}" } };
  }
  rpc Touch(OperationRequest) returns (Operation) {
    option (google.api.http) = { custom { kind: "*" path: "/v1/touch/{name}" } };
  }
}
""",
    "acme/store/v1beta/store.proto": """syntax = "proto3";
package acme.store.v1beta;
import "google/api/annotations.proto";
message Document { string name = 1; }
message GetDocumentRequest { string name = 1; }
service Store {
  rpc GetDocument(GetDocumentRequest) returns (Document) {
    option (google.api.http) = { get: "/v1beta/{name=projects/*/databases/*/documents/*/**}" };
  }
}
""",
    "acme/bots/v1/bots.proto": """syntax = "proto3";
package acme.bots.v1;
import "google/api/annotations.proto";
message BotSession { string name = 1; string status = 2; }
message UpdateBotSessionRequest { string name = 1; BotSession bot_session = 2; }
service Bots {
  rpc UpdateBotSession(UpdateBotSessionRequest) returns (BotSession) {
    option (google.api.http) = { patch: "/v1/{name=**/botSessions/*}" body: "bot_session" };
  }
}
""",
}


def _serve(tmp_path_factory, name: str, protos: dict[str, str] | None, handlers: dict[str, str]):
    root = tmp_path_factory.mktemp(name)
    if protos is None:
        server = start_protodrop(root)  # the seeds: the repo's protos/ and handlers/
    else:
        (root / "protos").mkdir()
        (root / "handlers").mkdir()
        for path, text in protos.items():
            (root / "protos" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "protos" / path).write_text(text)
        for path, text in handlers.items():
            (root / "handlers" / path).write_text(text)
        server = start_protodrop(root, root / "protos", root / "handlers")
    if server.proc is None:
        pytest.fail(server.why)
    return server


@pytest.fixture(scope="module", params=["seeds", "library", "googleapis-like"])
def served(request, tmp_path_factory):
    trees = {
        "seeds": (None, {}),
        "library": ({"library.proto": LIBRARY_PROTO}, {"library.toml": LIBRARY_HANDLERS}),
        "googleapis-like": (GOOGLEAPIS_LIKE, {}),
    }
    protos, handlers = trees[request.param]
    server = _serve(tmp_path_factory, request.param, protos, handlers)
    try:
        base = f"http://{server.address_}"
        r = curl(f"{base}/openapi.json")
        assert r.status == 200, r.body
        assert r.headers["content-type"] == "application/json"
        yield request.param, base, json.loads(r.body)
    finally:
        _stop(server.proc)


def test_the_document_is_valid_openapi_3_1(served):
    _, _, doc = served
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises with the first problem


def _sample(pattern: str | None) -> str:
    """A value matching one of the document's path patterns (the shapes the generator writes)."""
    if not pattern:
        return "x"
    value = pattern.strip("^$")
    value = value.replace("(?:/.*)?", "/a/b").replace("(?:.*/)?", "a/").replace("[^/]+", "x")
    value = value.replace(".*", "a/b")
    return re.sub(r"\\(.)", r"\1", value)


def _operations(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_listed_operation_has_its_route(served):
    _, base, doc = served
    called = 0
    for path, method, op in _operations(doc):
        url = path
        for p in op.get("parameters", []):
            if p["in"] == "path":
                value = _sample(p["schema"].get("pattern"))
                assert re.fullmatch(p["schema"].get("pattern", ".*"), value), (path, p)
                url = url.replace("{" + p["name"] + "}", value)
        args = ["-X", method.upper(), f"{base}{url}"]
        if method == "head":
            args = ["-I", f"{base}{url}"]
        data = b"{}" if "requestBody" in op else None
        r = curl(*args, data=data)
        # The admin API's DeleteRule/ReplaceRule reach their method, which answers NOT_FOUND for
        # a rule id that does not exist: routed all the same.
        answered_by_method = r.status == 404 and b"no runtime rule" in r.body
        assert r.status not in (404, 405) or answered_by_method, (method, path, url, r.status, r.body)
        called += 1
    assert called == sum(1 for _ in _operations(doc))


def test_seed_greeter(served):
    name, base, doc = served
    if name != "seeds":
        pytest.skip("the seeds' document")
    op = doc["paths"]["/v1/example/echo"]["post"]
    assert op["operationId"] == "Greeter_SayHello"
    assert op["tags"] == ["hello_world.Greeter"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/hello_world.HelloRequest"
    }
    assert doc["components"]["schemas"]["hello_world.HelloRequest"]["properties"]["name"] == {"type": "string"}


def test_library_schemas_and_parameters(served):
    name, base, doc = served
    if name != "library":
        pytest.skip("the library's document")
    schemas = doc["components"]["schemas"]
    book = schemas["library.v1.Book"]["properties"]
    assert book["pages"] == {"type": "string", "format": "int64"}
    assert book["cover"]["contentEncoding"] == "base64"
    assert book["published"] == {"type": "string", "format": "date-time"}
    assert book["readTime"]["type"] == "string"
    assert book["rating"] == {"type": "integer", "format": "int32"}
    assert book["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert book["format"] == {"$ref": "#/components/schemas/library.v1.Book.Format"}
    assert schemas["library.v1.Book.Format"]["enum"] == ["FORMAT_UNSPECIFIED", "PAPER"]
    listing = doc["paths"]["/v1/{parent}/books"]["get"]
    assert [(p["in"], p["name"]) for p in listing["parameters"]] == [
        ("path", "parent"), ("query", "pageSize"), ("query", "pageToken")
    ]
    watch = doc["paths"]["/v1/{parent}/books:watch"]["get"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in watch
    # The document's query parameter names are what the server takes.
    r = curl(f"{base}/v1/shelves/s/books/b?readMask=title")
    assert r.status == 200, r.body
    assert json.loads(r.body) == {"name": "shelves/s/books/b", "title": "A title", "pages": "7"}


def test_googleapis_like_paths(served):
    name, base, doc = served
    if name != "googleapis-like":
        pytest.skip("the googleapis-like document")
    ops = {op["operationId"]: (method, path) for path, method, op in _operations(doc)}
    # v1 and v1beta share `Store`: their full names tell them apart.
    assert ops["acme.store.v1.Store_GetDocument"] == ("get", "/v1/{name}")
    assert ops["acme.store.v1beta.Store_GetDocument"] == ("get", "/v1beta/{name}")
    # Three bindings coming to the path and method GetDocument has, told apart by suffixes.
    assert ops["acme.store.v1.Store_GetLocation"] == ("get", "/v1/{name_1}")
    assert ops["acme.store.v1.Store_GetLocation2"] == ("get", "/v1/{name_2}")
    assert ops["acme.store.v1.Store_GetLocation3"] == ("get", "/v1/{name_3}")
    assert ops["acme.store.v1.Store_ExportDocuments"] == ("post", "/v1/{name}:exportDocuments")
    # `**` first in a variable.
    assert ops["Bots_UpdateBotSession"] == ("patch", "/v1/{name}")
    session = doc["paths"]["/v1/{name}"]["patch"]["parameters"][0]
    assert re.fullmatch(session["schema"]["pattern"], "a/b/botSessions/7")
    assert ops["acme.store.v1.Store_Check"][0] == "head"
    assert {m for m, p in ops.values() if p == "/v1/touch/{name}"} == {"get", "put", "post", "delete", "patch"}
    # `**` mid-template: the parameter's pattern takes several segments.
    method, path = ops["acme.store.v1.Store_ListDocuments"]
    parent = doc["paths"][path][method]["parameters"][0]
    assert parent["name"] == "parent"
    assert re.fullmatch(parent["schema"]["pattern"], "projects/p/databases/d/documents/a/b/c")
    assert "several path segments" in parent["description"]
    # body "document" whose name the path takes: not in the body's schema.
    method, path = ops["acme.store.v1.Store_UpdateDocument"]
    body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in body["properties"] and "updateTime" in body["properties"]
    assert [p["name"] for p in doc["paths"][path][method]["parameters"]] == ["document.name", "updateMask"]
