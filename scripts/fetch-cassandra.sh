#!/usr/bin/env bash
# Fetches Apache Cassandra (the CQL database of the chat-service ScyllaDB store tests) from Maven
# Central: cassandra-all and its runtime dependencies, i.e. the lib/ of the binary tarball, which
# is not a Maven artifact for 5.0. Resolved by Maven through scripts/cassandra/pom.xml into
# ~/.m2, then copied to ~/.cache/ficus/cassandra-<version>/lib, keyed by version.
# Idempotent: the `.complete` marker is written last, so an interrupted fetch is redone.
# Installs Maven (to fetch) and Java 17 (testkit/src/cassandra.rs runs the jars with `java` on PATH,
# or $FICUS_JAVA) from Debian packages when missing. $FICUS_CASSANDRA_VERSION picks another
# 5.0.x release (the harness reads it too).
set -euo pipefail

VERSION="${FICUS_CASSANDRA_VERSION:-5.0.9}"
CACHE="${FICUS_CACHE:-$HOME/.cache/ficus}"
DEST="$CACHE/cassandra-$VERSION"
POM="$(cd "$(dirname "$0")" && pwd)/cassandra/pom.xml"

log() { printf '[cassandra] %s\n' "$*" >&2; }

if [[ -f "$DEST/.complete" ]]; then log "cassandra $VERSION cached at $DEST"; exit 0; fi
# Maven to fetch, Java 17 to run (Debian packages, as in install-deps.sh).
need=()
command -v mvn >/dev/null || need+=(maven)
command -v java >/dev/null || [[ -n "${FICUS_JAVA:-}" ]] || need+=(openjdk-17-jre-headless)
if [[ ${#need[@]} -gt 0 ]]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
log "fetching cassandra-all $VERSION and its dependencies into $DEST/lib (first time only)"
rm -rf "$DEST"
mkdir -p "$DEST"
# Maven's output only matters when it fails (quiet mode still prints bare ANSI resets).
if ! out="$(mvn -q -B -f "$POM" dependency:copy-dependencies \
  -Dcassandra.version="$VERSION" -DincludeScope=runtime -DoutputDirectory="$DEST/lib" 2>&1)"; then
  printf '%s\n' "$out" >&2
  log "resolving cassandra-all $VERSION failed (set FICUS_CASSANDRA_VERSION, e.g. 5.0.6, to try another)"
  exit 1
fi
[[ -f "$DEST/lib/cassandra-all-$VERSION.jar" ]] || { log "cassandra-all-$VERSION.jar missing in $DEST/lib"; exit 1; }
touch "$DEST/.complete"
log "cassandra $VERSION ready: $DEST/lib ($(ls "$DEST/lib" | wc -l) jars)"
