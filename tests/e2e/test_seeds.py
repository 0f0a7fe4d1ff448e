"""protodrop answers the five seed posts' clients exactly as the seeds' own Python servers do.

Two kinds of checks, both differential (the same call goes to the seed's own server and to the target,
and the outcomes must be equal) and both also pinned to the values a user would check:

* the seed's client, verbatim, run as a program: same stdout, same exit code;
* direct calls through the generated stubs, including the error cases.
"""

from __future__ import annotations

from typing import Callable

import grpc
import pytest

from harness import SEEDS, Protodrop

RPC_TIMEOUT = 10  # seconds, for every direct call


# --------------------------------------------------------------------------------------------------
# The seed clients, verbatim.

EXPECTED_CLIENT_OUTPUT = {
    "000": 'feature_id_list: "0"\nfeature_id_list: "1"\n\n',
    "001": None,  # long; checked piecewise below
    "002": (
        'id: 1\nname: "foo"\nage: 12\nhobby: "eating"\nhobby: "sleep"\n\n'
        "<class 'str'> <class 'int'>\n"
        "<class 'google._upb._message.RepeatedScalarContainer'> ['eating', 'sleep'] ['eating', 'sleep']\n"
    ),
    "003": 'User created: tom\nuser {\n  username: "alexa"\n  user_id: 1\n}\n\nuser {\n  username: "christie"\n  user_id: 1\n}\n\n',
    "004": "SayHello received: Hello, you!\nSayHelloAgain received: Hello, you Again!\n",
}


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_seed_client_sees_the_same_as_with_the_seed_server(seed, seed_servers, target, seed_client):
    reference = seed_client(seed, seed_servers.address(seed))
    assert reference.returncode == 0, f"seed {seed} client failed against its own server:\n{reference.stderr}"
    expected = EXPECTED_CLIENT_OUTPUT[seed]
    if expected is not None:
        assert reference.stdout == expected
    else:  # 001: GetFeature, 10 × ListFeatures, RecordRoute, 10 × RouteChat
        assert reference.stdout.startswith('name: "北京"\nlocation {\n  latitude: 39.92\n  longitude: 116.46\n}\n')
        assert reference.stdout.count('name: "Beijing-Shanghai"') == 10
        assert "point_count: 1\nfeature_count: 2\ndistance: 3\nelapsed_time: 4\n" in reference.stdout
        assert reference.stdout.count('message: "good job!"') == 10

    got = seed_client(seed, target.address(seed))
    assert (got.returncode, got.stdout) == (reference.returncode, reference.stdout), got.stderr


# --------------------------------------------------------------------------------------------------
# Direct calls.

_channels: dict[str, grpc.Channel] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_channels():
    yield
    for channel in _channels.values():
        channel.close()
    _channels.clear()


def channel(address: str) -> grpc.Channel:
    if address not in _channels:
        _channels[address] = grpc.insecure_channel(address)
    return _channels[address]


def outcome(call: Callable[[], object]):
    """("ok", [messages as text]) or ("error", code, details); streams are read to the end."""
    try:
        result = call()
        messages = [result] if hasattr(result, "SerializeToString") else list(result)
        # Text format shows field presence too (an empty sub-message prints as `location {\n}`).
        return ("ok", [str(m) for m in messages])
    except grpc.RpcError as e:
        return ("error", e.code(), e.details())


@pytest.fixture
def both(seed_servers, target):
    """both(seed, stub_class, fn) runs fn(stub) against the seed's server and the target, asserts the
    outcomes are equal, and returns the target's raw result (a list of messages, or the RpcError)."""

    def run(seed: str, stub_class, fn):
        ref = outcome(lambda: fn(stub_class(channel(seed_servers.address(seed)))))
        raw: list = []

        def call_target():
            try:
                result = fn(stub_class(channel(target.address(seed))))
                messages = [result] if hasattr(result, "SerializeToString") else list(result)
                raw.extend(messages)
                return messages
            except grpc.RpcError as e:
                raw.append(e)
                raise

        got = outcome(call_target)
        assert got == ref, f"\n  target:      {got}\n  seed server: {ref}"
        return raw[-1] if raw and isinstance(raw[-1], grpc.RpcError) else raw

    return run


def assert_status(result, code: grpc.StatusCode, details: str):
    assert isinstance(result, grpc.RpcError), f"expected {code}, got {result!r}"
    assert (result.code(), result.details()) == (code, details)


# --- 000 faceserver


@pytest.mark.parametrize("paths, ids", [(["a", "b", "c"], ["0", "1", "2"]), (["x"], ["0"])])
def test_registration_gives_one_id_per_path(both, stubs, paths, ids):
    pb = stubs.faceserver_pb2
    [reply] = both(
        "000",
        stubs.faceserver_pb2_grpc.RecognitionStub,
        lambda s: s.registration(pb.Request(path_list=paths, name="zz"), timeout=RPC_TIMEOUT),
    )
    assert list(reply.feature_id_list) == ids


def test_registration_without_paths_fails_like_the_seed(both, stubs):
    pb = stubs.faceserver_pb2
    err = both(
        "000",
        stubs.faceserver_pb2_grpc.RecognitionStub,
        lambda s: s.registration(pb.Request(name="zz"), timeout=RPC_TIMEOUT),
    )
    assert_status(err, grpc.StatusCode.UNKNOWN, "Exception calling application: list index out of range")


# --- 001 hello


def test_get_feature(both, stubs):
    pb = stubs.hello_pb2
    [feature] = both(
        "001",
        stubs.hello_pb2_grpc.HelloStub,
        lambda s: s.GetFeature(pb.Point(latitude=39.92, longitude=116.46), timeout=RPC_TIMEOUT),
    )
    assert feature.name == "北京"
    assert feature.location == pb.Point(latitude=39.92, longitude=116.46)


def test_get_feature_of_the_default_point_still_has_a_location(both, stubs):
    pb = stubs.hello_pb2
    [feature] = both("001", stubs.hello_pb2_grpc.HelloStub, lambda s: s.GetFeature(pb.Point(), timeout=RPC_TIMEOUT))
    assert feature.HasField("location")


def test_list_features_yields_ten(both, stubs):
    pb = stubs.hello_pb2
    rect = pb.Rectangle(lo=pb.Point(latitude=1, longitude=2), hi=pb.Point(latitude=3, longitude=4))
    features = both("001", stubs.hello_pb2_grpc.HelloStub, lambda s: s.ListFeatures(rect, timeout=RPC_TIMEOUT))
    assert len(features) == 10
    assert all(f.name == "Beijing-Shanghai" and f.location == rect.lo for f in features)


@pytest.mark.parametrize("points", [10, 1])
def test_record_route(both, stubs, points):
    pb = stubs.hello_pb2
    [summary] = both(
        "001",
        stubs.hello_pb2_grpc.HelloStub,
        lambda s: s.RecordRoute(iter([pb.Point(latitude=1, longitude=2)] * points), timeout=RPC_TIMEOUT),
    )
    assert summary == pb.RouteSummary(point_count=1, feature_count=2, distance=3, elapsed_time=4)


def test_record_route_of_an_empty_stream_fails_like_grpcio(both, stubs):
    # The seed's servicer returns None when the stream is empty; grpcio cannot serialize it.
    err = both("001", stubs.hello_pb2_grpc.HelloStub, lambda s: s.RecordRoute(iter([]), timeout=RPC_TIMEOUT))
    assert_status(err, grpc.StatusCode.INTERNAL, "Failed to serialize response!")


def test_route_chat_echoes_every_note(both, stubs):
    pb = stubs.hello_pb2
    notes = [pb.RouteNote(location=pb.Point(latitude=i, longitude=2), message=f"note {i}") for i in range(10)]
    echoed = both("001", stubs.hello_pb2_grpc.HelloStub, lambda s: s.RouteChat(iter(notes), timeout=RPC_TIMEOUT))
    assert echoed == notes


# --- 002 userinfo


def test_get_user_info_of_foo(both, stubs):
    pb = stubs.userinfo_pb2
    [user] = both(
        "002", stubs.userinfo_pb2_grpc.UserInfoStub, lambda s: s.GetUserInfo(pb.UserRequest(name="foo"), timeout=RPC_TIMEOUT)
    )
    assert (user.id, user.name, user.age, list(user.hobby)) == (1, "foo", 12, ["eating", "sleep"])


@pytest.mark.parametrize(
    "name, details",
    [
        ("bar", "Exception calling application: 'unknown user: name = bar'"),
        ("", "Exception calling application: 'unknown user: name = '"),
        ("北京", "Exception calling application: 'unknown user: name = 北京'"),
        ("o'k", "Exception calling application: \"unknown user: name = o'k\""),
    ],
    ids=["bar", "empty", "chinese", "quote"],
)
def test_get_user_info_of_an_unknown_user_fails_like_the_seed(both, stubs, name, details):
    pb = stubs.userinfo_pb2
    err = both(
        "002", stubs.userinfo_pb2_grpc.UserInfoStub, lambda s: s.GetUserInfo(pb.UserRequest(name=name), timeout=RPC_TIMEOUT)
    )
    assert_status(err, grpc.StatusCode.UNKNOWN, details)


# --- 003 users


def test_create_user(both, stubs):
    pb = stubs.users_pb2
    [result] = both(
        "003",
        stubs.users_pb2_grpc.UsersStub,
        lambda s: s.CreateUser(
            pb.CreateUserRequest(username="tom", password="pw", email="tom@example.com"),
            metadata=[("ip", "127.0.0.1")],
            timeout=RPC_TIMEOUT,
        ),
    )
    assert result.user == pb.User(username="tom", user_id=1)


@pytest.mark.parametrize("count", [3, 0])
def test_get_users_answers_one_result_per_user(both, stubs, count):
    pb = stubs.users_pb2
    users = [pb.User(username=f"user{i}", user_id=100 + i) for i in range(count)]
    results = both(
        "003", stubs.users_pb2_grpc.UsersStub, lambda s: s.GetUsers(pb.GetUsersRequest(user=users), timeout=RPC_TIMEOUT)
    )
    assert [r.user for r in results] == users


# --- 004 hello_world


@pytest.mark.parametrize("name", ["you", "世界", ""], ids=["you", "chinese", "empty"])
def test_say_hello(both, stubs, name):
    pb = stubs.hello_world_pb2
    stub = stubs.hello_world_pb2_grpc.GreeterStub
    [hello] = both("004", stub, lambda s: s.SayHello(pb.HelloRequest(name=name), timeout=RPC_TIMEOUT))
    [again] = both("004", stub, lambda s: s.SayHelloAgain(pb.HelloRequest(name=name), timeout=RPC_TIMEOUT))
    assert (hello.message, again.message) == (f"Hello, {name}!", f"Hello, {name} Again!")


# --------------------------------------------------------------------------------------------------
# Last, once every call above was made: protodrop's stdout holds its one `listening on` line only
# (logs go to stderr).


def test_protodrop_prints_only_its_listening_line(target):
    if not isinstance(target, Protodrop):
        pytest.skip("the target is not protodrop")
    target.address("000")  # fails here if protodrop did not start
    assert target.stdout_lines == [f"listening on {target.address_}"]
