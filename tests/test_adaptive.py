"""The adaptive study through the runner: rounds within model blocks, stop decisions, the probes
between rounds, the budget, resume, validation; and the A/A placebo on real Ollama.

The statistics themselves are proven by simulation (tests/test_sampling_simulation.py); here the
runner drives the real scheduler against servers."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core.store import PROBES, SAMPLING, Store
from bench.report.validate import validate_study
from bench.runtimes import create_runtime
from bench.study import scheduler
from bench.study.runner import run_matrix

from conftest import invoke, smoke_variant
from ollama_server import FakeOllama

PRECISION = {"metrics": ["decode_tps"], "rel_half_width": 0.5, "min_runs": 3, "max_runs": 5}


@pytest.fixture()
def two_servers():
    with FakeOllama(token_s=0.002) as a, FakeOllama(token_s=0.002) as b:
        yield a, b


def adaptive_profile(tmp_path, a, b, precision=PRECISION, sampling=None):
    def mutate(d):
        d["runtime"] = {"kind": "external", "endpoints": [{"name": "collector", "url": a.url, "api": "ollama"},
                                                          {"name": "insight", "url": b.url, "api": "ollama"}]}
        d["models"] = [{"name": "gemma3:latest", "baseline": True}, {"name": "qwen2.5:7b"}]
        d["single"].update(gpu_layers=[60, 80], ctx=[512], langs=["python"], precision=precision)
        d["workload"].update(num_predict=10, ignore_eos=False)
        d["instrument"]["drift_probes"] = True
        d["sampling"] = sampling or {"probe_interval_s": 0.5}
    return load_profile(smoke_variant(tmp_path, mutate))


def test_an_adaptive_study_runs_rounds_probes_between_them_and_stops_each_config(tmp_path, two_servers,
                                                                                  results_dir):
    a, b = two_servers
    loaded = adaptive_profile(tmp_path, a, b)
    plan = build_plan(loaded.profile)
    assert plan.adaptive and plan.run_count == 4 * 3  # the items hold each config's min runs
    store = Store("test")
    outcome = run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False)
    assert outcome.failed == 0
    # every config stopped, on its target (the test servers are steady), with its reason logged
    stops = {e["cell"]: e for e in store.read_jsonl(SAMPLING)}
    assert set(stops) == {c.key for c in plan.cells}
    assert {e["reason"] for e in stops.values()} <= {scheduler.TARGET_MET, scheduler.MAX_RUNS}
    for cell in plan.cells:
        n = len(list(store.iter_runs(cell.rel_dir)))
        # steady servers and a wide target: met at the min runs, or one or two later when the
        # outlier rule flagged a run (3 clean runs are part of stopping)
        assert 3 <= n <= 5 and stops[cell.key]["n"] == n
        iv = stops[cell.key]["intervals"]["decode_tps"]
        assert iv["low"] < iv["mean"] < iv["high"]
    # rounds: within a model block no config runs twice before every open one has run once
    order = [i.cell.key for i in plan.items]
    first_model = [k for k in order if "gemma3" in k]
    assert set(first_model[:2]) == {c.key for c in plan.cells if c.model.name == "gemma3:latest"}
    assert order.index(next(k for k in order if "qwen" in k)) == len(first_model)  # model blocks stay
    # the drift probe ran between rounds and between models, each with streamed and plain calls
    probes = store.read_jsonl(PROBES)
    labels = [p["label"] for p in probes]
    assert labels[0] == "start" and labels[-1] == "end" and "after gemma3:latest" in labels
    assert any("round" in label for label in labels)
    assert all(len(p["plain"]) == 2 and p["harness_to_engine"] > 0 and p["t_s"] for p in probes)
    # the timeline's run events carry the union of their requests' spans
    runs = [e for e in store.read_jsonl("timeline.jsonl") if e["event"] == "run"]
    assert all(0 < e["active_s"] <= e["span_s"] <= e["duration_s"] + 1e-6 for e in runs)

    # resume: a finished study runs nothing more; one lost run is run again, and only it
    again = run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store, progress=False)
    assert again.done == 0 and again.resumed == sum(s["n"] for s in stops.values())
    cell = plan.cells[0]
    n_before = stops[cell.key]["n"]
    lost = sorted(store.path(cell.rel_dir).glob("run_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    for p in lost.iterdir():
        p.unlink()
    lost.rmdir()
    third = run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store, progress=False)
    n_after = len(list(store.iter_runs(cell.rel_dir)))
    assert third.resumed == again.resumed - 1 and n_after >= 3  # the other configs were not touched
    assert third.done == n_after - (n_before - 1)


def test_the_budget_stops_extra_runs_and_validate_accepts_what_the_plan_allows(tmp_path, two_servers, results_dir):
    a, b = two_servers
    unreachable = {**PRECISION, "rel_half_width": 1e-6, "max_runs": 6}  # no interval gets this narrow
    loaded = adaptive_profile(tmp_path, a, b, precision=unreachable, sampling={"budget_s": 0.01})
    plan = build_plan(loaded.profile)
    store = Store("test")
    run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False)
    stops = {e["cell"]: e for e in store.read_jsonl(SAMPLING)}
    # the min runs always run; the budget then stops every config
    assert all(e["reason"] == scheduler.BUDGET and e["n"] == 3 for e in stops.values())
    from bench.analysis import tables as analysis
    from bench.report import summary

    results = analysis.build(store, loaded.profile)
    summary.summarize_all(store, plan.cells, results, loaded.profile.outliers.mad_k)
    samp = results.derived["sampling"]
    assert set(samp["stop_reason"]) == {scheduler.BUDGET} and not samp["within_target"].any()
    assert results.findings["precision"]["not_within_target"] == len(plan.cells)
    assert any(r["rule"].startswith("R3: a config that stopped before its precision target")
               for r in results.findings["recommendations"])
    assert validate_study(loaded, store, results).ok
    # a config with fewer than its min runs is a problem; more than its max runs too
    cell = plan.cells[0]
    victim = sorted(store.path(cell.rel_dir).glob("run_*"))[-1] / "metrics.json"
    victim.unlink()
    problems = validate_study(loaded, store).problems
    assert any(f"{cell.key}: 2 valid run(s), the config needs at least 3" in p for p in problems)


def test_bench_prints_the_sampling_and_plan_prints_the_adaptive_eta(tmp_path, two_servers):
    a, b = two_servers
    loaded = adaptive_profile(tmp_path, a, b)
    results = tmp_path / "results"
    proc = invoke("plan", "--profile", str(loaded.path), results=results)
    assert proc.returncode == 0, proc.stderr
    assert "adaptive: 12 runs at the minimum" in proc.stdout and "at most" in proc.stdout
    proc = invoke("bench", "--profile", str(loaded.path), "--no-progress", "report", "--profile", str(loaded.path),
                  results=results, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "sampling: " in proc.stdout and "stopped: " in proc.stdout
    report = (results / "test" / "Technical_Report_116.md").read_text()
    assert "## 16. Precision: runs per config" in report and "target met" in report
    # with the study's runs stored, plan's expected runs come from their measured noise
    proc = invoke("plan", "--profile", str(loaded.path), results=results)
    assert "measured in 4 config(s)" in proc.stdout


@pytest.mark.ollama
def test_the_placebo_pair_on_real_ollama_is_the_same_model_and_no_difference(tmp_path):
    """The A/A check on real Ollama: the placebo is the original under another name (the same
    digest), measured in a block of its own; every comparison comes out 'no difference'."""
    def mutate(d):
        d["models"] = [{"name": "gemma3-270m", "baseline": True, "source": "gguf", "template": "gemma3",
                        "stop": ["<end_of_turn>"]},
                       {"name": "gemma3-270m-aa", "placebo_of": "gemma3-270m", "suites": ["single"]}]
        d["single"].update(langs=["python"], ctx=[512], precision={
            "metrics": ["decode_tps"], "rel_half_width": 0.2, "min_runs": 3, "max_runs": 5})
        d["workload"]["num_predict"] = 8
        d["instrument"]["drift_probes"] = True
        d["sampling"] = {"probe_interval_s": 15}

    path = smoke_variant(tmp_path, mutate, base="smoke")
    results = tmp_path / "results"
    p = str(path)
    proc = invoke("up", "--profile", p, "bench", "--profile", p, "--no-progress", "report", "--profile", p,
                  "down", "--profile", p, results=results, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    study = results / "test"
    manifest = json.loads((study / "manifest.json").read_text())
    digests = {m["name"]: m.get("digest") for m in manifest["models"]}
    assert digests["gemma3-270m-aa"] == digests["gemma3-270m"] and digests["gemma3-270m"]
    aa = yaml.safe_load(json.dumps(json.loads((study / "tables" / "findings.json").read_text())["placebo"]))
    assert aa and aa[0]["placebo"] == "gemma3-270m-aa" and aa[0]["no_difference"] == aa[0]["comparisons"]
    report = (study / "Technical_Report_116.md").read_text()
    assert "**gemma3-270m-aa** vs gemma3-270m: passed" in report
