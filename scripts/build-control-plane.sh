#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver + etcd, and a matching kubectl) and helm from their Go modules and
# caches the binaries under ~/.cache/ficus/bin, keyed by version. Idempotent: a cached binary is reused.
# `node` adds what a single-node cluster needs on top (scripts/node.sh): kubelet, kube-scheduler,
# kube-controller-manager and kube-proxy from the same module, and the sandbox ("pause") image
# built from the pause.c that ships inside it (no registry is needed to start a pod).
#
# kube-apiserver lives in k8s.io/kubernetes, whose go.mod points every k8s.io/* staging module at
# a local path. A throwaway module pins each of those to the matching v0.x release instead.
set -euo pipefail

KUBE_VERSION="${FICUS_KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${FICUS_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${FICUS_HELM_VERSION:-v3.22.0}"
CACHE="${FICUS_CACHE:-$HOME/.cache/ficus}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { printf '[control-plane] %s\n' "$*" >&2; }

build_etcd() {
  local out="$BIN/etcd-$ETCD_VERSION"
  if [[ -x "$out" ]]; then log "etcd $ETCD_VERSION cached at $out"; return; fi
  local work; work="$(mktemp -d)"
  log "building etcd $ETCD_VERSION (first time only)"
  (
    cd "$work"
    go mod init ficus.dev/etcd-build >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
    CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out.tmp" go.etcd.io/etcd/server/v3
  )
  mv "$out.tmp" "$out"
  rm -rf "$work"
  log "etcd ready: $out"
}

# Whether binary $1 (a Kubernetes command, $2) reports the release it was built as.
stamped() {
  local out
  case "$2" in
    kubectl) out="$("$1" version --client 2>/dev/null)" ;;
    *) out="$("$1" --version 2>/dev/null)" ;;
  esac
  [[ "$out" == *"$KUBE_VERSION"* ]]
}

# Commands of k8s.io/kubernetes ($@, default kube-apiserver and kubectl) of one release, from one
# throwaway module.
build_kube() {
  local bins=("$@")
  [[ ${#bins[@]} -gt 0 ]] || bins=(kube-apiserver kubectl)
  local want=()
  for bin in "${bins[@]}"; do
    # A binary without the version stamp (an earlier build of this script) reports v0.0.0, which
    # breaks version checks such as a chart's kubeVersion: build it again.
    if [[ -x "$BIN/$bin-$KUBE_VERSION" ]] && stamped "$BIN/$bin-$KUBE_VERSION" "$bin"; then
      log "$bin $KUBE_VERSION cached"
    else
      want+=("$bin")
    fi
  done
  [[ ${#want[@]} -gt 0 ]] || return 0
  local work; work="$(mktemp -d)"
  local staging="v0.${KUBE_VERSION#v1.}"
  log "building ${want[*]} $KUBE_VERSION (first time only; about 5 minutes per command)"
  (
    cd "$work"
    go mod init ficus.dev/kube-build >/dev/null 2>&1
    # Read the staging module names from kubernetes' own go.mod so the list never goes stale.
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
    local mods
    mods="$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)"
    {
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo "replace ("
      for m in $mods; do echo "  $m => $m $staging"; done
      echo ")"
    } >>go.mod
    {
      printf 'package tools\n\nimport (\n'
      for bin in "${want[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$bin"; done
      printf ')\n'
    } >tools.go
    go mod tidy >/dev/null 2>&1 || go mod tidy
    # The version stamps the Kubernetes release build sets (hack/lib/version.sh).
    local major minor ldflags="-s -w"
    major="$(echo "${KUBE_VERSION#v}" | cut -d. -f1)"
    minor="$(echo "${KUBE_VERSION#v}" | cut -d. -f2)"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    for bin in "${want[@]}"; do
      CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/$bin-$KUBE_VERSION.tmp" "k8s.io/kubernetes/cmd/$bin"
      mv "$BIN/$bin-$KUBE_VERSION.tmp" "$BIN/$bin-$KUBE_VERSION"
      log "$bin ready: $BIN/$bin-$KUBE_VERSION"
    done
  )
  rm -rf "$work"
}

# helm, with the version stamps its Makefile sets (else `helm template` assumes Kubernetes 1.20).
build_helm() {
  local out="$BIN/helm-$HELM_VERSION"
  if [[ -x "$out" ]]; then log "helm $HELM_VERSION cached at $out"; return; fi
  local work; work="$(mktemp -d)"
  log "building helm $HELM_VERSION (first time only; about 2 minutes)"
  (
    # Helm stamps the Kubernetes version it assumes from its client-go (v0.X.Y -> 1.X).
    local gomod minor
    gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
    minor="$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2] }' "$gomod")"
    local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
    ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
    GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$work/helm" "$out.tmp"
  )
  mv "$out.tmp" "$out"
  rm -rf "$work"
  log "helm ready: $out"
}

# The sandbox image every pod starts with, as an image archive for `ctr images import`. The
# kubelet asks for registry.k8s.io/pause:<tag>; no registry is reachable from the tests, so it is
# built from build/pause/linux/pause.c of the k8s.io/kubernetes module (static, FROM scratch).
PAUSE_TAG="${FICUS_PAUSE_TAG:-3.10.1}"
build_pause() {
  local out="$CACHE/images/pause-$PAUSE_TAG.tar"
  if [[ -f "$out" ]]; then log "pause $PAUSE_TAG cached at $out"; return; fi
  mkdir -p "$CACHE/images"
  local work; work="$(mktemp -d)"
  local src
  src="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')"
  mkdir -p "$work/rootfs"
  gcc -Os -static -DVERSION="$PAUSE_TAG" -o "$work/rootfs/pause" "$src/build/pause/linux/pause.c"
  strip "$work/rootfs/pause"
  python3 "$(dirname "$0")/oci-archive.py" --rootfs "$work/rootfs" --entrypoint /pause --user 65535:65535 \
    --name "registry.k8s.io/pause:$PAUSE_TAG" --out "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$work"
  log "pause image ready: $out"
}

NODE_BINS=(kubelet kube-scheduler kube-controller-manager kube-proxy)

case "${1:-all}" in
  node) build_kube "${NODE_BINS[@]}"; build_pause ;;
  etcd) build_etcd ;;
  kube) build_kube ;;
  helm) build_helm ;;
  control-plane) build_etcd; build_kube ;;
  all) build_etcd; build_kube; build_helm ;;
  *) echo "usage: $0 [all|control-plane|etcd|kube|helm|node]" >&2; exit 2 ;;
esac
