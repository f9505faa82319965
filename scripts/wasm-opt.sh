#!/usr/bin/env bash
# `make wasm`: each module cargo built, through binaryen's wasm-opt (Debian `binaryen`; scripts/deps.sh).
#   scripts/wasm-opt.sh <wasm-opt flags...> -- <module.wasm>...
# cargo puts its own build back at <module>.wasm on every `cargo build` (it re-links its copy from
# deps/), and `make test` runs `make wasm` several times, two at once. So the optimized module is
# kept beside it (<module>.wasm.opt.wasm) with the sha256 of the cargo build it came from and the
# flags (<module>.wasm.opt): when cargo's build is unchanged the kept result is copied back, and
# wasm-opt runs only for a new build. A module is replaced by a file renamed over it, never written
# in place (target/ may share inodes with other checkouts through hard links), and one module is
# handled by one process at a time (flock), so concurrent `make wasm` runs cannot mix their files.
set -euo pipefail
flags=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do flags+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if ! command -v wasm-opt >/dev/null 2>&1; then
  echo "wasm-opt not found (Debian: apt-get install binaryen; scripts/deps.sh installs it)" >&2
  exit 1
fi
sha() { sha256sum <"$1" | cut -d' ' -f1; }
# Replaces $2 by a copy of $1 through a temporary file in $2's directory and a rename.
replace_with() {
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  cp "$1" "$tmp"
  chmod --reference="$2" "$tmp" 2>/dev/null || chmod 755 "$tmp"
  mv -f "$tmp" "$2"
}
for m in "$@"; do
  stamp="$m.opt" kept="$m.opt.wasm"
  exec 9>"$m.lock"
  flock 9
  now=$(sha "$m")
  if [ -f "$stamp" ] && [ -f "$kept" ]; then
    read -r built_sha kept_sha recorded_flags <"$stamp" || true
    if [ "$recorded_flags" = "${flags[*]}" ] && [ "$kept_sha" = "$(sha "$kept")" ]; then
      if [ "$now" = "$kept_sha" ]; then exec 9>&-; continue; fi
      if [ "$now" = "$built_sha" ]; then replace_with "$kept" "$m"; exec 9>&-; continue; fi
    fi
  fi
  before=$(stat -c %s "$m")
  out=$(mktemp "$m.XXXXXX")
  wasm-opt "${flags[@]}" "$m" -o "$out"
  replace_with "$out" "$kept"
  rm -f "$out"
  replace_with "$kept" "$m"
  echo "$now $(sha "$kept") ${flags[*]}" >"$stamp"
  echo "wasm-opt ${flags[*]}: $m $before -> $(stat -c %s "$m") bytes"
  exec 9>&-
done
