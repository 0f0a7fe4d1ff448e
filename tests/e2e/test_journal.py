"""The journal, verification and runtime rules from real clients: grpcio (messages built from the
descriptors reflection serves, no generated code) makes calls of all four shapes — a bidi of 1,000
messages each way among them — and reads them back with ListCalls; curl (HTTP/JSON) and
`buf curl --protocol connect` verify what was called; curl adds and deletes a runtime rule that the
next grpcio call is answered by; buf curl's bad rule is refused with its diagnostic.

Each test runs its own protodrop on a small tree written here, so the rules' files and lines are known.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from harness import REPO, _stop, start_protodrop

# Installed by `npm ci` in tests/e2e/web, which tests/run.sh runs before pytest.
BUF = REPO / "tests" / "e2e" / "web" / "node_modules" / ".bin" / "buf"
ADMIN = "protodrop.admin.v1.Admin"

PROTO = """syntax = "proto3";
package j;
service S {
  rpc Unary (Req) returns (Resp);
  rpc Server (Req) returns (stream Resp);
  rpc Client (stream Req) returns (Resp);
  rpc Bidi (stream Req) returns (stream Resp);
}
message Req { string name = 1; int32 num = 2; }
message Resp { string text = 1; int32 num = 2; }
"""

J_TOML = """[[rule]]
method = "j.S/Unary"
when.request.name = "ghost"
error = { code = "NOT_FOUND", message = "no {{request.name}}" }

[[rule]]
method = "j.S/Unary"
reply = { text = "hello {{request.name}}" }

[[rule]]
method = "j.S/Server"
stream.repeat = 3
stream.message = { text = "{{request.name}}", num = "{{index}}" }

[[rule]]
method = "j.S/Client"
reply = { text = "got {{count}}", num = "{{count}}" }

[[rule]]
method = "j.S/Bidi"
reply = { text = "re: {{request.name}}", num = "{{count}}" }
"""


def origin(handlers: Path, needle: str) -> str:
    """`handlers/j.toml:LINE` of the `[[rule]]` whose text holds needle, as the server names it."""
    lines = J_TOML.splitlines()
    at = next(i for i, l in enumerate(lines) if needle in l)
    start = max(i for i in range(at + 1) if lines[i] == "[[rule]]")
    return f"{handlers / 'j.toml'}:{start + 1}"


@pytest.fixture
def served(tmp_path: Path):
    protos, handlers = tmp_path / "protos", tmp_path / "handlers"
    protos.mkdir()
    handlers.mkdir()
    (protos / "j.proto").write_text(PROTO)
    (handlers / "j.toml").write_text(J_TOML)
    # The journal is on by default.
    server = start_protodrop(tmp_path, protos, handlers)
    if server.proc is None:
        pytest.fail(server.why)
    try:
        yield server, handlers
    finally:
        _stop(server.proc)


class Stubs:
    """Request and reply classes of j.S and the admin API, built from reflection at address."""

    def __init__(self, address: str):
        self.address = address
        with grpc.insecure_channel(address) as channel:
            self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            self.req = message_factory.GetMessageClass(self.pool.FindMessageTypeByName("j.Req"))
            self.resp = message_factory.GetMessageClass(self.pool.FindMessageTypeByName("j.Resp"))
            self.admin = self.pool.FindServiceByName(ADMIN)

    def call(self, channel, kind: str, method: str, request, **kw):
        stub = getattr(channel, kind)(
            f"/j.S/{method}", request_serializer=self.req.SerializeToString, response_deserializer=self.resp.FromString
        )
        return stub(request, timeout=30, **kw)

    def admin_call(self, rpc: str, **request) -> dict:
        desc = self.admin.FindMethodByName(rpc)
        in_class = message_factory.GetMessageClass(desc.input_type)
        out_class = message_factory.GetMessageClass(desc.output_type)
        with grpc.insecure_channel(self.address) as channel:
            stub = channel.unary_unary(
                f"/{ADMIN}/{rpc}", request_serializer=in_class.SerializeToString, response_deserializer=out_class.FromString
            )
            reply = stub(json_format.ParseDict(request, in_class()), timeout=30)
        return json_format.MessageToDict(reply)


def curl(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    """curl's answer: (HTTP status, JSON body)."""
    cmd = ["curl", "-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", url]
    if body is not None:
        cmd += ["-H", "content-type: application/json", "-d", json.dumps(body)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    text, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(text)


def buf_curl(address: str, method: str, body: dict) -> subprocess.CompletedProcess:
    assert BUF.is_file(), f"{BUF} is missing: run `npm ci` in tests/e2e/web (tests/run.sh does)"
    cmd = [str(BUF), "curl", "--protocol", "connect", "--data", json.dumps(body), f"http://{address}/{ADMIN}/{method}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def requests_of(call: dict) -> list[dict]:
    return [f["request"]["json"] for f in call.get("frames", []) if "request" in f]


def replies_of(call: dict) -> list[tuple[dict, str]]:
    return [(f["reply"]["json"], f.get("rule", "")) for f in call.get("frames", []) if "reply" in f]


def whole(value):
    """google.protobuf.Value holds numbers as doubles: 3.0 back as 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


def test_grpcio_calls_of_every_shape_are_journaled_in_full(served):
    server, handlers = served
    stubs = Stubs(server.address_)
    Req = stubs.req
    with grpc.insecure_channel(server.address_) as channel:
        assert stubs.call(channel, "unary_unary", "Unary", Req(name="u"), metadata=[("x-tag", "py")]).text == "hello u"
        assert [r.num for r in stubs.call(channel, "unary_stream", "Server", Req(name="s"))] == [0, 1, 2]
        assert stubs.call(channel, "stream_unary", "Client", iter([Req(name="a"), Req(name="b")])).text == "got 2"
        sent = [Req(name=f"m{i}", num=i) for i in range(1000)]
        got = list(stubs.call(channel, "stream_stream", "Bidi", iter(sent)))
        assert [r.text for r in got] == [f"re: m{i}" for i in range(1000)]

    calls = stubs.admin_call("ListCalls")["calls"]
    assert [c["method"] for c in calls] == ["j.S/Unary", "j.S/Server", "j.S/Client", "j.S/Bidi"]
    assert all(c["protocol"] == "grpc" and c["status"]["codeName"] == "OK" for c in calls), calls
    unary, server_stream, client_stream, bidi = (whole(c) for c in calls)
    assert {"key": "x-tag", "value": "py"} in unary["requestMetadata"]
    assert requests_of(unary) == [{"name": "u"}]
    assert replies_of(unary) == [({"text": "hello u"}, origin(handlers, "hello"))]
    rule = origin(handlers, "stream.repeat")
    assert replies_of(server_stream) == [({"text": "s"}, rule), ({"text": "s", "num": 1}, rule), ({"text": "s", "num": 2}, rule)]
    assert requests_of(client_stream) == [{"name": "a"}, {"name": "b"}]
    assert replies_of(client_stream) == [({"text": "got 2", "num": 2}, origin(handlers, "got {{count}}"))]

    # The bidi: 1,000 requests and 1,000 replies, in order, reply n after request n.
    assert requests_of(bidi) == [{"name": "m0"}] + [{"name": f"m{i}", "num": i} for i in range(1, 1000)]
    rule = origin(handlers, "re: {{request.name}}")
    assert replies_of(bidi) == [({"text": f"re: m{i}", "num": i + 1}, rule) for i in range(1000)]
    seen_requests = 0
    for frame in bidi["frames"]:
        if "request" in frame:
            seen_requests += 1
        elif "reply" in frame:
            n = int(frame["reply"]["json"]["num"])
            assert n <= seen_requests, f"reply {n} before request {n}"
    assert bidi["rules"] == [rule]

    # ListCalls' filters, over grpcio.
    assert [c["method"] for c in stubs.admin_call("ListCalls", method="j.S/Bidi")["calls"]] == ["j.S/Bidi"]
    assert [c["method"] for c in stubs.admin_call("ListCalls", limit=2)["calls"]] == ["j.S/Client", "j.S/Bidi"]
    assert stubs.admin_call("ClearCalls") == {"cleared": "4"}
    assert stubs.admin_call("ListCalls").get("calls", []) == []


def test_curl_and_buf_curl_verify_what_grpcio_did(served):
    server, _ = served
    stubs = Stubs(server.address_)
    with grpc.insecure_channel(server.address_) as channel:
        for name in ["tom", "tom", "tom", "ann", "ann"]:
            stubs.call(channel, "unary_unary", "Unary", stubs.req(name=name), metadata=[("x-user", name)])
        with pytest.raises(grpc.RpcError) as ghost:
            stubs.call(channel, "unary_unary", "Unary", stubs.req(name="ghost"))
        assert ghost.value.code() == grpc.StatusCode.NOT_FOUND

    url = f"http://{server.address_}/protodrop/admin/v1/calls:verify"
    unary = 'method = "j.S/Unary"\n'
    assert curl("POST", url, {"filter": unary + 'when.request.name = "tom"'}) == (200, {"count": "3"})
    assert curl("POST", url, {"filter": unary + 'when.metadata.x-user = "ann"'}) == (200, {"count": "2"})
    assert curl("POST", url, {"filter": unary + 'status = "NOT_FOUND"'}) == (200, {"count": "1"})
    status, body = curl("POST", url, {"filter": unary + 'when.request.name = "ann"', "list": True})
    assert status == 200 and body["count"] == "2", body
    assert [requests_of(c) for c in body["calls"]] == [[{"name": "ann"}]] * 2
    # A bad filter: 400 (INVALID_ARGUMENT) naming the line and column.
    status, body = curl("POST", url, {"filter": unary + 'when.request.nope = "x"'})
    assert status == 400 and body["message"].startswith("submitted.toml:2:14:"), body

    done = buf_curl(server.address_, "Verify", {"filter": unary + 'when.request.name = "ann"'})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"count": "2"}
    done = buf_curl(server.address_, "Verify", {"filterJson": {"method": "j.S/Unary", "status": "OK"}})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"count": "5"}


def test_a_runtime_rule_from_curl_answers_grpcio_until_deleted_and_a_bad_one_from_buf_curl_changes_nothing(served):
    server, _ = served
    stubs = Stubs(server.address_)
    rules = f"http://{server.address_}/protodrop/admin/v1/rules"

    def answer(name: str) -> str:
        with grpc.insecure_channel(server.address_) as channel:
            return stubs.call(channel, "unary_unary", "Unary", stubs.req(name=name)).text

    assert answer("u") == "hello u"
    _, before = curl("GET", rules)
    rule = '[[rule]]\nmethod = "j.S/Unary"\nreply = { text = "runtime {{request.name}}" }\n'
    status, added = curl("POST", rules, {"toml": rule})
    assert status == 200, added
    assert [(r["id"], r["origin"]) for r in added["rules"]] == [("r1", "runtime:r1")]
    assert answer("u") == "runtime u"
    calls = stubs.admin_call("ListCalls", limit=1)["calls"]
    assert calls[0]["rules"] == ["runtime:r1"]

    # A bad rule from buf curl: refused with the diagnostic, nothing changed.
    bad = '[[rule]]\nmethod = "j.S/Unary"\nreply = { nope = "x" }\n'
    done = buf_curl(server.address_, "AddRules", {"toml": bad})
    assert done.returncode != 0, done.stdout
    assert "invalid_argument" in done.stderr and "submitted.toml:3:11:" in done.stderr, done.stderr
    _, listed = curl("GET", rules)
    assert [r.get("id") for r in listed["rules"] if r.get("id")] == ["r1"]
    assert answer("u") == "runtime u"

    status, _ = curl("DELETE", f"{rules}/r1")
    assert status == 200
    assert answer("u") == "hello u"
    assert curl("GET", rules) == (200, before)
