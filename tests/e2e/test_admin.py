"""The admin API (protodrop.admin.v1.Admin) from real clients with no generated code: grpcio through
a stub built from the descriptors reflection serves, curl over HTTP/JSON (its google.api.http
routes), buf curl over Connect, grpcurl list and describe; and --admin-listen, which moves it to a
port of its own.

Each test runs its own protodrop on a small tree written here, so the rules' files and lines are
known: ListRules must list them in the order written, with `file:line` and the rule's text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from harness import REPO, _stop, start_protodrop

GRPCURL = Path(sys.executable).parent / "grpcurl"
# Installed by `npm ci` in tests/e2e/web, which tests/run.sh runs before pytest.
BUF = REPO / "tests" / "e2e" / "web" / "node_modules" / ".bin" / "buf"

SERVICE = "protodrop.admin.v1.Admin"

PROTO = """syntax = "proto3";
package t;
service Svc {
  rpc Unary (Req) returns (Resp);
  rpc Echo (Req) returns (Req);
}
message Req { string name = 1; }
message Resp { string text = 1; }
"""

# A default rule written before a conditional one, which is tried (and listed) first.
T_TOML = """# answers for t.Svc
[[rule]]
method = "t.Svc/Unary"
reply = { text = "any" }

[[rule]]
method = "t.Svc/Unary"
when.request.name = "x"
reply = { text = "x" }
"""
ECHO_TOML = '[[rule]]\nmethod = "t.Svc/Echo"\nreply = "{{request}}"\n'


def expected(handlers: Path) -> list[dict]:
    """ListRules' answer for the tree: by method, each method's rules in the order they are tried
    (those with `when` first, then the defaults, each in file order)."""
    return [
        {"method": "t.Svc/Echo", "origin": f"{handlers / 'a' / 'echo.toml'}:1", "text": ECHO_TOML.strip()},
        {
            "method": "t.Svc/Unary",
            "origin": f"{handlers / 't.toml'}:6",
            "text": '[[rule]]\nmethod = "t.Svc/Unary"\nwhen.request.name = "x"\nreply = { text = "x" }',
        },
        {
            "method": "t.Svc/Unary",
            "origin": f"{handlers / 't.toml'}:2",
            "text": '[[rule]]\nmethod = "t.Svc/Unary"\nreply = { text = "any" }',
        },
    ]


def serve(tmp_path: Path, *args: str):
    protos, handlers = tmp_path / "protos", tmp_path / "handlers"
    (handlers / "a").mkdir(parents=True)
    protos.mkdir()
    (protos / "t.proto").write_text(PROTO)
    (handlers / "t.toml").write_text(T_TOML)
    (handlers / "a" / "echo.toml").write_text(ECHO_TOML)
    server = start_protodrop(tmp_path, protos, handlers, args)
    if server.proc is None:
        pytest.fail(server.why)
    return server, handlers


@pytest.fixture
def served(tmp_path: Path):
    server, handlers = serve(tmp_path)
    try:
        yield server, handlers
    finally:
        _stop(server.proc)


def http_get(url: str) -> tuple[int, dict]:
    """curl's answer to GET url: (HTTP status, JSON body)."""
    done = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def admin_classes(address: str):
    """ListRules' request and reply classes, built from the descriptors reflection serves at address."""
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(SERVICE).FindMethodByName("ListRules")
        return message_factory.GetMessageClass(method.input_type), message_factory.GetMessageClass(method.output_type)


def grpcio_list_rules(address: str, classes=None, **request) -> list[dict]:
    """ListRules through grpcio, with a stub built from reflection (at address, unless given)."""
    request_class, reply_class = classes or admin_classes(address)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ListRules",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = call(request_class(**request), timeout=10)
    return json_format.MessageToDict(reply)["rules"]


def test_grpcio_lists_the_rules_through_a_stub_built_from_reflection(served):
    server, handlers = served
    assert grpcio_list_rules(server.address_) == expected(handlers)
    assert grpcio_list_rules(server.address_, method="t.Svc/Echo") == expected(handlers)[:1]


def test_curl_lists_the_rules_over_http_json(served):
    server, handlers = served
    status, body = http_get(f"http://{server.address_}/protodrop/admin/v1/rules")
    assert status == 200, body
    assert body == {"rules": expected(handlers)}
    status, body = http_get(f"http://{server.address_}/protodrop/admin/v1/rules?method=t.Svc/Unary")
    assert body == {"rules": expected(handlers)[1:]}


def test_buf_curl_lists_the_rules_over_connect(served):
    server, handlers = served
    assert BUF.is_file(), f"{BUF} is missing: run `npm ci` in tests/e2e/web (tests/run.sh does)"
    cmd = [str(BUF), "curl", "--protocol", "connect", "--data", "{}", f"http://{server.address_}/{SERVICE}/ListRules"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    assert json.loads(done.stdout) == {"rules": expected(handlers)}


def test_grpcurl_lists_and_describes_the_admin_api(served):
    server, _ = served
    run = lambda *args: subprocess.run(
        [str(GRPCURL), "-plaintext", server.address_, *args], capture_output=True, text=True, timeout=30
    )
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split(), listed.stdout
    described = run("describe", SERVICE)
    assert described.returncode == 0, described.stderr
    assert "rpc ListRules ( .protodrop.admin.v1.ListRulesRequest ) returns ( .protodrop.admin.v1.ListRulesResponse )" in described.stdout, described.stdout


def test_admin_listen_moves_it_to_a_port_of_its_own(tmp_path: Path):
    server, handlers = serve(tmp_path, "--admin-listen", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 10
        admin = None
        while admin is None:
            admin = next((l.removeprefix("admin listening on ") for l in server.stdout_lines if l.startswith("admin listening on ")), None)
            assert admin or time.monotonic() < deadline, f"no admin listen line: {server.stdout_lines}"
            time.sleep(0.02)
        status, body = http_get(f"http://{server.address_}/protodrop/admin/v1/rules")
        assert status == 404, body
        # Reflection on the main port does not know the service, nor does a call.
        with pytest.raises(KeyError):
            admin_classes(server.address_)
        classes = admin_classes(admin)
        with pytest.raises(grpc.RpcError) as unknown:
            grpcio_list_rules(server.address_, classes)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED, unknown.value
        assert grpcio_list_rules(admin, classes) == expected(handlers)
        status, body = http_get(f"http://{admin}/protodrop/admin/v1/rules")
        assert (status, body) == (200, {"rules": expected(handlers)})
    finally:
        _stop(server.proc)
