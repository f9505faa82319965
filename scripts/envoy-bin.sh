#!/usr/bin/env bash
# Prints the Envoy binary wasmesh uses: $ENVOY_BIN, else the project's .venv, else `envoy` on PATH.
cd "$(dirname "$0")/.."
if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; exit 0; fi
for f in "$PWD"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
  [ -x "$f" ] && { echo "$f"; exit 0; }
done
command -v envoy || echo envoy
