"""Helpers of the end-to-end tests (the fixtures that use them are in conftest.py).

The seed scripts (seed_servers/, seed_clients/) are kept verbatim; at run time only their address changes
(``'[::]:50051'``, ``'0.0.0.0:50051'``, ``'localhost:50052'``, … become ``'127.0.0.1:PORT'``) and seed
000, which is Python 2, goes through lib2to3's ``print`` fixer.
"""

from __future__ import annotations

import atexit
import importlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROTOS = REPO / "protos"
HANDLERS = REPO / "handlers"
INCLUDE = REPO / "src" / "protos" / "include"

STARTUP_TIMEOUT = 30.0  # seconds to wait for a server to listen
CLIENT_TIMEOUT = 60.0  # seconds for one seed client run
LISTEN_LINE = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")


@dataclass(frozen=True)
class Seed:
    id: str
    proto: str
    server: str  # file in seed_servers/
    client: str  # file in seed_clients/
    python2: bool = False


SEEDS = {
    s.id: s
    for s in [
        Seed("000", "faceserver", "000_faceserver.py", "000_client.py", python2=True),
        Seed("001", "hello", "001_hello_server.py", "001_hello_client.py"),
        Seed("002", "userinfo", "002_server.py", "002_client.py"),
        Seed("003", "users", "003_grpc_server.py", "003_grpc_client.py"),
        Seed("004", "hello_world", "004_greeter_server.py", "004_greeter_client.py"),
    ]
}

# The address literals the seeds bind or dial: '[::]:50051', '0.0.0.0:50051', 'localhost:50052', …
_ADDRESS = re.compile(r"""(['"])(?:\[::\]|0\.0\.0\.0|localhost|127\.0\.0\.1):5005[0-9]\1""")

# Every process this harness started, so that even an interrupted run leaves none behind.
_CHILDREN: list[subprocess.Popen] = []


def _stop(proc: subprocess.Popen) -> None:
    """Ends one process this harness started (and its process group), then reaps it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_CHILDREN):
        _stop(proc)


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, be sent SIGKILL if this test process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
    # A session of its own, so that the whole group can be signalled at teardown.
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(args, start_new_session=True, preexec_fn=preexec, **kwargs)
    _CHILDREN.append(proc)
    return proc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before listening:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not listen on 127.0.0.1:{port} within {timeout}s:\n{_tail(log)}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------
# Seed scripts: verbatim text, address substituted, Python 2 converted.


def to_python3(source: str) -> str:
    """Seed 000 is Python 2: lib2to3 with the ``print`` fixer only (the rest already runs on 3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lib2to3 is deprecated (removed in 3.13), still shipped by 3.11
        from lib2to3 import refactor

        tool = refactor.RefactoringTool(["lib2to3.fixes.fix_print"])
        return str(tool.refactor_string(source, "seed"))


def prepare_script(path: Path, port: int, python2: bool) -> str:
    source = path.read_text(encoding="utf-8")
    if python2:
        source = to_python3(source)
    source, n = _ADDRESS.subn(f"'127.0.0.1:{port}'", source)
    assert n >= 1, f"no address to substitute in {path.name}"
    return source


# --------------------------------------------------------------------------------------------------
# Stubs.


def generate_stubs(out: Path) -> None:
    out = out.resolve()
    protos = sorted(p.name for p in PROTOS.glob("*.proto"))
    assert protos, f"no .proto in {PROTOS}"
    base = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{INCLUDE}"]
    subprocess.run(base + [f"--python_out={out}", f"--grpc_python_out={out}", *protos], check=True, cwd=PROTOS)
    # Seed 004 keeps its stubs in a `grpc_utils` package and fixes the generated import as its post says:
    # `from . import hello_world_pb2 as hello__world__pb2`.
    pkg = out / "grpc_utils"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    subprocess.run(
        base + [f"--python_out={pkg}", f"--grpc_python_out={pkg}", "hello_world.proto"], check=True, cwd=PROTOS
    )
    grpc_file = pkg / "hello_world_pb2_grpc.py"
    text, n = re.subn(r"(?m)^import hello_world_pb2 as ", "from . import hello_world_pb2 as ", grpc_file.read_text())
    assert n == 1, "generated hello_world_pb2_grpc.py has no `import hello_world_pb2 as` line to fix"
    grpc_file.write_text(text)


def load_stubs(out: Path) -> SimpleNamespace:
    """Imports the generated modules (``out`` goes on sys.path)."""
    sys.path.insert(0, str(out))
    # Seed 004's messages are imported through `grpc_utils` only: both copies describe the same file,
    # which one process may register once.
    names = ["faceserver", "hello", "userinfo", "users"]
    mods = {f"{n}_pb2": importlib.import_module(f"{n}_pb2") for n in names}
    mods.update({f"{n}_pb2_grpc": importlib.import_module(f"{n}_pb2_grpc") for n in names})
    mods["hello_world_pb2"] = importlib.import_module("grpc_utils.hello_world_pb2")
    mods["hello_world_pb2_grpc"] = importlib.import_module("grpc_utils.hello_world_pb2_grpc")
    return SimpleNamespace(dir=out, **mods)


# --------------------------------------------------------------------------------------------------
# Servers.


@dataclass
class SeedServers:
    """The seeds' own Python servers, started on first use, one per seed."""

    stubs_dir: Path
    workdir: Path
    label: str
    _running: dict[str, tuple[subprocess.Popen, str]] = field(default_factory=dict)

    def address(self, seed: str) -> str:
        if seed not in self._running:
            self._running[seed] = self._start(SEEDS[seed])
        return self._running[seed][1]

    def _start(self, seed: Seed) -> tuple[subprocess.Popen, str]:
        port = free_port()
        script = self.workdir / f"{self.label}_{seed.server}"
        script.write_text(prepare_script(HERE / "seed_servers" / seed.server, port, seed.python2), encoding="utf-8")
        log = self.workdir / f"{self.label}_{seed.id}.log"
        with open(log, "wb") as out:
            proc = _spawn(
                [sys.executable, "-u", str(script)],
                cwd=self.stubs_dir,
                env=python_env(self.stubs_dir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(port, proc, log)
        return proc, f"127.0.0.1:{port}"

    def stop(self) -> None:
        for proc, _ in self._running.values():
            _stop(proc)
        self._running.clear()


def python_env(stubs_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class Protodrop:
    """One protodrop process serving every proto in protos/ with the handlers in handlers/."""

    address_: str
    proc: subprocess.Popen
    stdout_lines: list[str]
    stderr_log: Path

    def address(self, seed: str) -> str:  # the same server answers every seed
        return self.address_


def start_protodrop(
    workdir: Path, protos: Path = None, handlers: Path = None, extra_args: tuple[str, ...] = ()
) -> Protodrop | NotStarted:
    """protodrop on the repo's protos/ and handlers/, or on the folders given, with extra flags."""
    protos = protos or PROTOS
    handlers = handlers or HANDLERS
    binary = Path(os.environ.get("PROTODROP_BIN") or REPO / "target" / "debug" / "protodrop")
    if not binary.is_file():
        return NotStarted(f"protodrop binary not found at {binary} (build it, or set PROTODROP_BIN)")
    stderr_log = workdir / "protodrop.stderr.log"
    args = [str(binary), "serve", "--protos", str(protos), "--handlers", str(handlers), "--listen", "127.0.0.1:0", *extra_args]
    with open(stderr_log, "wb") as err:
        proc = _spawn(args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:  # keeps reading stdout so that the pipe never fills
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            seen.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="protodrop-stdout", daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        try:
            first = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"protodrop printed nothing on stdout within {STARTUP_TIMEOUT}s")
        if first is None:
            proc.wait(timeout=5)
            raise RuntimeError(f"protodrop exited with {proc.returncode} before listening")
        m = LISTEN_LINE.match(first)
        if not m:
            raise RuntimeError(f"protodrop's first stdout line is {first!r}, not 'listening on 127.0.0.1:PORT'")
    except RuntimeError as e:
        _stop(proc)
        return NotStarted(f"{e}\n$ {' '.join(args)}\n--- its stderr ---\n{_tail(stderr_log)}")
    return Protodrop(f"127.0.0.1:{m.group(1)}", proc, seen, stderr_log)


@dataclass
class NotStarted:
    """A target that could not be started: the first test to use it fails with the whole story, the
    others with one line (instead of the same long traceback once per test)."""

    why: str
    told: bool = False
    proc: None = None

    def address(self, seed: str) -> str:
        if self.told:
            pytest.fail("protodrop did not start (see the first failing test)", pytrace=False)
        self.told = True
        pytest.fail(self.why, pytrace=False)


# --------------------------------------------------------------------------------------------------
# Seed clients.


@dataclass(frozen=True)
class ClientRun:
    returncode: int
    stdout: str
    stderr: str


def run_seed_client(seed: str, address: str, stubs_dir: Path, workdir: Path) -> ClientRun:
    s = SEEDS[seed]
    port = int(address.rsplit(":", 1)[1])
    script = Path(tempfile.mkdtemp(dir=workdir)) / s.client
    script.write_text(prepare_script(HERE / "seed_clients" / s.client, port, s.python2), encoding="utf-8")
    proc = _spawn(
        [sys.executable, str(script)],
        cwd=stubs_dir,
        env=python_env(stubs_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"seed {seed} client against {address} did not finish within {CLIENT_TIMEOUT}s")
    _CHILDREN.remove(proc)
    return ClientRun(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
