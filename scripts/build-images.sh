#!/usr/bin/env bash
# Builds the operator and chat-service images from the repository's Dockerfile without any
# registry, and caches them as one image archive keyed by a hash of their inputs.
#
#   build-images.sh           build (or reuse) the images; print their sizes and the archive path
#   build-images.sh --load    ... and import them into the node of scripts/node.sh
#   FICUS_IMAGE_BINARIES=DIR build-images.sh   use DIR/{ficus-operator,chat-service} as built
#
# The binaries come from `cargo build --release` on this (Debian 12) machine and are copied by
# the Dockerfile's `prebuilt` stage (BINARIES=prebuilt) onto a local equivalent of
# gcr.io/distroless/cc-debian12:nonroot, made from Debian's own packages (libc6, libgcc-s1,
# libssl3, ca-certificates, tzdata): RUNTIME_IMAGE=ficus.local/cc-debian12:nonroot.
# Docker (Debian package docker.io) builds them; a private dockerd is started when none runs and
# stopped afterwards. Nothing is rebuilt when the Dockerfile, the binaries and the base are the
# same as last time: the archive is reused without starting Docker.
#
# Each image gets two names: the chart's default (ghcr.io/ficus-dev/<name>:<appVersion>), so
# `helm install` with the chart's defaults finds it on a node it was loaded into, and
# ficus.local/<name>:<hash>, which names exactly this build. $CACHE/images/current.env records
# both and the archive, for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="${FICUS_CACHE:-$HOME/.cache/ficus}"
OUT="$CACHE/images"
mkdir -p "$OUT"
BASE_IMAGE=ficus.local/cc-debian12:nonroot
BASE_PACKAGES=(libc6 libgcc-s1 libssl3 ca-certificates tzdata netbase)
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/ficus/Chart.yaml)"

# The Dockerfile needs BuildKit: the buildx plugin, or the one built into Debian's Docker 20.10
# CLI (a newer CLI earlier on PATH without buildx refuses DOCKER_BUILDKIT=1).
DOCKER="${FICUS_DOCKER:-docker}"
if ! "$DOCKER" buildx version >/dev/null 2>&1 && [[ -x /usr/bin/docker ]] && /usr/bin/docker --version | grep -q ' 20\.10\.'; then
  DOCKER=/usr/bin/docker
fi
docker() { DOCKER_BUILDKIT=1 "$DOCKER" "$@"; }

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
size() { numfmt --to=iec --suffix=B "$1"; }

load=
[[ "${1:-}" == --load ]] && load=1

begin=$SECONDS
if [[ -n "${FICUS_IMAGE_BINARIES:-}" ]]; then
  # Binaries some other build already made (the test command uses the debug ones `cargo test`
  # builds anyway: a cold release build of both costs about 12 minutes on 2 cores).
  bindir="$FICUS_IMAGE_BINARIES"
  log "binaries from $bindir"
else
  log "cargo build --release (ficus-operator, chat-service)"
  cargo build --release --locked -q -p ficus-operator --bin ficus-operator -p chat-service --bin chat-service
  bindir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
fi
bins=("$bindir/ficus-operator" "$bindir/chat-service")
for b in "${bins[@]}"; do [[ -x "$b" ]] || die "$b not built"; done

# The base is keyed by the exact Debian package versions it is made of.
base_uris="$(apt-get download --print-uris "${BASE_PACKAGES[@]}" 2>/dev/null | awk '{print $2}' | sort)"
[[ -n "$base_uris" ]] || die "apt cannot resolve ${BASE_PACKAGES[*]} (run apt-get update)"
key="$( { cat Dockerfile; sha256sum "${bins[@]}" | awk '{print $1}'; echo "$base_uris"; } | sha256sum | cut -c1-16)"
archive="$OUT/ficus-images-$key.tar"
# A tag of digits only would be read as a number by `helm --set`: prefix it.
operator_ref="ficus.local/ficus-operator:dev-$key"
chat_ref="ficus.local/chat-service:dev-$key"

started_dockerd=
cleanup() {
  if [[ -n "$started_dockerd" ]]; then
    kill "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.1; done
  fi
  [[ -z "${work:-}" ]] || rm -rf "$work"
  rm -f "${archive:-}.tmp"
}
trap cleanup EXIT

docker_up() {
  docker info >/dev/null 2>&1 && return
  command -v dockerd >/dev/null || die "dockerd not found: apt-get install docker.io (scripts/install-deps.sh node)"
  log "starting dockerd (stopped again when the build is done)"
  # No bridge and no iptables rules: the builds copy files and run nothing.
  setsid dockerd --bridge=none --iptables=false --ip-masq=false >"$OUT/dockerd.log" 2>&1 </dev/null &
  started_dockerd=$!
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
  tail -n 20 "$OUT/dockerd.log" >&2
  die "dockerd did not start (log: $OUT/dockerd.log)"
}

# gcr.io/distroless/cc-debian12:nonroot's content, from the same Debian packages.
base_image() {
  local base_key; base_key="$(echo "$base_uris" | sha256sum | cut -c1-16)"
  if [[ "$(docker image inspect -f '{{index .Config.Labels "dev.ficus.base-key"}}' "$BASE_IMAGE" 2>/dev/null)" == "$base_key" ]]; then
    return
  fi
  log "making $BASE_IMAGE from Debian packages: ${BASE_PACKAGES[*]}"
  local debs="$work/debs" rootfs="$work/rootfs"
  mkdir -p "$debs" "$rootfs"
  (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "${BASE_PACKAGES[@]}" >/dev/null)
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$rootfs"; done
  # What the packages' maintainer scripts would have made, and distroless' nonroot user.
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"
  cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"
  chown 65532:65532 "$rootfs/home/nonroot"
  rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" "$rootfs/usr/share/info"
  tar -C "$rootfs" -c . | docker import \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    --change "LABEL dev.ficus.base-key=$base_key" - "$BASE_IMAGE" >/dev/null
}

if [[ -f "$archive" ]]; then
  log "images cached: $archive"
else
  work="$(mktemp -d)"
  docker_up
  base_image
  # The build context of BINARIES=prebuilt: just the two binaries where the Dockerfile expects them,
  # without their debug sections (a debug build's binary is 3-4 times its stripped size; the image
  # keeps the symbol table, so a backtrace still names functions).
  mkdir -p "$work/context/target/release"
  cp "${bins[@]}" "$work/context/target/release/"
  for b in "$work"/context/target/release/*; do objcopy --strip-debug "$b"; done
  for name in operator chat-service; do
    image="ficus-operator"; ref="$operator_ref"
    [[ "$name" == chat-service ]] && { image=chat-service; ref="$chat_ref"; }
    log "docker build --target $name"
    docker build -q -f "$ROOT/Dockerfile" --target "$name" \
      --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" --build-arg BINARIES=prebuilt \
      -t "$ref" -t "ghcr.io/ficus-dev/$image:$APP_VERSION" "$work/context" >/dev/null
  done
  docker save -o "$archive.tmp" "$operator_ref" "ghcr.io/ficus-dev/ficus-operator:$APP_VERSION" \
    "$chat_ref" "ghcr.io/ficus-dev/chat-service:$APP_VERSION"
  mv "$archive.tmp" "$archive"
  for ref in "$operator_ref" "$chat_ref"; do
    printf '%s\n' "$(docker image inspect -f '{{.Size}}' "$ref")" >"$OUT/$(basename "${ref%%:*}")-$key.size"
  done
  # The archive is what the node loads: Docker keeps only the base, so repeated builds (each
  # change of a binary is a new key) do not fill the disk with images and build cache.
  docker image rm "$operator_ref" "ghcr.io/ficus-dev/ficus-operator:$APP_VERSION" \
    "$chat_ref" "ghcr.io/ficus-dev/chat-service:$APP_VERSION" >/dev/null
  docker builder prune -af >/dev/null 2>&1 || true
  # Older archives are superseded.
  find "$OUT" -name 'ficus-images-*.tar' ! -name "$(basename "$archive")" -delete
fi

for ref in "$operator_ref" "$chat_ref"; do
  f="$OUT/$(basename "${ref%%:*}")-$key.size"
  [[ -f "$f" ]] && log "$ref: $(size "$(cat "$f")") (also ghcr.io/ficus-dev/$(basename "${ref%%:*}"):$APP_VERSION)"
done
log "archive $archive: $(size "$(stat -c %s "$archive")") ($((SECONDS - begin))s)"
cat >"$OUT/current.env" <<EOF
FICUS_OPERATOR_IMAGE=$operator_ref
FICUS_CHAT_IMAGE=$chat_ref
FICUS_IMAGES_ARCHIVE=$archive
EOF
[[ -z "$load" ]] || bash scripts/node.sh load "$archive"
echo "$archive"
