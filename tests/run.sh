#!/usr/bin/env bash
# The one command that runs every protodrop test, on a fresh machine too:
#   1. a Python venv at .venv-test with tests/e2e/requirements.txt (created or updated),
#   2. cargo build --locked (debug),
#   3. cargo test --locked (all Rust tests); cargo audit only when asked (PROTODROP_AUDIT=1, or
#      ADVISORY_DB=<advisory-db checkout>): see below why it is not on by default,
#   4. pytest tests/e2e, protodrop on --threads 1: the five seed posts' Python clients against
#      protodrop and against the seeds' own Python servers (see tests/e2e/conftest.py), and curl
#      over Connect and HTTP/JSON (test_http.py; curl is installed with apt-get when missing);
#      npm ci in tests/e2e/web first, for the buf that test_admin.py runs,
#   5. tests/e2e/web (node --test): a page in headless Debian Chromium calling protodrop over gRPC-Web
#      from another origin, and buf curl over gRPC, gRPC-Web and Connect (Debian's chromium is
#      installed with apt-get when /usr/bin/chromium is missing; npm ci installs the rest).
# Run it from anywhere; it works in the repository root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="$REPO/.venv-test"
PYTHON="${PYTHON:-python3}"

section() { printf '\n===== %s =====\n' "$*"; }

section "Python test environment: $VENV"
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "$VENV is broken (its Python is gone?): recreating it"
  rm -rf "$VENV"
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
"$VENV/bin/python" --version

section "cargo build --locked"
cargo build --locked

section "cargo test --locked"
cargo test --locked

# cargo audit is opt-in: its advisory database is cloned from github.com, which this project's CI
# machines cannot reach, and building cargo-audit takes longer than the rest of the suite. Run it
# with PROTODROP_AUDIT=1 (fetches the database) or ADVISORY_DB=<checkout of rustsec/advisory-db>.
if [ -n "${ADVISORY_DB:-}" ] || [ "${PROTODROP_AUDIT:-}" = 1 ]; then
  section "cargo audit (RustSec advisories for Cargo.lock)"
  if ! command -v cargo-audit >/dev/null 2>&1; then
    echo "cargo-audit is missing: installing it with cargo install --locked"
    cargo install cargo-audit --locked
  fi
  if [ -n "${ADVISORY_DB:-}" ]; then
    cargo audit --db "$ADVISORY_DB" --no-fetch
  else
    cargo audit
  fi
fi

section "pytest tests/e2e"
if ! command -v curl >/dev/null 2>&1; then
  echo "curl is missing (tests/e2e/test_http.py drives Connect and HTTP/JSON with it): installing it"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
fi
# buf (npm @bufbuild/buf) is used by test_admin.py too: install tests/e2e/web's packages first.
(cd tests/e2e/web && npm ci --no-audit --no-fund --loglevel=error)
export PROTODROP_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/protodrop"
echo "PROTODROP_BIN=$PROTODROP_BIN"
# The Rust and node tests serve with the default --threads (one per core: the multi-threaded
# scheduler on a machine of two or more); the seed clients, grpcurl and curl here meet the
# single-threaded one, the default on one core.
PROTODROP_THREADS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/e2e

section "node --test tests/e2e/web"
if [ ! -x /usr/bin/chromium ]; then
  echo "/usr/bin/chromium is missing: installing Debian's chromium"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null || true
(cd tests/e2e/web && npm test --silent)
