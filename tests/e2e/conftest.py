"""End-to-end fixtures: protodrop against the five seed blog posts, driven by Python grpcio.

All session-scoped, all torn down even when a test fails (and, as a last resort, at interpreter exit):

* ``stubs``: Python stubs generated from ``protos/`` with ``python -m grpc_tools.protoc`` into a temp dir
  (``-I src/protos/include`` for ``google/api``); seed 004's also into a ``grpc_utils`` package, with the
  ``from . import`` fix its post describes.
* ``seed_servers``: the seeds' own Python servers (``seed_servers/``, verbatim), started on first use,
  one process per seed, each on a free loopback port.
* ``target``: the server under test. By default protodrop, run as
  ``$PROTODROP_BIN serve --protos protos --handlers handlers --listen 127.0.0.1:0`` (``PROTODROP_BIN``
  defaults to ``target/debug/protodrop``); once bound it prints exactly one line
  ``listening on 127.0.0.1:PORT`` on stdout. With ``PROTODROP_E2E_TARGET=seed-servers`` the target is a
  second copy of each seed's own server instead: that checks the harness itself, without protodrop.
* ``seed_client``: runs a seed's client (``seed_clients/``, verbatim) against an address.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from harness import SeedServers, _stop, generate_stubs, load_stubs, run_seed_client, start_protodrop

TARGET_MODE = os.environ.get("PROTODROP_E2E_TARGET", "protodrop")


def _terminated(signum, frame):
    # SIGTERM (e.g. a CI time-out) ends the run like Ctrl-C does, so the fixtures' teardown still runs.
    raise KeyboardInterrupt(f"signal {signum}")


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _terminated)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def stubs(workdir: Path):
    out = workdir / "stubs"
    out.mkdir()
    generate_stubs(out)
    return load_stubs(out)


@pytest.fixture(scope="session")
def seed_servers(stubs, workdir):
    servers = SeedServers(stubs.dir, workdir, "reference")
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def target(stubs, workdir):
    """The server under test: protodrop, or (PROTODROP_E2E_TARGET=seed-servers) the seed servers."""
    if TARGET_MODE == "seed-servers":
        servers = SeedServers(stubs.dir, workdir, "target")
        try:
            yield servers
        finally:
            servers.stop()
    elif TARGET_MODE == "protodrop":
        server = start_protodrop(workdir)
        try:
            yield server
        finally:
            if server.proc is not None:
                _stop(server.proc)
    else:
        pytest.fail(f"PROTODROP_E2E_TARGET={TARGET_MODE!r}: expected 'protodrop' or 'seed-servers'")


@pytest.fixture(scope="session")
def seed_client(stubs, workdir):
    def run(seed: str, address: str):
        return run_seed_client(seed, address, stubs.dir, workdir)

    return run
