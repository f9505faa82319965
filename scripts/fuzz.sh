#!/usr/bin/env bash
# Fuzzing wasmesh's parsers with cargo-fuzz (libFuzzer), on the stable toolchain.
#
#   scripts/fuzz.sh install          cargo-fuzz into .tools/ (idempotent)
#   scripts/fuzz.sh build            build every target (fuzz/fuzz_targets/*.rs)
#   scripts/fuzz.sh smoke [T...]     each target over its committed corpus plus FUZZ_SMOKE_RUNS
#                                    generated inputs (what `make test` runs; deterministic seed)
#   scripts/fuzz.sh run [T...]       each target for FUZZ_SECONDS (default 600), FUZZ_JOBS (default
#                                    2) at a time; prints executions, coverage and corpus size
#
# Why it works on stable: cargo-fuzz's instrumentation is made of stable rustc flags
# (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`, `--cfg fuzzing`); only the
# sanitizers need nightly (`-Zsanitizer`). Every build here passes `--sanitizer none`, so the
# pinned stable toolchain (rust-toolchain.toml) builds the targets and no nightly is needed.
# The Rust targets are memory safe without ASan (the cores forbid `unsafe`); what the fuzzer
# finds is panics (unwrap, indexing, overflow: targets build with debug assertions), failed
# property asserts, timeouts and unbounded memory.
#
# Found crashes land in fuzz/artifacts/<target>/; `scripts/fuzz.sh repro T FILE` replays one.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TOOLS="$PWD/.tools"
export PATH="$TOOLS/bin:$PATH"
# One target dir for the fuzz build, inside the worktree's target/ (instrumented artifacts never
# mix with the workspace's because the flags differ).
TARGET_DIR="$PWD/target/fuzz"
BIN_DIR="$TARGET_DIR/x86_64-unknown-linux-gnu/release"
FUZZ_SECONDS="${FUZZ_SECONDS:-600}"
FUZZ_JOBS="${FUZZ_JOBS:-2}"
FUZZ_SMOKE_RUNS="${FUZZ_SMOKE_RUNS:-3000}"
# libFuzzer: a slow input or a memory blow-up is a finding too.
LIBFUZZER_FLAGS=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)

install() {
  if ! cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}$"; then
    echo ">> cargo install cargo-fuzz ${CARGO_FUZZ_VERSION} into .tools/"
    cargo install cargo-fuzz --version "=${CARGO_FUZZ_VERSION}" --locked --root "$TOOLS"
  fi
}

targets() {
  if [ $# -gt 0 ]; then printf '%s\n' "$@"; else (cd fuzz && cargo fuzz list); fi
}

# All targets, or the one named.
build() {
  install
  (cd fuzz && cargo fuzz build --sanitizer none --target-dir "$TARGET_DIR" "$@")
}

dict_flag() {
  if [ -f "fuzz/dict/$1.dict" ]; then echo "-dict=fuzz/dict/$1.dict"; fi
}

smoke() {
  build
  local start t failed=()
  start=$(date +%s)
  for t in $(targets "$@"); do
    local t0 log
    t0=$(date +%s)
    log="$TARGET_DIR/logs/smoke-$t.log"
    mkdir -p "$(dirname "$log")" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    # The committed corpus is read only (no new inputs are written back to it): an empty
    # scratch directory comes first and takes what the run finds.
    local scratch="$TARGET_DIR/smoke-corpus/$t"
    rm -rf "$scratch"; mkdir -p "$scratch"
    # shellcheck disable=SC2046
    if "$BIN_DIR/$t" "$scratch" "fuzz/corpus/$t" -runs="$FUZZ_SMOKE_RUNS" -seed=1 \
        -artifact_prefix="fuzz/artifacts/$t/" $(dict_flag "$t") "${LIBFUZZER_FLAGS[@]}" >"$log" 2>&1; then
      echo "fuzz-smoke $t: ok ($(( $(date +%s) - t0 )) s, $(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' || true) runs)"
    else
      echo "fuzz-smoke $t: FAILED (log: $log)"; tail -30 "$log"; failed+=("$t")
    fi
  done
  echo "fuzz-smoke: $(( $(date +%s) - start )) s"
  [ ${#failed[@]} -eq 0 ] || { echo "fuzz-smoke failed: ${failed[*]}" >&2; exit 1; }
}

run_one() {
  local t=$1 log="$TARGET_DIR/logs/run-$t.log" corpus="$TARGET_DIR/corpus/$t"
  mkdir -p "$(dirname "$log")" "$corpus" "fuzz/artifacts/$t" "fuzz/corpus/$t"
  local rc=0
  # shellcheck disable=SC2046
  "$BIN_DIR/$t" "$corpus" "fuzz/corpus/$t" -max_total_time="$FUZZ_SECONDS" \
    -artifact_prefix="fuzz/artifacts/$t/" $(dict_flag "$t") "${LIBFUZZER_FLAGS[@]}" >"$log" 2>&1 || rc=$?
  summary "$t" "$log" "$corpus" "$rc"
}

# One line per target: executions, libFuzzer's final cov/ft, corpus size.
summary() {
  local t=$1 log=$2 corpus=$3 rc=$4
  local execs last cov ft corp
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1 || true)
  last=$(grep -E 'cov: [0-9]+ ft: [0-9]+ corp: ' "$log" | tail -1 || true)
  cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | awk '{print $2}' || true)
  ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | awk '{print $2}' || true)
  corp=$(echo "$last" | grep -oE 'corp: [0-9]+/[0-9A-Za-z]+' | awk '{print $2}' || true)
  echo "$t: rc=$rc execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} (entries/bytes; new inputs kept in $corpus) log=$log"
}

run() {
  build
  local t
  for t in $(targets "$@"); do
    while [ "$(jobs -rp | wc -l)" -ge "$FUZZ_JOBS" ]; do wait -n || true; done
    run_one "$t" &
  done
  wait
}

repro() {
  build "$1"
  "$BIN_DIR/$1" "$2"
}

cmd="${1:-smoke}"; shift || true
case "$cmd" in
  install) install ;;
  build) build "$@" ;;
  smoke) smoke "$@" ;;
  run) run "$@" ;;
  repro) repro "$@" ;;
  *) echo "usage: scripts/fuzz.sh install|build|smoke [targets]|run [targets]|repro TARGET FILE" >&2; exit 2 ;;
esac
