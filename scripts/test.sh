#!/usr/bin/env bash
# Runs every test: Rust unit + conformance tests (nextest), then the integration suite that drives the real
# binary with the official Dapr Python SDK and plain HTTP. Needs Redis on 127.0.0.1:6379 (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

if [ ! -x .venv/bin/pytest ] || [ ! -x .venv/bin/helm ] || ! .venv/bin/python -c "import dapr.clients, requests, dnslib" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

cargo build --locked
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

export TANDEM_BIN="$CARGO_TARGET_DIR/debug/tandem"
.venv/bin/pytest -q tests/python
