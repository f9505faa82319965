#!/usr/bin/env bash
# Runs the e2e smoke set on several Envoy versions (each from its own .venv-envoy-<minor>/, installed
# by scripts/envoy-versions.sh) and prints the time each version took: wall clock, and the CPU time of
# the tests with every Envoy and app they started (user+sys), which does not depend on how busy the
# machine is.
#
#   scripts/test-compat.sh "1.36 1.38 1.40" "router::test_name authz::other_test ..."
#
# A smoke test is `<e2e test file>::<test name>` (e2e/tests/<file>.rs), selected with cargo's exact
# test filter, so the smoke set reuses the e2e tests and never copies them. The versions run side by
# side (COMPAT_JOBS=1: one after the other), each with its own log, printed in order at the end. Every
# version runs the whole set even when one fails; the exit status is non-zero when any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."

versions="${1:?usage: scripts/test-compat.sh \"<envoy minors>\" \"<file::test> ...\"}"
tests="${2:?usage: scripts/test-compat.sh \"<envoy minors>\" \"<file::test> ...\"}"
CARGO="${CARGO:-cargo}"

# Group the test names by e2e test file, keeping the order of first appearance.
declare -A names_of=()
files=()
for t in $tests; do
  file="${t%%::*}" name="${t#*::}"
  if [ "$file" = "$t" ] || [ -z "$name" ] || [ ! -f "e2e/tests/$file.rs" ]; then
    echo "test-compat: smoke test '$t' is not <file>::<test> with e2e/tests/<file>.rs present" >&2
    exit 2
  fi
  if ! grep -q "fn ${name}()" "e2e/tests/$file.rs"; then
    echo "test-compat: e2e/tests/$file.rs has no test '$name' (smoke test '$t')" >&2
    exit 2
  fi
  [ -n "${names_of[$file]:-}" ] || files+=("$file")
  names_of[$file]="${names_of[$file]:-} $name"
done

# Build once, before any clock starts.
$CARGO test -q -p wasmesh-e2e $(printf -- '--test %s ' "${files[@]}") --no-run || exit 1

# One version: its tests in order; the summary line and any failures go to $2.result.
run_version() {
  local v="$1" out="$2" bin full start cpu=0 ok=1 file cpu_file status
  bin="$(scripts/envoy-bin.sh "$v")" || { echo "Envoy $v: not installed" >"$out.result"; return; }
  full="$("$bin" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2)"
  echo "=== Envoy ${full:-$v} ($bin)"
  start=$(date +%s)
  : >"$out.failed"
  for file in "${files[@]}"; do
    cpu_file="$(mktemp)"
    # `time` counts the children the tests waited for: the Envoys and apps (they are reaped by Drop).
    exec 3>&2
    # shellcheck disable=SC2086
    { TIMEFORMAT='%U %S'; time ENVOY_BIN="$bin" $CARGO test -q -p wasmesh-e2e --test "$file" -- --exact ${names_of[$file]} --test-threads 2 2>&3; } 2>"$cpu_file"
    status=$?
    exec 3>&-
    cpu=$(awk -v c="$cpu" '{ printf "%.1f", c + $1 + $2 }' "$cpu_file")
    rm -f "$cpu_file"
    if [ $status -ne 0 ]; then
      ok=0
      echo "Envoy ${full:-$v}: e2e/tests/$file.rs (${names_of[$file]# })" >>"$out.failed"
    fi
  done
  echo "Envoy ${full:-$v}: $([ $ok = 1 ] && echo passed || echo FAILED) in $(( $(date +%s) - start ))s wall, ${cpu}s CPU" >"$out.result"
}

# The versions run side by side (COMPAT_JOBS=1: one after the other): the tests spend most of their
# time waiting for Envoys and apps, and every server binds an OS-chosen port with a dynamic base id.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
if [ "${COMPAT_JOBS:-}" = 1 ]; then
  for v in $versions; do run_version "$v" "$work/$v"; done
else
  echo "=== test-compat: Envoy $(sed 's/ /, /g' <<<"$versions") side by side; each one's log follows when all are done"
  pids=()
  for v in $versions; do
    run_version "$v" "$work/$v" >"$work/$v.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  for v in $versions; do cat "$work/$v.log"; done
fi

echo
echo "=== test-compat: $(wc -w <<<"$tests") smoke tests on each of $(wc -w <<<"$versions") Envoy versions, $(( $(date +%s) - start ))s in all"
status=0
for v in $versions; do
  cat "$work/$v.result" 2>/dev/null || echo "Envoy $v: no result"
  grep -q ' passed in ' "$work/$v.result" 2>/dev/null || status=1
done
if cat "$work"/*.failed 2>/dev/null | grep -q .; then
  echo "failed:"
  for v in $versions; do sed 's/^/  /' "$work/$v.failed" 2>/dev/null; done
fi
exit $status
