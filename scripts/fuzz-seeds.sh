#!/usr/bin/env bash
# Regenerates the fuzz seed corpora (fuzz/corpus/<target>/) from the project's test material:
# see fuzz/examples/seeds.rs. The output is committed; ECDSA and PSS signatures are randomized,
# so a rerun changes those files (they stay valid).
set -euo pipefail
cd "$(dirname "$0")/.."
(cd fuzz && cargo run -q --example seeds --target-dir "$PWD/../target")
find fuzz/corpus -type f | sed 's|/[^/]*$||' | sort | uniq -c
