"""protodrop over plain HTTP, driven by curl: the Connect protocol on every method and HTTP/JSON
transcoding of the seed's ``google.api.http`` annotation, against the session's protodrop (the repo's
protos/ and handlers/). The Rust tests (tests/connect.rs, tests/transcode.rs) cover the rest of both
protocols; these check what a user types in a shell.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import SeedServers

CURL_TIMEOUT = 15  # seconds for one curl run


@pytest.fixture(scope="module")
def base(target) -> str:
    if isinstance(target, SeedServers):
        pytest.skip("the seeds' own servers speak gRPC only")
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (tests/run.sh installs it)")
    return f"http://{target.address('004')}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def curl(*args: str, data: bytes | None = None) -> Response:
    """Runs curl with ``args`` (plus ``--data-binary @-`` when ``data`` is given)."""
    with tempfile.TemporaryDirectory() as tmp:
        head, body = Path(tmp) / "head", Path(tmp) / "body"
        cmd = ["curl", "-sS", "--max-time", str(CURL_TIMEOUT), "-D", str(head), "-o", str(body)]
        cmd += ["-w", "%{http_code}", *args]
        if data is not None:
            cmd += ["--data-binary", "@-"]
        run = subprocess.run(cmd, input=data, capture_output=True, timeout=CURL_TIMEOUT + 5)
        assert run.returncode == 0, f"{cmd} failed: {run.stderr.decode()}"
        headers = {}
        for line in head.read_text(errors="replace").splitlines()[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return Response(int(run.stdout), headers, body.read_bytes())


def envelope(flags: int, message: bytes) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        assert len(body) >= 5 + length, "truncated envelope"
        out.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return out


# --------------------------------------------------------------------------------------------------
# Connect


def test_connect_unary_json_with_the_issue_command(base):
    # Exactly as a user types it: no annotation needed, no Connect-Protocol-Version header.
    r = curl("-d", '{"name":"x"}', "-H", "content-type: application/json", f"{base}/hello_world.Greeter/SayHello")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"message": "Hello, x!"}


def test_connect_unary_json_on_a_method_without_annotation(base):
    r = curl(
        "-H", "content-type: application/json", "-H", "connect-protocol-version: 1",
        f"{base}/proto.UserInfo/GetUserInfo", data=b'{"name":"foo"}',
    )
    assert r.status == 200
    assert r.json() == {"id": 1, "name": "foo", "age": 12, "hobby": ["eating", "sleep"]}


def test_connect_unary_binary_proto(base, stubs):
    request = stubs.hello_world_pb2.HelloRequest(name="bin").SerializeToString()
    r = curl("-H", "content-type: application/proto", f"{base}/hello_world.Greeter/SayHelloAgain", data=request)
    assert r.status == 200
    assert r.headers["content-type"] == "application/proto"
    assert stubs.hello_world_pb2.HelloReply.FromString(r.body).message == "Hello, bin Again!"


def test_connect_error_json_and_http_status(base):
    r = curl("-H", "content-type: application/json", f"{base}/proto.UserInfo/GetUserInfo", data=b'{"name":"bar"}')
    assert r.status == 500  # UNKNOWN
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"code": "unknown", "message": "Exception calling application: 'unknown user: name = bar'"}

    r = curl("-H", "content-type: application/json", f"{base}/hello_world.Greeter/SayHello", data=b'{"nmae":"x"}')
    assert r.status == 400
    assert r.json()["code"] == "invalid_argument"
    assert "'nmae'" in r.json()["message"]

    r = curl("-H", "content-type: application/json", f"{base}/hello_world.Greeter/Nope", data=b"{}")
    assert r.status == 404
    assert r.json()["code"] == "unimplemented"


def test_connect_server_stream_envelopes_and_end_stream(base):
    r = curl(
        "-H", "content-type: application/connect+json", f"{base}/hello.Hello/ListFeatures",
        data=envelope(0, b'{"lo":{"latitude":1.5,"longitude":2}}'),
    )
    assert r.status == 200
    assert r.headers["content-type"] == "application/connect+json"
    frames = envelopes(r.body)
    assert len(frames) == 11
    for flags, message in frames[:10]:
        assert flags == 0
        assert json.loads(message) == {"name": "Beijing-Shanghai", "location": {"latitude": 1.5, "longitude": 2}}
    flags, end = frames[10]
    assert flags == 0x02
    assert json.loads(end) == {}


def test_connect_gzip_and_get(base):
    r = curl(
        "--compressed", "-H", "content-type: application/json",
        f"{base}/hello_world.Greeter/SayHello", data=b'{"name":"zip"}',
    )
    assert r.status == 200
    assert r.headers.get("content-encoding") == "gzip"
    assert r.json() == {"message": "Hello, zip!"}  # curl decompressed it

    r = curl(
        "-G", "--data-urlencode", 'message={"name":"get"}', "-d", "encoding=json",
        f"{base}/hello_world.Greeter/SayHello",
    )
    assert r.status == 200
    assert r.json() == {"message": "Hello, get!"}


# --------------------------------------------------------------------------------------------------
# HTTP/JSON transcoding


def test_transcoding_the_seed_echo(base):
    r = curl("-d", '{"name":"you"}', f"{base}/v1/example/echo")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"message": "Hello, you!"}


def test_transcoding_unknown_field_is_400_naming_it(base):
    r = curl("-d", '{"name":"you","greeting":"hi"}', f"{base}/v1/example/echo")
    assert r.status == 400
    body = r.json()
    assert body["code"] == 3
    assert "'greeting'" in body["message"]
    assert body["details"] == []


def test_transcoding_unmatched_path_and_method(base):
    r = curl(f"{base}/v1/example/nothing")
    assert r.status == 404
    assert r.json()["code"] == 5
    assert "/v1/example/nothing" in r.json()["message"]

    r = curl(f"{base}/v1/example/echo")  # GET on a POST route
    assert r.status == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["code"] == 12
