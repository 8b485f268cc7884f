"""The study manifest (results/<study>/manifest.json) as pydantic models, and its one reader.

The models are the source of truth: bench/data/manifest.schema.json is generated from them
(`python -m bench.core.manifest` writes it; tests/test_manifest_model.py checks the two are
equal). bench/study/manifest_writer.py builds a `Manifest` and writes it; every reader goes through
`load_manifest` (or `parse` for a dict already read), which passes older shapes through the one
`migrate` function first, so no reader needs a fallback for a key an older harness did not write.

Sections the harness writes itself (git state, profile, plan overrides, invocations, host, Rust,
seeds, fingerprint) refuse unknown keys; what a runtime or a server reports (runtime description,
model identities, GPUs, /api/ps) keeps every key it came with, typed where a reader uses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.core.errors import BenchError
from bench.core.paths import DATA_DIR
from bench.core.store import atomic_write_text

SCHEMA_VERSION = 2  # 2: written from these models, every section present (1: a plain dict)
SCHEMA_FILE = DATA_DIR / "manifest.schema.json"
# What identifies a model in a manifest entry, in the order `invoke reproduce` checks them: the
# GGUF file's sha256 (the weights), then Ollama's digest (weights, template and parameters).
MODEL_IDENTITY_KEYS = ("file_sha256", "digest")
# What Ollama's digest of a model it created from a GGUF file covers beside the file: the template
# and the parameters it was created with. The digest itself differs between model stores of the
# same inputs (a native and a container store, same Ollama version, here), so for such a model it
# is recorded but never matched: the file's sha256 and these two are (ModelIdentity.match_identity).
CREATED_FROM_FILE_KEYS = ("template", "parameters")
# Runtime settings that name a place on the host, not how the server runs.
HOST_PATH_SETTINGS = {"OLLAMA_MODELS"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- what the harness records -------------------------------------------------------------------


class GitState(_Strict):
    commit: str | None = None
    dirty: bool | None = None
    diff_sha256: str | None = None


class ProfileRecord(_Strict):
    """The profile file the study ran, and the resolved profile (bench.config.profile.Profile's dump)."""

    path: str | None = None
    sha256: str | None = None
    picked_because: str | None = None
    resolved_sha256: str | None = None
    resolved: dict[str, Any]


class PlanOverrides(_Strict):
    """build_plan's keyword arguments a task passed (`bench --models/--langs/--suites/--runs`)."""

    models: list[str] | None = None
    langs: list[str] | None = None
    suites: list[str] | None = None
    runs: int | None = None

    def kwargs(self) -> dict:
        return self.model_dump(exclude_none=True)


class LearnedLimits(_Strict):
    """What the fallback ladder learned on this host (bench/config/ladder.py): rungs that failed, worked."""

    failed: list[dict[str, Any]] = Field(default_factory=list)
    worked: list[dict[str, Any]] = Field(default_factory=list)

    def merged(self, other: LearnedLimits) -> LearnedLimits:
        return LearnedLimits(failed=self.failed + [e for e in other.failed if e not in self.failed],
                             worked=self.worked + [e for e in other.worked if e not in self.worked])


class Invocation(_Strict):
    """One `bench` call of the study (a migrated manifest's only one has its overrides alone)."""

    started_at: str | None = None
    finished_at: str | None = None
    plan_overrides: PlanOverrides = Field(default_factory=PlanOverrides)
    runs_planned: int | None = None
    command: str | None = None
    learned_limits: LearnedLimits = Field(default_factory=LearnedLimits)


class Host(_Strict):
    cpu: str | None = None
    cores: int | None = None
    physical_cores: int | None = None
    ram_bytes: int | None = None
    os: str | None = None
    kernel: str | None = None
    python: str | None = None


class Rust(_Strict):
    rustc: str | None = None
    agent: str | None = None
    agent_sha256: str | None = None
    agent_missing_reason: str | None = None


class Seeds(_Strict):
    request_seed: int | None = None
    order_seed: int | None = None
    calibration_seed: int | None = None  # the repeated intervals' simulation (bench/core/sequential.py)
    bootstrap_seed: int | None = None  # studies made while the CIs were bootstrapped


class Reproduces(_Strict):
    """Set on a study `invoke reproduce` made: the study it reran."""

    study: str | None = None
    manifest: str
    harness_commit: str | None = None
    accepted_mismatches: list[str] = Field(default_factory=list)


class FingerprintGpu(_Strict):
    name: str | None = None
    vram_total_bytes: int | None = None


class Fingerprint(_Strict):
    """The host fingerprint (bench/host/fingerprint.py): the comparable subset of the manifest."""

    cpu: str | None = None
    cores_physical: int | None = None
    cores_logical: int | None = None
    ram_bytes: int | None = None
    gpus: list[FingerprintGpu] | None = None  # [] known to have none, None unknown
    gpu_driver: str | None = None
    os: str | None = None
    kernel: str | None = None
    engine: str | None = None
    engine_version: str | None = None
    harness_commit: str | None = None
    unknown: list[str] = Field(default_factory=list)
    host_id: str | None = None


# ---- what a runtime or a server reports (open: every key kept) ----------------------------------


class BinaryRecord(_Open):
    binary: str | None = None
    binary_sha256: str | None = None
    version: str | None = None


class EndpointRecord(_Open):
    name: str
    url: str | None = None
    api: str | None = None


class ServerRecord(_Open):
    port: int | None = None
    running: bool | None = None
    total_slots: int | None = None


class ContainerRecord(_Open):
    service: str | None = None
    image: str | None = None
    image_id: str | None = None


class RuntimeDescription(_Open):
    """Runtime.describe(): what ran the servers (bench/runtimes/*)."""

    kind: str | None = None
    engine: str | None = None
    threads_per_server: int | None = None
    ollama_version: dict[str, str | None] | None = None  # per endpoint
    ollama: BinaryRecord | None = None  # native Ollama: the binary setup built
    llama_server: BinaryRecord | None = None
    settings: dict[str, Any] | None = None  # the Ollama server environment
    endpoints: list[EndpointRecord] = Field(default_factory=list)
    servers: dict[str, ServerRecord] | None = None
    containers: list[ContainerRecord] | None = None  # docker runtime


class ModelIdentity(_Open):
    """Runtime.model_identity() of one model, with GGUF header facts for a local file; `error`
    instead of the identity when it could not be read."""

    name: str | None = None
    file_sha256: str | None = None
    digest: str | None = None
    file: str | None = None
    error: str | None = None
    gguf: dict[str, Any] | None = None
    template: str | None = None  # Ollama's /api/show
    parameters: str | None = None  # Ollama's /api/show: the Modelfile's PARAMETER lines

    def identity(self) -> dict[str, str]:
        """The identity keys this entry recorded (empty when it recorded an error)."""
        return {k: getattr(self, k) for k in MODEL_IDENTITY_KEYS if getattr(self, k)}

    def match_identity(self) -> dict[str, str]:
        """What makes two entries the same model on any host (compare, the plan fingerprint): a
        model served from a GGUF file by its sha256, with, where Ollama created it, the sha256 of
        the template and parameters it was created with (CREATED_FROM_FILE_KEYS); a pulled model
        by its registry digest. Empty when neither was recorded."""
        if not self.file_sha256:
            return {"digest": self.digest} if self.digest else {}
        created = {f"{k}_sha256": hashlib.sha256(getattr(self, k).encode()).hexdigest()
                   for k in CREATED_FROM_FILE_KEYS if getattr(self, k) is not None}
        return {"file_sha256": self.file_sha256, **created}


class GpuDevice(_Open):
    """One GPU as NVML described it (bench/host/gpu.py)."""

    name: str | None = None
    driver: str | None = None
    vram_total_bytes: int | None = None


# ---- the manifest --------------------------------------------------------------------------------


class Manifest(_Strict):
    schema_version: int
    study: str
    harness: GitState
    packages: dict[str, str | None]
    profile: ProfileRecord
    plan_overrides: PlanOverrides
    invocations: list[Invocation]
    runtime: RuntimeDescription
    models: list[ModelIdentity]
    fallback_models: list[ModelIdentity]  # what `invoke reproduce` checks a fallback tag against
    ollama_ps: dict[str, Any]  # /api/ps per Ollama endpoint: the loaded models, or {"error": …}
    ports: dict[str, int | None]
    host: Host
    gpu: list[GpuDevice] | str | None  # the GPUs; "none (reason)"; None: not recorded
    rust: Rust
    seeds: Seeds
    learned_limits: LearnedLimits
    run_count: int | None
    run_order: list[str]
    started_at: str | None
    finished_at: str | None
    environment: dict[str, str]
    fingerprint: Fingerprint | None = None  # None: made before it was recorded (fingerprint.of_manifest)
    reproduces: Reproduces | None = None

    @property
    def baseline(self) -> str | None:
        """The resolved profile's baseline model."""
        return next((m.get("name") for m in self.profile.resolved.get("models") or [] if m.get("baseline")), None)

    def to_json(self) -> dict:
        """The JSON document: unset optional keys left out, as the older dict writer did."""
        return self.model_dump(mode="json", exclude_unset=True)


# ---- older shapes --------------------------------------------------------------------------------


def migrate(raw: dict) -> dict:
    """An older manifest in the current shape: the one place that knows what older harnesses
    left out. Version 1 (a plain dict) may lack the invocations (one plan, from plan_overrides),
    the fallback tags' identities, what the ladder learned, the fingerprint and any section a
    failed probe left out; their absence means 'not recorded', never an error."""
    if not isinstance(raw, dict):
        raise BenchError("a manifest is a JSON object")
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BenchError(f"manifest schema_version {version!r} is not a version (1 to {SCHEMA_VERSION})")
    if version > SCHEMA_VERSION:
        raise BenchError(f"manifest schema_version {version} is newer than this harness reads "
                         f"({SCHEMA_VERSION}): update the bundle")
    if version == SCHEMA_VERSION:
        return raw
    out = dict(raw, schema_version=SCHEMA_VERSION)
    out.setdefault("study", ((out.get("profile") or {}).get("resolved") or {}).get("study"))
    for key in ("harness", "packages", "runtime", "ollama_ps", "ports", "host", "rust", "seeds", "environment"):
        out[key] = out.get(key) or {}
    for key in ("models", "fallback_models", "run_order"):
        out[key] = out.get(key) or []
    for key in ("gpu", "run_count", "started_at", "finished_at"):
        out.setdefault(key, None)
    out["plan_overrides"] = out.get("plan_overrides") or {}
    invocations = out.get("invocations") or [{"plan_overrides": out["plan_overrides"]}]
    out["invocations"] = [dict(inv, plan_overrides=inv.get("plan_overrides") or {}) for inv in invocations]
    if "learned_limits" not in out:
        merged = LearnedLimits()
        for inv in out["invocations"]:
            merged = merged.merged(LearnedLimits.model_validate(inv.get("learned_limits") or {}))
        out["learned_limits"] = merged.model_dump()
    return out


def parse(raw: dict, source: str = "manifest") -> Manifest:
    """A manifest read as JSON, migrated and validated; BenchError saying what is wrong."""
    if not isinstance(raw, dict) or "resolved" not in (raw.get("profile") or {}):
        raise BenchError(f"{source} has no resolved profile (profile.resolved)")
    try:
        return Manifest.model_validate(migrate(raw))
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise BenchError(f"{source} does not match the manifest schema: " + "; ".join(problems[:5])
                         + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")) from None


def load_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise BenchError(f"manifest not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise BenchError(f"manifest {path} is not valid JSON: {exc}") from None
    return parse(raw, f"manifest {path}")


def as_manifest(manifest: Manifest | dict) -> Manifest:
    """A Manifest from either form: for readers still handed the raw dict (bench/report/markdown.py,
    bench/analysis/tables.py read it with store.read_json)."""
    return manifest if isinstance(manifest, Manifest) else parse(manifest)


# ---- the runtime a study ran on ------------------------------------------------------------------


def setting_text(v) -> str:
    """A setting's value as text, for comparing: strings as they are, anything else as JSON."""
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


class RuntimeIdentity(_Strict):
    """What a study ran on, read one way by reproduce, compare and the fingerprint:
    - `engine`, `engine_version`: the engine and its version (the fingerprint);
    - `build`: what changes the numbers when it changes under the same settings: the kind, the
      llama.cpp or Ollama binary, the Ollama versions, the containers' image ids (reproduce
      refuses a rerun on another);
    - `settings`: how the servers run, flattened to text: kind, engine, threads per server, the
      server environment (host paths left out), the slots (compare refuses to match studies
      that differ)."""

    engine: str | None
    engine_version: str | None
    build: dict[str, Any]
    settings: dict[str, str]


def runtime_identity(source: Manifest | RuntimeDescription) -> RuntimeIdentity:
    rt = source.runtime if isinstance(source, Manifest) else source
    if rt.llama_server is not None:
        version = rt.llama_server.version
    else:
        version = " / ".join(sorted({v for v in (rt.ollama_version or {}).values() if v})) or None
    build: dict[str, Any] = {"kind": rt.kind}
    if rt.llama_server is not None:
        build["llama.cpp binary sha256"] = rt.llama_server.binary_sha256
    if rt.ollama_version:
        build["ollama_version"] = rt.ollama_version
    if rt.ollama is not None:
        build["ollama binary sha256"] = rt.ollama.binary_sha256
    if rt.containers:
        build["container image ids"] = {c.service: c.image_id for c in rt.containers}
    settings = {k: setting_text(v) for k, v in (("kind", rt.kind), ("engine", rt.engine),
                                        ("threads_per_server", rt.threads_per_server)) if v is not None}
    settings |= {f"settings.{k}": setting_text(v) for k, v in (rt.settings or {}).items()
                 if k not in HOST_PATH_SETTINGS}
    settings |= {f"servers.{name}.total_slots": setting_text(s.total_slots) for name, s in (rt.servers or {}).items()
                 if s.total_slots is not None}
    return RuntimeIdentity(engine=rt.engine or rt.kind, engine_version=version, build=build, settings=settings)


# ---- the JSON Schema mirror ------------------------------------------------------------------------


def schema_text() -> str:
    return json.dumps(Manifest.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # regenerate bench/data/manifest.schema.json after changing a model
    atomic_write_text(SCHEMA_FILE, schema_text())
    print(f"wrote {SCHEMA_FILE}")
