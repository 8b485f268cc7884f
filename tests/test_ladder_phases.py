"""The ladder never loses a config: a rung decided is a rung run, whichever phase the load failure
hit (the warmup, the first counted call, a later call), for both clients; a failure between two
rungs (an unload slower than its wait) leaves the run to the retry pass at the rung decided; and
a slow unload is a timeout, never an OOM the ladder would learn.

The test server (tests/ollama_server.py) fails every runner above 70 GPU layers with Ollama's real
OOM text, at the request `oom_at` names, and keeps a dead or unloaded model listed in /api/ps for
`unload_s`. `bench` runs in this process so that the unload wait can be shorter than that."""

from __future__ import annotations

import json

import pytest

from bench.runtimes.ollama import OllamaEndpoints

from test_external import bench_in_process
from test_fallback import docs, profile, servers

UNLOAD_WAIT_S = 0.3
SLOW_UNLOAD_S = 0.6  # longer than the wait: the unload fails once, then the model is gone
# A single run is a warmup call, then two counted calls (analysis, report): the request at which
# the runner above 70 layers dies.
PHASES = {"warmup": 1, "first_call": 2, "later_call": 3}
NEXT_RUNG = "next rung: gemma3:latest gpu_layers 60 ctx 512"


def bench_here(path, results, monkeypatch):
    """`invoke bench`'s run in this process, with the unload wait shorter than the slow unload."""
    monkeypatch.setattr(OllamaEndpoints, "unload_wait_s", UNLOAD_WAIT_S)
    outcome, check, store, _ = bench_in_process(path, results, monkeypatch)
    return outcome, check, store


def failures(store):
    path = store.root / "failures.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def one_model(tmp_path, a, b, lang, runs):
    return profile(tmp_path, a, b, langs=[lang], models=[{"name": "gemma3:latest", "baseline": True}],
                   single__gpu_layers=[80], single__runs=runs, multi__enabled=False)


@pytest.mark.parametrize("lang", ["python", "rust"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_load_failure_in_any_phase_runs_the_next_rung(tmp_path, monkeypatch, phase, lang):
    with servers(max_gpu_layers=70, oom_at=PHASES[phase]) as (a, b):
        outcome, check, store = bench_here(one_model(tmp_path, a, b, lang, runs=1), tmp_path / "results", monkeypatch)
    assert (check.runs_planned, check.runs_missing, check.incomplete) == (1, 0, None), check.problems
    (doc,) = docs(store.root).values()
    assert (doc["requested_config"]["gpu_layers"], doc["effective_config"]["gpu_layers"]) == (80, 60)
    assert [(s["gpu_layers"], s["outcome"], s["error_kind"]) for s in doc["ladder"]] == [
        (80, "failed", "oom"), (60, "ran", None)]
    (failure,) = failures(store)
    assert (failure["attempted_config"]["gpu_layers"], failure["fallback"]) == (80, NEXT_RUNG)
    assert (outcome.done, outcome.failed, outcome.downgraded) == (1, 0, 1)


@pytest.mark.parametrize("lang", ["python", "rust"])
def test_a_failed_free_between_rungs_leaves_the_rung_to_the_retry_pass(tmp_path, monkeypatch, lang):
    """The issue's case: the warmup at 80 layers fails, "next rung: gpu_layers 60", and the dead
    runner stays listed longer than the unload wait. Before, the free's error escaped the ladder as
    an OOM: no run of the config at all, not even in the retry pass, and `bench` exited 1. Now the
    run waits for the retry pass, which runs it at 60; the other run starts at 60 from what was
    learned."""
    with servers(max_gpu_layers=70, unload_s=SLOW_UNLOAD_S) as (a, b):
        outcome, check, store = bench_here(one_model(tmp_path, a, b, lang, runs=2), tmp_path / "results", monkeypatch)
    assert (check.runs_planned, check.runs_missing, check.incomplete) == (2, 0, None), check.problems
    runs = docs(store.root)
    assert len(runs) == 2 and all(d["effective_config"]["gpu_layers"] == 60 for d in runs.values())
    assert (outcome.failed, outcome.recovered) == (1, 1)
    (oom, free) = failures(store)
    assert (oom["attempted_config"]["gpu_layers"], oom["error_kind"], oom["fallback"]) == (80, "oom", NEXT_RUNG)
    assert (free["attempted_config"]["gpu_layers"], free["error_kind"], free["error_class"]) == (60, "timeout",
                                                                                                   "transient")
    assert free["fallback"].startswith("servers not freed before the next rung (gemma3:latest gpu_layers 60")
    assert "retry pass" in free["fallback"]
    assert [(f["gpu_layers"], f["error_kind"]) for f in outcome.learned_limits["failed"]] == [(80, "oom")]


def test_a_slow_unload_is_not_an_oom(tmp_path, monkeypatch):
    """Switching models, the previous one stays listed longer than the wait. Before, that was an
    'oom' of the next model's config: learned as a limit, its rungs walked down and the config
    lost. Now it is a timeout: nothing learned, the run redone by the retry pass, every run there."""
    with servers(unload_s=SLOW_UNLOAD_S) as (a, b):
        path = profile(tmp_path, a, b, single__gpu_layers=[60], single__runs=2, multi__enabled=False)
        outcome, check, store = bench_here(path, tmp_path / "results", monkeypatch)
    assert (check.runs_planned, check.runs_missing, check.incomplete) == (4, 0, None), check.problems
    assert all(d["ladder"] == [] and d["effective_config"] == d["requested_config"] for d in docs(store.root).values())
    assert outcome.learned_limits["failed"] == []
    slow = failures(store)
    assert slow and {(f["model"], f["error_kind"], f["error_class"]) for f in slow} == {
        ("qwen2.5:7b", "timeout", "transient")}
    assert "still listed by /api/ps 0.3 s after its unload" in slow[0]["error"]
    assert outcome.failed == outcome.recovered == len(slow)


def test_an_adaptive_study_runs_the_rung_decided_too(tmp_path, monkeypatch):
    """The same failure between two rungs in an adaptive study (no retry pass): the scheduler's
    next round runs the config at the rung decided until it has its runs."""
    with servers(max_gpu_layers=70, unload_s=SLOW_UNLOAD_S) as (a, b):
        path = profile(tmp_path, a, b, models=[{"name": "gemma3:latest", "baseline": True}], single__gpu_layers=[80],
                       single__precision={"metrics": ["decode_tps"], "rel_half_width": 0.5, "min_runs": 2,
                                          "max_runs": 3},
                       multi__enabled=False)
        outcome, check, store = bench_here(path, tmp_path / "results", monkeypatch)
    assert (check.runs_missing, check.incomplete) == (0, None), check.problems
    runs = docs(store.root)
    assert len(runs) >= 2 and all(d["effective_config"]["gpu_layers"] == 60 for d in runs.values())
    assert [f["fallback"] for f in failures(store)][0] == NEXT_RUNG
    assert [(f["gpu_layers"], f["error_kind"]) for f in outcome.learned_limits["failed"]] == [(80, "oom")]
