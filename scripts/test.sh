#!/usr/bin/env bash
# Runs every test. Installs what the tests need first (idempotent, cached outside the repo):
# the control plane binaries built from their Go modules, and Debian packages; the single-node
# cluster's binaries and the operator and chat-service images for the cluster test
# (e2e/tests/cluster.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build-control-plane.sh
bash scripts/build-toxiproxy.sh
bash scripts/build-control-plane.sh node
# The cluster test's images carry the debug binaries this build makes anyway: --all-targets
# builds the tests with the same features `cargo test` uses, and the plain binaries too (users
# build release images: scripts/build-images.sh without FICUS_IMAGE_BINARIES).
cargo build --workspace --all-targets
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
FICUS_IMAGE_BINARIES="$target/debug" bash scripts/build-images.sh >/dev/null
# --no-fail-fast: one run reports every failing test binary, not only the first.
cargo test --workspace --all-targets --no-fail-fast "$@"
