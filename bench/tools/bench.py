#!/usr/bin/env python3
"""The driver of bench/run: starts every server pinned to core 0, checks its answers against the
compiled tonic reference, loads it with h2load pinned to core 1, measures start-up, reload and memory,
and writes bench/out/results.json (bench/tools/report.py turns it into RESULTS.md and results.png).

bench/run builds and installs everything first and then runs this with bench/.venv's Python; run
`bench/run --help` for the options. Every server is started in its own session and killed on exit,
whatever the exit; their pids are also listed in bench/out/pids for bench/run's trap.
"""
import argparse
import atexit
import json
import math
import os
import pathlib
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent.parent
REPO = BENCH.parent
OUT = BENCH / "out"
DATA = BENCH / "data"
PROTOS = BENCH / "protos"
GEN_PY = OUT / "gen" / "python"

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_requests  # noqa: E402  (ECHO_COUNT)
import gen_tree  # noqa: E402
from report import BUSY_LOAD_AVERAGE  # noqa: E402

SERVER_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The load scenarios: (what h2load calls, with which body, how many messages a call carries).
LOADS = {
    "s1": {"scenario": 1, "title": "unary helloworld.Greeter/SayHello, templated reply",
           "path": "/helloworld.Greeter/SayHello", "body": "req.bin", "per_call": 1, "target": 0.95},
    "s2": {"scenario": 2, "title": "unary echo of grpc_bench's complex_proto",
           "path": "/complex.Greeter/SayHello", "body": "req_complex.bin", "per_call": 1, "target": 0.90},
    "s3": {"scenario": 3, "title": "complex_proto echo answered by a Rhai script",
           "path": "/complex.Greeter/SayHello", "body": "req_complex.bin", "per_call": 1, "target": 0.80},
    "s4f": {"scenario": 4, "title": "server streaming, 1,000 small messages per call (bench.Stream/Fetch)",
            "path": "/bench.Stream/Fetch", "body": "fetch.bin", "per_call": 1000, "target": 0.90},
    "s4e": {"scenario": 4, "title": f"bidi echo, {make_requests.ECHO_COUNT} messages per call (bench.Stream/Echo)",
            "path": "/bench.Stream/Echo", "body": "echo.bin", "per_call": make_requests.ECHO_COUNT, "target": 0.90},
}
SERVER_ORDER = ["tonic", "protodrop", "node", "python"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes

LIVE: dict = {}  # pid -> Server


def stop_all() -> None:
    for server in list(LIVE.values()):
        server.stop()


def on_signal(signum, _frame) -> None:
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGHUP, on_signal)


class Server:
    """A server pinned to SERVER_CPU, started in its own session; `addr` comes from its
    `listening on ADDR` line, and `ready_s` is the time from spawn to that line."""

    def __init__(self, name: str, argv: list, env: dict | None = None, timeout: float = 120,
                 cpus: str = SERVER_CPU):
        self.name = name
        self.argv = ["taskset", "-c", cpus] + [str(a) for a in argv]
        (OUT / "logs").mkdir(parents=True, exist_ok=True)
        self.log_path = OUT / "logs" / f"{name.replace(' ', '-')}.stderr"
        self.stderr = open(self.log_path, "a")
        self.stderr.write(f"\n=== {time.strftime('%F %T')} {shlex.join(self.argv)}\n")
        self.stderr.flush()
        self.log_offset = self.stderr.tell()
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.pid = self.proc.pid
        LIVE[self.pid] = self
        with open(OUT / "pids", "a") as f:
            f.write(f"{self.pid}\n")
        line = self._read_line(timeout)
        self.ready_s = time.perf_counter() - started
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{name} did not start (stdout: {line!r}); see {self.log_path}")
        self.addr = line.split()[-1]
        # keep draining stdout, so a chatty server never blocks on a full pipe
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()

    def _read_line(self, timeout: float) -> str:
        result = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline().decode()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0].strip() if result else ""

    def status(self, key: str) -> int | None:
        """A /proc/PID/status value in KiB (VmRSS, VmHWM)."""
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except FileNotFoundError:
            pass
        return None

    def cpu_times(self) -> tuple:
        """(user, system) CPU seconds of the whole process (all threads) so far."""
        fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def cpu_seconds(self) -> float:
        """user + system CPU time of the whole process (all threads) so far."""
        return sum(self.cpu_times())

    def log_text(self) -> str:
        """What the server wrote on stderr since it started."""
        with open(self.log_path, errors="replace") as f:
            f.seek(self.log_offset)
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.pid not in LIVE:
            return
        del LIVE[self.pid]
        for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.stderr.close()


# ---------------------------------------------------------------- gRPC on the wire (curl)

def frames(body: bytes) -> list:
    """The messages of a gRPC body (5-byte prefix: compressed flag, big-endian length)."""
    out, i = [], 0
    while i < len(body):
        if i + 5 > len(body):
            raise ValueError("truncated gRPC frame header")
        flag, length = body[i], int.from_bytes(body[i + 1:i + 5], "big")
        if flag != 0:
            raise ValueError("compressed frame (not asked for)")
        out.append(body[i + 5:i + 5 + length])
        i += 5 + length
    return out


def curl_call(addr: str, path: str, body_file: pathlib.Path) -> dict:
    """One call with exactly the bytes h2load sends; returns status, headers, trailers and body."""
    with tempfile.TemporaryDirectory() as tmp:
        hdr, out = pathlib.Path(tmp, "headers"), pathlib.Path(tmp, "body")
        cmd = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "60", "-X", "POST",
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "--data-binary", f"@{body_file}", "-D", str(hdr), "-o", str(out), f"http://{addr}{path}"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            return {"error": f"curl exit {run.returncode}: {run.stderr.strip()}"}
        # curl writes the headers, a blank line, then the trailers (HTTP/2) to the -D file
        blocks = hdr.read_text(errors="replace").replace("\r\n", "\n").split("\n\n")
        head_lines = [l for l in blocks[0].split("\n") if l]
        trailers = {}
        for block in blocks[1:]:
            for l in block.split("\n"):
                if ":" in l:
                    k, v = l.split(":", 1)
                    trailers[k.strip().lower()] = v.strip()
        headers = {}
        for l in head_lines[1:]:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        return {"status_line": head_lines[0] if head_lines else "", "headers": headers,
                "trailers": trailers, "body": out.read_bytes() if out.exists() else b""}


def check_reference(key: str, reply: bytes) -> str | None:
    """Checks the tonic reference's reply means what the scenario says (decoded with the generated
    Python modules); returns a problem or None."""
    sys.path.insert(0, str(GEN_PY))
    import complex_pb2
    import helloworld_pb2
    import stream_pb2
    request = (DATA / LOADS[key]["body"]).read_bytes()
    msgs = frames(reply)
    if key == "s1":
        want = "Hello " + helloworld_pb2.HelloRequest.FromString(frames(request)[0]).name
        got = [helloworld_pb2.HelloReply.FromString(m).message for m in msgs]
        return None if got == [want] else f"expected [{want!r}], got {got!r}"
    if key in ("s2", "s3"):
        want = complex_pb2.HelloRequest.FromString(frames(request)[0]).request
        got = [complex_pb2.HelloReply.FromString(m).response for m in msgs]
        return None if got == [want] else f"the echo differs from the request: {got!r}"
    if key == "s4f":
        name = stream_pb2.FetchRequest.FromString(frames(request)[0]).name
        got = [stream_pb2.Item.FromString(m) for m in msgs]
        ok = len(got) == 1000 and all(it.index == i and it.name == name for i, it in enumerate(got))
        return None if ok else f"expected 1000 items 0..999 named {name!r}, got {len(got)}"
    if key == "s4e":
        return None if msgs == frames(request) else f"expected the {len(frames(request))} request messages back, got {len(msgs)}"
    return None


def verify(server: Server, keys: list, reference: dict) -> dict:
    """grpc-status 0 and the reference's bytes, for every scenario this server runs."""
    result = {}
    for key in keys:
        load = LOADS[key]
        r = curl_call(server.addr, load["path"], DATA / load["body"])
        problems = []
        if "error" in r:
            problems.append(r["error"])
        else:
            status = r["trailers"].get("grpc-status", r["headers"].get("grpc-status"))
            if not r["status_line"].startswith("HTTP/2 200"):
                problems.append(f"HTTP status line {r['status_line']!r}")
            if not r["headers"].get("content-type", "").startswith("application/grpc"):
                problems.append(f"content-type {r['headers'].get('content-type')!r}")
            if status != "0":
                problems.append(f"grpc-status {status!r} (grpc-message {r['trailers'].get('grpc-message', r['headers'].get('grpc-message'))!r})")
            if "grpc-status" not in r["trailers"]:
                problems.append("grpc-status is not in the trailers")
            try:
                got = frames(r["body"])
            except ValueError as e:
                problems.append(f"reply body: {e}")
                got = None
            if key in reference and got is not None:
                want = frames(reference[key])
                if got != want:
                    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                    problems.append(f"reply differs from the tonic reference's: {len(got)} messages vs {len(want)}, "
                                    f"first difference in message {first}: {got[first:first + 1]!r} vs {want[first:first + 1]!r}")
        result[key] = {"ok": not problems, "problems": problems,
                       "bytes": len(r.get("body", b"")), "messages": len(frames(r["body"])) if not problems else None}
        log(f"  verify {server.name} {load['path']}: " + ("ok (grpc-status 0, reference bytes)" if not problems else "; ".join(problems)))
    return result


# ---------------------------------------------------------------- h2load

def percentile(sorted_values: list, p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def parse_h2load(text: str) -> dict:
    r = {}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("finished in"):
            parts = [p.strip() for p in s[len("finished in"):].split(",")]
            r["elapsed_s"] = float(parts[0].rstrip("s"))
            r["calls_per_s"] = float(parts[1].split()[0])
        elif s.startswith("requests:"):
            for part in s[len("requests:"):].split(","):
                n, what = part.split()
                r[what] = int(n)
        elif s.startswith("time for request:"):
            r["time_for_request"] = s[len("time for request:"):].split()
    return r


def h2load_argv(addr: str, key: str, connections: int, streams: int, duration: int, warmup: int,
                extra: list = ()) -> list:
    """The load: h2load pinned to LOAD_CPU sending `key`'s request to `addr` (`extra` before the URL)."""
    load = LOADS[key]
    return ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(connections), "-m", str(streams),
            "-D", str(duration), "--warm-up-time", str(warmup), "-d", str(DATA / load["body"]),
            "-H", "content-type: application/grpc", "-H", "te: trailers", *extra, f"http://{addr}{load['path']}"]


def h2load_once(server: Server, key: str, streams: int, cfg, latency: bool) -> dict:
    """One h2load run; with `latency`, h2load writes every request's time to a log (a write per
    request on the load core), read here for the percentiles."""
    label = f"{server.name}-{key}-m{streams}" + ("-latency" if latency else "")
    tmpdir = pathlib.Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else OUT / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    logfile = tmpdir / f"protodrop-bench-{os.getpid()}-{label}.log"
    duration = cfg.latency_duration if latency else cfg.duration
    cmd = h2load_argv(server.addr, key, cfg.connections, streams, duration, cfg.warmup,
                      ["--log-file", str(logfile)] if latency else [])
    raw = OUT / "raw" / f"{label}.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    cpu0, usage0, t0 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(raw, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        run = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = server.cpu_seconds() if server.alive() else cpu0
    parsed = parse_h2load(raw.read_text(errors="replace"))
    result = {
        "command": shlex.join(cmd), "raw": str(raw.relative_to(BENCH)), "exit": run.returncode,
        "calls_per_s": parsed.get("calls_per_s"),
        "total": parsed.get("total"), "succeeded": parsed.get("succeeded"), "failed": parsed.get("failed"),
        "errored": parsed.get("errored"), "timeout": parsed.get("timeout"),
        "server_cpu": (cpu1 - cpu0) / wall,
        "h2load_cpu": ((usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)) / wall,
    }
    if latency:
        durations = []
        if logfile.exists():
            durations = sorted(int(t) for t in logfile.read_bytes().split()[2::3])
            if cfg.keep_logs:
                shutil.move(str(logfile), OUT / "raw" / f"{label}.log")
            else:
                logfile.unlink()
        result.update({"p50_us": percentile(durations, 0.50), "p99_us": percentile(durations, 0.99),
                       "max_us": durations[-1] if durations else None, "logged": len(durations)})
    return result


# What a logged run adds to a result (beside the run itself, as `latency_run`).
LATENCY_KEYS = ("p50_us", "p99_us", "max_us", "logged")


def h2load(server: Server, key: str, streams: int, cfg, latency: bool = True) -> dict:
    """Throughput from a run without a log, then (with `latency`) latency percentiles from a second,
    logged run (the log's write per request would slow h2load down in the throughput run)."""
    load = LOADS[key]
    tp = h2load_once(server, key, streams, cfg, latency=False)
    lat = h2load_once(server, key, streams, cfg, latency=True) if latency else {}
    result = {"server": server.name, "load": key, "streams": streams, "connections": cfg.connections, **tp,
              "msgs_per_s": tp["calls_per_s"] * load["per_call"] if tp.get("calls_per_s") is not None else None}
    if latency:
        result.update({k: lat[k] for k in LATENCY_KEYS}, latency_run=lat)
    if not server.alive():
        result["problem"] = f"{server.name} exited during the run"
    label = f"{server.name}-{key}-m{streams}"
    log(f"  {label}: {fmt_rate(result['msgs_per_s'])} {'msg' if load['per_call'] > 1 else 'req'}/s, "
        f"p50 {fmt_us(result.get('p50_us'))}, p99 {fmt_us(result.get('p99_us'))}, failed {result['failed']}, "
        f"server CPU {result['server_cpu']:.0%}, h2load CPU {result['h2load_cpu']:.0%}"
        + (f" (logged run: {fmt_rate(lat['calls_per_s'])} calls/s)" if lat.get("calls_per_s") else ""))
    return result


def fmt_rate(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_us(x) -> str:
    if x is None:
        return "—"
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x} µs"


# ---------------------------------------------------------------- servers

def server_argv(name: str, cfg) -> list:
    if name == "tonic":
        return [cfg.reference_bin, "127.0.0.1:0"]
    if name in ("protodrop", "protodrop-script"):
        handlers = BENCH / "handlers" / ("script" if name == "protodrop-script" else "main")
        return [cfg.protodrop_bin, "--protos", PROTOS, "--handlers", handlers, "--listen", "127.0.0.1:0"]
    if name == "node":
        return ["node", BENCH / "peers" / "node" / "server.js", "--protos", PROTOS, "--listen", "127.0.0.1:0"]
    if name == "python":
        return [sys.executable, BENCH / "peers" / "python" / "server.py", "--gen", GEN_PY,
                "--listen", "127.0.0.1:0", "--threads", str(cfg.python_threads)]
    raise ValueError(name)


def reference_bytes(cfg, keys: list) -> dict:
    """The tonic reference's reply to every request, checked for meaning."""
    server = Server("tonic-verify", server_argv("tonic", cfg))
    try:
        ref, problems = {}, []
        for key in keys:
            r = curl_call(server.addr, LOADS[key]["path"], DATA / LOADS[key]["body"])
            if "error" in r:
                problems.append(f"{key}: {r['error']}")
                continue
            problem = check_reference(key, r["body"])
            if problem:
                problems.append(f"{key}: {problem}")
            ref[key] = r["body"]
        if problems:
            raise RuntimeError("the tonic reference answers wrongly: " + "; ".join(problems))
        log("tonic reference replies decoded and checked: " + ", ".join(f"{k} {len(v)} bytes" for k, v in ref.items()))
        return ref
    finally:
        server.stop()


def start_server(name: str, cfg, keys: list, reference: dict, results: dict) -> Server | None:
    """Starts `name`, records its start-up and idle RSS, and checks its replies to `keys`."""
    entry = results["servers"].setdefault(name, {})
    log(f"{name}: starting")
    try:
        server = Server(name, server_argv(name, cfg))
    except RuntimeError as e:
        log(f"  {e}")
        entry["problem"] = str(e)
        return None
    entry["command"] = shlex.join(server.argv)
    entry["ready_s"] = server.ready_s
    time.sleep(1.0)
    entry["idle_rss_kib"] = server.status("VmRSS")
    log(f"  ready in {server.ready_s * 1000:.0f} ms at {server.addr}; idle RSS {entry['idle_rss_kib'] / 1024:.1f} MiB")
    entry["verify"] = verify(server, keys, reference)
    return server


def rounds(servers: list, scenarios: set) -> list:
    """The load rounds, in order: (key, [(server, load key), …]). Every server takes its turn at each
    -m of a round before the next -m, so a slow drift of a shared machine (another VM, thermal) is
    felt by all of them alike instead of by whichever ran last. The Rhai script (scenario 3) takes
    its turn in scenario 2's round, right after the template: the tonic echo is its reference."""
    out = []
    for key in ("s1", "s2", "s4f", "s4e"):
        turns = [(name, key) for name in servers] if LOADS[key]["scenario"] in scenarios else []
        if key == "s2" and 3 in scenarios and "protodrop" in servers:
            if not turns:
                turns = [("tonic", "s2")] if "tonic" in servers else []
            after = max([i + 1 for i, (n, _) in enumerate(turns) if n in ("protodrop", "tonic")] or [0])
            turns.insert(after, ("protodrop-script", "s3"))
        if turns:
            out.append((key, turns))
    return out


def median_run(runs: list) -> dict:
    """With --turns N, the turn whose throughput is the median (the lower middle one for an even N),
    with every turn's throughput beside it, and the latency of the turn that measured it (the last)."""
    ranked = sorted(runs, key=lambda r: r["msgs_per_s"] if r.get("msgs_per_s") is not None else -1)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        chosen["turns_msgs_per_s"] = [r.get("msgs_per_s") for r in runs]
        timed = next((r for r in runs if "latency_run" in r), {})
        chosen.update({k: timed[k] for k in (*LATENCY_KEYS, "latency_run") if k in timed})
    return chosen


def run_interleaved(cfg, servers: list, scenarios: set, reference: dict, results: dict) -> None:
    plan = rounds(servers, scenarios)
    names = list(dict.fromkeys(name for _, turns in plan for name, _ in turns))
    if 6 in scenarios:
        names += [n for n in servers if n not in names]
    live = {}
    try:
        for name in names:
            server = start_server(name, cfg, [k for _, turns in plan for n, k in turns if n == name], reference, results)
            if server:
                live[name] = server
        for key, turns in plan:
            log(f"{key}: " + ", ".join(f"{n} ({k})" if k != key else n for n, k in turns) + f" in turn at -m {cfg.streams}")
            for m in cfg.streams:
                taken = {}
                for turn in range(cfg.turns):
                    for name, load_key in turns:
                        server = live.get(name)
                        if server is None:
                            continue
                        if not server.alive():
                            results["servers"][name].setdefault("problem", f"{name} exited")
                            continue
                        # Latency once, in the last turn: it needs no median (its run is long and
                        # every call counts), and a logged run per turn would add half again.
                        last = turn == cfg.turns - 1
                        taken.setdefault(name, []).append(h2load(server, load_key, m, cfg, latency=last))
                for runs in taken.values():
                    results["runs"].append(median_run(runs))
            if key == "s1":
                for name, _ in turns:
                    if name in live and live[name].alive():
                        results["servers"][name]["peak_rss_kib"] = live[name].status("VmHWM")
                        log(f"  {name}: peak RSS after scenario 1: {results['servers'][name]['peak_rss_kib'] / 1024:.1f} MiB")
    finally:
        for server in live.values():
            server.stop()


# ---------------------------------------------------------------- scenario 5

def grpc_unary_raw(channel, path: str, payload: bytes, timeout: float = 5) -> bytes:
    return channel.unary_unary(path)(payload, timeout=timeout)


def measure_reload(cfg, protos: pathlib.Path, handlers: pathlib.Path, handler_file: pathlib.Path,
                   write_handler, path: str, payload: bytes, label: str) -> dict:
    """Starts protodrop (watching) on a tree, then `tries` times: rewrites `handler_file` with a new
    marker and calls `path` (every 2 ms) until the marker is in the reply; the time from the end of
    the write to that reply."""
    import grpc
    server = Server(f"protodrop-reload-{label.replace(' ', '-')}", [cfg.protodrop_bin, "--protos", protos, "--handlers", handlers,
                                                  "--listen", "127.0.0.1:0"])
    times, polls, errors = [], [], 0
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this client is the load side: core 1
    try:
        with grpc.insecure_channel(server.addr) as channel:
            grpc_unary_raw(channel, path, payload)  # connected and answering
            for k in range(1, cfg.reload_tries + 1):
                marker = f"reload-{k}-{os.getpid()}"
                time.sleep(0.5)  # let the previous reload settle
                text = write_handler(marker)
                with open(handler_file, "w") as f:
                    f.write(text)
                saved = time.perf_counter()
                n = 0
                while True:
                    n += 1
                    try:
                        reply = grpc_unary_raw(channel, path, payload)
                    except grpc.RpcError:
                        errors += 1
                        reply = b""
                    if marker.encode() in reply:
                        break
                    # a call every 2 ms: fine-grained enough, and it leaves the server's one core to
                    # the reload rather than to answering the poll
                    time.sleep(0.002)
                    if time.perf_counter() - saved > 30:
                        raise RuntimeError(f"{label}: the new answer was not served within 30 s")
                times.append(time.perf_counter() - saved)
                polls.append(n)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        server.stop()
    # protodrop logs each rebuild's own time: `reloaded ... elapsed_ms=N`
    rebuilds = [int(m) for m in re.findall(r"reloaded .*elapsed_ms=(\d+)", server.log_text())]
    result = {"rebuild_ms": rebuilds, "rebuild_median_ms": statistics.median(rebuilds) if rebuilds else None,
              "tries": len(times), "median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000,
              "max_ms": max(times) * 1000, "all_ms": [round(t * 1000, 1) for t in times],
              "polls_median": statistics.median(polls), "call_errors": errors}
    log(f"  reload ({label}): median {result['median_ms']:.0f} ms, min {result['min_ms']:.0f}, max {result['max_ms']:.0f} "
        f"over {len(times)} saves; protodrop's own rebuild times (its log): {rebuilds} ms")
    return result


def startup(name: str, argv: list, tries: int, cpus: str = SERVER_CPU) -> dict:
    times, rss, hwm = [], [], []
    for i in range(tries):
        s = Server(f"{name}-startup", argv, timeout=300, cpus=cpus)
        try:
            times.append(s.ready_s)
            time.sleep(0.5)
            rss.append(s.status("VmRSS"))
            hwm.append(s.status("VmHWM"))
        finally:
            s.stop()
    r = {"tries": tries, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
         "all_s": [round(t, 3) for t in times], "rss_kib": statistics.median(rss), "hwm_kib": statistics.median(hwm),
         "command": shlex.join(["taskset", "-c", cpus] + [str(a) for a in argv])}
    log(f"  {name}: ready in {r['median_s'] * 1000:.0f} ms (median of {tries}: {r['all_s']}), "
        f"RSS {r['rss_kib'] / 1024:.0f} MiB, peak {r['hwm_kib'] / 1024:.0f} MiB")
    return r


def scenario5(cfg, servers: list) -> dict:
    res = {}
    work = pathlib.Path(tempfile.mkdtemp(prefix="protodrop-bench-tree-"))
    try:
        summary = json.loads(subprocess.run([sys.executable, BENCH / "tools" / "gen_tree.py", work,
                                             "--files", str(cfg.tree_files), "--messages", str(cfg.tree_messages)],
                                            check=True, capture_output=True, text=True).stdout)
        res["tree"] = summary
        log(f"scenario 5: generated {summary}")
        protos, handlers = work / "protos", work / "handlers"
        if "protodrop" in servers:
            argv = [cfg.protodrop_bin, "--protos", protos, "--handlers", handlers, "--listen", "127.0.0.1:0"]
            res["protodrop_startup"] = startup("protodrop", argv, cfg.startup_tries)
            # protodrop parses the tree on spare cores (src/protos/ahead.rs): also timed with both cores
            res["protodrop_startup_2cores"] = startup("protodrop-2cores", argv, cfg.startup_tries, cpus="0,1")
        if "node" in servers:
            res["node_startup"] = startup("node", ["node", BENCH / "peers" / "node" / "server.js", "--protos", protos,
                                                   "--listen", "127.0.0.1:0"], cfg.startup_tries)
        if "python" in servers:
            gen = work / "gen-python"
            gen.mkdir()
            files = sorted(str(p.relative_to(protos)) for p in protos.rglob("*.proto"))
            cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "grpc_tools.protoc", f"-I{protos}",
                   f"--python_out={gen}", f"--grpc_python_out={gen}"] + files
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            res["python_codegen"] = {"s": time.perf_counter() - t0,
                                     "command": shlex.join(cmd[:7]) + f" <{len(files)} files>"}
            log(f"  python: grpc_tools.protoc of the tree took {res['python_codegen']['s']:.2f} s")
            res["python_startup"] = startup("python", [sys.executable, BENCH / "peers" / "python" / "server.py",
                                                       "--gen", gen, "--all", "--listen", "127.0.0.1:0"], cfg.startup_tries)
        if "protodrop" in servers:
            # reload on the large tree: the handler of tree.f0000.Svc0
            res["reload_tree"] = measure_reload(
                cfg, protos, handlers, handlers / "f0000.toml", lambda marker: gen_tree.handler_file(0, marker),
                "/tree.f0000.Svc0/Get", b"", "large tree")
            # reload on the bench protos (3 files): scenario 1's handler
            small = work / "small"
            shutil.copytree(PROTOS, small / "protos")
            shutil.copytree(BENCH / "handlers" / "main", small / "handlers")
            original = (small / "handlers" / "bench.toml").read_text()
            res["reload_small"] = measure_reload(
                cfg, small / "protos", small / "handlers", small / "handlers" / "bench.toml",
                lambda marker: original.replace('"Hello {{request.name}}"', f'"Hello {marker} {{{{request.name}}}}"'),
                "/helloworld.Greeter/SayHello", frames((DATA / "req.bin").read_bytes())[0], "bench protos")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


# ---------------------------------------------------------------- machine

def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001  (machine info is best effort)
        return f"({e})"


def load_average() -> list:
    """The 1-, 5- and 15-minute load averages, as /proc/loadavg writes them."""
    return open("/proc/loadavg").read().split()[:3]


def machine(cfg) -> dict:
    lscpu = {}
    for line in sh("LC_ALL=C lscpu").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    import grpc
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu_model": lscpu.get("Model name", "?"),
        "cpus": lscpu.get("CPU(s)", str(os.cpu_count())),
        "threads_per_core": lscpu.get("Thread(s) per core", "?"),
        "governor": sh("cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null") or "n/a",
        "memory": sh("free -h | awk '/^Mem:/ {print $2}'"),
        "kernel": platform.release(),
        "os": sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""),
        "loadavg_at_start": load_average(),
        "rustc": sh("rustc --version"),
        "h2load": sh("h2load --version"),
        "node": sh("node --version"),
        "grpc_js": json.loads((BENCH / "peers/node/node_modules/@grpc/grpc-js/package.json").read_text())["version"],
        "proto_loader": json.loads((BENCH / "peers/node/node_modules/@grpc/proto-loader/package.json").read_text())["version"],
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "gnuplot": sh("gnuplot --version"),
        "curl": sh("curl --version | head -1"),
        "protodrop_commit": sh(f"git -C {REPO} rev-parse --short HEAD") + (
            " (with uncommitted changes)" if sh(f"git -C {REPO} status --porcelain -- src Cargo.toml Cargo.lock") else ""),
    }


def settle(limit: float = BUSY_LOAD_AVERAGE, max_wait: int = 150) -> None:
    """Waits (up to max_wait s) for the 1-minute load average to fall under `limit`: bench/run
    builds right before this script starts, and the load average it leaves behind would otherwise
    be reported as a busy machine (it decays with a one-minute time constant)."""
    started = time.time()
    load1 = float(load_average()[0])
    if load1 < limit:
        return
    log(f"load average {load1:.2f} (the builds just done?): waiting up to {max_wait} s for it to fall under {limit}")
    while load1 >= limit and time.time() - started < max_wait:
        time.sleep(5)
        load1 = float(load_average()[0])
    log(f"load average {load1:.2f} after {time.time() - started:.0f} s")


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protodrop-bin", required=True)
    ap.add_argument("--reference-bin", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6")
    ap.add_argument("--servers", default=",".join(SERVER_ORDER))
    ap.add_argument("--duration", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--streams", help="h2load -m values, comma-separated")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--turns", type=int, default=1,
                    help="turns each server takes at each -m (interleaved); the median one is reported")
    ap.add_argument("--python-threads", type=int, default=16)
    ap.add_argument("--keep-logs", action="store_true", help="keep h2load's per-request logs in out/raw")
    ap.add_argument("--commands", default="", help="the build commands bench/run ran (for RESULTS.md)")
    ap.add_argument("--invocation", default="bench/run", help="how bench/run was called (for RESULTS.md)")
    cfg = ap.parse_args()
    cfg.duration = cfg.duration or (3 if cfg.quick else 20)
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (1 if cfg.quick else 5)
    cfg.latency_duration = max(3, cfg.duration // 2)
    cfg.streams = [int(x) for x in (cfg.streams or ("8" if cfg.quick else "1,8,32")).split(",")]
    cfg.startup_tries = 3 if cfg.quick else 5
    cfg.reload_tries = 5 if cfg.quick else 10
    cfg.tree_files, cfg.tree_messages = 1000, 10000
    scenarios = {int(s) for s in cfg.scenarios.split(",") if s}
    servers = [s for s in SERVER_ORDER if s in cfg.servers.split(",")]

    OUT.mkdir(exist_ok=True)
    settle()
    keys = [k for k in ("s1", "s2", "s4f", "s4e") if LOADS[k]["scenario"] in scenarios]
    if 6 in scenarios and "s1" not in keys:
        log("scenario 6 without scenario 1: peak RSS is measured after scenario 1's load, so only idle RSS is reported")
    results = {
        "mode": "quick" if cfg.quick else (
            "full" if (cfg.duration, cfg.warmup, cfg.streams, cfg.connections, sorted(scenarios), servers)
            == (20, 5, [1, 8, 32], 16, [1, 2, 3, 4, 5, 6], SERVER_ORDER) else "custom"),
        "invocation": cfg.invocation,
        "config": {"duration": cfg.duration, "latency_duration": cfg.latency_duration, "warmup": cfg.warmup, "streams": cfg.streams,
                   "connections": cfg.connections, "python_threads": cfg.python_threads, "turns": cfg.turns,
                   "scenarios": sorted(scenarios), "servers": servers, "echo_count": make_requests.ECHO_COUNT},
        "machine": machine(cfg), "build_commands": cfg.commands, "loads": LOADS,
        "servers": {}, "runs": [],
    }
    started = time.perf_counter()
    ref_keys = sorted(set(keys) | ({"s2", "s3"} if 3 in scenarios else set()))
    reference = reference_bytes(cfg, ref_keys) if ref_keys else {}
    if keys or scenarios & {3, 6}:
        run_interleaved(cfg, servers, scenarios, reference, results)
    if 5 in scenarios:
        results["scenario5"] = scenario5(cfg, servers)
    results["elapsed_s"] = time.perf_counter() - started
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    log(f"wrote {OUT / 'results.json'} ({results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
