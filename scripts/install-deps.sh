#!/usr/bin/env bash
# What the tests and the demo need beyond Rust, installed once and cached outside the repo.
#   install-deps.sh          everything (the test command)
#   install-deps.sh demo     only what the demo needs (Go, to build the control plane)
#   install-deps.sh node     only what the single-node cluster needs (scripts/node.sh, build-images.sh)
# Debian packages: Go (builds the control plane), Prometheus and Alertmanager (gate and alert
# tests), PostgreSQL, NATS and Redis (chat-service tests). moto's server from PyPI (AWS tests) and
# Cassandra's jars from Maven Central (CQL store tests). The node (scripts/node.sh) runs pods with
# containerd, runc and the CNI plugins, kube-proxy programs iptables (conntrack cleans up UDP),
# and scripts/build-images.sh builds the images with Docker. Each step is skipped when done.
set -euo pipefail
only="${1:-all}"

need=()
command -v go >/dev/null || need+=(golang-go)
if [[ "$only" == all || "$only" == node ]]; then
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)  # the pause image
fi
if [[ "$only" == all ]]; then
  command -v prometheus >/dev/null || need+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  command -v nats-server >/dev/null || need+=(nats-server)
  [[ -x /usr/bin/redis-server ]] || need+=(redis-server)
fi
if [[ ${#need[@]} -gt 0 ]]; then
  echo "[deps] installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The packages' services are not wanted here (tests start their own on loopback ports).
  made_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [[ -z "$made_policy" ]] || rm -f /usr/sbin/policy-rc.d
fi
[[ "$only" == all ]] || exit 0

# moto's server (AWS SSM and ECS APIs for the AWS driver tests), in a virtualenv cached
# outside the repo and keyed by version.
MOTO_VERSION="${FICUS_MOTO_VERSION:-5.2.5}"
MOTO_VENV="${FICUS_CACHE:-$HOME/.cache/ficus}/moto-$MOTO_VERSION"
# The marker is written last, so an interrupted install is redone from scratch.
if [[ ! -f "$MOTO_VENV/.complete" ]]; then
  echo "[deps] installing moto[server] $MOTO_VERSION into $MOTO_VENV" >&2
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
  touch "$MOTO_VENV/.complete"
fi
bash "$(dirname "$0")/fetch-cassandra.sh"  # Cassandra (CQL) jars for the chat-service ScyllaDB store tests
