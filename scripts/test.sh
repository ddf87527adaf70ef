#!/usr/bin/env bash
# Runs every test. Installs what the tests need first (idempotent, cached outside the repo):
# the control plane binaries built from their Go modules, and Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build-control-plane.sh
bash scripts/build-toxiproxy.sh
cargo test --workspace --all-targets "$@"
