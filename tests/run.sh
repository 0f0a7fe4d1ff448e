#!/usr/bin/env bash
# The one command that runs every protodrop test, on a fresh machine too:
#   1. a Python venv at .venv-test with tests/e2e/requirements.txt (created or updated),
#   2. cargo build --locked (debug),
#   3. cargo test --locked (all Rust tests),
#   4. pytest tests/e2e: the five seed posts' Python clients against protodrop and against the seeds'
#      own Python servers (see tests/e2e/conftest.py).
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

section "pytest tests/e2e"
export PROTODROP_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/protodrop"
echo "PROTODROP_BIN=$PROTODROP_BIN"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/e2e
