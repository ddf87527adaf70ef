#!/usr/bin/env bash
# Builds Toxiproxy (the fault-injection proxy of the live scenario suite) from its Go module and
# caches the server under ~/.cache/ficus/bin, keyed by version. Idempotent.
set -euo pipefail

VERSION="${FICUS_TOXIPROXY_VERSION:-v2.5.0}"
CACHE="${FICUS_CACHE:-$HOME/.cache/ficus}"
BIN="$CACHE/bin"
OUT="$BIN/toxiproxy-server-$VERSION"
mkdir -p "$BIN"

if [[ -x "$OUT" ]]; then
  printf '[toxiproxy] %s cached at %s\n' "$VERSION" "$OUT" >&2
  exit 0
fi
printf '[toxiproxy] building toxiproxy-server %s (first time only; about a minute)\n' "$VERSION" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `go install pkg@version` builds outside any module; GOBIN keeps the binary out of ~/go/bin.
GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags '-s -w' \
  "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION"
mv "$work/server" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
printf '[toxiproxy] ready: %s\n' "$OUT" >&2
