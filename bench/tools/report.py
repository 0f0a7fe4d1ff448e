#!/usr/bin/env python3
"""Turns bench/out/results.json (written by bench/tools/bench.py) into bench/RESULTS.md and, with
gnuplot, bench/results.png. bench/run calls it at the end; `bench/run --report-only` calls it alone.
"""
import json
import pathlib
import shlex
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent
REPO = BENCH.parent
OUT = BENCH / "out"
PLOT = OUT / "plot"

SERVERS = ["tonic", "protodrop", "node", "python"]
LABEL = {"tonic": "tonic 0.14 (compiled, reference)", "protodrop": "protodrop",
         "protodrop-script": "protodrop (Rhai script)", "node": "Node @grpc/grpc-js + proto-loader",
         "python": "Python grpcio (sync, thread pool)"}
SHORT = {"tonic": "tonic", "protodrop": "protodrop", "protodrop-script": "protodrop (script)",
         "node": "node", "python": "python"}
KEYS = ["s1", "s2", "s3", "s4f", "s4e"]
PLOT_LABEL = {"s1": "1 hello", "s2": "2 echo", "s3": "3 script echo",
              "s4f": "4 stream", "s4e": "4 bidi"}
IDLE_RSS_TARGET_MB = 25
STARTUP_TARGET_S = 1.0
RELOAD_TARGET_MS = 300
NODE_FACTOR, PYTHON_FACTOR = 7, 20
# A 1-minute load average above this when the run starts is reported as a busy machine (bench.py's
# settle() waits for it to fall under it first).
BUSY_LOAD_AVERAGE = 1.0


def rate(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def lat(us) -> str:
    if us is None:
        return "—"
    if us >= 100_000:
        return f"{us / 1000:,.0f} ms"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us} µs"


def us(seconds) -> str:
    return "—" if seconds is None else f"{seconds * 1e6:,.1f} µs"


def mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def mark(ok) -> str:
    return "—" if ok is None else ("✅ pass" if ok else "❌ fail")


class Results:
    def __init__(self, data: dict):
        self.d = data
        self.runs = data["runs"]
        self.loads = data["loads"]
        self.streams = data["config"]["streams"]

    def run(self, server: str, key: str, m: int):
        # scenario 3's reference is the compiled echo of scenario 2
        if key == "s3":
            if server == "tonic":
                key = "s2"
            elif server == "protodrop":
                server = "protodrop-script"
        for r in self.runs:
            if r["server"] == server and r["load"] == key and r["streams"] == m:
                return r
        return None

    def verified(self, server: str, key: str) -> bool | None:
        v = self.d["servers"].get(server, {}).get("verify", {}).get("s2" if key == "s3" and server != "protodrop-script" else key)
        return None if v is None else v["ok"]

    def ratio(self, server: str, key: str, m: int):
        r, ref = self.run(server, key, m), self.run("tonic", key, m)
        if not r or not ref or not ref.get("msgs_per_s") or r.get("msgs_per_s") is None:
            return None
        return r["msgs_per_s"] / ref["msgs_per_s"]

    def cpu_ratio(self, server: str, key: str, m: int):
        """The ratio per CPU-second each server used: what the ratio would be if both had had a whole
        core (meaningful when the servers are CPU-bound; steadier on a busy machine)."""
        r, ref = self.run(server, key, m), self.run("tonic", key, m)
        if not r or not ref or not r.get("msgs_per_s") or not ref.get("msgs_per_s") or not r["server_cpu"] or not ref["server_cpu"]:
            return None
        return (r["msgs_per_s"] / r["server_cpu"]) / (ref["msgs_per_s"] / ref["server_cpu"])

    def cpu_per_call(self, server: str, key: str, m: int):
        """Seconds of the server's CPU (user + system) per call: its share of a core over its calls/s."""
        r = self.run(server, key, m)
        calls = r and (r.get("calls_per_s") if self.loads[key]["per_call"] > 1 else r.get("msgs_per_s"))
        if not calls or not r.get("server_cpu"):
            return None
        return r["server_cpu"] / calls

    def servers_in(self, key: str) -> list:
        if key == "s3" and not any(r["server"] == "protodrop-script" for r in self.runs):
            return []
        names = ["tonic", "protodrop"] if key == "s3" else SERVERS
        return [s for s in names if any(self.run(s, key, m) for m in self.streams)]


def load_table(res: Results, key: str) -> list:
    load = res.loads[key]
    unit = "msg/s" if load["per_call"] > 1 else "req/s"
    target = load["target"]
    lines = ["| server | -c × -m | " + ("calls/s | " if load["per_call"] > 1 else "") +
             f"{unit} | ratio to tonic | p50 | p99 | failed | server CPU | h2load CPU | server CPU per call | ratio per CPU-second | target ≥ {target:.2f} |",
             "|---|---|" + ("---:|" if load["per_call"] > 1 else "") + "---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in res.streams:
        for server in res.servers_in(key):
            r = res.run(server, key, m)
            if not r:
                continue
            ratio = res.ratio(server, key, m)
            name = LABEL["protodrop-script" if key == "s3" and server == "protodrop" else server]
            if key == "s3" and server == "tonic":
                name += ", its scenario-2 run"
            verified = res.verified("protodrop-script" if key == "s3" and server == "protodrop" else server, key)
            if verified is False:
                name += " ⚠ wrong replies (see Verification)"
            passed = None
            if server == "protodrop" and ratio is not None:
                passed = ratio >= target and verified is not False
            cells = [name, f"{r['connections']} × {m}"]
            if load["per_call"] > 1:
                cells.append(f"{r['calls_per_s']:,.1f}" if r.get("calls_per_s") is not None else "—")
            failed = (r.get("failed") or 0) + (r.get("errored") or 0) + (r.get("timeout") or 0)
            cells += [rate(r.get("msgs_per_s")), "—" if ratio is None else f"{ratio:.2f}", lat(r.get("p50_us")),
                      lat(r.get("p99_us")), f"{failed:,}", f"{r['server_cpu']:.0%}", f"{r['h2load_cpu']:.0%}"]
            per_call = res.cpu_per_call(server, key, m)
            cpu_ratio = res.cpu_ratio(server, key, m)
            cells += [us(per_call),
                      "—" if cpu_ratio is None else f"{cpu_ratio:.2f}", mark(passed) if server == "protodrop" else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(res: Results) -> list:
    rows = []
    for key in KEYS:
        target = res.loads[key]["target"]
        ratios = {m: res.ratio("protodrop", key, m) for m in res.streams}
        ratios = {m: v for m, v in ratios.items() if v is not None}
        if ratios:
            ok = all(v >= target for v in ratios.values()) and res.verified(
                "protodrop-script" if key == "s3" else "protodrop", key) is not False
            per_cpu = {m: res.cpu_ratio("protodrop", key, m) for m in ratios}
            rows.append((f"scenario {res.loads[key]['scenario']} ({res.loads[key]['title']}): protodrop / tonic ≥ {target:.2f}",
                         ", ".join(f"{v:.2f} (-m {m})" for m, v in ratios.items()) + "; per CPU-second: "
                         + ", ".join("—" if v is None else f"{v:.2f}" for v in per_cpu.values()), ok))
    for peer, factor in (("node", NODE_FACTOR), ("python", PYTHON_FACTOR)):
        vals, reference, per_call = {}, {}, {}
        for m in res.streams:
            a, b, t = res.run("protodrop", "s1", m), res.run(peer, "s1", m), res.run("tonic", "s1", m)
            if a and b and b.get("msgs_per_s"):
                vals[m] = a["msgs_per_s"] / b["msgs_per_s"]
                reference[m] = t["msgs_per_s"] / b["msgs_per_s"] if t and t.get("msgs_per_s") else None
                per_call[m] = [res.cpu_per_call(s, "s1", m) for s in ("protodrop", "tonic", peer)]
        if vals:
            # What the multiple asks of a server, next to what the compiled reference reaches: the
            # peer's CPU per call over the factor is the budget per call.
            detail = "; the tonic reference's own: " + ", ".join(
                "—" if v is None else f"{v:.1f}×" for v in reference.values())
            budget = [f"-m {m}: {us(pd)} / {us(t)} / {us(peer_us)}, budget {us(peer_us and peer_us / factor)}"
                      for m, (pd, t, peer_us) in per_call.items()]
            detail += "; server CPU per call, protodrop / tonic / peer: " + "; ".join(budget)
            rows.append((f"scenario 1: protodrop ≥ {factor}× {LABEL[peer]}",
                         ", ".join(f"{v:.1f}× (-m {m})" for m, v in vals.items()) + detail,
                         all(v >= factor for v in vals.values())))
    s5 = res.d.get("scenario5", {})
    if "protodrop_startup" in s5:
        t = s5["protodrop_startup"]["median_s"]
        both = s5.get("protodrop_startup_2cores")
        also = f"; {both['median_s']:.2f} s on both cores" if both else ""
        rows.append((f"scenario 5: start-up of the {s5['tree']['files']:,}-file tree < {STARTUP_TARGET_S:.0f} s",
                     f"{t:.2f} s (median, one core{also})", t < STARTUP_TARGET_S))
    for key, what in (("reload_tree", "the large tree"), ("reload_small", "bench/protos")):
        if key in s5:
            t = s5[key]["median_ms"]
            rows.append((f"scenario 5: a saved handler served < {RELOAD_TARGET_MS} ms after the save ({what})",
                         f"{t:.0f} ms (median), max {s5[key]['max_ms']:.0f} ms", t < RELOAD_TARGET_MS))
    idle = res.d["servers"].get("protodrop", {}).get("idle_rss_kib")
    if idle is not None:
        rows.append((f"scenario 6: protodrop idle RSS < {IDLE_RSS_TARGET_MB} MB", f"{idle * 1024 / 1e6:.1f} MB ({mib(idle)})",
                     idle * 1024 < IDLE_RSS_TARGET_MB * 1e6))
    out = ["| target | measured | |", "|---|---|---|"]
    out += [f"| {t} | {m} | {mark(ok)} |" for t, m, ok in rows]
    return out


def scenario5_section(res: Results) -> list:
    s5 = res.d.get("scenario5")
    if not s5:
        return []
    tree = s5["tree"]
    out = ["## Scenario 5: start-up and reload of a large tree", "",
           f"A generated tree (`bench/tools/gen_tree.py`): {tree['files']:,} `.proto` files in folders of 100, "
           f"{tree['messages']:,} messages, {tree['services']} services with {tree['methods']} methods "
           f"(unary, server streaming, bidi), each file importing the one before; {tree['bytes'] / 1e6:.1f} MB of source, "
           f"and a protodrop handler file per service. Start-up is the time from spawning the process to its "
           f"`listening on ADDR` line (server on core 0), the median of several starts.", "",
           "| server | what is timed | median | all tries | RSS after start | peak RSS |", "|---|---|---:|---|---:|---:|"]
    for name, key, what in (("protodrop", "protodrop_startup", "spawn → `listening on`: compile the protos (protox), load and check the handlers, bind"),
                            ("protodrop", "protodrop_startup_2cores", "the same with both cores (`taskset -c 0,1`): the files are parsed ahead of the compiler on the second"),
                            ("node", "node_startup", "spawn → `listening on`: proto-loader `loadSync` of every file, `addService` for each service, bind"),
                            ("python", "python_startup", "spawn → `listening on`: import the 1,000 generated modules, register every servicer, bind")):
        if key in s5:
            r = s5[key]
            out.append(f"| {LABEL[name]} | {what} | {r['median_s']:.2f} s | {', '.join(f'{t:.2f}' for t in r['all_s'])} s | "
                       f"{mib(r['rss_kib'])} | {mib(r['hwm_kib'])} |")
    if "python_codegen" in s5:
        out.append(f"| {LABEL['python']} | before that, once per change: `grpc_tools.protoc` of the tree | "
                   f"{s5['python_codegen']['s']:.2f} s | | | |")
    out.append(f"| {LABEL['tonic']} | n/a: the protos are compiled into the binary (codegen + `cargo build` on every change) | | | | |")
    out += ["", "**Reload** (protodrop only; the others need a restart, or a rebuild for tonic): protodrop started "
            "with its watcher on, a client on core 1 calling the method in a loop; the handler file is rewritten "
            "with a new reply, and the time is from the end of the write to the first reply that carries the new text "
            "(polled every 2 ms). The last column is the part protodrop spends rebuilding its state, as its "
            "`reloaded … elapsed_ms=` log line says; the rest is the watcher's debounce and the poll.", "",
            "| tree | handler rewritten | median | min | max | all saves | rebuild, from protodrop's log (median) |",
            "|---|---|---:|---:|---:|---|---:|"]
    for key, tree_name, what in (("reload_tree", f"the large tree ({tree['files']:,} files)", "`f0000.toml` (`tree.f0000.Svc0/Get`)"),
                                 ("reload_small", "bench/protos (3 files)", "`bench.toml` (`helloworld.Greeter/SayHello`)")):
        if key in s5:
            r = s5[key]
            out.append(f"| {tree_name} | {what} | {r['median_ms']:.0f} ms | {r['min_ms']:.0f} ms | {r['max_ms']:.0f} ms | "
                       f"{', '.join(f'{t:.0f}' for t in r['all_ms'])} ms | "
                       + ("—" if r.get("rebuild_median_ms") is None else f"{r['rebuild_median_ms']:.0f} ms") + " |")
    return out + [""]


def memory_section(res: Results) -> list:
    rows = [(s, res.d["servers"][s]) for s in SERVERS if s in res.d["servers"]]
    if not rows:
        return []
    out = ["## Scenario 6: memory", "",
           "RSS idle is `VmRSS` of the server process 1 s after its `listening on` line, before any call (with "
           "bench/protos loaded); peak is `VmHWM` after scenario 1's load (every -m value).", "",
           "| server | start-up (bench/protos) | RSS idle | peak RSS under scenario 1 |", "|---|---:|---:|---:|"]
    for s, e in rows:
        out.append(f"| {LABEL[s]} | {e.get('ready_s', 0) * 1000:.0f} ms | {mib(e.get('idle_rss_kib'))} | {mib(e.get('peak_rss_kib'))} |")
    return out + [""]


def verification_section(res: Results) -> list:
    out = ["## Verification", "",
           "Before measuring, each server got every request file once with curl (`--http2-prior-knowledge`, the "
           "same bytes and headers h2load sends); the reply must be HTTP 200, `application/grpc`, `grpc-status: 0` "
           "in the trailers, and its messages byte for byte the tonic reference's. The reference's own replies are "
           "decoded first and checked for what the scenario asks (\"Hello world\"; the echo equal to the request; "
           "1,000 items 0..999; the bidi messages back in order). h2load itself counts any HTTP 200 as a success.", "",
           "| server | scenario | result |", "|---|---|---|"]
    for s, e in res.d["servers"].items():
        for key, v in e.get("verify", {}).items():
            msg = f"ok: {v['messages']} message(s), {v['bytes']} bytes" if v["ok"] else "❌ " + "; ".join(v["problems"])
            out.append(f"| {LABEL.get(s, s)} | {res.loads[key]['scenario']}: `{res.loads[key]['path']}` | {msg} |")
        if "problem" in e:
            out.append(f"| {LABEL.get(s, s)} | start | ❌ {e['problem']} |")
    return out + [""]


def rel(command: str) -> str:
    """A command with the repository's own paths written relative to its root."""
    return command.replace(f"{REPO}/", "")


def commands_section(res: Results) -> list:
    d = res.d
    out = ["## Commands", "", "The one command:", "", "```sh", d.get("invocation", "bench/run"), "```", "",
           "Builds and set-up it ran:", "", "```sh", d.get("build_commands", "").strip(), "```", "", "Servers (port 0: each prints the port it got):", "", "```sh"]
    for s, e in d["servers"].items():
        if "command" in e:
            out.append(rel(e["command"]))
    out += ["```", "", "Load (one h2load per server, scenario and -m; the port is the one the server printed):", "", "<details><summary>every h2load command of this run</summary>", "", "```sh"]
    for r in res.runs:
        out.append(rel(r["command"]))
        if "latency_run" in r:
            out.append(rel(r["latency_run"]["command"]))
    out += ["```", "", "</details>", ""]
    s5 = d.get("scenario5", {})
    cmds = [rel(s5[k]["command"]) for k in ("protodrop_startup", "protodrop_startup_2cores", "node_startup", "python_startup") if k in s5]
    if "python_codegen" in s5:
        cmds.insert(2, rel(s5["python_codegen"]["command"]))
    if cmds:
        out += ["Scenario 5 (`TREE` is a temporary folder made by `bench/tools/gen_tree.py TREE`):", "", "```sh"]
        out += cmds
        out += ["```", ""]
    return out


def write_plot(res: Results) -> str | None:
    """Writes the gnuplot data and script under out/plot and renders bench/results.png."""
    PLOT.mkdir(parents=True, exist_ok=True)
    keys = [k for k in KEYS if res.servers_in(k)]
    if not keys:
        return None
    m_plot = 8 if 8 in res.streams else res.streams[-1]
    def row(key, field, scale):
        vals = []
        for s in SERVERS:
            r = res.run(s, key, m_plot) if (key != "s3" or s in ("tonic", "protodrop")) else None
            v = r.get(field) if r else None
            vals.append("-" if v is None else f"{v * scale:g}")
        return f'"{PLOT_LABEL[key]}" ' + " ".join(vals)
    header = "# scenario " + " ".join(SERVERS)
    # throughput in req/s (msg/s for streams), latency in ms
    for name, field, scale in (("throughput", "msgs_per_s", 1), ("p50", "p50_us", 1e-3), ("p99", "p99_us", 1e-3)):
        (PLOT / f"{name}.dat").write_text("\n".join([header] + [row(k, field, scale) for k in keys]) + "\n")
    ratio_lines = ["# scenario target " + " ".join(f"m{m}" for m in res.streams)]
    for key in keys:
        vals = [res.ratio("protodrop", key, m) for m in res.streams]
        ratio_lines.append(f'"{PLOT_LABEL[key]}" {res.loads[key]["target"]} ' + " ".join("-" if v is None else f"{v:.4f}" for v in vals))
    (PLOT / "ratio.dat").write_text("\n".join(ratio_lines) + "\n")

    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    bars = lambda f: ", ".join(
        f"'{PLOT / f}' using {i + 2}{':xtic(1)' if i == 0 else ''} title '{SHORT[s]}' lc rgb '{colors[i]}'"
        for i, s in enumerate(SERVERS))
    mcolors = ["#8da0cb", "#dd8452", "#7a3b12", "#444444"]
    ratio_bars = ", ".join(
        f"'{PLOT / 'ratio.dat'}' using {i + 3}{':xtic(1)' if i == 0 else ''} title 'protodrop / tonic, -m {m}' lc rgb '{mcolors[i % 4]}'"
        for i, m in enumerate(res.streams))
    # value labels above the ratio bars: bar i of N in a cluster (gap 1) is centred at x + (i + 0.5 - N/2) / (N + 1)
    nm = len(res.streams)
    ratio_labels = ", ".join(
        f"'{PLOT / 'ratio.dat'}' using ($0 + {(i + 0.5 - nm / 2) / (nm + 1):.4f}):{i + 3}:(sprintf('%.2f', ${i + 3})) "
        f"with labels offset 0,0.6 font ',9' notitle"
        for i in range(nm))
    ratios = [res.ratio("protodrop", k, m) for k in keys for m in res.streams]
    ymax = max([1.3] + [r * 1.15 for r in ratios if r is not None])
    mode = res.d["mode"]
    title = (f"protodrop benchmark ({mode} run{', noisy' if mode != 'full' else ''}): h2load -c {res.d['config']['connections']} "
             f"-m {m_plot}, {res.d['config']['duration']} s per run; server on core 0, h2load on core 1")
    script = f"""
set terminal pngcairo size 1600,1100 font 'DejaVu Sans,11' noenhanced
set output '{BENCH / 'results.png'}'
set datafile missing '-'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics scale 0
set multiplot layout 2,2 title '{title}'
set title 'Throughput: req/s (1-3), msg/s (4: stream = 1,000 per call, bidi = {res.d["config"]["echo_count"]} per call), log scale'
set logscale y
set format y '%.0s%c'
set yrange [*:*]
plot {bars('throughput.dat')}
unset logscale y
set format y '%g'
set title 'protodrop / compiled tonic (1.00 = the reference); black dashes: targets'
set yrange [0:{ymax:.2f}]
set key top right
plot {ratio_bars}, {ratio_labels}, \\
     '{PLOT / 'ratio.dat'}' using ($0):2 with points pt 5 ps 0 notitle, \\
     '{PLOT / 'ratio.dat'}' using ($0):2:(0.4) with xerrorbars pt 0 lw 3 lc rgb 'black' title 'target', \\
     1 with lines dt 2 lc rgb 'gray' notitle
set title 'p50 latency per call (ms), log scale'
set logscale y
set yrange [*:*]
set format y '%g'
plot {bars('p50.dat')}
set title 'p99 latency per call (ms), log scale'
plot {bars('p99.dat')}
unset multiplot
"""
    (PLOT / "results.gp").write_text(script)
    run = subprocess.run(["gnuplot", str(PLOT / "results.gp")], capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return None
    return m_plot


def main() -> None:
    data = json.loads((OUT / "results.json").read_text())
    res = Results(data)
    cfg, mach = data["config"], data["machine"]
    m_plot = write_plot(res)
    quick = data["mode"] == "quick"
    md = ["# protodrop benchmark results", ""]
    if quick:
        md += [f"> **Quick mode**: {cfg['duration']} s per run after {cfg['warmup']} s of warm-up, -m "
               f"{', '.join(map(str, cfg['streams']))} only. Short and noisy: for checking the harness, not for "
               "quoting. The figures to quote come from a full run (`bench/run`) on a quiet machine.", ""]
    elif data["mode"] != "full":
        md += [f"> **Custom run** (`{data.get('invocation')}`): not the full benchmark (all scenarios and servers, "
               "-D 20 after 5 s of warm-up, -m 1, 8 and 32). The figures to quote come from a full run (`bench/run`) "
               "on a quiet machine.", ""]
    md += [f"Written by `{data.get('invocation', 'bench/run')}` on {mach['date']} (protodrop {mach['protodrop_commit']}), "
           f"in {data['elapsed_s'] / 60:.1f} min. Scenarios: {', '.join(map(str, cfg['scenarios']))}; servers: "
           f"{', '.join(cfg['servers'])}.", ""]
    if m_plot is not None:
        md += [f"![throughput, ratio to tonic, p50 and p99 latency per server and scenario (-m {m_plot})](results.png)", ""]
    md += ["## Against the targets", "", *summary(res), "",
           "Ratios are protodrop's throughput over the compiled tonic reference's, in the same run, for each "
           "h2load -m; a target passes when every -m meets it. \"Per CPU-second\" divides each server's "
           "throughput by the share of its core it actually got (server CPU below): on a busy machine it is the "
           "steadier figure, but the targets are judged on the plain ratio.", ""]
    load1 = float(mach["loadavg_at_start"][0])
    if load1 > BUSY_LOAD_AVERAGE:
        md += [f"> ⚠ The machine was busy when the run started (load average {load1:.1f} over the last minute, "
               f"on {mach['cpus']} CPUs): other processes took CPU time from the servers and h2load, so the figures "
               "below are low and uneven. See the server CPU column.", ""]
    md += ["## Machine", "",
           "| | |", "|---|---|",
           f"| CPU | {mach['cpu_model']} |",
           f"| CPUs | {mach['cpus']} ({mach['threads_per_core']} thread(s) per core); governor {mach['governor']} |",
           f"| memory | {mach['memory']} |",
           f"| OS, kernel | {mach['os']}, Linux {mach['kernel']} |",
           f"| load average at start | {' '.join(mach['loadavg_at_start'])} |",
           f"| rustc | {mach['rustc']} |",
           f"| h2load | {mach['h2load']} |",
           f"| Node, grpc-js, proto-loader | {mach['node']}, {mach['grpc_js']}, {mach['proto_loader']} |",
           f"| Python, grpcio | {mach['python']}, {mach['grpcio']} |",
           f"| curl, gnuplot | {mach['curl']}; {mach['gnuplot']} |", ""]
    md += ["## How it is measured", "",
           "- Every server runs pinned to core 0 (`taskset -c 0`), h2load to core 1 (`taskset -c 1`): "
           f"`h2load -c {cfg['connections']} -m M -D {cfg['duration']} --warm-up-time {cfg['warmup']} -d REQUEST "
           "-H 'content-type: application/grpc' -H 'te: trailers' http://127.0.0.1:PORT/PATH`, "
           f"for M in {', '.join(map(str, cfg['streams']))}. All servers are started once, together; for each scenario "
           "and M they take their turns one after the other (tonic, protodrop, protodrop's script for scenario 3, Node, "
           "Python), so a slow drift of the machine is felt by all of them alike. The tonic reference is the strongest "
           "a user would write for one core: tokio's current-thread runtime and TCP_NODELAY, the scheduler protodrop "
           "runs on one core too (its default: `--threads` = the cores it may use). Results written before 2026-12-06 "
           "used `#[tokio::main]`'s multi-thread runtime, which roughly halves tonic here (`REFERENCE_RUNTIME=multi_thread`)."
           + (f" Each server took {cfg['turns']} turns at each M; throughput and CPU are from its median turn "
              "(all turns' throughput: `turns_msgs_per_s` in out/results.json), latency from its last turn."
              if cfg.get("turns", 1) > 1 else ""),
           "- Servers: protodrop (release build, bench/handlers/main; bench/handlers/script for scenario 3); the "
           "compiled reference `bench/reference` (tonic 0.14.9, tonic-prost-build code generated in build.rs with "
           "protox as the compiler, the same release profile as protodrop; `Fetch` returns a `tokio_stream::iter`, "
           "`Echo` the inbound stream mapped); `bench/peers/node` (@grpc/grpc-js with @grpc/proto-loader, no codegen); "
           f"`bench/peers/python` (grpcio, code from grpcio-tools, a sync server with {cfg['python_threads']} threads).",
           "- Throughput: h2load's req/s over the main duration (warm-up excluded); for the streaming scenarios a "
           f"request is a whole call, so msg/s = calls/s × 1,000 (Fetch) or × {cfg['echo_count']} (bidi Echo, whose "
           f"request body holds {cfg['echo_count']} messages). Ratio: protodrop / tonic at the same -m.",
           "- Latency: per call, from a second h2load run right after the (last turn's) throughput run, the same but "
           f"`-D {cfg['latency_duration']}` and with `--log-file` (h2load writes one line per request, which costs it "
           "a syscall each, so the throughput run goes without); p50 and p99 by nearest rank over every request of "
           "its main duration.",
           "- Server CPU: the server's user + system time over the h2load run's wall time (100% = its one core "
           "busy); h2load CPU likewise for h2load. A server well below 100% with h2load near 100% means h2load, "
           "not the server, set the figure.",
           "- Raw h2load outputs: `bench/out/raw/` (not committed).", ""]
    for key in KEYS:
        if not res.servers_in(key):
            continue
        load = res.loads[key]
        md += [f"## Scenario {load['scenario']}: {load['title']}", "",
               f"`{load['path']}`, request `bench/data/{load['body']}`.", ""]
        if key == "s3":
            md += ["The compiled reference has no script form: its row is its scenario-2 run (the same echo, "
                   "compiled). Node and Python are hand-written code either way: see scenario 2.", ""]
        md += load_table(res, key) + [""]
    md += scenario5_section(res)
    md += memory_section(res)
    md += verification_section(res)
    md += commands_section(res)
    # Real proto trees are measured by hand (bench/tree-check, bench/tree-memory…): their section is
    # kept in bench/TREES.md and carried into every report.
    trees = BENCH / "TREES.md"
    if trees.exists():
        md += ["", trees.read_text()]
    (BENCH / "RESULTS.md").write_text("\n".join(md))
    print(f"wrote {BENCH / 'RESULTS.md'}" + (f" and {BENCH / 'results.png'}" if m_plot is not None else " (no plot)"))


if __name__ == "__main__":
    main()
