#!/usr/bin/env python3
"""Writes the request bodies of scenario 4 (gRPC frames, as h2load sends them with -d) into bench/data.

Hand-built protobuf bytes (no codegen, no dependency), for bench/protos/stream.proto:
  fetch.bin  one FetchRequest{name: "bench"}                          -> bench.Stream/Fetch
  echo.bin   ECHO_COUNT Items{index: i, name: "bench"}, i = 0..N-1    -> bench.Stream/Echo (bidi)
req.bin and req_complex.bin (scenarios 1-3) are the shared ones, copied as they are.
Run it again only if the proto or the counts change: the files are committed.
"""
import pathlib
import struct
import sys

ECHO_COUNT = 100  # messages per bidi call; bench/run reads it from here (msgs/s = calls/s * ECHO_COUNT)
NAME = b"bench"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    # proto3 leaves a default (0) scalar out
    return varint(number << 3 | 0) + varint(value) if value else b""


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value if value else b""


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def main() -> None:
    data = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent / "data")
    fetch = frame(field_bytes(1, NAME))
    echo = b"".join(frame(field_varint(1, i) + field_bytes(2, NAME)) for i in range(ECHO_COUNT))
    (data / "fetch.bin").write_bytes(fetch)
    (data / "echo.bin").write_bytes(echo)
    print(f"wrote {data}/fetch.bin ({len(fetch)} bytes), {data}/echo.bin ({len(echo)} bytes, {ECHO_COUNT} messages)")


if __name__ == "__main__":
    main()
