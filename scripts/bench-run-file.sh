#!/usr/bin/env bash
# How long `tandem run -f` takes until every app's sidecar serves, and what each sidecar holds in memory,
# for a run file of N sidecar-only apps (embedded defaults). Baseline in the same run: one plain `tandem run`.
#
#   scripts/bench-run-file.sh [N]        # N defaults to 4; TANDEM_BIN picks the binary
set -euo pipefail
N=${1:-4}
T=${TANDEM_BIN:-${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release/tandem}
work=$(mktemp -d)
export HOME=$work
trap 'kill -- -$$ 2>/dev/null || true; rm -rf "$work"' EXIT

ms() { date +%s%3N; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# Baseline: one `tandem run` with no app, until its outbound health answers.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t0=$(ms)
"$T" run --app-id base --dapr-http-port "$port" --dapr-grpc-port 0 --dapr-internal-grpc-port 0 --metrics-port 0 >/dev/null 2>&1 &
base=$!
until curl -sf "localhost:$port/v1.0/healthz/outbound" >/dev/null; do sleep 0.01; done
t1=$(ms)
echo "baseline: one tandem run ready in $((t1 - t0)) ms, RSS $(rss_kb $base) KiB"
kill $base; wait $base 2>/dev/null || true

mkdir -p "$work/p"
{ echo "version: 1"; echo "apps:"; } > "$work/p/dapr.yaml"
for i in $(seq 1 "$N"); do
  mkdir -p "$work/p/app$i"
  printf '  - appDirPath: app%s\n' "$i" >> "$work/p/dapr.yaml"
done
t0=$(ms)
"$T" run -f "$work/p" >/dev/null 2>&1 &
until [ "$("$T" list -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = "$N" ]; do sleep 0.01; done
t1=$(ms)
total=0
for pid in $("$T" list -o json | python3 -c 'import json,sys; print(" ".join(str(a["daprdPid"]) for a in json.load(sys.stdin)))'); do
  total=$((total + $(rss_kb "$pid")))
done
sup=$("$T" list -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["cliPid"])')
echo "run -f with $N apps: all sidecars serving in $((t1 - t0)) ms; sidecars RSS $((total / N)) KiB each, supervisor $(rss_kb "$sup") KiB"
"$T" stop -f "$work/p" >/dev/null
