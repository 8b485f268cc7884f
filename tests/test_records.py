"""The pydantic models of bench/core/records.py against the JSON Schema they mirror."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.clients import streaming as clients
from bench.core import metrics, records
from bench.core.paths import SCHEMA_FILE
from bench.core.store import Store, schema_errors

FIXTURE_ROOT = Path(__file__).parent / "fixtures" / "stored-study"
SCHEMA = json.loads(SCHEMA_FILE.read_text())

# schema object (its path in the schema) → the model that mirrors it
MIRRORS = {
    "": records.RunDocument,
    "$defs/request": records.RequestRecord,
    "$defs/gap_stats": records.GapStats,
    "$defs/request/properties/timing": records.CallStamps,
    "$defs/config": records.RunConfig,
    "$defs/agent_options": records.AgentOptions,
    "$defs/single_metrics": records.SingleMetrics,
    "$defs/multi_metrics": records.MultiMetrics,
    "$defs/agent_multi_metrics": records.AgentMultiMetrics,
    "$defs/steps_metrics": records.StepsMetrics,
    "$defs/steps_metrics/properties/agents/additionalProperties": records.AgentStepMetrics,
    "properties/server_settings": records.ServerSettingsBlock,
    "properties/server_settings/properties/instances/additionalProperties": records.InstanceSettings,
    "properties/client": records.ClientInfo,
    "properties/model": records.ModelRef,
    "properties/workload": records.WorkloadRef,
    "properties/client_cost": records.ClientCost,
    "properties/ladder/items": records.LadderStep,
    "properties/placement": records.Placement,
}


def _node(path: str) -> dict:
    node = SCHEMA
    for part in filter(None, path.split("/")):
        node = node[part]
    return node


@pytest.mark.parametrize("path", sorted(MIRRORS))
def test_each_model_has_the_schema_fields(path):
    node, model = _node(path), MIRRORS[path]
    assert set(model.model_fields) == set(node["properties"]), path
    required = {name for name, f in model.model_fields.items() if f.is_required()}
    assert required == set(node.get("required", [])), path
    forbids_extra = model.model_config.get("extra") == "forbid"
    assert forbids_extra == (node.get("additionalProperties") is False), path


def test_enums_agree_with_the_schema():
    req = SCHEMA["$defs"]["request"]["properties"]
    for field in ("stage", "api"):
        assert set(records.RequestRecord.model_fields[field].annotation.__args__) == set(req[field]["enum"])
    assert records.AGENT_PATTERN == req["agent"]["pattern"]
    assert set(records.Phase.__args__) == set(req["phase"]["enum"])
    assert set(records.Suite.__args__) == set(SCHEMA["properties"]["suite"]["enum"])
    assert set(records.Lang.__args__) == set(SCHEMA["properties"]["lang"]["enum"])


def test_every_stored_document_round_trips(tmp_path):
    shutil.copytree(FIXTURE_ROOT / "smoke", tmp_path / "smoke")
    runs = list(Store("smoke", root=tmp_path).iter_runs())
    assert len(runs) == 61
    for run in runs:
        raw = json.loads(run.path.read_text())
        assert run.doc.to_json() == raw, run.rel_dir
        assert schema_errors(run.doc.to_json()) == []
    suites = {r.doc.suite: type(r.doc.metrics) for r in runs}
    assert suites == {"single": records.SingleMetrics, "multi": records.MultiMetrics}


def test_models_refuse_what_the_schema_refuses():
    doc = json.loads(next((FIXTURE_ROOT / "smoke").glob("single/*/*/*/run_1/metrics.json")).read_text())
    doc["requests"][0]["agent"] = "nobody"
    assert schema_errors(doc)
    with pytest.raises(ValueError):
        records.RunDocument.model_validate(doc)
    del doc["requests"][0]["agent"]
    doc["requests"][0]["surprise"] = 1
    with pytest.raises(ValueError):
        records.RunDocument.model_validate(doc)


def test_the_stored_stamps_give_back_the_timing_metrics():
    """A record keeps its raw clock; ttft, e2e, the gaps and the client decode rate recomputed
    from the stored stamps equal the stored metrics (scripted clock, Ollama NDJSON)."""
    ms = 1_000_000
    stamps = iter([100 * ms, 150 * ms, 160 * ms, 180 * ms, 185 * ms, 205 * ms])  # send, 4 lines, end
    lines = [json.dumps({"message": {"content": t}, "done": False}).encode() for t in ("a", "b", "c")]
    lines.append(json.dumps({"message": {"content": "d"}, "done": True, "done_reason": "length",
                             "eval_count": 4, "eval_duration": 30 * ms, "prompt_eval_count": 9,
                             "prompt_eval_duration": 20 * ms, "load_duration": 0}).encode())
    clock = lambda: next(stamps)  # noqa: E731
    t_send = clock()
    parser = clients.PARSERS["ollama"]()
    content, texts, t_done = clients.time_stream(lines, parser, clock)
    ctx = clients.CallContext("single", "analysis", "single", run_t0_ns=40 * ms, prompt_nonce="0" * 16)
    rec = clients.build_record(ctx, "http://x", "ollama", "m", t_send, content, texts, t_done, parser.counts)
    doc = rec.to_json()
    assert doc["timing"] == {"t_send_ns": 60 * ms, "content_ns": [110 * ms, 120 * ms, 140 * ms, 145 * ms],
                             "t_done_ns": 165 * ms}
    again = records.RequestRecord.model_validate(doc)
    t = again.timing
    assert again.ttft_ms == metrics.ttft_ms(t.t_send_ns, t.content_ns[0]) == 50.0
    assert again.e2e_ms == metrics.e2e_ms(t.t_send_ns, t.t_done_ns) == 105.0
    assert again.itl_ms.max == max(metrics.inter_token_gaps_ms(t.content_ns)) == 20.0
    assert again.decode_tps_client == metrics.decode_tps_client(4, t.content_ns[0], t.content_ns[-1])


def test_a_record_takes_its_context_fields_from_the_call_context():
    """The record's who-and-where fields are the CallContext's (as the Rust record flattens its
    context): a field added to both is copied without a line in build_record."""
    ctx = clients.CallContext("collector", "report", "together", run_t0_ns=0, prompt_nonce="0123456789abcdef",
                              call_attempt=3, cold_load_ms=5.0)
    assert ctx.record_fields() == {"agent": "collector", "stage": "report", "phase": "together",
                                   "prompt_nonce": "0123456789abcdef", "call_attempt": 3}
    rec = clients.build_record(ctx, "http://x", "ollama", "m", 10, [20], ["a"], 30, clients.ServerCounts())
    assert {k: rec.to_json()[k] for k in ctx.record_fields()} == ctx.record_fields()


def test_records_no_longer_carry_the_always_null_error_fields():
    """A record is made only for a call that succeeded, so `error`/`error_kind` were always null:
    a new record leaves them out, a stored one's nulls still read back, a value there is refused."""
    ctx = clients.CallContext("single", "analysis", "single", run_t0_ns=0, prompt_nonce="0" * 16)
    new = clients.build_record(ctx, "http://x", "ollama", "m", 10, [20], ["a"], 30, clients.ServerCounts()).to_json()
    assert "error" not in new and "error_kind" not in new
    stored = json.loads(next((FIXTURE_ROOT / "smoke").glob("single/*/*/*/run_1/metrics.json")).read_text())
    assert stored["requests"][0]["error"] is None
    assert records.RunDocument.model_validate(stored).to_json()["requests"][0]["error"] is None
    stored["requests"].append(new)
    assert schema_errors(stored) == []
    stored["requests"][0]["error_kind"] = "oom"
    assert schema_errors(stored)
