"""The engine's own evidence (bench/study/engine_sampler.py): the parsers on bodies recorded from the
real llama-server (tests/fixtures/llama_metrics_deferred.txt and llama_slots_busy.json: one slot, three
streamed calls, taken mid-run), the run summary on hand-worked ticks, a dead endpoint, the block
against the schema, and the sampler on real engines: llama-server's queue shows the calls waiting
for its one slot, Ollama's /api/ps the loaded model."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from bench.clients.streaming import CallContext, StreamingClient
from bench.core import metrics
from bench.core.records import RunDocument
from bench.core.store import schema_errors
from bench.study import engine_sampler as es

from conftest import free_port, smoke_variant
from ollama_server import FakeOllama

FIXTURES = Path(__file__).parent / "fixtures"
STORED_RUN = next((FIXTURES / "stored-study" / "smoke").rglob("metrics.json"))


def test_the_recorded_metrics_body_gives_the_queue():
    got = es.parse_llama_metrics((FIXTURES / "llama_metrics_deferred.txt").read_text())
    # one call in the slot, two waiting; this build exports no KV-cache ratio
    assert got == {"requests_processing": 1, "requests_deferred": 2, "kv_cache_usage_ratio": None}


def test_the_recorded_slots_body_gives_the_busy_slot():
    got = es.parse_llama_slots(json.loads((FIXTURES / "llama_slots_busy.json").read_text()))
    # 58 prompt tokens + 24 decoded in a 512-token slot
    assert got == {"slots_total": 1, "slots_busy": 1, "slot_tasks": [2], "slot_ctx_fill_max": (58 + 24) / 512}


def test_bodies_that_are_not_the_engines_are_refused():
    with pytest.raises(ValueError, match="no llamacpp:requests_processing, llamacpp:requests_deferred"):
        es.parse_llama_metrics("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 3\n")
    with pytest.raises(ValueError, match="/slots is not a list"):
        es.parse_llama_slots({"error": "slots endpoint disabled"})
    with pytest.raises(ValueError, match="/api/ps has no list"):
        es.parse_ollama_ps({"models": [{"size": 1}]})


def _tick(tick: int, t_s: float, endpoint: str, deferred: int | None, processing: int = 1) -> dict:
    base = {"tick": tick, "endpoint": endpoint, "t_monotonic_ns": int(t_s * 1e9)}
    if deferred is None:
        return {**base, "ok": False, "reason": "ConnectionError: refused"}
    return {**base, "ok": True, "reason": None, "requests_processing": processing, "requests_deferred": deferred,
            "kv_cache_usage_ratio": None, "slots_total": 1, "slots_busy": processing, "slot_tasks": [7],
            "slot_ctx_fill_max": 0.25}


def test_the_summary_of_hand_worked_ticks():
    samples = [_tick(0, 10.0, "a", 0), _tick(0, 10.0, "b", 0, processing=0),
               _tick(1, 10.3, "a", 2), _tick(1, 10.3, "b", 1),
               _tick(2, 10.8, "a", 1), _tick(2, 10.8, "b", None),
               _tick(3, 11.0, "a", None), _tick(3, 11.0, "b", None)]
    block = es.summarize("llama.cpp", samples, interval_s=0.25)
    # answered ticks 0, 1, 2 with deferred 0, 3, 1: tick 1 lasts 0.5 s, tick 2 (the last answered) interval_s
    assert block["deferred_max"] == 3 and block["deferred_mean"] == pytest.approx(4 / 3)
    assert block["deferred_s"] == pytest.approx(0.5 + 0.25)
    assert block["deferred_max_by_endpoint"] == {"a": 2, "b": 1}
    assert (block["processing_max"], block["slots_busy_max"], block["slots_total"]) == (2, 2, 2)
    assert (block["n_samples"], block["n_gaps"], block["gap_reasons"]) == (5, 3, ["ConnectionError: refused"])
    assert block["available"] and block["queue_metric"] and block["kv_cache_usage_max"] is None


def _with_block(block: dict) -> dict:
    return {**json.loads(STORED_RUN.read_text()), "engine": block}


def test_the_block_is_what_the_schema_and_the_document_take():
    block = es.summarize("llama.cpp", [_tick(0, 1.0, "a", 1)])
    ollama = es.summarize("ollama", [{"tick": 0, "endpoint": "a", "t_monotonic_ns": 1, "ok": True, "reason": None,
                                      **es.parse_ollama_ps({"models": [{"name": "m", "size_vram": 5}]})}])
    assert ollama["models_loaded"] == ["m"] and ollama["note"] == es.NO_QUEUE_METRIC
    for b in (block, ollama, es.unavailable_block("openai-compatible", "no sampler")):
        assert schema_errors(_with_block(b)) == []
        assert RunDocument.model_validate(_with_block(b)).to_json()["engine"] == b
    assert schema_errors(_with_block({**block, "queue_depth": 3}))  # an unknown field is refused


def test_a_dead_endpoint_is_a_gap_and_the_run_goes_on():
    sampler = es.EngineSampler("llama.cpp", {"a": f"http://127.0.0.1:{free_port()}"}, interval_s=0.05)
    with sampler:
        time.sleep(0.3)  # the run's work, untouched by the failed polls
        assert sampler._thread.is_alive()
    assert not sampler._thread.is_alive()
    block = es.summarize("llama.cpp", sampler.samples, 0.05)
    assert not block["available"] and block["n_samples"] == 0 and block["n_gaps"] >= 3
    assert block["gap_reasons"][0].startswith("ConnectionError")


def test_the_sampler_stops_when_the_run_fails():
    sampler = es.EngineSampler("ollama", {"a": f"http://127.0.0.1:{free_port()}"}, interval_s=0.05)
    with pytest.raises(RuntimeError, match="the run failed"):
        with sampler:
            raise RuntimeError("the run failed")
    assert not sampler._thread.is_alive()


def test_a_rerun_replaces_its_lines_in_the_log(tmp_path):
    from bench.core.store import Store

    store = Store("t", root=tmp_path)
    es.append_log(store, "cell", [_tick(0, 1.0, "a", 1)], run_index=1)
    es.append_log(store, "cell", [_tick(0, 2.0, "a", 0)], run_index=2)
    es.append_log(store, "cell", [_tick(0, 3.0, "a", 2), _tick(1, 3.2, "a", 1)], run_index=1)
    lines = [json.loads(x) for x in (store.path("cell") / es.ENGINE_LOG).read_text().splitlines()]
    assert [(x["run_index"], x["requests_deferred"]) for x in lines] == [(2, 0), (1, 2), (1, 1)]


def test_the_config_table_counts_the_runs_with_a_queue_beside_the_clients_unaccounted_ttft(tmp_path):
    import shutil

    from bench.analysis.engine_tables import engine_table
    from bench.analysis.tables import load_tables
    from bench.core.store import Store
    from bench.report.report_sections import _engine_line

    cell = "multi/python/gemma3-270m/chimera_homo_gpu0_ctx1024_temp10"
    shutil.copytree(FIXTURES / "stored-study" / "smoke" / cell, tmp_path / "smoke" / cell)
    store = Store("smoke", root=tmp_path)
    queued = es.summarize("llama.cpp", [_tick(0, 1.0, "a", 2), _tick(1, 1.5, "a", 0)])  # 0.5 s with 2 waiting
    idle = es.summarize("llama.cpp", [_tick(0, 1.0, "a", 0)])
    for run, block in zip(sorted(store.path(cell).glob("run_*")), (queued, idle)):  # the others: no block
        doc = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**doc, "engine": block}))
    requests = load_tables(store).requests
    (row,) = engine_table(store.iter_runs(), requests).to_dict("records")
    assert (row["runs_sampled"], row["runs_with_deferred"], row["deferred_max"]) == (2, 1, 2)
    assert row["deferred_s_mean"] == pytest.approx((0.5 + 0) / 2)
    together = requests[requests["phase"] == "together"]["ttft_unaccounted_ms"]  # every run's, as the frame has it
    assert row["ttft_unaccounted_ms_shared_median"] == pytest.approx(together.median())
    line = _engine_line(pd.Series(row))
    assert "held deferred requests in 1 of 2 runs (at most 2 waiting" in line and "the slot wait is the engine's" in line


def test_the_runner_stores_each_runs_block_and_log_and_the_report_shows_them(tmp_path, results_dir):
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile
    from bench.core.store import Store
    from bench.report.markdown import write_report
    from bench.runtimes import create_runtime
    from bench.study.runner import run_matrix

    with FakeOllama(token_s=0.02) as a, FakeOllama(token_s=0.02) as b:
        def multi_only(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": a.url, "api": "ollama"},
                                                              {"name": "b", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "gemma3:latest", "baseline": True}]
            d["single"]["enabled"] = False
            d["multi"].update(enabled=True, scenarios=["chimera_homo"])
        loaded = load_profile(smoke_variant(tmp_path, multi_only))
        plan = build_plan(loaded.profile)
        store = Store("test")
        assert run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False).done == 1
    (run,) = store.iter_runs(plan.cells[0].rel_dir)
    block = run.doc.engine
    assert block["engine"] == "ollama" and block["n_samples"] >= 2 and block["models_loaded"] == ["gemma3:latest"]
    log = (store.path(plan.cells[0].rel_dir) / es.ENGINE_LOG).read_text().splitlines()
    assert len(log) == block["n_samples"] + block["n_gaps"] and json.loads(log[0])["run_index"] == 1
    section = write_report(loaded, store).read_text().split("### The engine's own queue")[1].split("## 13.")[0]
    assert f"**{plan.cells[0].key}** (ollama): no queue metric" in section and "gemma3:latest" in section


def _call(client: StreamingClient, model: str, i: int, tokens: int = 32):
    ctx = CallContext("single", "analysis", "single", time.perf_counter_ns(), f"{i:016x}")
    return client.chat(model, [{"role": "user", "content": f"Write a short story about lighthouse {i}."}],
                       {"num_predict": tokens, "seed": i, "temperature": 0.0}, ctx)


@pytest.mark.llama
def test_llama_servers_queue_shows_the_calls_waiting_for_its_one_slot(llama_runtime):
    endpoints = llama_runtime.endpoints()  # two llama-servers, one slot each (-np 1)
    a = endpoints[0]
    client = StreamingClient(a.url, a.api, timeout_s=120)
    model = llama_runtime.profile.baseline.name
    with es.EngineSampler("llama.cpp", {e.name: e.url for e in endpoints}, interval_s=0.1) as sampler:
        with ThreadPoolExecutor(3) as pool:
            records = list(pool.map(lambda i: _call(client, model, i), range(3)))
    block = es.summarize("llama.cpp", sampler.samples, 0.1)
    assert block["n_gaps"] == 0, block["gap_reasons"]  # the key was sent: no 401
    assert block["deferred_max"] >= 1 and block["deferred_s"] > 0
    assert block["deferred_max_by_endpoint"]["b"] == 0  # the idle instance queues nothing
    assert block["slots_total"] == 2 and block["slots_busy_max"] >= 1
    assert any(s["slot_tasks"] for s in sampler.samples if s["endpoint"] == "a")
    # the client saw the wait the engine did not count: the last-served call's TTFT is mostly queue
    unaccounted = [metrics.ttft_unaccounted_ms(r.ttft_ms, r.load_ms, r.prompt_eval_ms) for r in records]
    assert max(unaccounted) > 100


@pytest.mark.ollama
def test_ollama_ps_shows_the_loaded_model(ollama_runtime):
    e = ollama_runtime.endpoints()[0]
    model = ollama_runtime.profile.baseline.name
    with es.EngineSampler("ollama", {e.name: e.url}, interval_s=0.1) as sampler:
        _call(StreamingClient(e.url, e.api, timeout_s=120), model, 0, tokens=4)
    block = es.summarize("ollama", sampler.samples, 0.1)
    assert block["n_samples"] >= 1 and block["n_gaps"] == 0, block["gap_reasons"]
    assert model in " ".join(block["models_loaded"]) and block["vram_bytes_max"] is not None
    assert not block["queue_metric"] and block["deferred_max"] is None


# ---- the engine figures are registered metrics (bench/core/metrics.py) ----------------------------

ENGINE_FIGURES = ("deferred_max", "deferred_mean", "deferred_s", "slots_busy_max", "kv_cache_usage_max",
                  "slot_ctx_fill", "runs_with_deferred", "deferred_s_mean")


def test_the_engine_figures_are_registered_metrics_the_methodology_and_the_engine_table_read():
    """Each figure of the engine block and of the report's engine table is defined once in the metric
    registry, formula first, and computes what the block holds (the hand-worked ticks above); the
    methodology lists the engine level, and the engine table heads its columns with the registry's labels."""
    from dataclasses import replace
    from types import SimpleNamespace

    from bench.report import report_sections

    defined = {d.name: d for d in metrics.definitions("engine")}
    assert set(ENGINE_FIGURES) <= set(defined)
    assert all("=" in defined[n].formula and defined[n].description and defined[n].label for n in ENGINE_FIGURES)
    # ticks at 10.0, 10.3, 10.8 s with 0, 3, 1 deferred (test_the_summary_of_hand_worked_ticks)
    assert metrics.deferred_s([0, 3, 1], [10.0, 10.3, 10.8], 0.25) == pytest.approx(0.5 + 0.25)
    assert metrics.deferred_mean([0, 3, 1]) == pytest.approx(4 / 3) and metrics.deferred_max([0, 3, 1]) == 3
    assert metrics.slot_ctx_fill(58, 24, 512) == pytest.approx(82 / 512)
    assert metrics.runs_with_deferred([2, 0, None]) == 1 and metrics.deferred_s_mean([0.5, None, 0.0]) == 0.25
    assert "engine" in dict(report_sections.methodology(None)["metric_levels"])  # the methodology's tables
    row = {"cell": "steps/python/m/agents_2", "suite": "steps", "engine": "llama.cpp", "queue_metric": True,
           "runs_sampled": 3, "runs_with_deferred": 2, "deferred_max": 2, "deferred_s_mean": 0.7,
           "slots_busy_max": 2, "slots_total": 2, "kv_cache_usage_max": None, "slot_ctx_fill_max": 0.2,
           "models_loaded": "", "samples": 30, "gaps": 0, "interval_s": 0.25,
           "ttft_unaccounted_ms_shared_median": 900.0, "ttft_unaccounted_ms_shared_max": 2000.0,
           "ttft_unaccounted_ms_alone_median": 20.0}
    out = SimpleNamespace(results=SimpleNamespace(engine=pd.DataFrame([row])))
    with pytest.MonkeyPatch.context() as mp:  # a label changed in the registry changes the table's heading
        mp.setitem(metrics._REGISTRY, "deferred_s_mean",
                   replace(metrics.definition("deferred_s_mean"), label="seconds deferred, mean per run"))
        head = report_sections.engine_evidence(out)["engine_table"].splitlines()[0]
    for name in ("runs_with_deferred", "deferred_max", "slots_busy_max", "kv_cache_usage_max", "slot_ctx_fill"):
        assert metrics.heading(name) in head
    assert "seconds deferred, mean per run" in head
    with pytest.raises(KeyError, match="no metric 'queue_depth'"):
        metrics.definition("queue_depth")


# ---- which runs are sampled ------------------------------------------------------------------------


def test_a_single_suite_run_is_not_sampled_and_a_multi_run_is(tmp_path, results_dir):
    """The single suite's timings are the study's baseline and one agent has no queue to show: no
    poller runs beside it (no thread, no block, no engine.jsonl), while a multi run keeps its block."""
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile
    from bench.core.store import Store
    from bench.runtimes import create_runtime
    from bench.study.runner import run_matrix

    with FakeOllama(token_s=0.02) as a, FakeOllama(token_s=0.02) as b:
        def single_and_multi(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": a.url, "api": "ollama"},
                                                              {"name": "b", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "gemma3:latest", "baseline": True}]
            d["multi"].update(enabled=True, scenarios=["chimera_homo"])
        loaded = load_profile(smoke_variant(tmp_path, single_and_multi))
        plan = build_plan(loaded.profile)
        store = Store("test")
        assert run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False).done == 2
    by_suite = {c.suite: c for c in plan.cells}
    (single,) = store.iter_runs(by_suite["single"].rel_dir)
    assert single.doc.engine is None and "engine" not in json.loads(single.path.read_text())
    assert not (store.path(by_suite["single"].rel_dir) / es.ENGINE_LOG).exists()
    (multi,) = store.iter_runs(by_suite["multi"].rel_dir)
    assert multi.doc.engine["n_samples"] >= 2 and (store.path(by_suite["multi"].rel_dir) / es.ENGINE_LOG).is_file()
    monitor = es.EngineMonitor(store, "ollama", {"a": f"http://127.0.0.1:{free_port()}"})
    with monitor.sample("single") as none:  # no thread at all
        assert none is None
    with monitor.sample("steps") as sampler:
        assert sampler._thread.is_alive()
