"""HTTP/JSON transcoding driven by curl, one test per feature of `google.api.http`: path variables
(with a template and `**`), query parameters (nested, repeated, enum), `body: "field"` with PATCH,
DELETE, `response_body`, errors with their HTTP status, NDJSON server streams, and routes added by a
hot reload. Each test module runs its own protodrop on a temp folder with an annotated proto.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import _stop, start_protodrop
from test_http import curl

SHOP_PROTO = """syntax = "proto3";
package shop;
import "google/api/annotations.proto";

enum Size { SIZE_UNSPECIFIED = 0; SMALL = 1; LARGE = 2; }
message Filter { string color = 1; int32 max_price = 2; }
message Find { string shelf = 1; string item = 2; Filter filter = 3; repeated string tags = 4; Size size = 5; }
message Item { string name = 1; string title = 2; int64 price = 3; Size size = 4; }
message Patch { string name = 1; Item item = 2; }
message Path { string path = 1; }
message Boxed { Item item = 1; string note = 2; }
message Shelf { string shelf = 1; }

service Shop {
  rpc Get(Find) returns (Find) {
    option (google.api.http) = { get: "/v1/{shelf=shelves/*}/items/{item}" };
  }
  rpc Update(Patch) returns (Patch) {
    option (google.api.http) = { patch: "/v1/items/{name}" body: "item" };
  }
  rpc Delete(Item) returns (Item) {
    option (google.api.http) = { delete: "/v1/items/{name}" };
  }
  rpc Files(Path) returns (Path) {
    option (google.api.http) = { get: "/files/{path=**}" };
  }
  rpc Unbox(Item) returns (Boxed) {
    option (google.api.http) = { get: "/v1/boxes/{name}" response_body: "item" };
  }
  rpc List(Shelf) returns (stream Item) {
    option (google.api.http) = { get: "/v1/{shelf=shelves/*}/items" };
  }
}
"""

SHOP_HANDLERS = """
[[rule]]
method = "shop.Shop/Get"
reply = "{{request}}"

[[rule]]
method = "shop.Shop/Update"
reply = "{{request}}"

[[rule]]
method = "shop.Shop/Delete"
when.request.name = "locked"
error = { code = "FAILED_PRECONDITION", message = "item {{request.name}} is locked" }

[[rule]]
method = "shop.Shop/Delete"
when.request.name = "ghost"
error = { code = "NOT_FOUND", message = "no item ghost" }

[[rule]]
method = "shop.Shop/Delete"
reply = { name = "{{request.name}}" }

[[rule]]
method = "shop.Shop/Files"
reply = "{{request}}"

[[rule]]
method = "shop.Shop/Unbox"
reply = { item = { name = "{{request.name}}", price = 12 }, note = "not in the HTTP answer" }

[[rule]]
method = "shop.Shop/List"
stream.repeat = 3
stream.message = { name = "{{request.shelf}}/{{index}}", size = "LARGE" }
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    protos, handlers = root / "protos", root / "handlers"
    protos.mkdir()
    handlers.mkdir()
    (protos / "shop.proto").write_text(SHOP_PROTO)
    (handlers / "shop.toml").write_text(SHOP_HANDLERS)
    server = start_protodrop(root, protos, handlers)
    if server.proc is None:
        pytest.fail(server.why)
    try:
        yield f"http://{server.address_}", protos, handlers
    finally:
        _stop(server.proc)


def test_path_variables_with_a_template(shop):
    base, _, _ = shop
    r = curl(f"{base}/v1/shelves/top/items/42")
    assert r.status == 200, r.body
    assert r.json() == {"shelf": "shelves/top", "item": "42"}


def test_double_star_takes_the_rest_of_the_path(shop):
    base, _, _ = shop
    r = curl(f"{base}/files/a/b/c.txt")
    assert (r.status, r.json()) == (200, {"path": "a/b/c.txt"})


def test_query_parameters_nested_repeated_and_enum(shop):
    base, _, _ = shop
    r = curl(f"{base}/v1/shelves/top/items/7?filter.color=red&filter.max_price=30&tags=a&tags=b&size=LARGE")
    assert r.status == 200, r.body
    assert r.json() == {
        "shelf": "shelves/top",
        "item": "7",
        "filter": {"color": "red", "maxPrice": 30},
        "tags": ["a", "b"],
        "size": "LARGE",
    }


def test_body_field_with_patch(shop):
    base, _, _ = shop
    r = curl("-X", "PATCH", "-H", "content-type: application/json", f"{base}/v1/items/pen",
             data=b'{"title": "Blue pen", "price": "250"}')
    assert r.status == 200, r.body
    # The body is the `item` field; the path variable fills `name`; int64 comes back as a string.
    assert r.json() == {"name": "pen", "item": {"title": "Blue pen", "price": "250"}}


def test_delete_and_errors_with_their_http_status(shop):
    base, _, _ = shop
    ok = curl("-X", "DELETE", f"{base}/v1/items/pen")
    assert (ok.status, ok.json()) == (200, {"name": "pen"})
    locked = curl("-X", "DELETE", f"{base}/v1/items/locked")
    assert locked.status == 400  # FAILED_PRECONDITION → 400, as google.rpc.Code documents
    assert locked.json()["code"] == 9
    assert locked.json()["message"] == "item locked is locked"
    ghost = curl("-X", "DELETE", f"{base}/v1/items/ghost")
    assert (ghost.status, ghost.json()["code"]) == (404, 5)


def test_response_body_sends_one_field(shop):
    base, _, _ = shop
    r = curl(f"{base}/v1/boxes/crate")
    assert (r.status, r.json()) == (200, {"name": "crate", "price": "12"})


def test_server_stream_is_newline_delimited_json(shop):
    base, _, _ = shop
    r = curl(f"{base}/v1/shelves/low/items")
    assert r.status == 200, r.body
    lines = [json.loads(line) for line in r.body.decode().splitlines() if line.strip()]
    assert lines == [{"name": f"shelves/low/{i}", "size": "LARGE"} for i in range(3)]


def test_a_route_added_by_reload_answers(shop):
    base, protos, handlers = shop
    (protos / "extra.proto").write_text(
        'syntax = "proto3";\npackage extra;\nimport "google/api/annotations.proto";\n'
        'message Ping { string id = 1; }\n'
        'service Pinger { rpc Ping(Ping) returns (Ping) { option (google.api.http) = { get: "/v1/ping/{id}" }; } }\n'
    )
    (handlers / "extra.toml").write_text('[[rule]]\nmethod = "extra.Pinger/Ping"\nreply = { id = "pong {{request.id}}" }\n')
    deadline = time.monotonic() + 1.0
    while True:
        r = curl(f"{base}/v1/ping/7")
        if r.status == 200:
            break
        assert time.monotonic() < deadline, f"the new route did not answer within 1 s: {r.status} {r.body!r}"
        time.sleep(0.02)
    assert r.json() == {"id": "pong 7"}
