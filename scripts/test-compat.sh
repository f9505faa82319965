#!/usr/bin/env bash
# Runs the e2e smoke set on several Envoy versions (each from its own .venv-envoy-<minor>/, installed
# by scripts/envoy-versions.sh) and prints the time each version took: wall clock, and the CPU time of
# the tests with every Envoy and app they started (user+sys), which does not depend on how busy the
# machine is.
#
#   scripts/test-compat.sh "1.36 1.38 1.40" "router::test_name authz::other_test ..."
#
# A smoke test is `<e2e test file>::<test name>` (e2e/tests/<file>.rs), selected with cargo's exact
# test filter, so the smoke set reuses the e2e tests and never copies them. Every version runs the
# whole set even when one fails; the exit status is non-zero when any test failed on any version.
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

failed=()
summary=()
for v in $versions; do
  bin="$(scripts/envoy-bin.sh "$v")" || exit 1
  full="$("$bin" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2)"
  echo "=== Envoy ${full:-$v} ($bin)"
  start=$(date +%s)
  cpu=0
  ok=1
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
      failed+=("Envoy ${full:-$v}: e2e/tests/$file.rs (${names_of[$file]# })")
    fi
  done
  secs=$(( $(date +%s) - start ))
  summary+=("Envoy ${full:-$v}: $([ $ok = 1 ] && echo passed || echo FAILED) in ${secs}s wall, ${cpu}s CPU")
done

echo
echo "=== test-compat: $(wc -w <<<"$tests") smoke tests per Envoy version"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed:"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
