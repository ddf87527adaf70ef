#!/usr/bin/env bash
# Debian packages the tests use: Go (builds the control plane), Prometheus and Alertmanager
# (gate and alert tests). Skips apt entirely when everything is already installed.
set -euo pipefail
need=()
command -v go >/dev/null || need+=(golang-go)
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
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
