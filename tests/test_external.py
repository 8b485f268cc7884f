"""The external runtime (servers someone else runs) with both APIs: a real llama-server through
the OpenAI-compatible API and real Ollama through its native API, both clients. Its engine
settings are the owner's: the pinned ones are accepted and recorded as not controlled, a change
is refused before anything runs."""

from __future__ import annotations

import json

import pytest

from bench.config.plan import build_plan
from bench.config.profile import ServerSettings, load_profile
from bench.core.errors import BenchError
from bench.core.store import Store, schema_errors
from bench.report.validate import validate_study
from bench.runtimes import create_runtime
from bench.study.runner import run_matrix

from conftest import smoke_variant


def external_profile(tmp_path, runtime, api: str, model: str):
    """A small study of `model` on `runtime`'s two servers, reached as external endpoints."""
    def mutate(d):
        d["runtime"] = {"kind": "external", "threads": 1,
                        "endpoints": [{"name": ep.name, "url": ep.url, "api": api} for ep in runtime.endpoints()]}
        d["models"] = [{"name": model, "baseline": True}]
        d["single"].update(langs=["python", "rust"], gpu_layers=[0], ctx=[1024], runs=1)
        d["multi"].update(enabled=True, langs=["python", "rust"], scenarios=["chimera_homo"], runs=1,
                          chimera={"gpu_layers": 0, "ctx": 1024, "temperature": 1.0})
        d["workload"].update(num_predict=8)
        d["instrument"]["drift_probes"] = False  # the probes have tests of their own
    return smoke_variant(tmp_path, mutate, name="external.yaml")


def openai_profile(tmp_path):
    """External OpenAI-compatible endpoints that are never called (the runtime's settings checks)."""
    def mutate(d):
        d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": "http://127.0.0.1:9", "api": "openai"},
                                                          {"name": "b", "url": "http://127.0.0.1:10", "api": "openai"}]}
    return load_profile(smoke_variant(tmp_path, mutate)).profile


def test_pinned_settings_are_accepted_and_a_change_refused(tmp_path):
    """Before, the pinned settings were recorded for Ollama endpoints only, so an OpenAI endpoint's
    first config was refused as a change ("cannot change engine settings (asked: a: ...)")."""
    profile = openai_profile(tmp_path)
    runtime = create_runtime(profile)
    pinned = profile.runtime.pinned_settings
    assert runtime.apply_settings({"a": pinned, "b": pinned}) is False
    assert runtime.describe()["engine_settings"]["asked"] == {"a": pinned.model_dump(), "b": pinned.model_dump()}
    assert "not controlled" in runtime.describe()["engine_settings"]["status"]
    two_slots = ServerSettings(**{**pinned.model_dump(), "num_parallel": 2})
    with pytest.raises(BenchError, match=r"cannot change engine settings \(asked: a: \{'num_parallel': 2"):
        runtime.apply_settings({"a": two_slots, "b": pinned})


def bench_in_process(path, results, monkeypatch):
    """`invoke bench`'s run and its count of missing runs, in this process (no summaries or
    manifest: the checks are the runs'). A fixture's llama-server key is known here by URL, as an
    external endpoint at that URL needs it."""
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    loaded = load_profile(path)
    store = Store(loaded.profile.study, results)
    runtime = create_runtime(loaded.profile)
    outcome = run_matrix(loaded, build_plan(loaded.profile), runtime, store, progress=False)
    return outcome, validate_study(loaded, store), store, runtime


def check_study(path, results, monkeypatch, api: str):
    outcome, check, store, runtime = bench_in_process(path, results, monkeypatch)
    assert (check.runs_planned, check.runs_missing, check.incomplete) == (4, 0, None), check.problems
    assert outcome.failed == 0
    docs = [json.loads(p.read_text()) for p in store.root.glob("*/*/*/*/run_*/metrics.json")]
    assert all(schema_errors(d) == [] for d in docs)
    assert {(d["suite"], d["lang"]) for d in docs} == {(s, lang) for s in ("single", "multi")
                                                        for lang in ("python", "rust")}
    assert {r["api"] for d in docs for r in d["requests"]} == {api}
    for doc in docs:  # every endpoint the run used: the settings it asked, marked not controlled
        used = doc["server_settings"]["instances"]
        assert used and all(doc["placement"]["end_of_run"][ep]["engine_settings"]["controlled"] is False
                            for ep in used)
    described = runtime.describe()
    assert described["kind"] == "external" and "not controlled" in described["engine_settings"]["status"]
    return docs


@pytest.mark.llama
def test_a_study_through_external_openai_endpoints(tmp_path, monkeypatch, llama_runtime):
    """Two llama-servers someone else runs (the session's fixture), reached through the OpenAI API."""
    docs = check_study(external_profile(tmp_path, llama_runtime, "openai", "gemma3-270m"), tmp_path / "results",
                       monkeypatch, "openai")
    ends = [e for d in docs for e in d["placement"]["end_of_run"].values()]
    assert all(e["running"] and e["total_slots"] == 1 and e["slot_ctx"] == 1024 for e in ends)  # what /props says
    assert llama_runtime.is_running()  # bench left the owner's servers alone


@pytest.mark.ollama
def test_a_study_through_external_ollama_endpoints(tmp_path, monkeypatch, ollama_runtime):
    """Two Ollama servers someone else runs (the session's fixture), reached through the native API."""
    docs = check_study(external_profile(tmp_path, ollama_runtime, "ollama", "gemma3-270m"), tmp_path / "results",
                       monkeypatch, "ollama")
    assert all(d["placement"]["end_of_run"][ep]["loaded"] for d in docs for ep in d["server_settings"]["instances"])
