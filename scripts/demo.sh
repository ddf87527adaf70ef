#!/usr/bin/env bash
# The local demo: builds (or reuses) the control plane binaries and the operator, then runs a
# migration from Pending to Completed on a real kube-apiserver.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh demo
bash scripts/build-control-plane.sh control-plane
cargo build -q -p ficus-operator -p ficus-e2e --bins
exec target/debug/ficus-demo
