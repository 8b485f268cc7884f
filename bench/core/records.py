"""Typed records: one request, one run document (metrics.json), as pydantic models.

The source of truth is the JSON Schema, bench/data/metrics.schema.json: the Rust agents write
against it, the store validates every document with it, and these models mirror it. A test
(tests/test_records.py) compares each model's fields, required fields and enums with the
schema's, and round-trips every stored document of the fixture study through the models, so
the two cannot drift apart silently.

Sections that only pass through (placement's per-endpoint engine reports, the power block's
sampler details) stay plain dicts here; everything the analysis reads is typed.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from bench.core import metrics

# single, the multi suite's two agents, or agent1…agent8 of an agent-count step
AGENT_PATTERN = r"^(single|collector|insight|agent[1-8])$"
Stage = Literal["analysis", "report"]
Phase = Literal["single", "alone", "together"]
Api = Literal["ollama", "openai"]
Suite = Literal["single", "multi", "steps"]
Lang = Literal["python", "rust"]


class _Strict(BaseModel):
    # extra="forbid" where the schema says additionalProperties: false
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class GapStats(_Strict):
    n: int
    mean: float
    p50: float
    p95: float
    max: float


class CallStamps(_Strict):
    """A call's raw clock, in ns from its run's start: the send, each content message's arrival
    (one stamp per parsed message that carried text), the end of the stream. Every client-side
    timing metric of the record is a function of these (bench/core/metrics.py), so it can be
    recomputed from the stored data."""

    t_send_ns: int
    content_ns: list[int]
    t_done_ns: int


class RequestRecord(_Strict):
    """One streamed LLM call, as stored in metrics.json (schema $defs/request)."""

    agent: str = Field(pattern=AGENT_PATTERN)
    stage: Stage
    # a stored record's phase is one of `Phase` (the schema checks it at write); the client also
    # labels calls that are never stored: warmups ("warmup<n>") and the drift probes ("probe")
    phase: str
    endpoint: str
    api: Api
    model: str
    prompt_nonce: str = Field(pattern=r"^[0-9a-f]{16}$")
    call_attempt: int = Field(ge=1)
    start_offset_ms: float = Field(ge=0)
    ttft_ms: float | None
    e2e_ms: float
    itl_ms: GapStats | None
    content_chunks: int
    output_tokens: int
    output_tokens_estimated: bool
    prompt_tokens: int | None
    # prompt tokens the engine reused from its cache (llama.cpp timings.cache_n); null where the
    # engine reports none (Ollama), absent in records stored before it was kept
    prompt_cached_tokens: int | None = Field(default=None, ge=0)
    decode_tps_client: float | None
    decode_tps_server: float | None
    load_ms: float | None
    prompt_eval_ms: float | None
    eval_ms: float | None
    cold_load: bool
    done_reason: str | None
    # A record is made only for a call that succeeded (a failed call raises RequestError and the
    # runner logs it in failures.jsonl), so these were always null: not written any more, read
    # (null) from records stored before.
    error: None = None
    error_kind: None = None
    output_text: str
    timing: CallStamps | None = None  # absent in records stored before the stamps were kept

    # The run's start on the client's clock (perf_counter ns), for phase arithmetic in the run
    # that made the record; not part of metrics.json (the stamps are stored relative to it).
    _run_t0_ns: int = PrivateAttr(default=0)

    @property
    def t_send_ns(self) -> int:
        return self._run_t0_ns + self.timing.t_send_ns

    @property
    def t_done_ns(self) -> int:
        return self._run_t0_ns + self.timing.t_done_ns

    @property
    def decode_span_s(self) -> float | None:
        """Seconds from the first to the last content message (None without content)."""
        content = self.timing.content_ns if self.timing else []
        return (content[-1] - content[0]) / metrics.NS_PER_S if content else None

    def on_clock(self, run_t0_ns: int) -> "RequestRecord":
        """Tie the stored stamps to the client's clock (the run's start), for phase arithmetic."""
        self._run_t0_ns = run_t0_ns
        return self

    def to_json(self) -> dict:
        """The record as metrics.json stores it (non-finite floats become null, as JSON has none;
        a record without stamps leaves `timing` out rather than null, and only a record read with
        `error`/`error_kind`, an old one, carries them)."""
        left_out = {"timing"} if self.timing is None else set()
        left_out |= {"error", "error_kind"} - self.model_fields_set
        return _finite(self.model_dump(mode="python", exclude=left_out))


def _finite(v):
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


class AgentOptions(_Open):
    gpu_layers: int | None = None
    ctx: int | None = None
    temperature: float | None = None


class RunConfig(_Open):
    """A run's config (schema $defs/config): as it ran, as asked, or as the ladder left it."""

    model: str | None = None
    gpu_layers: int
    ctx: int = Field(ge=1)
    temperature: float = Field(ge=0)
    seed: int
    num_predict: int = Field(ge=1)
    ignore_eos: bool | None = None
    scenario: str | None = None
    agents: dict[str, AgentOptions | None] | None = None


class SingleMetrics(_Strict):
    decode_tps: float | None
    decode_tps_client: float | None
    ttft_ms: float | None
    latency_ms: float
    output_tokens: int


class AgentMultiMetrics(_Strict):
    t_alone_s: float
    t_together_s: float
    decode_tps_alone: float | None
    decode_tps_together: float | None
    ttft_ms_alone: float | None
    ttft_ms_together: float | None
    tps_ratio: float | None
    ttft_inflation: float | None


class MultiMetrics(_Strict):
    wall_s: float
    seq_s: float
    speedup: float | None
    efficiency_pct: float | None
    evenness_pct: float | None
    contention: bool
    legacy_contention: bool
    agents: dict[str, AgentMultiMetrics]


class AgentStepMetrics(_Strict):
    t_together_s: float
    decode_tps_together: float | None
    ttft_ms_together: float | None
    tps_ratio: float | None
    ttft_inflation: float | None


class StepsMetrics(_Strict):
    n_agents: int = Field(ge=1)
    t_alone_s: float
    seq_s: float
    wall_s: float
    speedup: float
    efficiency_pct: float
    decode_tps_alone: float | None
    decode_tps_together: float | None
    ttft_ms_alone: float | None
    ttft_ms_together: float | None
    tps_ratio: float | None
    ttft_inflation: float | None
    contention: bool
    agents: dict[str, AgentStepMetrics]


class InstanceSettings(_Strict):
    num_parallel: int = Field(ge=1)
    flash_attention: bool
    kv_cache_type: Literal["f16", "q8_0", "q4_0"]
    threads: int | None


class ServerSettingsBlock(_Strict):
    topology: Literal["one_instance", "two_instances"]
    instances: dict[str, InstanceSettings]


class ClientInfo(_Open):
    name: str
    version: str


class ModelRef(_Open):
    name: str
    slug: str = Field(pattern=r"^[a-z0-9._-]+$")
    baseline: bool = False


class WorkloadRef(_Open):
    prompts_sha256: str
    dataset_sha256: str
    phase_order: list[Literal["alone", "together"]] | None = None


class ClientCost(_Strict):
    cpu_source: str
    wall_s: float
    client_cpu_s: float | None
    client_cpu_share: float | None
    host_busy_pct: float | None
    host_cores: int | None


class LadderStep(_Strict):
    model: str
    gpu_layers: int
    ctx: int
    outcome: Literal["skipped", "failed", "ran"]
    error_kind: str | None
    error: str | None


class Placement(_Open):
    after_load: dict
    end_of_run: dict
    issues: list[str]


class PlanFingerprintParts(_Strict):
    workload: str
    model: str
    runtime: str
    harness_commit: str | None


class PlanFingerprint(_Strict):
    """What a run shares with its plan (bench/study/plan_identity.py); only the harness writes it."""

    sha256: str
    parts: PlanFingerprintParts


class RunDocument(_Strict):
    """One metrics.json: one agent run (single suite) or one alone+together pair (multi)."""

    schema_version: Literal[1]
    study: str
    suite: Suite
    lang: Lang
    client: ClientInfo
    model: ModelRef
    config: RunConfig
    run_index: int = Field(ge=1)
    started_at: str
    finished_at: str
    workload: WorkloadRef
    requests: list[RequestRecord] = Field(min_length=1)
    metrics: Union[SingleMetrics, MultiMetrics, StepsMetrics]
    cold_load: bool = False
    outlier: dict[str, bool] | None = None
    notes: list[str] | None = None
    client_cost: ClientCost | None = None
    run_key: str | None = None
    requested_config: RunConfig | None = None
    effective_config: RunConfig | None = None
    ladder: list[LadderStep] | None = None
    placement: Placement | None = None
    server_settings: ServerSettingsBlock | None = None  # absent in studies made before settings were recorded
    power: dict | None = None  # schema-checked; its keys are flattened as they come (power_<key>)
    engine: dict | None = None  # schema-checked; the engine's own evidence (bench/study/engine_sampler.py)
    plan_fingerprint: PlanFingerprint | None = None  # absent in runs stored before it was recorded

    def to_json(self) -> dict:
        """The document as stored: the fields it was read or built with, nothing added."""
        return _finite(self.model_dump(mode="python", exclude_unset=True))
