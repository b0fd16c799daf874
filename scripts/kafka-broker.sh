#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker answers on 127.0.0.1:9092 for the Kafka conformance tests (pubsub.kafka,
# bindings.kafka): tansu, a Kafka-compatible broker from crates.io, with in-memory storage (nothing survives it).
# Installs tansu when it is not on PATH, or lacks in-memory storage (the `dynostore` feature, not among its
# defaults): cargo install, about 50 minutes on 2 busy cores the first time, its build kept in ~/.cache/tansu-target
# and the binary in ~/.cargo/bin. Starts it in the background when nothing answers on 9092, and waits until it
# answers. The broker's log goes to ${TANSU_LOG:-/tmp/tansu-broker.log}.
set -euo pipefail

log="${TANSU_LOG:-/tmp/tansu-broker.log}"
export PATH="$HOME/.cargo/bin:$PATH"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
  echo "installing tansu with in-memory storage (the Kafka broker for the Kafka tests)"
  CARGO_TARGET_DIR="$HOME/.cache/tansu-target" cargo install tansu --locked --features dynostore "$@"
}

# Starts the broker; true once it answers, false if it exits or does not answer within 20 s.
start() {
  echo "starting tansu on 127.0.0.1:9092"
  nohup tansu broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do
    answers 9092 && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

answers 9092 && exit 0
command -v tansu >/dev/null || install
if ! start; then
  if grep -q FeatureNotEnabled "$log"; then
    install --force
    start && exit 0
  fi
  echo "tansu did not come up on 127.0.0.1:9092; its log ($log):" >&2
  tail -20 "$log" >&2
  exit 1
fi
