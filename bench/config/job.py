"""One run, typed: the Job the runner builds once per run attempt and hands to either backend
(bench.clients.agents.run_job for Python, bench.clients.rust.run_job for tr116-agent).

The models mirror bench/data/job.schema.json, the contract with the Rust agent: the same keys, the
same required keys, the same constraints, and no unknown key (tests/test_job.py compares the two
and runs the golden jobs through both). Values are strict, as the schema is: "300" is no number
and true is no integer. A key the schema lets out may be left out, never set to null.

One difference, and it is Python's only: `suite` may also be `steps` (the agent-count steps),
which only the Python agents run. The schema's enum (RUST_SUITES) is what a job.json may say, so
bench.clients.rust.run_job refuses a steps job before it writes anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from bench.config.plan import AGENTS_MULTI, step_agents
from bench.core.paths import DATASET_DIR, ERROR_KINDS_FILE, WORKLOAD_FILE

RustSuite = Literal["single", "multi"]  # job.schema.json's suite enum: what tr116-agent runs
Suite = Literal["single", "multi", "steps"]  # steps: the Python agents only
RUST_SUITES: tuple[str, ...] = RustSuite.__args__
PYTHON_ONLY_SUITES = tuple(s for s in Suite.__args__ if s not in RUST_SUITES)

Count1 = Annotated[int, Field(ge=1, le=4_294_967_295)]  # the schema's $defs/count1 (a u32 in the agent)


def _distinct(items: list) -> list:
    if len(set(items)) != len(items):
        raise ValueError(f"{items} repeats an item")
    return items


# two distinct items: the schema's minItems 2, maxItems 2, uniqueItems
_PAIR = Field(min_length=2, max_length=2, json_schema_extra={"uniqueItems": True})
PhaseOrder = Annotated[list[Literal["alone", "together"]], _PAIR, AfterValidator(_distinct)]
AloneOrder = Annotated[list[Literal[AGENTS_MULTI]], _PAIR, AfterValidator(_distinct)]


class _Strict(BaseModel):
    # extra="forbid": the schema's additionalProperties false; strict: no coercion the schema refuses
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _absent_not_null(cls, data: Any) -> Any:
        # no key of a job is nullable: an optional one is left out (the agent refuses null too)
        if isinstance(data, dict):
            nulls = [k for k, v in data.items() if v is None and k in cls.model_fields]
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: null is not allowed (leave the key out)")
        return data

    def to_json(self) -> dict:
        """As job.json holds it: the keys it was built with, nothing added."""
        return self.model_dump(mode="json", exclude_unset=True)


class Retries(_Strict):
    """How each call retries the transient kinds of error_kinds.yaml: at most `attempts` tries; the
    wait before try n + 1 is wait_s × 2^(n−1) s, at most max_wait_s. The Python agents read
    `attempts` and wait by their own constants (bench.clients.agents.retrying), which the runner puts
    here for the Rust agent, so both back off alike."""

    attempts: Count1
    wait_s: float = Field(ge=0)
    max_wait_s: float = Field(ge=0)


class JobModelRef(_Strict):
    """The model the run was asked for (names its folder); each agent's `model` is what it calls."""

    name: str = Field(min_length=1)
    slug: str = Field(pattern=r"^[a-z0-9._-]+$")
    baseline: bool | None = None


class Contention(_Strict):
    min_tps_ratio: float = Field(ge=0)
    max_ttft_inflation: float = Field(ge=0)


class CallOptions(_Strict):
    """What each call sends (bench.clients.agents.request_options): num_predict and seed always; the rest
    where the protocol has them."""

    num_predict: int = Field(ge=1)
    seed: int
    ignore_eos: bool | None = None
    temperature: float | None = Field(None, ge=0)
    num_ctx: int | None = Field(None, ge=1)
    num_gpu: int | None = None
    num_thread: int | None = Field(None, ge=1)


class JobAgent(_Strict):
    endpoint: str = Field(pattern=r"^https?://[^/]")  # the runner's clients are keyed by it
    api: Literal["ollama", "openai"]
    model: str = Field(min_length=1)
    options: CallOptions


class Job(_Strict):
    """Everything one run attempt needs, for either backend."""

    suite: Suite
    study: str = Field(min_length=1)
    run_key: str = Field(min_length=1)  # study/suite/lang/model/config/run_N; seeds the prompt nonces
    attempt: Count1  # the run's attempt: 1, higher for a fallback-ladder rung or the retry pass
    run_index: Count1
    retries: Retries
    model: JobModelRef
    config: dict[str, Any]  # the run's config as it runs: copied into metrics.json, not read otherwise
    workload_file: str = Field(min_length=1)
    dataset_dir: str = Field(min_length=1)
    error_kinds_file: str = Field(min_length=1)
    timeout_s: float = Field(gt=0, le=31_536_000)  # per call, a year at most
    cold_load_ms: float = Field(ge=0)  # a call with load_ms ≥ this is cold_load
    contention: Contention
    phase_order: PhaseOrder | None = None  # multi only
    alone_order: AloneOrder | None = None  # multi only: the agents' order in the alone phase
    agents: dict[str, JobAgent]

    @model_validator(mode="after")
    def _suite_shape(self) -> Job:
        """The schema's per-suite rules (its allOf if/then), and the steps suite's own."""
        names = list(self.agents)
        ordered = self.phase_order is not None or self.alone_order is not None
        if self.suite == "single":
            if names != ["single"]:
                raise ValueError(f"agents: a single job runs exactly the single agent, not {names}")
            if ordered:
                raise ValueError("phase_order, alone_order: a single job has no phases")
        elif self.suite == "multi":
            if sorted(names) != sorted(AGENTS_MULTI):
                raise ValueError(f"agents: a multi job runs {' and '.join(AGENTS_MULTI)}, not {names}")
            if self.phase_order is None or self.alone_order is None:
                raise ValueError("phase_order, alone_order: a multi job says both")
        else:
            if not names or names != list(step_agents(len(names))):
                raise ValueError(f"agents: a steps job runs agent1 … agentN in order, not {names}")
            if ordered:
                raise ValueError("phase_order, alone_order: a steps job runs one agent alone, then all together")
        return self


def data_files() -> dict[str, str]:
    """The files every job names: the prompts, the data set, the error kinds."""
    return {"workload_file": str(WORKLOAD_FILE), "dataset_dir": str(DATASET_DIR),
            "error_kinds_file": str(ERROR_KINDS_FILE)}
