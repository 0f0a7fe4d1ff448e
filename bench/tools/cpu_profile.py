#!/usr/bin/env python3
"""Where each server's CPU goes under one load of bench/run: the server pinned to core 0 and h2load
to core 1 as in bench/run, its user and system time per call read from /proc around the h2load run,
and `perf record` (sampling, no call graphs) over the middle of it, its samples sorted by what code
they fell in (the kernel, the allocator, HTTP/2, the async runtime, the gRPC layer, protobuf and the
handler, an interpreter). Writes a markdown table (every server side by side, µs of CPU per call
per kind of code) to stdout and, with --write, to bench/PROFILE.md.

bench/profile runs it with bench/.venv's Python after bench/run has built everything.
"""
import argparse
import collections
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the servers, loads and pinning of bench/run)
from report import us  # noqa: E402

# What a sample's code is, in the order of the table's rows.
KERNEL = "kernel (system calls, loopback TCP, scheduling)"
COPY = "memcpy / memmove (libc)"
LIBC = "rest of libc"
ALLOC = "allocator (malloc / free, mimalloc)"
HTTP2 = "HTTP/2 (h2, hyper, http)"
RUNTIME = "async runtime (tokio, futures)"
GRPC = "gRPC layer (tonic, tower, axum)"
BYTES = "buffers (bytes)"
OWN = "protobuf and the handler (prost, prost-reflect, rhai, the server's own code)"
RUST_OTHER = "other Rust (core, std, tracing, …)"
PYTHON = "Python interpreter"
GRPC_CORE = "gRPC C core (grpcio's cygrpc)"
NODE = "Node / V8 runtime (node binary)"
JIT = "JIT-compiled JavaScript"
OTHER = "other"
ROWS = [KERNEL, COPY, LIBC, ALLOC, HTTP2, RUNTIME, GRPC, BYTES, OWN, RUST_OTHER, PYTHON, GRPC_CORE, NODE, JIT, OTHER]

CRATES = {
    **dict.fromkeys(["h2", "hyper", "hyper_util", "http", "http_body", "http_body_util", "httparse", "httpdate"], HTTP2),
    **dict.fromkeys(["tokio", "mio", "futures", "futures_util", "futures_core", "futures_channel", "tokio_util",
                     "tokio_stream", "async_stream", "pin_project_lite"], RUNTIME),
    **dict.fromkeys(["tonic", "tower", "tower_service", "tower_layer", "tower_http", "axum", "axum_core"], GRPC),
    "bytes": BYTES,
    **dict.fromkeys(["protodrop", "bench_reference", "prost", "prost_reflect", "rhai", "serde_json", "smallvec"], OWN),
}
# Crates every generic instance names (`core::ptr::drop_in_place<hyper::…>`): skipped when looking
# for the crate a symbol belongs to.
GENERIC = {"core", "alloc", "std"}
RUST_SERVERS = {"tonic", "protodrop", "protodrop-script"}
CRATE_PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def kind_of(server: str, binary: str, dso: str, sym: str) -> str:
    """What code a sample of `server` (whose executable is named `binary`) fell in."""
    if dso.startswith("[kernel") or dso == "[vdso]":
        return KERNEL
    if sym.startswith(("mi_", "_mi_")) or dso.startswith("libmimalloc"):
        return ALLOC
    if dso.startswith("libc.so") or dso.startswith("libm.so"):
        if "memmove" in sym or "memcpy" in sym or "memset" in sym:
            return COPY
        if re.search(r"malloc|free|realloc|calloc|tcache|arena", sym):
            return ALLOC
        return LIBC
    if dso.startswith("libpython") or dso.startswith("python"):
        return PYTHON
    if dso.startswith("cygrpc") or "grpc" in dso and dso.endswith(".so"):
        return GRPC_CORE
    if dso == "node":
        return NODE
    if dso.startswith("perf-") or dso in ("[unknown]", "[JIT]") or "JIT" in dso:
        return JIT if server == "node" else OTHER
    if dso == binary and server in RUST_SERVERS:  # a Rust server's own binary: by the crate its symbol names
        crates = [c for c in CRATE_PATH.findall(sym) if c not in GENERIC]
        if not crates:
            return ALLOC if re.search(r"\b(malloc|free|realloc)\b", sym) else RUST_OTHER
        return CRATES.get(crates[0], RUST_OTHER)
    return OTHER


def perf_shares(data: pathlib.Path, server: str, binary: str) -> dict:
    """Share of perf's samples per kind of code (flat: a sample counts for the function it hit)."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "-g", "none",
                          "--stdio", "--percent-limit", "0", "-t", "\t"],
                         capture_output=True, text=True, check=True).stdout
    shares = collections.Counter()
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith("%"):
            continue
        pct, dso, sym = float(parts[0].strip().rstrip("%")), parts[1].strip(), parts[2].strip()
        sym = re.sub(r"^\[[.k]\]\s*", "", sym)
        shares[kind_of(server, binary, dso, sym)] += pct / 100
    return dict(shares)


def profile(name: str, key: str, m: int, cfg) -> dict:
    server = bench.Server(name, bench.server_argv(name, cfg))
    try:
        h2load = bench.h2load_argv(server.addr, key, cfg.connections, m, cfg.seconds, cfg.warmup)
        with tempfile.TemporaryDirectory() as tmp:
            data = pathlib.Path(tmp) / "perf.data"
            (u0, s0), t0 = server.cpu_times(), time.perf_counter()
            run = subprocess.Popen(h2load, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # perf over the middle of the measured part: after the warm-up, a second short of its end.
            time.sleep(cfg.warmup + 1)
            perf = ["perf", "record", "-q", "-F", str(cfg.frequency), "-p", str(server.pid), "-o", str(data),
                    "--", "sleep", str(max(1, cfg.seconds - 2))]
            subprocess.run(perf, check=True, stdout=subprocess.DEVNULL)
            text, _ = run.communicate()
            wall = time.perf_counter() - t0
            u1, s1 = server.cpu_times()
            # server.argv is `taskset -c CPU EXECUTABLE …`
            shares = perf_shares(data, name, pathlib.Path(server.argv[3]).name)
        parsed = bench.parse_h2load(text)
        calls = parsed.get("calls_per_s")
        if not calls:
            raise RuntimeError(f"h2load against {name} gave no rate:\n{text}")
        user, system = (u1 - u0) / wall / calls, (s1 - s0) / wall / calls
        bench.log(f"{name} {key} -m {m}: {calls:,.0f} calls/s, {(user + system) * 1e6:.1f} µs of CPU per call "
                  f"({user * 1e6:.1f} user + {system * 1e6:.1f} system)")
        return {"calls_per_s": calls, "user": user, "system": system, "shares": shares,
                "h2load": shlex.join(h2load).replace(server.addr, "ADDR"),
                "perf": shlex.join(perf).replace(str(data), "perf.data").replace(f"-p {server.pid}", "-p PID")}
    finally:
        server.stop()


def table(key: str, connections: int, m: int, results: dict) -> list:
    names = list(results)
    lines = [f"### Scenario {bench.LOADS[key]['scenario']} ({bench.LOADS[key]['title']}), h2load -c {connections} -m {m}", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    rows = [("calls/s", [f"{r['calls_per_s']:,.0f}" for r in results.values()]),
            ("**server CPU per call**", [f"**{us(r['user'] + r['system'])}**" for r in results.values()]),
            ("user / system", [f"{us(r['user'])} / {us(r['system'])}" for r in results.values()])]
    for kind in ROWS:
        if not any(r["shares"].get(kind) for r in results.values()):
            continue
        cells = []
        for r in results.values():
            share = r["shares"].get(kind)
            cells.append("" if not share else f"{us(share * (r['user'] + r['system']))} ({share:.0%})")
        rows.append((kind, cells))
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protodrop-bin", required=True)
    ap.add_argument("--reference-bin", required=True)
    ap.add_argument("--servers", default="tonic,protodrop,node,python")
    ap.add_argument("--scenario", default="s1", choices=list(bench.LOADS), help="which load (default s1)")
    ap.add_argument("--streams", default="1,8", help="h2load -m values (default 1,8)")
    ap.add_argument("--seconds", type=int, default=12, help="h2load -D (default 12; perf records all but 2 s)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--frequency", type=int, default=999, help="perf record -F (default 999)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--python-threads", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="also write bench/PROFILE.md")
    ap.add_argument("--invocation", default="bench/profile")
    cfg = ap.parse_args()
    servers = cfg.servers.split(",")
    if cfg.scenario == "s3":
        servers = ["protodrop-script" if s == "protodrop" else s for s in servers if s in ("tonic", "protodrop")]
    commit = subprocess.run(["git", "-C", str(bench.REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    md = ["# Where the servers' CPU goes", "",
          f"Written by `{cfg.invocation}` on {time.strftime('%Y-%m-%d %H:%M:%S %z')} (protodrop {commit}). Each server "
          "runs alone, pinned to core 0 as in bench/run, under h2load pinned to core 1. *Server CPU per call* is "
          "the server's user + system time (`/proc/PID/stat`, all threads) over the h2load run, divided by its "
          "calls; the rows under it share that out by `perf record` samples of the server over the run's middle "
          f"(-F {cfg.frequency}, no call graphs: a sample counts for the function it hit, so code inlined into "
          "another crate's generic function counts for that crate). Kernel time includes what a loopback write "
          "costs the writer: TCP processing and waking the reader.", ""]
    commands = []
    for m in [int(x) for x in cfg.streams.split(",")]:
        results = {}
        for name in servers:
            r = profile(name, cfg.scenario, m, cfg)
            results[name] = r
            commands += [r["h2load"].replace(f"{bench.REPO}/", ""), r["perf"]]
        md += table(cfg.scenario, cfg.connections, m, results)
    md += ["## Commands", "", "For each server (as bench/run starts it: see RESULTS.md), the load and, meanwhile, perf:", "",
           "```sh", *dict.fromkeys(commands), "```", ""]
    text = "\n".join(md)
    print(text)
    if cfg.write:
        (bench.BENCH / "PROFILE.md").write_text(text)
        bench.log(f"wrote {bench.BENCH / 'PROFILE.md'}")


if __name__ == "__main__":
    main()
