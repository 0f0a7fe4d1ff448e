"""Editions (`edition = "2023"`) against protoc's own generated code: grpcio-tools' protoc compiles the
schema below to Python classes and to a descriptor set; protodrop serves it once from the `.proto` source
and once from the descriptor set alone. What protodrop writes (a handler's reply, an echo of Python's
bytes, the JSON form) must be byte for byte and key for key what Python protobuf writes for the same
values: explicit presence keeping zeros, implicit presence dropping them, packed and expanded repeated
fields, DELIMITED (group-encoded) messages, LEGACY_REQUIRED, json_name. A proto2 file with
`[packed = true]` rides along (compiled from source it used to be written unpacked).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from harness import _stop, start_protodrop

EDITIONS_PROTO = """edition = "2023";
package ed;

message Inner { int32 x = 1; }
enum Color { COLOR_UNSPECIFIED = 0; RED = 1; }
enum Closed { option features.enum_type = CLOSED; ONE = 1; TWO = 2; }

message M {
  int32 explicit_zero = 1;
  int32 implicit = 2 [features.field_presence = IMPLICIT];
  int32 required = 3 [features.field_presence = LEGACY_REQUIRED];
  repeated int32 packed = 4;
  repeated int32 expanded = 5 [features.repeated_field_encoding = EXPANDED];
  Inner delimited = 6 [features.message_encoding = DELIMITED];
  Inner prefixed = 7;
  string name = 8;
  Color color = 9;
  Closed closed = 10;
  int32 my_json = 11 [json_name = "custom"];
  map<string, Inner> by_key = 12;
  repeated Inner many_delimited = 13 [features.message_encoding = DELIMITED];
  string implicit_text = 14 [features.field_presence = IMPLICIT];
  repeated sint64 packed_zigzag = 15;
}

service Ed { rpc Echo (M) returns (M); }
"""

PROTO2 = """syntax = "proto2";
package p2;
message P { repeated int32 packed = 1 [packed = true]; repeated int32 plain = 2; optional int32 zero = 3; }
service P2 { rpc Echo (P) returns (P); }
"""

HANDLERS = """
[[rule]]
method = "ed.Ed/Echo"
when.request.name = "values"
reply = { explicit_zero = 0, implicit = 0, required = 0, packed = [1, 2, 300], expanded = [4, 5], delimited = { x = 7 }, prefixed = { x = 0 }, name = "", color = "COLOR_UNSPECIFIED", closed = "TWO", my_json = 5, by_key = { k = { x = 1 } }, many_delimited = [{ x = 1 }, {}], implicit_text = "", packed_zigzag = [-1, 0, 1] }

[[rule]]
method = "ed.Ed/Echo"
reply = "{{request}}"

[[rule]]
method = "p2.P2/Echo"
when.request.zero = 1
reply = { packed = [1, 2, 3], plain = [4, 5], zero = 0 }

[[rule]]
method = "p2.P2/Echo"
reply = "{{request}}"
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """protoc's Python classes and descriptor set for the schemas."""
    root = tmp_path_factory.mktemp("editions")
    src, out = root / "src", root / "py"
    src.mkdir()
    out.mkdir()
    (src / "ed.proto").write_text(EDITIONS_PROTO)
    (src / "p2.proto").write_text(PROTO2)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={out}",
         f"--descriptor_set_out={root / 'all.binpb'}", "--include_imports", "ed.proto", "p2.proto"],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        yield root, importlib.import_module("ed_pb2"), importlib.import_module("p2_pb2")
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module", params=["source", "descriptor-set"])
def server(request, generated):
    """protodrop serving the schemas from their `.proto` source, or from protoc's descriptor set alone."""
    root, _, _ = generated
    base = root / request.param
    protos, handlers = base / "protos", base / "handlers"
    protos.mkdir(parents=True)
    handlers.mkdir()
    if request.param == "source":
        (protos / "ed.proto").write_text(EDITIONS_PROTO)
        (protos / "p2.proto").write_text(PROTO2)
    else:
        (protos / "all.binpb").write_bytes((root / "all.binpb").read_bytes())
    (handlers / "rules.toml").write_text(HANDLERS)
    proc = start_protodrop(base, protos, handlers)
    if proc.proc is None:
        pytest.fail(proc.why)
    try:
        yield proc.address_
    finally:
        _stop(proc.proc)


def raw_call(address: str, method: str, body: bytes) -> bytes:
    with grpc.insecure_channel(address) as channel:
        return channel.unary_unary(method)(body, timeout=10)


def expected_values(ed):
    m = ed.M(explicit_zero=0, implicit=0, required=0, packed=[1, 2, 300], expanded=[4, 5],
             delimited=ed.Inner(x=7), prefixed=ed.Inner(x=0), name="", color=ed.COLOR_UNSPECIFIED,
             closed=ed.TWO, my_json=5, many_delimited=[ed.Inner(x=1), ed.Inner()], implicit_text="",
             packed_zigzag=[-1, 0, 1])
    m.by_key["k"].x = 1
    return m


def test_a_reply_is_written_as_protoc_writes_it(server, generated):
    _, ed, _ = generated
    got = raw_call(server, "/ed.Ed/Echo", ed.M(required=0, name="values").SerializeToString())
    want = expected_values(ed)
    assert got == want.SerializeToString(deterministic=True)
    parsed = ed.M.FromString(got)
    assert parsed.HasField("explicit_zero") and parsed.HasField("name") and parsed.HasField("prefixed")


@pytest.mark.parametrize("case", ["values", "empty", "set"])
def test_python_bytes_come_back_unchanged(server, generated, case):
    _, ed, _ = generated
    m = {
        "values": expected_values(ed),
        "empty": ed.M(required=0),
        "set": ed.M(required=-7, implicit=3, implicit_text="t", packed=[0], expanded=[0],
                    delimited=ed.Inner(), name="é", color=ed.RED, closed=ed.ONE, packed_zigzag=[-300]),
    }[case]
    if case == "values":
        m.name = "echo"  # not "values", which has a rule of its own
    body = m.SerializeToString(deterministic=True)
    assert raw_call(server, "/ed.Ed/Echo", body) == body


def test_json_is_protoc_json(server, generated):
    _, ed, _ = generated
    want = expected_values(ed)
    want.name = "json"
    request = urllib.request.Request(
        f"http://{server}/ed.Ed/Echo",
        data=json_format.MessageToJson(want).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        got = json.loads(reply.read())
    assert got == json_format.MessageToDict(want)
    assert "custom" in got and "explicitZero" in got and "implicit" not in got


def serve_protoc_set(tmp_path, source: str, rule: str, message: str):
    """protoc's descriptor set of `source` as the protos folder's only file; yields (address, Python
    protobuf's class for `message` built from the same set)."""
    src, protos, handlers = tmp_path / "src", tmp_path / "protos", tmp_path / "handlers"
    for d in (src, protos, handlers):
        d.mkdir()
    (src / "x.proto").write_text(source)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", "--include_imports",
         f"--descriptor_set_out={protos / 'x.binpb'}", "x.proto"],
        check=True,
    )
    (handlers / "x.toml").write_text(rule)
    fds = descriptor_pb2.FileDescriptorSet.FromString((protos / "x.binpb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(message))
    server = start_protodrop(tmp_path, protos, handlers)
    if server.proc is None:
        pytest.fail(server.why)
    return server, cls


def test_a_set_with_language_features_is_served(tmp_path):
    """`features.(pb.cpp)` needs protoc's own descriptor.proto and cpp_features.proto: from a descriptor
    set they come along, and the set's descriptor.proto is used for the whole pool."""
    server, V = serve_protoc_set(
        tmp_path,
        'edition = "2023";\npackage v;\nimport "google/protobuf/cpp_features.proto";\n'
        'message V { string s = 1 [features.(pb.cpp).string_type = VIEW]; int32 n = 2; }\n'
        'service S { rpc Get (V) returns (V); }\n',
        '[[rule]]\nmethod = "v.S/Get"\nreply = { s = "x", n = 0 }\n',
        "v.V",
    )
    try:
        got = raw_call(server.address_, "/v.S/Get", b"")
        assert got == V(s="x", n=0).SerializeToString(deterministic=True)
        assert V.FromString(got).HasField("n"), "explicit presence keeps the zero"
    finally:
        _stop(server.proc)


def test_an_edition_2024_set_is_served(tmp_path):
    """Edition 2024 compiles from a descriptor set only (the parser takes 2023); its features resolve."""
    server, N = serve_protoc_set(
        tmp_path,
        'edition = "2024";\npackage n;\n'
        'message N { int32 a = 1; int32 b = 2 [features.field_presence = IMPLICIT]; repeated int32 c = 3; }\n'
        'service S { rpc Get (N) returns (N); }\n',
        '[[rule]]\nmethod = "n.S/Get"\nreply = { a = 0, b = 0, c = [1, 2] }\n',
        "n.N",
    )
    try:
        got = raw_call(server.address_, "/n.S/Get", b"")
        assert got == N(a=0, b=0, c=[1, 2]).SerializeToString(deterministic=True)
    finally:
        _stop(server.proc)


def test_proto2_packed_option_is_honoured(server, generated):
    _, _, p2 = generated
    got = raw_call(server, "/p2.P2/Echo", p2.P(zero=1).SerializeToString())
    assert got == p2.P(packed=[1, 2, 3], plain=[4, 5], zero=0).SerializeToString(deterministic=True)
