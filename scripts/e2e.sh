#!/usr/bin/env bash
# The e2e tests, several test binaries at a time (`make test-e2e`).
#
#   scripts/e2e.sh [-- <libtest args>]     e.g. scripts/e2e.sh -- --skip bench
#
# `cargo test -p wasmesh-e2e` runs its test binaries one after another, and every one of them spends
# most of its time waiting on sockets (Envoys starting, requests crossing a mesh, Prometheus
# scraping). So the binaries run E2E_JOBS at a time (default 2), each with --test-threads
# E2E_TEST_THREADS (default 2), the largest test files first. Each binary's output is printed
# whole when it ends; the summary lists every binary with its time, and the script fails when one
# failed. Binaries run from e2e/ (as cargo runs them) with the same environment.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${E2E_JOBS:-2}"
THREADS="${E2E_TEST_THREADS:-2}"
if [ "${1:-}" = "--" ]; then shift; fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Build every test binary of the e2e crate; the JSON messages name the executables.
cargo test -p wasmesh-e2e --no-run --message-format=json-render-diagnostics >"$out/build.json"
mapfile -t bins < <(python3 - "$out/build.json" <<'PY'
import json, os, sys
found = []
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        t = m["target"]
        src = t.get("src_path", "")
        size = os.path.getsize(src) if t.get("kind") == ["test"] and os.path.exists(src) else 0
        found.append((size, t["name"], m["executable"]))
# Largest test files first (they take longest), the library's unit tests last.
for size, name, exe in sorted(found, key=lambda f: -f[0]):
    print(name + "\t" + exe)
PY
)

if [ "${#bins[@]}" -eq 0 ]; then
  echo "e2e: no test binaries were built" >&2
  exit 1
fi

declare -A started pid_name
failed=()
summary=()

finish() {
  local pid=$1 rc=$2 name=${pid_name[$1]}
  local took=$(( $(date +%s) - ${started[$name]} ))
  echo "=== e2e ${name} (${took} s, exit ${rc})"
  cat "$out/$name.log"
  summary+=("$(printf '%-16s %4d s  %s' "$name" "$took" "$([ "$rc" = 0 ] && echo ok || echo FAILED)")")
  if [ "$rc" != 0 ]; then failed+=("$name"); fi
}

running=()
reap_one() {
  local rc=0 done_pid
  wait -n -p done_pid "${running[@]}" || rc=$?
  finish "$done_pid" "$rc"
  local keep=()
  for p in "${running[@]}"; do [ "$p" != "$done_pid" ] && keep+=("$p"); done
  running=("${keep[@]+"${keep[@]}"}")
}

t0=$(date +%s)
for entry in "${bins[@]}"; do
  name=${entry%%$'\t'*}
  exe=${entry#*$'\t'}
  while [ "${#running[@]}" -ge "$JOBS" ]; do reap_one; done
  started[$name]=$(date +%s)
  (cd e2e && exec "$exe" --test-threads "$THREADS" "$@") >"$out/$name.log" 2>&1 &
  pid_name[$!]=$name
  running+=("$!")
done
while [ "${#running[@]}" -gt 0 ]; do reap_one; done

echo "=== e2e summary ($(( $(date +%s) - t0 )) s wall, ${JOBS} binaries at a time)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "e2e: FAILED: ${failed[*]}" >&2
  exit 1
fi
