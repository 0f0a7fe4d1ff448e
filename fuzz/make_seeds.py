#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/, from this file (python3, no packages).

Run from anywhere: `python3 fuzz/make_seeds.py`. It replaces the seed folders whole; the corpus a fuzz
run grows goes to fuzz/run-corpus/<target>/ (gitignored), never here.
"""

import pathlib
import shutil
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


# ---- protobuf encoding, enough for the seed protos ----

def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def f_varint(field, n):
    return key(field, 0) + varint(n)


def f_len(field, data):
    if isinstance(data, str):
        data = data.encode()
    return key(field, 2) + varint(len(data)) + data


def f_float(field, x):
    return key(field, 5) + struct.pack("<f", x)


def point(lat, lon):
    return f_float(1, lat) + f_float(2, lon)


def user(name, uid):
    return f_len(1, name) + f_varint(2, uid)


def stream(*messages):
    """A client stream as request_path splits it: a length byte before each message."""
    out = b""
    for m in messages:
        assert len(m) < 256
        out += bytes([len(m)]) + m
    return out


# The methods of ../protos sorted by name, as request_path numbers them.
METHODS = [
    "faceserver.Recognition/registration",
    "hello.Hello/GetFeature",
    "hello.Hello/ListFeatures",
    "hello.Hello/RecordRoute",
    "hello.Hello/RouteChat",
    "hello_world.Greeter/SayHello",
    "hello_world.Greeter/SayHelloAgain",
    "proto.UserInfo/GetUserInfo",
    "users.Users/CreateUser",
    "users.Users/GetUsers",
]


def call(method, body, flags=0):
    return bytes([METHODS.index(method), flags]) + body


REQUESTS = {
    "registration-two-paths": call(METHODS[0], f_len(1, "a.jpg") + f_len(1, "b.jpg") + f_len(2, "x")),
    "registration-no-path": call(METHODS[0], f_len(2, "nobody")),
    "get-feature": call(METHODS[1], point(39.9, 116.4)),
    "get-feature-default": call(METHODS[1], b""),
    "get-feature-nan": call(METHODS[1], point(float("nan"), float("-inf"))),
    "list-features": call(METHODS[2], f_len(1, point(1.0, 2.0)) + f_len(2, point(3.0, 4.0))),
    "record-route-three": call(METHODS[3], stream(point(1, 1), point(2, 2), point(3, 3))),
    "record-route-empty": call(METHODS[3], b""),
    "record-route-broken": call(METHODS[3], stream(point(1, 1)), flags=1),
    "record-route-bad-message": call(METHODS[3], stream(b"\x0a\xff")),
    "route-chat-two": call(METHODS[4], stream(f_len(1, point(1, 2)) + f_len(2, "hi"), f_len(2, "there"))),
    "route-chat-broken": call(METHODS[4], stream(f_len(2, "one")), flags=1),
    "say-hello": call(METHODS[5], f_len(1, "you")),
    "say-hello-unknown-field": call(METHODS[5], f_len(1, "you") + f_varint(99, 7) + key(100, 5) + b"abcd"),
    "say-hello-again": call(METHODS[6], f_len(1, "\u4e16\u754c")),
    "user-info-foo": call(METHODS[7], f_len(1, "foo")),
    "user-info-quote": call(METHODS[7], f_len(1, "o'brien")),
    "user-info-other": call(METHODS[7], f_len(1, "bar")),
    "create-user": call(METHODS[8], f_len(1, "tom") + f_len(2, "secret") + f_len(3, "tom@example.com")),
    "get-users": call(METHODS[9], f_len(1, user("a", 1)) + f_len(1, user("b", 4294967295))),
    "get-users-none": call(METHODS[9], b""),
}


# ---- transcode_path: method byte, then "target\nbody" ----

HTTP = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FUZZ"]


def http(method, target, body=""):
    return bytes([HTTP.index(method)]) + (target + ("\n" + body if body else "")).encode()


HTTP_REQUESTS = {
    "get-book": http("GET", "/v1/shelves/1/books/2?tags=a&tags=b&page=3"),
    "get-book-encoded": http("GET", "/v1/shelves/a%2Fb/books/c%20d"),
    "delete-book": http("DELETE", "/v1/shelves/1/books/2"),
    "get-book-page": http("GET", "/v1/books/7?filter.author=me&kind=ESSAY&at=2024-01-01T00:00:00Z"),
    "verb": http("POST", "/v1/x/b/c/d/e:verb", '{"filter":{"author":"me","kind":"NOVEL"},"at":"2024-01-01T00:00:00Z"}'),
    "verb-missing": http("POST", "/v1/x/b/c"),
    "custom-any": http("PUT", "/any/bob/x/y?kind=NOVEL&big=12"),
    "custom-any-options": http("OPTIONS", "/any/bob"),
    "patch-body-field": http("PATCH", "/v1/shelves/a/books/b", '{"title":"t"}'),
    "wild-essay": http("GET", "/ESSAY/x/42"),
    "wild-novel": http("GET", "/NOVEL/x/42?filter.author=z&tags=1"),
    "wild-put-rest": http("PUT", "/a/b/c", '{"author":"q","kind":"ESSAY","after":"5"}'),
    "head-run": http("HEAD", "/v1:run"),
    "scalars": http("GET", "/v1/1.5/7/true/0.25:get"),
    "blob": http("GET", "/v1/blob/aGVsbG8=/NOVEL/9"),
    "stream": http("GET", "/v1/stream/3"),
    "upload": http("POST", "/v1/upload/u", '{"c":"1"} {"c":"2"}'),
    "fail": http("POST", "/v1/fail/a/b:fail", '{"author":"x"}'),
    "wrong-method": http("POST", "/v1/shelves/1/books/2"),
    "not-found": http("FUZZ", "/nothing/at/all/here"),
    "connect-get": http("GET", "/fuzzhttp.Library/GetBook?encoding=json&message=%7B%22name%22%3A%22x%22%7D"),
    "bad-json": http("POST", "/v1/x/b/c:verb", '{"nope":1}'),
}


# ---- path_template: "template\npath" ----

TEMPLATES = {
    "shelves-books": "/v1/{name=shelves/*/books/*}\n/v1/shelves/1/books/2",
    "verb-rest": "/v1/{a}/b/{c=**}:verb\n/v1/x/b/c/d:verb",
    "files-rest": "/files/{path=**}\n/files/a/b%2Fc/d%20e",
    "first-verb": "/v1:run\n/v1:run",
    "dotted": "/{a.b.c}/*/**\n/x/y/z",
    "colon-literal": "/v1/a:b/c\n/v1/a:b/c",
    "encoded-literal": "/v1/%41%2F/{x}\n/v1/A%2F/1",
    "bad-nested": "/v1/{a={b}}\n/v1/x",
    "bad-rest": "/v1/**/x\n/v1/x",
    "bad-verb": "/v1/x:\n/v1/x:",
}


# ---- handler_file: TOML handler files ----

HANDLER_FILES = {
    "script-file": '''
[[rule]]
method = "faceserver.Recognition/registration"
script = "registration.rhai"

[[rule]]
method = "hello.Hello/RouteChat"
script = "route_chat.rhai"
''',
    "inline-code": '''
[[rule]]
method = "hello.Hello/RecordRoute"
code = """
let n = 0;
let first = next();
while first != () {
    n += 1;
    first = next();
}
if n == 0 { throw "empty"; }
#{ point_count: n }
"""

[[rule]]
method = "users.Users/GetUsers"
code = \'\'\'
for u in request.user { send(#{ user: u }); }
header("x-n", request.user.len().to_string());
\'\'\'
''',
    "conditions": '''
[[rule]]
method = "users.Users/CreateUser"
when.request.username = "tom"
when.request.email = { contains = "@" }
when.request.password = { regex = "^[a-z]+$" }
when.metadata.ip = "127.0.0.1"
reply = { user = { username = "{{request.username}}", user_id = 1 } }

[[rule]]
method = "hello.Hello/ListFeatures"
when.request.lo = { present = true }
when.request."hi.latitude" = 3.0
when.request.hi = { longitude = { eq = 4.5 } }
stream.repeat = 2
stream.message = { name = "inside {{index}}" }
stream.delay = "10ms"
''',
    "streams-errors": '''
[[rule]]
method = "users.Users/GetUsers"
stream.for_each = "request.user"
stream.message = { user = "{{item}}" }
error = { code = "ABORTED", message = "after {{request.user.0.username}}" }

[[rule]]
method = "hello.Hello/ListFeatures"
stream.messages = [ { name = "one" }, { name = "two", location = { latitude = 1.5 } } ]

[[rule]]
method = "proto.UserInfo/GetUserInfo"
error.code = 5
error.message = "unknown user: {{request.name}}"
error.details = [
  { "@type" = "google.rpc.ErrorInfo", reason = "USER_UNKNOWN", domain = "example.com", metadata = { k = "v" } },
  { "@type" = "google.rpc.RetryInfo", retry_delay = "1.5s" },
]
''',
    "headers-health": '''
[health]
"hello.Hello" = "NOT_SERVING"
"" = "SERVING"

[[rule]]
method = "/hello_world.Greeter/SayHello"
reply = "{{request}}"
headers = { x-name = "{{request.name}}", x-raw-bin = "aGVsbG8=" }
trailers = { x-count = "1" }
delay = "150ms"
''',
    "client-stream-templates": '''
[[rule]]
method = "hello.Hello/RecordRoute"
reply = { point_count = "{{count}}", distance = "{{first.latitude}}", elapsed_time = 4 }

[[rule]]
method = "hello.Hello/RouteChat"
when.request.message = { regex = "^q" }
stream.repeat = 3
stream.message = { message = "{{request.message}} {{index}} of {{count}}", location = "{{request.location}}" }
''',
    "readme-typo": '''
[[rule]]
method = "users.Users/CreateUser"
reply = { user = { username = "{{request.username}}", id = 1 } }

[[rule]]
method = "shop.Catalog/GetItem"
reply = { id = "{{request.id}}", title = "Item {{request.id}}", price = 1999 }
''',
    "many-problems": '''
[[rule]]
method = "hello.Hello/GetFeature"
reply = { name = 1 }
stream.repeat = 2
when.request.nope = "x"
code = "let x = ;"
delay = "soon"

[[rule]]
method = 7

[nothing]
''',
}


def write(folder, name, data):
    path = CORPUS / folder / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    for target in ["request_path", "handler_file", "transcode_path", "path_template"]:
        shutil.rmtree(CORPUS / target, ignore_errors=True)
        (CORPUS / target).mkdir(parents=True)
    for name, data in REQUESTS.items():
        write("request_path", name, data)
    for name, data in HTTP_REQUESTS.items():
        write("transcode_path", name, data)
    for name, text in TEMPLATES.items():
        write("path_template", name, text)
    # Every seed handler file as it is, then the ones above.
    for path in sorted((ROOT / "handlers").glob("*.toml")):
        write("handler_file", "seed-" + path.name, path.read_bytes())
    for name, text in HANDLER_FILES.items():
        write("handler_file", name + ".toml", text.lstrip("\n"))
    counts = {t: len(list((CORPUS / t).iterdir())) for t in sorted(p.name for p in CORPUS.iterdir())}
    print(", ".join(f"{t}: {n} seeds" for t, n in counts.items()))


if __name__ == "__main__":
    main()
