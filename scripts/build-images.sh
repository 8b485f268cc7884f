#!/usr/bin/env bash
# The local images, built without an image registry and cached by content:
#
#   bash scripts/build-images.sh [all|base|ollama|rust|remove]    (default: all)
#
#   tr116-debian-base:bookworm   debootstrap --variant=minbase bookworm from the Debian mirror apt
#                                uses here, then `docker import` (stands in for debian:bookworm-slim)
#   tr116-ollama:cpu-<version>   docker/Dockerfile.ollama-cpu: the base + the `ollama` binary that
#                                setup built ($OLLAMA_BIN, default .venv/bin/ollama)
#   tr116-rust-agents:local      docker/Dockerfile.rust-agents, target `prebuilt`: the base + the
#                                `tr116-agent` that setup built ($TR116_AGENT_BINARY, default
#                                rust-agents/target/release/tr116-agent)
#
# Each image carries the label org.tr116.inputs: the sha256 of what it is made from (recipe,
# mirror, binaries, Dockerfile, the base image's ID). An image whose label matches is kept, so a
# second run builds nothing. `remove` deletes the three images. Needs a Docker engine
# (scripts/docker-host.sh up) and, for the base, debootstrap (root).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=tr116-debian-base:bookworm
RUST_IMAGE=tr116-rust-agents:local
OLLAMA_BIN=${OLLAMA_BIN:-.venv/bin/ollama}
AGENT_BIN=${TR116_AGENT_BINARY:-rust-agents/target/release/tr116-agent}
LABEL=org.tr116.inputs
BASE_RECIPE="debootstrap --variant=minbase bookworm; apt caches dropped; recipe 1"
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}  # the classic builder: no buildx plugin needed

say() { echo "build-images: $*"; }
sha() { sha256sum | cut -c1-64; }
image_inputs() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
fresh() {  # fresh IMAGE HASH: the image exists and was made from these inputs
  if [ "$(image_inputs "$1")" = "$2" ]; then
    say "$1 is up to date ($LABEL=${2:0:12}…): kept"
    return 0
  fi
  return 1
}

debian_mirror() {  # the mirror apt uses for bookworm (deb822 .sources or one-line .list files)
  if [ -n "${TR116_DEBIAN_MIRROR:-}" ]; then echo "$TR116_DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'BEGIN { RS = ""; FS = "\n" }
        { uris = ""; ok = 0
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { split($i, u, /[ \t]+/); uris = u[2] }
            if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) ok = 1
          }
          if (ok && uris != "") { print uris; exit } }')
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i+1) == "bookworm") { print $i; exit } } }')
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  local mirror hash t0=$SECONDS
  mirror=$(debian_mirror)
  hash=$(printf '%s\n%s\n%s\n' "$BASE_RECIPE" "$mirror" "$(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null)" | sha)
  fresh "$BASE_IMAGE" "$hash" && return 0
  command -v debootstrap >/dev/null || { say "debootstrap is missing (bash scripts/docker-host.sh up installs it)"; exit 1; }
  local rootfs
  rootfs=$(mktemp -d /var/tmp/tr116-rootfs.XXXXXX)
  # shellcheck disable=SC2064  # expand now: the trap must remove this very folder
  trap "rm -rf '$rootfs'" EXIT
  say "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . \
    | docker import --change "LABEL $LABEL=$hash" --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  say "$BASE_IMAGE built in $(( SECONDS - t0 )) s ($(docker image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

ollama_version() {
  if [ -n "${TR116_OLLAMA_VERSION:-}" ]; then echo "$TR116_OLLAMA_VERSION"; return; fi
  # Without a server the binary says "Warning: client version is X"; with one, "ollama version is X".
  "$OLLAMA_BIN" --version 2>&1 | sed -n 's/.*version is \([0-9][^ ]*\).*/\1/p' | tail -n1
}

# build IMAGE HASH CONTEXT DOCKER-BUILD-ARGS...: docker build, labelled with the inputs' hash
build() {
  local image=$1 hash=$2 context=$3 t0=$SECONDS
  shift 3
  local log
  log=$(mktemp)
  if ! docker build --label "$LABEL=$hash" -t "$image" "$@" "$context" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
  say "$image built in $(( SECONDS - t0 )) s"
}

build_ollama() {
  [ -x "$OLLAMA_BIN" ] || { say "no Ollama binary at $OLLAMA_BIN (set OLLAMA_BIN; setup builds it)"; exit 1; }
  local version image hash
  version=$(ollama_version)
  [ -n "$version" ] || { say "cannot read the version of $OLLAMA_BIN"; exit 1; }
  image=tr116-ollama:cpu-$version
  hash=$( (sha256sum <"$OLLAMA_BIN"; sha256sum <docker/Dockerfile.ollama-cpu;
           docker image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha)
  fresh "$image" "$hash" && return 0
  local ctx
  ctx=$(mktemp -d)
  cp "$OLLAMA_BIN" "$ctx/ollama"
  build "$image" "$hash" "$ctx" -f docker/Dockerfile.ollama-cpu --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    || { rm -rf "$ctx"; exit 1; }
  rm -rf "$ctx"
}

build_rust() {
  [ -x "$AGENT_BIN" ] || { say "no tr116-agent at $AGENT_BIN (set TR116_AGENT_BINARY; setup builds it)"; exit 1; }
  local missing
  missing=$(ldd "$AGENT_BIN" | awk '/=>/ { print $1 }' | grep -vE '^(libc|libm|libgcc_s|libdl|libpthread|librt)\.so' || true)
  [ -z "$missing" ] || say "warning: $AGENT_BIN links libraries the base may lack: $missing"
  local hash
  hash=$( (sha256sum <"$AGENT_BIN"; sha256sum <docker/Dockerfile.rust-agents;
           docker image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha)
  fresh "$RUST_IMAGE" "$hash" && return 0
  # A context with only the binary, at the path the `prebuilt` stage copies from.
  local ctx
  ctx=$(mktemp -d)
  install -D -m 0755 "$AGENT_BIN" "$ctx/target/release/tr116-agent"
  build "$RUST_IMAGE" "$hash" "$ctx" -f docker/Dockerfile.rust-agents --target prebuilt \
    --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" || { rm -rf "$ctx"; exit 1; }
  rm -rf "$ctx"
}

remove() {
  local images
  images=$(docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -E '^(tr116-debian-base|tr116-ollama|tr116-rust-agents):' || true)
  # shellcheck disable=SC2086
  [ -z "$images" ] || docker image rm $images >/dev/null
  say "removed: ${images:-nothing}" | tr '\n' ' '; echo
}

case "${1:-all}" in
  base) build_base ;;
  ollama) build_base; build_ollama ;;
  rust) build_base; build_rust ;;
  all) build_base; build_ollama; build_rust ;;
  remove) remove ;;
  *) echo "usage: $0 [all|base|ollama|rust|remove]" >&2; exit 2 ;;
esac
