#!/usr/bin/env bash
# Debian packages the tests use. Skips apt entirely when everything is already there.
set -euo pipefail
need=()
command -v go >/dev/null || need+=(golang-go)
command -v kubectl >/dev/null || true  # built by build-control-plane.sh when missing
if [[ ${#need[@]} -gt 0 ]]; then
  echo "[deps] installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
