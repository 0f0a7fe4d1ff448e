"""A digest of every file descriptor a protodrop build serves by reflection, to compare two builds.

    python bench/tools/reflection_digest.py BINARY TREE OUT.txt   # then: cmp before.txt after.txt

Starts `BINARY serve --protos TREE` (empty handlers, a free port), asks reflection for every
`.proto` under TREE by file name on one stream, and writes a line per descriptor served:
the file asked for, the SHA-256 of the descriptor's bytes and its length. Two builds that load the
tree alike (source info included) write the same file. Needs grpcio and grpcio-reflection
(e.g. tests/e2e's venv); a 64 MiB receive limit, so that googleapis' largest answers pass.
"""

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main():
    binary, root, out = sys.argv[1:4]
    names = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
        if f.endswith(".proto")
    )
    handlers = tempfile.mkdtemp()
    server = subprocess.Popen(
        [binary, "serve", "--protos", root, "--handlers", handlers, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        addr = None
        for line in server.stdout:
            m = re.search(r"listening on (?:https?://)?([0-9.]+:\d+)", line)
            if m:
                addr = m.group(1)
                break
        if addr is None:
            sys.exit("the server did not print `listening on`")
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = (reflection_pb2.ServerReflectionRequest(file_by_filename=n) for n in names)
        count = 0
        with open(out, "w") as o:
            for reply, name in zip(stub.ServerReflectionInfo(requests), names):
                if reply.HasField("error_response"):
                    o.write(f"{name} ERROR {reply.error_response.error_message}\n")
                    continue
                for b in reply.file_descriptor_response.file_descriptor_proto:
                    o.write(f"{name} {hashlib.sha256(b).hexdigest()} {len(b)}\n")
                    count += 1
        print(count, "descriptors")
    finally:
        server.kill()


main()
