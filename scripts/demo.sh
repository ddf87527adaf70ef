#!/usr/bin/env bash
# The live demo: the shipped Migration (examples/chat-postgres-to-scylla.yaml, durations scaled
# down) moves a chat service with history and live users from PostgreSQL to the CQL store, then
# a fault scenario rolls a second run back automatically. Arguments pick the scenarios:
#   ./scripts/demo.sh                      clean, then errors
#   ./scripts/demo.sh latency abort-from-cutover
# Scenarios: clean, errors, latency, abort-from-cutover, chat-sigkill (docs/live.md).
# The demo runs at the quick pace (20 s windows, 6 s bakes, 4,000 messages of history); the
# tests' pace is `target/debug/ficus-live <scenario>...` without --quick.
# The first run installs and builds everything (cached outside the repo) and says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }
step "installing what the live stack runs (PostgreSQL, NATS, Prometheus, Alertmanager, Cassandra jars): skipped when present"
bash scripts/install-deps.sh
step "building etcd, kube-apiserver and kubectl from their Go modules (cached in ~/.cache/ficus)"
bash scripts/build-control-plane.sh control-plane
step "building Toxiproxy from its Go module (cached)"
bash scripts/build-toxiproxy.sh
step "building chat-service, ficus-operator and the live harness (cargo prints each crate; the first build takes several minutes)"
cargo build -p chat-service -p ficus-operator -p ficus-e2e --bins
step "running the live scenarios"
exec target/debug/ficus-live --quick "$@"
