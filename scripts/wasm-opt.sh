#!/usr/bin/env bash
# `make wasm`: each module cargo built, through binaryen's wasm-opt (Debian `binaryen`; scripts/deps.sh).
#   scripts/wasm-opt.sh <wasm-opt flags...> -- <module.wasm>...
# A module is rewritten by a new file renamed over it, never in place: target/ may share its inodes
# with other checkouts (hard links) and with cargo's own copy in deps/. `<module>.wasm.opt` keeps the
# sha256 of what wasm-opt wrote with which flags, so a module cargo did not rebuild is not redone.
set -euo pipefail
flags=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do flags+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if ! command -v wasm-opt >/dev/null 2>&1; then
  echo "wasm-opt not found (Debian: apt-get install binaryen; scripts/deps.sh installs it)" >&2
  exit 1
fi
for m in "$@"; do
  stamp="$m.opt"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha256sum <"$m" | cut -d' ' -f1) ${flags[*]}" ]; then
    continue
  fi
  before=$(stat -c %s "$m")
  wasm-opt "${flags[@]}" "$m" -o "$m.tmp"
  chmod --reference="$m" "$m.tmp"
  mv -f "$m.tmp" "$m"
  echo "$(sha256sum <"$m" | cut -d' ' -f1) ${flags[*]}" >"$stamp"
  echo "wasm-opt ${flags[*]}: $m $before -> $(stat -c %s "$m") bytes"
done
