"""Standard tools with no proto files on their side: grpcurl over server reflection, the grpcio
health-checking client, and the grpcio reflection client across a hot reload.

Each test here runs its own protodrop on a copy of protos/ and handlers/, plus `wkt.proto` (a service
whose messages use well-known types), so a test may add or remove files without disturbing others.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from harness import HANDLERS, PROTOS, _stop, start_protodrop

GRPCURL = Path(sys.executable).parent / "grpcurl"

SEED_SERVICES = {"faceserver.Recognition", "hello.Hello", "proto.UserInfo", "users.Users", "hello_world.Greeter"}

WKT_PROTO = """syntax = "proto3";
package wkt;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/struct.proto";
service Events {
  rpc Echo (Event) returns (Event);
}
message Event {
  google.protobuf.Timestamp at = 1;
  google.protobuf.Duration took = 2;
  google.protobuf.Struct labels = 3;
}
"""

WKT_HANDLER = """[[rule]]
method = "wkt.Events/Echo"
reply = "{{request}}"
"""


@pytest.fixture
def served(tmp_path: Path):
    """protodrop on fresh copies of the bundled protos and handlers, plus wkt.proto."""
    protos, handlers = tmp_path / "protos", tmp_path / "handlers"
    shutil.copytree(PROTOS, protos)
    shutil.copytree(HANDLERS, handlers)
    (protos / "wkt.proto").write_text(WKT_PROTO)
    (handlers / "wkt.toml").write_text(WKT_HANDLER)
    server = start_protodrop(tmp_path, protos, handlers)
    if server.proc is None:
        pytest.fail(server.why)
    try:
        yield server, protos, handlers
    finally:
        _stop(server.proc)


def grpcurl(address: str, *args: str, data: str | None = None) -> str:
    cmd = [str(GRPCURL), "-plaintext"]
    if data is not None:
        cmd += ["-d", "@"]
    cmd += [address, *args]
    done = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def json_stream(text: str) -> list[dict]:
    """grpcurl prints each message as a pretty JSON object, one after another."""
    decoder, out, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def test_grpcurl_lists_every_service_with_reflection_and_health(served):
    server, _, _ = served
    listed = set(grpcurl(server.address_, "list").split())
    assert SEED_SERVICES | {"wkt.Events", "grpc.health.v1.Health"} <= listed
    assert any(name.startswith("grpc.reflection.") for name in listed), listed


def test_grpcurl_describes_a_message_that_uses_well_known_types(served):
    server, _, _ = served
    described = grpcurl(server.address_, "describe", "wkt.Event")
    for wkt in (".google.protobuf.Timestamp at = 1", ".google.protobuf.Duration took = 2", ".google.protobuf.Struct labels = 3"):
        assert wkt in described, described
    # Resolving the imported types is what invoking needs, too.
    event = {"at": "2026-11-23T12:00:00Z", "took": "1.500s", "labels": {"env": "ci", "n": 3}}
    (reply,) = json_stream(grpcurl(server.address_, "wkt.Events/Echo", data=json.dumps(event)))
    assert reply == event


def test_grpcurl_calls_every_seed_method_using_reflection_only(served):
    server, _, _ = served
    addr = server.address_

    (reply,) = json_stream(grpcurl(addr, "faceserver.Recognition/registration", data='{"path_list": ["a", "b", "c"], "name": "zz"}'))
    assert reply == {"featureIdList": ["0", "1", "2"]}

    (reply,) = json_stream(grpcurl(addr, "hello.Hello/GetFeature", data='{"latitude": 39.5, "longitude": 116.25}'))
    assert reply == {"name": "北京", "location": {"latitude": 39.5, "longitude": 116.25}}

    features = json_stream(grpcurl(addr, "hello.Hello/ListFeatures", data='{"lo": {"latitude": 1, "longitude": 2}}'))
    assert features == [{"name": "Beijing-Shanghai", "location": {"latitude": 1, "longitude": 2}}] * 10

    points = "\n".join('{"latitude": 1, "longitude": 2}' for _ in range(10))
    (summary,) = json_stream(grpcurl(addr, "hello.Hello/RecordRoute", data=points))
    assert summary == {"pointCount": 1, "featureCount": 2, "distance": 3, "elapsedTime": 4}

    notes = [{"location": {"latitude": 1, "longitude": 2}, "message": f"note {i}"} for i in range(5)]
    echoed = json_stream(grpcurl(addr, "hello.Hello/RouteChat", data="\n".join(json.dumps(n) for n in notes)))
    assert echoed == notes

    (reply,) = json_stream(grpcurl(addr, "proto.UserInfo/GetUserInfo", data='{"name": "foo"}'))
    assert reply == {"id": 1, "name": "foo", "age": 12, "hobby": ["eating", "sleep"]}

    (reply,) = json_stream(grpcurl(addr, "users.Users/CreateUser", data='{"username": "tom"}'))
    assert reply == {"user": {"username": "tom", "userId": 1}}

    users = [{"username": "alexa", "userId": 1}, {"username": "christie", "userId": 1}]
    replies = json_stream(grpcurl(addr, "users.Users/GetUsers", data=json.dumps({"user": users})))
    assert replies == [{"user": u} for u in users]

    (reply,) = json_stream(grpcurl(addr, "hello_world.Greeter/SayHello", data='{"name": "you"}'))
    assert reply == {"message": "Hello, you!"}
    (reply,) = json_stream(grpcurl(addr, "hello_world.Greeter/SayHelloAgain", data='{"name": "you"}'))
    assert reply == {"message": "Hello, you Again!"}


def test_grpcurl_shows_a_handler_error_status(served):
    server, _, _ = served
    cmd = [str(GRPCURL), "-plaintext", "-d", '{"name": "bar"}', server.address_, "proto.UserInfo/GetUserInfo"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Code: Unknown" in done.stderr
    assert "Exception calling application: 'unknown user: name = bar'" in done.stderr


def test_health_check_reports_the_server_and_every_service(served):
    server, _, _ = served
    with grpc.insecure_channel(server.address_) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *SEED_SERVICES, "wkt.Events"]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_a_service_added_by_reload_and_health_follows_its_removal(served):
    server, protos, _ = served
    extra = protos / "extra.proto"
    extra.write_text('syntax = "proto3";\npackage extra;\nservice Added { rpc Ping (P) returns (P); }\nmessage P {}\n')

    def services() -> set[str]:
        with grpc.insecure_channel(server.address_) as channel:
            return set(ProtoReflectionDescriptorDatabase(channel).get_services())

    deadline = time.monotonic() + 1.0
    while "extra.Added" not in services():
        assert time.monotonic() < deadline, "extra.Added not listed by reflection within 1 s of the save"
        time.sleep(0.02)

    with grpc.insecure_channel(server.address_) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="extra.Added"), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        extra.unlink()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    assert "extra.Added" not in services()


def test_a_handler_file_can_override_health(served):
    server, _, handlers = served
    override = handlers / "health.toml"
    override.write_text('[health]\n"hello.Hello" = "NOT_SERVING"\n"" = "NOT_SERVING"\n')
    with grpc.insecure_channel(server.address_) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        deadline = time.monotonic() + 1.0
        while status("hello.Hello") != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "the [health] override was not applied within 1 s"
            time.sleep(0.02)
        assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("users.Users") == health_pb2.HealthCheckResponse.SERVING

        override.unlink()
        deadline = time.monotonic() + 1.0
        while status("hello.Hello") != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "removing the override did not restore SERVING within 1 s"
            time.sleep(0.02)
        assert status("") == health_pb2.HealthCheckResponse.SERVING


def test_no_reflection_turns_reflection_off(tmp_path: Path):
    server = start_protodrop(tmp_path, extra_args=("--no-reflection",))
    if server.proc is None:
        pytest.fail(server.why)
    try:
        cmd = [str(GRPCURL), "-plaintext", server.address_, "list"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode != 0
        assert "does not support the reflection API" in done.stderr, done.stderr
        # The services themselves still answer.
        with grpc.insecure_channel(server.address_) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="hello.Hello"), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        _stop(server.proc)


EXT_PROTOS = {
    "ext.proto": """syntax = "proto2";
package ext;
message Req {
  optional string id = 1;
  extensions 100 to 199;
}
service Svc { rpc Echo (Req) returns (Req); }
""",
    # Extensions declared in another file than the message, one of them in a message's scope.
    "more.proto": """syntax = "proto2";
package more;
import "ext.proto";
extend ext.Req { optional int32 level = 100; }
message Holder { extend ext.Req { optional string note = 150; } }
""",
}


def test_grpcurl_sends_proto2_extensions_it_learns_by_reflection(tmp_path: Path):
    protos, handlers = tmp_path / "protos", tmp_path / "handlers"
    protos.mkdir()
    handlers.mkdir()
    for name, text in EXT_PROTOS.items():
        (protos / name).write_text(text)
    (handlers / "ext.toml").write_text('[[rule]]\nmethod = "ext.Svc/Echo"\nreply = "{{request}}"\n')
    server = start_protodrop(tmp_path, protos, handlers)
    if server.proc is None:
        pytest.fail(server.why)
    try:
        request = {"id": "x", "[more.level]": 5, "[more.Holder.note]": "hi"}
        (reply,) = json_stream(grpcurl(server.address_, "ext.Svc/Echo", data=json.dumps(request)))
        assert reply == request
    finally:
        _stop(server.proc)
