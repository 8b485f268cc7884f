"""The typed Job of bench/config/job.py against bench/data/job.schema.json, the contract it mirrors (as
tests/test_records.py holds the record models to metrics.schema.json): the same keys, required
keys, extra-key policy, enums and constraints, and the golden jobs (with more cases made from them)
accepted by the model exactly when the schema accepts them. The one planned difference is the
Python-only `steps` suite, which the schema (and so tr116-agent) refuses."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from bench.clients import agents, rust
from bench.clients.streaming import StreamingClient
from bench.config.job import (
    PYTHON_ONLY_SUITES,
    RUST_SUITES,
    CallOptions,
    Contention,
    Job,
    JobAgent,
    JobModelRef,
    Retries,
    data_files,
)
from bench.config.workload import nonce_attempt, prompt_nonce
from bench.core.errors import BenchError
from bench.core.paths import DATA_DIR
from bench.core.records import RunDocument
from bench.core.store import schema_errors

from ollama_server import FakeOllama

SCHEMA = json.loads(rust.JOB_SCHEMA_FILE.read_text())
JOBS = json.loads((DATA_DIR / "golden" / "jobs.json").read_text())

# schema object (its path in the schema) → the model that mirrors it
MIRRORS = {
    "": Job,
    "properties/retries": Retries,
    "properties/model": JobModelRef,
    "properties/contention": Contention,
    "$defs/agent": JobAgent,
    "$defs/agent/properties/options": CallOptions,
}
CONSTRAINTS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern",
               "minLength", "maxLength", "minItems", "maxItems", "uniqueItems")


def _node(root: dict, path: str) -> dict:
    node = root
    for part in filter(None, path.split("/")):
        node = node[part]
    return node


def _constraints(root: dict, node: dict) -> dict:
    """A property's own constraints (its $ref followed, a nullable optional's non-null branch, an
    array's item enum), the way both schemas can state them."""
    if "$ref" in node:
        node = _node(root, node["$ref"].removeprefix("#/"))
    if "anyOf" in node:  # pydantic's `X | None = None`: the key may be absent, never null (the model refuses it)
        (node,) = [n for n in node["anyOf"] if n.get("type") != "null"]
        if "$ref" in node:
            node = _node(root, node["$ref"].removeprefix("#/"))
    out = {k: node[k] for k in CONSTRAINTS if k in node}
    if "enum" in out:
        out["enum"] = sorted(out["enum"])
        out.pop("type", None)  # the schema's enums name no type; pydantic adds "string"
    if "items" in node:
        out["items"] = _constraints(root, node["items"])
    if node.get("type") == "object":  # a nested model's own keys are compared as a mirror
        out = {"type": "object"}
    return out


@pytest.mark.parametrize("path", sorted(MIRRORS))
def test_each_model_has_the_schema_fields(path):
    node, model = _node(SCHEMA, path), MIRRORS[path]
    assert list(model.model_fields) == list(node["properties"]), path  # the same keys, in the same order
    required = {name for name, f in model.model_fields.items() if f.is_required()}
    assert required == set(node.get("required", [])), path
    assert model.model_config.get("extra") == "forbid" and node.get("additionalProperties") is False, path
    assert model.model_config.get("strict") is True, path


@pytest.mark.parametrize("path", sorted(MIRRORS))
def test_each_field_has_the_schema_constraints(path):
    node, model = _node(SCHEMA, path), MIRRORS[path]
    generated = model.model_json_schema()
    for key, prop in node["properties"].items():
        want = _constraints(SCHEMA, prop)
        got = _constraints(generated, generated["properties"][key])
        if model is Job and key == "suite":
            want["enum"] = sorted([*want["enum"], *PYTHON_ONLY_SUITES])  # the planned difference
        assert got == want, f"{path or '(root)'}/{key}"


def test_the_suite_enums():
    assert RUST_SUITES == tuple(SCHEMA["properties"]["suite"]["enum"])
    assert PYTHON_ONLY_SUITES == ("steps",)
    assert set(Job.model_fields["suite"].annotation.__args__) == {*RUST_SUITES, *PYTHON_ONLY_SUITES}


def _schema_accepts(job: dict) -> bool:
    try:
        rust.validate_job(job)
    except BenchError:
        return False
    return True


def _model_errors(job: dict) -> str | None:
    """The model's refusal, each error as `a/b: message`; None when it accepts the job."""
    try:
        Job.model_validate(job)
    except ValidationError as exc:
        return "; ".join(f"{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return None


def _mutated(base: int, set_: dict | None = None, remove: list[str] = ()) -> dict:
    job = copy.deepcopy(JOBS["valid"][base]["job"])
    for path, value in (set_ or {}).items():
        *parents, key = path.split("/")
        _node(job, "/".join(parents))[key] = value
    for path in remove:
        *parents, key = path.split("/")
        del _node(job, "/".join(parents))[key]
    return job


@pytest.mark.parametrize("case", JOBS["valid"], ids=[c["name"] for c in JOBS["valid"]])
def test_each_golden_job_round_trips(case):
    job = Job.model_validate(case["job"])
    assert job.to_json() == case["job"] and _schema_accepts(job.to_json())


@pytest.mark.parametrize("case", JOBS["invalid"], ids=[c["name"] for c in JOBS["invalid"]])
def test_each_refused_golden_job_is_refused_by_the_model_too(case):
    job = _mutated(case["base"], case.get("set"), case.get("remove", []))
    assert not _schema_accepts(job)
    errors = _model_errors(job)
    assert errors is not None and case["mentions"] in errors, errors


# More edges, each made from a golden job: (name, base, set, remove)
EDGES = [
    ("baseline_null", 0, {"model/baseline": None}, []),
    ("baseline_absent", 0, {}, ["model/baseline"]),
    ("option_null", 0, {"agents/single/options/temperature": None}, []),
    ("options_minimal", 0, {"agents/single/options": {"num_predict": 1, "seed": -3}}, []),
    ("timeout_as_text_number", 0, {"timeout_s": "300"}, []),
    ("timeout_integer", 0, {"timeout_s": 300}, []),
    ("timeout_a_year", 0, {"timeout_s": 31_536_000}, []),
    ("timeout_over_a_year", 0, {"timeout_s": 31_536_001}, []),
    ("attempt_true", 0, {"attempt": True}, []),
    ("attempt_u32_max", 0, {"attempt": 4_294_967_295}, []),
    ("attempt_over_u32", 0, {"attempt": 4_294_967_296}, []),
    ("cold_load_negative", 0, {"cold_load_ms": -1}, []),
    ("contention_extra", 0, {"contention/min_speedup": 1.5}, []),
    ("config_free_form", 0, {"config": {"anything": [1, None]}}, []),
    ("config_null", 0, {"config": None}, []),
    ("https_endpoint", 0, {"agents/single/endpoint": "https://example.org:8443/v1"}, []),
    ("empty_model", 0, {"agents/single/model": ""}, []),
    ("single_with_alone_order", 0, {"alone_order": ["collector", "insight"]}, []),
    ("multi_three_phases", 1, {"phase_order": ["alone", "together", "alone"]}, []),
    ("multi_unknown_alone_agent", 1, {"alone_order": ["collector", "single"]}, []),
    ("multi_without_alone_order", 1, {}, ["alone_order"]),
    ("multi_extra_agent", 1, {"agents/single": JOBS["valid"][0]["job"]["agents"]["single"]}, []),
    ("multi_insight_first", 1, {"alone_order": ["insight", "collector"], "phase_order": ["together", "alone"]}, []),
]


@pytest.mark.parametrize("name, base, set_, remove", EDGES, ids=[e[0] for e in EDGES])
def test_the_model_accepts_exactly_what_the_schema_accepts(name, base, set_, remove):
    job = _mutated(base, set_, remove)
    assert (_model_errors(job) is None) == _schema_accepts(job), _model_errors(job)
    if _schema_accepts(job):
        assert Job.model_validate(job).to_json() == job


def _steps_job(n: int = 2) -> dict:
    job = _mutated(0, {"suite": "steps"})
    agent = job["agents"].pop("single")
    job["agents"] = {f"agent{i}": agent for i in range(1, n + 1)}
    return job


def test_a_steps_job_is_python_only():
    """The planned difference: a steps job is a valid Job, and its only schema violation is the
    suite, so tr116-agent gets none (rust.run_job refuses it before it writes job.json)."""
    job = _steps_job(3)
    assert _model_errors(job) is None
    with pytest.raises(BenchError) as info:
        rust.validate_job(job)
    assert "key `suite`: 'steps' is not one of ['single', 'multi']" in str(info.value)
    assert str(info.value).count("key `") == 1
    assert "agents" in _model_errors(_steps_job(0))
    shuffled = _steps_job(3)
    shuffled["agents"] = dict(reversed(shuffled["agents"].items()))
    assert "agent1 … agentN in order" in _model_errors(shuffled)
    assert "phase_order" in _model_errors({**_steps_job(2), "phase_order": ["alone", "together"]})


def test_rust_run_job_refuses_a_steps_job_before_anything_runs(tmp_path):
    never = rust.RustAgent(("/nonexistent/tr116-agent",), "never run")
    with pytest.raises(BenchError, match="key `suite`"):
        rust.run_job(never, Job.model_validate(_steps_job()), tmp_path / "run_1", tmp_path, timeout_s=10)
    assert not (tmp_path / "run_1").exists()


def test_a_job_is_built_once_and_not_changed():
    job = Job.model_validate(JOBS["valid"][0]["job"])
    with pytest.raises(ValidationError, match="frozen"):
        job.attempt = 2


# ---- the Python backend: one job in, one typed document out, on the protocol-faithful test servers ----


def _job_on(suite: str, endpoints: dict[str, str], attempt: int = 1, **orders) -> Job:
    """A job whose agents call the given endpoint URLs."""
    options = {"num_predict": 6, "seed": 1, "temperature": 0.8, "num_ctx": 512}
    return Job(suite=suite, study="t", run_key=f"t/{suite}/python/gemma3/run_1", attempt=attempt, run_index=1,
               retries={"attempts": 2, "wait_s": agents.RETRY_WAIT_S, "max_wait_s": agents.RETRY_MAX_WAIT_S},
               model={"name": "gemma3", "slug": "gemma3", "baseline": True},
               config={"gpu_layers": 0, "ctx": 512, "temperature": 0.8, "seed": 1, "num_predict": 6},
               **data_files(), timeout_s=30, cold_load_ms=1000,
               contention={"min_tps_ratio": 0.85, "max_ttft_inflation": 2.0},
               agents={name: {"endpoint": url, "api": "ollama", "model": "gemma3", "options": options}
                       for name, url in endpoints.items()}, **orders)


def test_python_run_job_returns_the_typed_document():
    with FakeOllama(token_s=0.001) as a, FakeOllama(token_s=0.001) as b:
        clients = {s.url: StreamingClient(s.url, "ollama") for s in (a, b)}
        single_job = _job_on("single", {"single": a.url}, attempt=2)
        single = agents.run_job(single_job, clients)
        assert isinstance(single, RunDocument) and schema_errors(single.to_json()) == []
        assert (single.lang, single.model.baseline, single.config.ctx) == ("python", True, 512)
        # the run's attempt reaches the nonces (a retried run never reuses a cached prefix)
        assert single.requests[0].prompt_nonce == prompt_nonce(single_job.run_key, "single", "analysis", "single",
                                                               nonce_attempt(2, 1, 2))
        assert a.requests[-1]["options"] == {"num_predict": 6, "seed": 1, "temperature": 0.8, "num_ctx": 512}

        multi = agents.run_job(_job_on("multi", {"collector": a.url, "insight": b.url},
                                       phase_order=["together", "alone"], alone_order=["insight", "collector"]),
                               clients)
        assert schema_errors(multi.to_json()) == [] and multi.workload.phase_order == ["together", "alone"]
        assert [r.phase for r in multi.requests[:4]] == ["together"] * 4
        assert [r.agent for r in multi.requests if r.phase == "alone"] == ["insight"] * 2 + ["collector"] * 2
        assert {r.endpoint for r in multi.requests if r.agent == "insight"} == {b.url}

        steps = agents.run_job(_job_on("steps", {"agent1": a.url, "agent2": b.url, "agent3": a.url}), clients)
        assert schema_errors(steps.to_json()) == [] and steps.metrics.n_agents == 3
        assert [r.agent for r in steps.requests if r.phase == "alone"] == ["agent1"] * 2

        # an endpoint the runner has no client for: a clear error before any call
        sent = len(a.requests) + len(b.requests)
        with pytest.raises(BenchError, match="no ollama client for http://127.0.0.1:9 "):
            agents.run_job(_job_on("single", {"single": "http://127.0.0.1:9"}), clients)
        assert len(a.requests) + len(b.requests) == sent
