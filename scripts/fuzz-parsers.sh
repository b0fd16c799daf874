#!/usr/bin/env bash
# Fuzzes tandem's request and resource parsers (the cargo-fuzz targets in fuzz/) for a bounded time: each target
# runs FUZZ_SECONDS (default 30) from the checked-in seeds (fuzz/seeds/<target>) plus the corpus grown by earlier
# runs on this machine ($CARGO_TARGET_DIR/fuzz-corpus/<target>). Fails on the first crash (a panic, an overflow
# under debug assertions, a timeout of 10 s on one input, or more than 2 GiB), printing the input that did it
# (kept under fuzz/artifacts/<target>/; replay it with `cargo fuzz run <target> <file>`).
# Usage: scripts/fuzz-parsers.sh [target...]   (default: every target). The toolchain is stable:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the nightly-only flags it needs; cargo-fuzz is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-30}"
fuzz_target_dir="$CARGO_TARGET_DIR/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  if ! cargo install --locked --quiet cargo-fuzz --version 0.13.2; then
    echo "SKIPPED: parser fuzzing (fuzz/): cargo-fuzz could not be installed"
    exit 0
  fi
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

# One build of the library for every target: instrumented, optimised, with debug assertions (overflow checks).
# No sanitizer: the code is safe Rust, and a panic is what the fuzzers look for.
build=(--fuzz-dir fuzz --target-dir "$fuzz_target_dir" --sanitizer none --debug-assertions --codegen-units 16)
started=$SECONDS
cargo fuzz build "${build[@]}"
echo "fuzz targets built in $((SECONDS - started)) s"

failed=()
for target in "${targets[@]}"; do
  corpus="$CARGO_TARGET_DIR/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "fuzzing $target for ${seconds} s"
  log="$(mktemp)"
  if cargo fuzz run "${build[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done [0-9]+ runs)' "$log" | sed "s/^/  $target: /"
  else
    tail -n 60 "$log"
    failed+=("$target")
  fi
  rm -f "$log"
done

echo "fuzz-parsers: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "parser fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
