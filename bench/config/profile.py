"""Profiles: the YAML files that say what a study measures, validated before anything starts.

A profile is the first step of the one-way flow (profile → plan → runtime → …). Validation uses
pydantic models with unknown keys forbidden, so a typo is an error that names the file, the key
and what was expected, instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import re
import typing
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.core import metrics
from bench.core.errors import BenchError
from bench.core.paths import CHAT_TEMPLATES_DIR, PROFILES_DIR
from bench.host.machine import detect_gpu_host, is_loopback

Lang = Literal["python", "rust"]
Api = Literal["ollama", "openai"]
Scenario = Literal["baseline_vs_chimera", "chimera_homo", "chimera_hetero", "one_instance_two_slots"]
# The topology control: both agents on the first instance, started with two parallel slots and
# the CPU threads of both instances, measured like the dual-instance scenarios.
SHARED_INSTANCE_SCENARIOS = ("one_instance_two_slots",)
KvCacheType = Literal["f16", "q8_0", "q4_0"]

# Upper bounds: a typo (an extra zero, a number of seconds given as milliseconds) is refused when the
# profile loads instead of planning a study that never ends.
MAX_RUNS = 1000
MAX_TIMEOUT_S = 86_400.0  # one day
MAX_LAYERS = 1024
MAX_CTX = 1 << 20
MAX_PARALLEL = 256
GpuLayers = Annotated[int, Field(ge=-1, le=MAX_LAYERS)]  # -1: every layer
Ctx = Annotated[int, Field(ge=64, le=MAX_CTX)]
Runs = Annotated[int, Field(ge=1, le=MAX_RUNS)]
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)]
# A model's folder name under results/<study>/<suite>/<lang>/: never '.', '..' or hidden.
SAFE_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` in a profile is an error, not a study that never stops
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EndpointSpec(Strict):
    name: str = Field(description="agent-facing name: the collector uses the first, the insight agent the second")
    port: int | None = Field(None, ge=1, le=65535)
    url: str | None = Field(None, description="external runtime only: base URL")
    api: Api = "openai"


class ServerConfig(Strict):
    """Load-time settings of a server: llama-server flags, or Ollama's runner options."""

    gpu_layers: GpuLayers
    ctx: Ctx


class ServerSettings(Strict):
    """Instance-wide engine settings: the environment of a native `ollama serve`, the compose
    override of a container, llama-server's launch flags. Pinned by the runtime section, swept by
    `settings_sweep`; each run records the settings of the instances it used."""

    num_parallel: int = Field(1, ge=1, le=MAX_PARALLEL,
                              description="OLLAMA_NUM_PARALLEL: requests one instance serves at once")
    flash_attention: bool = Field(False, description="OLLAMA_FLASH_ATTENTION")
    kv_cache_type: KvCacheType = Field("f16", description="OLLAMA_KV_CACHE_TYPE (quantised types need flash "
                                                          "attention)")

    @model_validator(mode="after")
    def _quantised_kv_needs_fa(self):
        if self.kv_cache_type != "f16" and not self.flash_attention:
            raise ValueError(f"kv_cache_type {self.kv_cache_type} needs flash_attention: true (Ollama ignores it "
                             f"otherwise, and the run would not be what its settings say)")
        return self

    def tag(self, pinned: "ServerSettings") -> str:
        """The folder-name suffix of the values that differ from the pinned ones ('' when none)."""
        parts = []
        if self.num_parallel != pinned.num_parallel:
            parts.append(f"np{self.num_parallel}")
        if self.flash_attention != pinned.flash_attention:
            parts.append(f"fa{int(self.flash_attention)}")
        if self.kv_cache_type != pinned.kv_cache_type:
            parts.append(f"kv{self.kv_cache_type.replace('_', '')}")
        return "_".join(parts)


class RuntimeSpec(Strict):
    kind: Literal["local", "ollama", "external", "docker"]
    host: str = "127.0.0.1"
    expose: bool = Field(False, description="allow a non-loopback host or endpoint URL: the servers' "
                                            "unauthenticated API is then reachable from the network")
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads per server (llama-server -t, Ollama "
                                                        "num_thread); default: cores ÷ servers")
    endpoints: list[EndpointSpec]
    server_defaults: ServerConfig = ServerConfig(gpu_layers=-1, ctx=2048)
    startup_timeout_s: Seconds = 120.0
    num_parallel: int = Field(1, ge=1, le=MAX_PARALLEL, description="Ollama: OLLAMA_NUM_PARALLEL of each instance")
    flash_attention: bool = Field(False, description="Ollama: OLLAMA_FLASH_ATTENTION of each instance")
    kv_cache_type: KvCacheType = Field("f16", description="Ollama: OLLAMA_KV_CACHE_TYPE of each instance")
    keep_alive: str = Field("30m", description="Ollama: OLLAMA_KEEP_ALIVE (how long an idle model stays loaded)")
    compose_file: str = "compose.yaml"
    compose_overrides: list[str] = Field(default_factory=list,
                                         description="docker: compose files layered over compose_file")
    compose_project: str = Field("tr116", pattern=r"^[a-z0-9][a-z0-9_-]*$",
                                 description="docker: the Compose project name (containers, network and the "
                                             "model volume <project>_ollama-models)")

    @property
    def pinned_settings(self) -> ServerSettings:
        return ServerSettings(num_parallel=self.num_parallel, flash_attention=self.flash_attention,
                              kv_cache_type=self.kv_cache_type)

    @model_validator(mode="after")
    def _loopback_unless_exposed(self):
        if self.expose:
            return self
        hosts = [("runtime.host", self.host)] + [(f"endpoint {e.name} url", urlsplit(e.url).hostname or "")
                                                 for e in self.endpoints if e.url]
        outside = [f"{where} {host!r}" for where, host in hosts if not is_loopback(host)]
        if outside:
            raise ValueError(f"{', '.join(outside)} is not a loopback address: the engines' API has no "
                             f"authentication, so set `expose: true` in the runtime section to mean it")
        return self

    @model_validator(mode="after")
    def _two_distinct_endpoints(self):
        if len(self.endpoints) != 2:
            raise ValueError(f"expected exactly 2 endpoints (collector, insight), got {len(self.endpoints)}")
        if self.kind == "external":
            missing = [e.name for e in self.endpoints if not e.url]
            if missing:
                raise ValueError(f"the external runtime needs a url for endpoints {missing}")
            if self.endpoints[0].url == self.endpoints[1].url:
                raise ValueError("the two endpoints must differ (a dual-server study on one URL measures nothing)")
        else:
            ports = [e.port for e in self.endpoints]
            if None in ports:
                raise ValueError(f"runtime kind '{self.kind}' needs a port for every endpoint")
            if ports[0] == ports[1]:
                raise ValueError(f"the two endpoints must use different ports, got {ports}")
        return self


class Fallback(Strict):
    """The spec's fallback ladder for a config that does not load (bench/config/ladder.py)."""

    gpu_layers: list[Annotated[int, Field(le=MAX_LAYERS)]] = Field(
        [80, 60, 40, 20, 0], description="GPU-layer rungs, tried from the largest below the config's")
    ctx_floor: int = Field(512, ge=64, le=MAX_CTX, description="then the context is halved, not below this (it must "
                                                               "hold the prompt and num_predict)")
    tags: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="then these tags of the same model, in order (e.g. a lower quant), pulled "
                                          "on first use")

    @field_validator("gpu_layers")
    @classmethod
    def _layers(cls, v: list[int]):
        if any(g < 0 for g in v):
            raise ValueError(f"GPU-layer rungs are layer counts ≥ 0, got {v}")
        return v


Suite = Literal["single", "multi", "steps"]


class ModelSpec(Strict):
    name: str = Field(min_length=1)
    baseline: bool = False
    optional: bool = Field(False, description="failures (e.g. OOM) are logged, and the study goes on")
    placebo_of: str | None = Field(None, description="an A/A placebo: the same weights as that model of the profile "
                                                     "under this name, measured in a block of its own; every "
                                                     "comparison of the two must find no difference")
    suites: list[Suite] | None = Field(None, description="the suites this model runs in (default: every enabled "
                                                         "suite)")
    source: Literal["pull", "gguf"] = Field("pull", description="Ollama: pull from the registry, or create "
                                                                "from a GGUF file (embedded model or `file`)")
    file: str | None = Field(None, description="a GGUF path instead of an embedded model")
    template: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                 description="Ollama, GGUF source: chat template (bench/data/chat_templates/"
                                             "NAME.gotmpl) for a file that has none")
    stop: list[str] = Field(default_factory=list, description="Ollama, GGUF source: stop sequences")
    fallback: Fallback | None = Field(None, description="this model's ladder: its keys replace the profile's")

    @field_validator("name")
    @classmethod
    def _safe_slug(cls, name: str):
        if not SAFE_SLUG.match(model_slug(name)):
            raise ValueError(f"model name {name!r} gives the folder name {model_slug(name)!r}: a model's folder "
                             f"must start with a letter or digit (no '.', '..' or hidden folders)")
        return name

    @field_validator("template")
    @classmethod
    def _bundled_template(cls, name: str | None):
        # the pattern already keeps the name inside the folder; this names what exists
        if name is not None and not (CHAT_TEMPLATES_DIR / f"{name}.gotmpl").is_file():
            known = sorted(p.stem for p in CHAT_TEMPLATES_DIR.glob("*.gotmpl"))
            raise ValueError(f"unknown chat template {name!r}: the bundle's templates "
                             f"({CHAT_TEMPLATES_DIR}) are {', '.join(known)}")
        return name

    @property
    def slug(self) -> str:
        return model_slug(self.name)


def model_slug(name: str) -> str:
    """'llama3.1:8b-instruct-q4_0' → 'llama3.1_8b-instruct-q4_0' (safe in paths)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name.lower())


class AgentConfig(Strict):
    gpu_layers: GpuLayers
    ctx: Ctx
    temperature: float = Field(ge=0, le=100)


class Precision(Strict):
    """Adaptive sampling of a suite (bench/study/scheduler.py): each config runs until every listed
    metric's repeated interval (bench/core/sequential.py) has a relative half-width ≤ rel_half_width and
    at least min_runs of its runs are unflagged by the outlier rule, or until max_runs, or until the
    study's time budget (`sampling.budget_s`) is spent. Without it the suite runs its fixed `runs`."""

    metrics: list[str] = Field(min_length=1, description="run metrics of the suite (bench/core/metrics.py RUN_METRICS)")
    rel_half_width: float = Field(gt=0, lt=1, description="target half-width of the interval ÷ |mean| (0.05: ±5 %)")
    confidence: float = Field(0.95, ge=0.5, lt=1)
    min_runs: int = Field(3, ge=2, description="always run (the spec's 3), and as many unflagged runs to stop on target")
    max_runs: int = Field(10, ge=2, le=MAX_RUNS)

    @model_validator(mode="after")
    def _runs(self):
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs {self.max_runs} is below min_runs {self.min_runs}")
        if self.max_runs - self.min_runs >= 60:
            raise ValueError(f"at most 60 looks (min_runs {self.min_runs}, max_runs {self.max_runs})")
        return self


class SingleSuite(Strict):
    enabled: bool = True
    langs: list[Lang] = ["python", "rust"]
    gpu_layers: list[GpuLayers] = Field(min_length=1)
    ctx: list[Ctx] = Field(min_length=1)
    temperature: float = Field(ge=0, le=100)
    runs: Runs
    precision: Precision | None = None


class ContentionThresholds(Strict):
    min_tps_ratio: float = Field(0.85, gt=0)
    max_ttft_inflation: float = Field(2.0, gt=0)


class HeteroConfigs(Strict):
    collector: AgentConfig
    insight: AgentConfig


class MultiSuite(Strict):
    enabled: bool = True
    langs: list[Lang] = ["python", "rust"]
    scenarios: list[Scenario] = Field(min_length=1)
    chimera: AgentConfig
    chimera_by_lang: dict[Lang, AgentConfig] = Field(default_factory=dict,
                                                     description="per-language chimera overrides")
    hetero: HeteroConfigs | None = None
    runs: Runs
    precision: Precision | None = None
    contention: ContentionThresholds = ContentionThresholds()

    @model_validator(mode="after")
    def _hetero_needs_configs(self):
        if "chimera_hetero" in self.scenarios and self.hetero is None:
            raise ValueError("scenario chimera_hetero needs a 'hetero' block with collector and insight configs")
        return self

    def chimera_for(self, lang: str) -> AgentConfig:
        return self.chimera_by_lang.get(lang, self.chimera)


class SettingsSweep(Strict):
    """Server settings as matrix axes: each listed value becomes its own cells (a factor in the
    variance analysis); an axis left out stays at the runtime's pinned value."""

    num_parallel: list[Annotated[int, Field(ge=1, le=MAX_PARALLEL)]] = Field(default_factory=list)
    flash_attention: list[bool] = Field(default_factory=list)
    kv_cache_type: list[KvCacheType] = Field(default_factory=list)
    suites: list[Literal["single", "multi", "steps"]] = ["single", "multi", "steps"]

    def points(self, pinned: ServerSettings) -> list[ServerSettings]:
        """Every combination of the swept values (the pinned settings alone when nothing is swept)."""
        out = []
        for np_ in self.num_parallel or [pinned.num_parallel]:
            for fa in self.flash_attention or [pinned.flash_attention]:
                for kv in self.kv_cache_type or [pinned.kv_cache_type]:
                    out.append(ServerSettings(num_parallel=np_, flash_attention=fa, kv_cache_type=kv))
        return out


class CapacitySearch(Strict):
    """The steps suite's capacity search: over agent counts 1..max_agents, the largest count whose
    goodput interval (bench/core/stats.py goodput_interval) stays at or above the SLO's target."""

    max_agents: int = Field(4, ge=2, le=8, description="the largest agent count the search may probe")


class StepsSuite(Strict):
    """Agent-count steps: N agents at once (round-robin over the instances), each running the
    single agent's two calls, measured against one agent alone in the same run. With `search` the
    agent counts are the capacity search's, and the fixed `agents` list is not used (giving both
    is an error)."""

    enabled: bool = False
    agents: list[int] = Field([1, 2, 3, 4], min_length=1)
    langs: list[Literal["python"]] = ["python"]  # the Rust agent runs the spec's two-agent jobs only
    models: list[str] = Field(default_factory=list, description="default: every model")
    config: AgentConfig | None = Field(None, description="default: the multi suite's chimera config")
    runs: Runs = 3
    precision: Precision | None = None
    search: CapacitySearch | None = Field(None, description="search for the capacity instead of stepping the "
                                                            "fixed `agents` list")

    @model_validator(mode="after")
    def _search_or_agents(self):
        """With `search`, `agents` are the counts the search may probe, 1..max_agents: set here, so a
        resolved profile (which lists both) loads again; a different explicit list is refused."""
        if self.search is None:
            return self
        counts = list(range(1, self.search.max_agents + 1))
        if "agents" in self.model_fields_set and self.agents != counts:
            raise ValueError(f"give either `agents` (fixed steps) or `search` (the capacity search probes agent "
                             f"counts 1..{self.search.max_agents}), not both")
        object.__setattr__(self, "agents", counts)
        return self

    @field_validator("agents")
    @classmethod
    def _counts(cls, v: list[int]):
        if any(n < 1 or n > 8 for n in v) or len(set(v)) != len(v):
            raise ValueError(f"agent counts are distinct numbers from 1 to 8, got {v}")
        return sorted(v)


class WorkloadSpec(Strict):
    seed: int = 42
    num_predict: int = Field(ge=1, le=MAX_CTX)
    ignore_eos: bool = Field(True, description="llama.cpp only: always generate num_predict tokens")
    warmup_requests: int = Field(1, ge=1, le=MAX_RUNS)
    randomize_order: bool = False
    order_seed: int = 116
    timeout_s: Seconds = 300.0
    cold_load_ms: float = Field(1000.0, gt=0, le=MAX_TIMEOUT_S * 1000)
    retries: int = Field(3, ge=1, le=100, description="attempts per request for retryable failures")


class OutlierPolicy(Strict):
    mad_k: float = Field(2.0, gt=0)
    max_extra_runs: int = Field(0, ge=0, le=MAX_RUNS)


class Pricing(Strict):
    electricity_usd_per_kwh: float | None = Field(None, gt=0)
    gpu_hour_usd: float | None = Field(None, gt=0)


class EtaHints(Strict):
    decode_tps: float = Field(100.0, gt=0)
    prefill_tps: float = Field(500.0, gt=0)
    restart_s: float = Field(2.0, ge=0)
    cv_pct: dict[str, float] = Field({"decode_tps": 3.0, "ttft_ms": 6.0, "speedup": 4.0, "latency_ms": 4.0},
                                     description="run-to-run CV % per metric, for `invoke plan`'s expected runs of "
                                                 "an adaptive study before it has measured any")


class Sampling(Strict):
    """How an adaptive study spends its time (bench/study/scheduler.py)."""

    budget_s: float | None = Field(None, gt=0, le=30 * MAX_TIMEOUT_S,
                                   description="the matrix's time budget, from its first run: beyond "
                                                            "each config's min_runs, runs go to the configs furthest "
                                                            "from their target while they fit")
    probe_interval_s: Seconds = Field(90.0, description="between rounds, a drift probe once this long has "
                                                            "passed since the last one")


class InstrumentSpec(Strict):
    """How the study measures its own instrument (bench/study/instrument.py)."""

    drift_probes: bool = Field(True, description="a reference probe on the baseline model at the start, "
                                                 "between models and at the end")
    drift_threshold_pct: float = Field(5.0, gt=0, description="probe drift beyond this is flagged in the report")
    floors: bool = Field(True, description="`bench` measures the client floors and the harness-vs-engine ratio "
                                           "once per host and harness commit")
    cold_start: bool = Field(True, description="per model and endpoint, once per study: one call after the model "
                                               "was freed (load and cold TTFT/e2e) and one warm call after it")
    sanity: bool = Field(True, description="per model, once per study: fixed questions with known short answers "
                                           "(bench/data/sanity.yaml); junk answers are flagged in the report")


class ServiceLevelObjective(Strict):
    """What every counted call must meet (bench/core/metrics.py meets_slo): its client TTFT at most
    ttft_ms, its client decode rate at least decode_tps, its end-to-end latency at most e2e_ms. The
    analysis applies it to the stored records, so changing it re-reports a study without rerunning
    it; goodput_target and confidence are what the capacity search asks of the goodput interval."""

    ttft_ms: float = Field(gt=0, le=MAX_TIMEOUT_S * 1000, description="the most a call may wait for its first "
                                                                      "token (client, ms)")
    decode_tps: float = Field(gt=0, le=1e6, description="the least client decode rate of a call (tok/s per agent)")
    e2e_ms: float = Field(gt=0, le=MAX_TIMEOUT_S * 1000, description="the most a call may take end to end (ms)")
    goodput_target: float = Field(0.95, gt=0, lt=1, description="the share of calls that must meet every "
                                                                "objective (a target of 1 no interval can confirm)")
    confidence: float = Field(0.95, ge=0.5, lt=1, description="of the goodput interval")

    @model_validator(mode="after")
    def _e2e_above_ttft(self):
        # every call's e2e is at least its TTFT: an e2e bound at or below the TTFT bound is a typo
        if self.e2e_ms <= self.ttft_ms:
            raise ValueError(f"e2e_ms {self.e2e_ms} must exceed ttft_ms {self.ttft_ms} (a call ends after its "
                             f"first token)")
        return self


class Profile(Strict):
    study: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    runtime: RuntimeSpec
    models: list[ModelSpec] = Field(min_length=1)
    single: SingleSuite
    multi: MultiSuite
    steps: StepsSuite = StepsSuite()
    settings_sweep: SettingsSweep = SettingsSweep()
    workload: WorkloadSpec
    outliers: OutlierPolicy = OutlierPolicy()
    pricing: Pricing = Pricing()
    eta: EtaHints = EtaHints()
    sampling: Sampling = Sampling()
    instrument: InstrumentSpec = InstrumentSpec()
    fallback: Fallback = Fallback()
    slo: ServiceLevelObjective | None = Field(None, description="per-call objectives: goodput and the capacity "
                                                                "search measure against them")

    @field_validator("models")
    @classmethod
    def _one_baseline(cls, models: list[ModelSpec]):
        baselines = [m.name for m in models if m.baseline]
        if len(baselines) != 1:
            raise ValueError(f"exactly one model must have baseline: true, found {baselines or 'none'}")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        slugs: dict[str, str] = {}
        for m in models:  # one folder per model: 'qwen2.5:7b' and 'qwen2.5_7b' would share one
            other = slugs.setdefault(m.slug, m.name)
            if other != m.name:
                raise ValueError(f"models {other!r} and {m.name!r} share the results folder {m.slug!r}: rename one")
        for m in models:
            if m.placebo_of is None:
                continue
            original = next((o for o in models if o.name == m.placebo_of), None)
            if original is None or original.placebo_of is not None or m.baseline:
                raise ValueError(f"model {m.name}: placebo_of must name another model of the profile that is not a "
                                 f"placebo itself (and a placebo is never the baseline); got {m.placebo_of!r}")
        return models

    @model_validator(mode="after")
    def _steps_and_sweep_valid(self):
        names = [m.name for m in self.models]
        unknown = [n for n in self.steps.models if n not in names]
        if unknown:
            raise ValueError(f"steps.models names unknown models {unknown}; the profile's models are {names}")
        # every swept combination must be valid (a quantised KV cache needs flash attention)
        self.settings_sweep.points(self.runtime.pinned_settings)
        for suite in ("single", "multi", "steps"):
            precision = getattr(self, suite).precision
            known = metrics.key_metrics(suite)
            wrong = [m for m in (precision.metrics if precision else []) if m not in known]
            if wrong:
                raise ValueError(f"{suite}.precision.metrics names {wrong}, not run metrics of the {suite} suite; "
                                 f"choose from {list(known)}")
        return self

    @field_validator("fallback")
    @classmethod
    def _tags_per_model(cls, fallback: Fallback):
        if fallback.tags:
            raise ValueError("fallback.tags are tags of one model: set them in that model's own `fallback`")
        return fallback

    @property
    def baseline(self) -> ModelSpec:
        return next(m for m in self.models if m.baseline)

    def weights_of(self, model: ModelSpec) -> ModelSpec:
        """The model whose weights `model` is served with (source, file, template, stop): itself,
        or, for a placebo, the model it copies."""
        if model.placebo_of is None:
            return model
        return next(m for m in self.models if m.name == model.placebo_of)

    def fallback_for(self, model: ModelSpec) -> Fallback:
        """The model's ladder: the profile's, with the keys the model sets replaced."""
        if model.fallback is None:
            return self.fallback
        return self.fallback.model_copy(update=model.fallback.model_dump(exclude_unset=True))


class LoadedProfile(BaseModel):
    """A validated profile with where it came from (the manifest records both)."""

    model_config = ConfigDict(frozen=True)
    profile: Profile
    path: Path
    sha256: str
    reason: str = ""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"invalid profile {path}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_at(Profile, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"  {key}: unknown key (expected one of: {allowed})")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that sits at a location path, for listing its allowed keys."""
    current: object = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        # unwrap Optional[X], list[X], dict[K, X] down to the first pydantic model inside
        for _ in range(3):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if isinstance(current, type) and issubclass(current, BaseModel):
                break
            if not args:
                break
            current = args[-1]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (the plain loader keeps the
    last one silently, so a profile would run something other than what its reader sees)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may override keys, by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                            f"{first.line + 1})")
        return super().construct_mapping(node, deep=deep)


def load_yaml(raw: bytes | str):
    """Parse YAML safely, refusing duplicate keys."""
    return yaml.load(raw, Loader=UniqueKeyLoader)


def load_profile(path: Path | str, reason: str = "") -> LoadedProfile:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"profile file not found: {path}")
    raw = path.read_bytes()
    try:
        data = load_yaml(raw)
    except yaml.YAMLError as exc:
        raise BenchError(f"invalid profile {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BenchError(f"invalid profile {path}: expected a mapping at the top level")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as err:
        raise BenchError(_format_errors(path, err)) from None
    return LoadedProfile(profile=profile, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest(),
                         reason=reason)


def builtin_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}


def resolve_profile(spec: str = "auto") -> LoadedProfile:
    """'auto', a built-in profile name, or a path to a YAML file."""
    builtins = builtin_profiles()
    if spec == "auto":
        usable, why = detect_gpu_host()
        name = "tr116" if usable else "smoke"
        return load_profile(builtins[name], reason=f"--profile auto picked '{name}': {why}")
    if spec in builtins:
        return load_profile(builtins[spec], reason=f"built-in profile '{spec}'")
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_profile(path, reason=f"profile file {path}")
    raise BenchError(f"unknown profile '{spec}': use auto, one of {sorted(builtins)}, or a path to a YAML file")
