#!/usr/bin/env bash
# Property-based fuzzing of the sidecar's HTTP API against its published contract (openapi/tandem-http.yaml):
# starts the release binary with an in-memory state store, pub/sub and lock store, a local-file secret store and
# an API token, checks that the sidecar serves the checked-in document, then runs schemathesis
# (tests/api_fuzz/requirements.txt) for API_FUZZ_SECONDS (default 150) with these checks on every answer:
#   no_server_error_but_daprs   no 5xx but Dapr's own answers to a client's mistake (tests/api_fuzz/dapr_checks.py)
#   status_code_conformance     every status is one the document lists for that operation
#   response_schema_conformance every body matches the document's schema (Dapr's {errorCode, message} errors)
#   content_type_conformance    every Content-Type is one the document lists
#   response_headers_conformance
# and then fails if the sidecar died, stopped answering, or logged a panic. Service invocation (it would call
# out to whatever app id the fuzzer makes up) and /v1.0/shutdown (it would stop the sidecar under test) are left
# to tests/python. Usage: TANDEM_BIN=path/to/tandem scripts/fuzz-api.sh [extra schemathesis args]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${TANDEM_BIN:-$CARGO_TARGET_DIR/release/tandem}"
seconds="${API_FUZZ_SECONDS:-150}"
venv="$PWD/.venv-api-fuzz"
[ -x "$bin" ] || { echo "no tandem binary at $bin: run cargo build --release or set TANDEM_BIN" >&2; exit 1; }

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$(sed -n 's/^schemathesis==//p' tests/api_fuzz/requirements.txt)"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/api_fuzz/requirements.txt
fi

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/resources"
cat >"$work/resources/components.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: lockstore
spec:
  type: lock.in-memory
  version: v1
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: files
spec:
  type: bindings.localstorage
  version: v1
  metadata:
  - name: rootPath
    value: $work/files
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: secretstore
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: $work/secrets.json
YAML
echo '{"db-password": "s3cret", "nested": {"user": "u", "pass": "p"}}' >"$work/secrets.json"

# Four distinct free ports below the kernel's ephemeral range: a bind(0) port comes from that range, where any
# outgoing connection could take it as its local port before the sidecar binds it (as tests/python/conftest.py).
read -r port grpc_port internal_port metrics_port < <(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
floor = 20000 if low > 21000 else 1024
picked = []
while len(picked) < 4:
    p = random.randrange(floor, low)
    if p in picked or p == 25672:
        continue
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", p))
        except OSError:
            continue
    picked.append(p)
print(*picked)
PY
)
token="fuzz-$RANDOM$RANDOM"
DAPR_API_TOKEN="$token" NO_COLOR=1 "$bin" sidecar --app-id api-fuzz --resources-path "$work/resources" \
  --dapr-http-port "$port" --dapr-grpc-port "$grpc_port" --dapr-internal-grpc-port "$internal_port" \
  --metrics-port "$metrics_port" --log-level info >"$work/sidecar.log" 2>&1 &
pid=$!

base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/v1.0/healthz")" = 204 ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/sidecar.log"; echo "the sidecar exited before it was ready" >&2; exit 1; }
  sleep 0.2
done

# The sidecar serves the checked-in document, and only with the token.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/v1.0/openapi.yaml")" = 401 ] \
  || { echo "GET /v1.0/openapi.yaml without the API token was not refused" >&2; exit 1; }
curl -sf -H "dapr-api-token: $token" "$base/v1.0/openapi.yaml" >"$work/served.yaml"
cmp -s "$work/served.yaml" openapi/tandem-http.yaml \
  || { echo "the sidecar serves a document other than openapi/tandem-http.yaml: rebuild the binary" >&2; exit 1; }

echo "schemathesis against $bin for ${seconds} s"
# One worker: with several, CPython 3.11's ast module (Hypothesis parses lambdas to describe them) can fail with
# "AST constructor recursion depth mismatch", which Hypothesis reports as a flaky test of its own.
status=0
PYTHONPATH="$PWD/tests/api_fuzz" SCHEMATHESIS_HOOKS=dapr_checks timeout --kill-after=10 "$((seconds + 120))" \
  "$venv/bin/schemathesis" run "$work/served.yaml" --url "$base" \
  -H "dapr-api-token: $token" \
  --checks no_server_error_but_daprs,status_code_conformance,response_schema_conformance,content_type_conformance,response_headers_conformance \
  --exclude-path-regex '^/v1\.0/invoke/' --exclude-path /v1.0/shutdown \
  --max-time "$seconds" --workers 1 --request-timeout 10 --no-color \
  "$@" || status=$?

alive=1
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "dapr-api-token: $token" "$base/v1.0/metadata")" = 200 ] || alive=0
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=""

if grep -q "panicked" "$work/sidecar.log"; then
  grep -B2 -A5 "panicked" "$work/sidecar.log" | head -60
  echo "the sidecar logged a panic while being fuzzed" >&2
  status=1
fi
if [ "$alive" = 0 ]; then
  tail -n 40 "$work/sidecar.log"
  echo "the sidecar stopped answering while being fuzzed" >&2
  status=1
fi
[ "$status" = 0 ] && echo "API fuzzing: no failure in ${seconds} s"
exit "$status"
