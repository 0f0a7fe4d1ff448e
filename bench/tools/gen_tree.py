#!/usr/bin/env python3
"""Generates scenario 5's large tree: FILES .proto files holding MESSAGES messages in total, in folders
of 100 files, each file importing the one before it; every 10th file has a service of three methods
(unary, server streaming, bidi), and each service gets a handler file for protodrop.

Usage: gen_tree.py DIR [--files 1000] [--messages 10000]
Writes DIR/protos/dNN/fNNNN.proto and DIR/handlers/fNNNN.toml; prints a one-line summary as JSON.
"""
import argparse
import json
import pathlib

SERVICE_EVERY = 10


def rel(i: int) -> str:
    return f"d{i // 100:02d}/f{i:04d}.proto"


def proto_file(i: int, messages: int) -> str:
    lines = ['syntax = "proto3";', f"package tree.f{i:04d};", ""]
    if i > 0:
        lines += [f'import "{rel(i - 1)}";', ""]
    lines += [
        f"// Generated file {i} of scenario 5 (bench/tools/gen_tree.py).",
        "enum Kind {",
        "  KIND_UNSPECIFIED = 0;",
        "  KIND_SMALL = 1;",
        "  KIND_LARGE = 2;",
        "}",
        "",
    ]
    for j in range(messages):
        lines.append(f"message Msg{j} {{")
        lines += [
            "  string name = 1;",
            "  int64 id = 2;",
            "  double score = 3;",
            "  bool flag = 4;",
            "  repeated string tags = 5;",
            "  Kind kind = 6;",
            "  map<string, int32> counts = 9;",
            "  oneof choice {",
            "    string text = 10;",
            "    uint32 number = 11;",
            "  }",
        ]
        if j > 0:
            lines.append(f"  Msg{j - 1} previous = 7;")
        if i > 0:
            lines.append(f"  tree.f{i - 1:04d}.Msg0 link = 8;")
        lines += ["}", ""]
    if i % SERVICE_EVERY == 0:
        lines += [
            f"service Svc{i} {{",
            "  rpc Get (Msg0) returns (Msg1);",
            f"  rpc List (Msg0) returns (stream Msg{min(2, messages - 1)});",
            "  rpc Chat (stream Msg0) returns (stream Msg0);",
            "}",
            "",
        ]
    return "\n".join(lines)


def handler_file(i: int, marker: str = "v0") -> str:
    """protodrop's handlers for file i's service; `marker` is what scenario 5's reload test changes."""
    return f"""# Generated for tree.f{i:04d}.Svc{i} (bench/tools/gen_tree.py).
[[rule]]
method = "tree.f{i:04d}.Svc{i}/Get"
reply = {{ name = "{marker} {{{{request.name}}}}", id = {i}, tags = ["a", "b"] }}

[[rule]]
method = "tree.f{i:04d}.Svc{i}/List"
stream.repeat = 3
stream.message = {{ name = "item {{{{index}}}}", id = "{{{{index}}}}" }}

[[rule]]
method = "tree.f{i:04d}.Svc{i}/Chat"
reply = "{{{{request}}}}"
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=10000)
    args = ap.parse_args()
    root = pathlib.Path(args.dir)
    per_file = [args.messages // args.files + (1 if i < args.messages % args.files else 0) for i in range(args.files)]
    size = services = 0
    for i in range(args.files):
        path = root / "protos" / rel(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = proto_file(i, per_file[i])
        path.write_text(text)
        size += len(text)
        if i % SERVICE_EVERY == 0:
            services += 1
            (root / "handlers").mkdir(parents=True, exist_ok=True)
            (root / "handlers" / f"f{i:04d}.toml").write_text(handler_file(i))
    print(json.dumps({"files": args.files, "messages": sum(per_file), "services": services,
                      "methods": services * 3, "bytes": size}))


if __name__ == "__main__":
    main()
