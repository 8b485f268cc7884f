"""The fallback ladder, failure classes and the error gate, end to end through `invoke bench`
against the Ollama test server's faults (tests/ollama_server.py): an OOM above a GPU-layer
threshold, a runner killed mid-stream (the real text, tests/fixtures/ollama_memory_failures.json),
a stream cut once per config, a malformed line, a model that never loads."""

from __future__ import annotations

import contextlib
import json

import pytest
import yaml

from bench.config import ladder
from bench.config.plan import Cell
from bench.config.profile import AgentConfig, Fallback, ModelSpec, load_profile
from bench.core.store import Store
from bench.report.validate import validate_study

from conftest import invoke
from ollama_memory import FIXTURE
from ollama_server import DEFAULT_MODELS, FakeOllama
from test_pipeline_ollama import external_profile


@contextlib.contextmanager
def servers(**faults):
    with FakeOllama(token_s=0.002, **faults) as a, FakeOllama(token_s=0.002, **faults) as b:
        yield a, b


def profile(tmp_path, a, b, langs=("python",), **changes):
    path = external_profile(tmp_path, a, b, langs)
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data))
    return path


def docs(study):
    return {str(p.relative_to(study).parent): json.loads(p.read_text())
            for p in study.glob("*/*/*/*/run_*/metrics.json")}


def bench(path, results, *more):
    return invoke("bench", "--profile", str(path), "--no-progress", *more, results=results, timeout=600)


def _cell(suite="single", gpu_layers=80, ctx=2048, model="qwen2.5:14b"):
    cfg = AgentConfig(gpu_layers=gpu_layers, ctx=ctx, temperature=1.0)
    agents = (("single", cfg),) if suite == "single" else (("collector", None), ("insight", cfg))
    return Cell(suite, "python", ModelSpec(name=model), None, agents, 3, cfg)


def test_the_rungs_follow_the_spec_order():
    """Fewer layers, then (at the fewest) a halved context down to the floor, then each tag."""
    rungs = ladder.rungs(_cell(), Fallback(gpu_layers=[80, 60, 0], ctx_floor=512, tags=["qwen2.5:14b-q3"]))
    got = [(r.tag, r.gpu_layers, r.ctx) for r in rungs]
    assert got == [("qwen2.5:14b", None, None), ("qwen2.5:14b", 60, None), ("qwen2.5:14b", 0, None),
                   ("qwen2.5:14b", 0, 1024), ("qwen2.5:14b", 0, 512),
                   ("qwen2.5:14b-q3", None, None), ("qwen2.5:14b-q3", 60, None), ("qwen2.5:14b-q3", 0, None),
                   ("qwen2.5:14b-q3", 0, 1024), ("qwen2.5:14b-q3", 0, 512)]
    eff = ladder.apply(_cell("multi"), rungs[6])
    assert eff.model.name == "qwen2.5:14b-q3" and eff.agent_configs["collector"] is None  # the baseline sends none
    assert (eff.label_config.gpu_layers, eff.label_config.ctx) == (60, 2048)
    assert [r.gpu_layers for r in ladder.rungs(_cell(gpu_layers=-1), Fallback(gpu_layers=[99]))][:2] == [None, 99]


def test_a_failure_is_learned_for_rungs_at_least_as_large():
    limits = ladder.Limits()
    limits.failure("m", _cell(gpu_layers=80, ctx=512, model="m"), "oom", "single/x")
    known = limits.known_failure
    assert known("m", _cell(gpu_layers=80, ctx=1024, model="m")) is not None
    assert known("m", _cell("multi", gpu_layers=99, ctx=2048, model="m")) is not None  # multi loads more
    assert known("m", _cell(gpu_layers=60, ctx=1024, model="m")) is None  # fewer layers
    assert known("m", _cell(gpu_layers=80, ctx=256, model="m")) is None  # less context
    assert known("other", _cell(gpu_layers=80, ctx=512, model="other")) is None
    limits.failure("m", _cell("multi", gpu_layers=60, ctx=512, model="m"), "oom", "multi/x")
    assert known("m", _cell(gpu_layers=60, ctx=512, model="m")) is None  # single loads less than multi


def test_layers_over_the_threshold_run_at_60_and_say_so(tmp_path):
    """The acceptance case: GPU layers [60, 80] and the chimera at 80 on servers that fail every
    load above 60 layers. Every planned run is there; the 80-layer ones ran at 60, say so, and
    each model's OOM happened once."""
    results = tmp_path / "results"
    with servers(max_gpu_layers=60) as (a, b):
        path = profile(tmp_path, a, b, langs=["python", "rust"])
        proc = bench(path, results, "report", "--profile", str(path))
        at_80 = [r for s in (a, b) for r in s.requests if (r.get("options") or {}).get("num_gpu") == 80]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = results / "test"
    runs = docs(study)
    # 2 models × 2 languages × (single 2 configs + multi 2 scenarios) × 2 runs
    assert len(runs) == 32
    check = validate_study(load_profile(path), Store("test", results))
    assert check.ok and check.runs_planned == 32 and check.runs_missing == 0 and check.incomplete is None
    for key, doc in runs.items():
        asked, ran = doc["requested_config"], doc["effective_config"]
        assert asked["model"] == ran["model"] == doc["model"]["name"]
        if "gpu80" in key:
            assert (asked["gpu_layers"], ran["gpu_layers"], doc["config"]["gpu_layers"]) == (80, 60, 60), key
            assert [s["outcome"] for s in doc["ladder"]][-1] == "ran" and doc["ladder"][0]["gpu_layers"] == 80
            agents = doc["config"].get("agents") or {}
            assert all(c is None or c["gpu_layers"] == 60 for c in agents.values())  # the baseline sends none
        else:
            assert asked == ran and doc["ladder"] == [], key
    # one OOM per model: later configs start from what the first one learned
    assert len(at_80) == 2
    failures = [json.loads(line) for line in (study / "failures.jsonl").read_text().splitlines()]
    assert [(f["model"], f["attempted_config"]["gpu_layers"], f["error_kind"], f["fallback"]) for f in failures] == [
        (m, 80, "oom", f"next rung: {m} gpu_layers 60 ctx 512") for m in ("gemma3:latest", "qwen2.5:7b")]
    assert all("observed_vram_used_bytes" in f and "observed_vram_total_bytes" in f for f in failures)
    learned = json.loads((study / "manifest.json").read_text())["learned_limits"]
    assert [(f["model"], f["gpu_layers"]) for f in learned["failed"]] == [("gemma3:latest", 80), ("qwen2.5:7b", 80)]
    assert {(w["suite"], w["gpu_layers"]) for w in learned["worked"]} == {("single", 60), ("multi", 60)}
    report = (study / "Technical_Report_116.md").read_text()
    downgrades = report.split("### Downgrades required")[1].split("## 10.")[0]
    assert downgrades.count("| gpu_layers 60 |") == 12  # 2 models × 2 languages × (1 single config + 2 scenarios)
    assert "oom at gemma3:latest gpu_layers 80 ctx 512 " in downgrades
    assert "gpu80_ctx512_temp08 (ran gpu_layers 60)" in report.split("## 4. Results")[1].split("## 5. Results")[0]
    assert "incomplete" not in report.split("## 1.")[0]
    assert "24 run(s) ran on a lower rung" in proc.stdout


def test_the_last_rungs_are_another_tag(tmp_path):
    """When no layer count loads the model, its fallback tag (pulled on first use) does; the run
    records the tag that ran. (The test server's `oom` model never loads; the tag stands for a
    lower quant that does.)"""
    results = tmp_path / "results"
    with servers(models=list(DEFAULT_MODELS)) as (a, b):  # one model store, as the instances share
        path = profile(tmp_path, a, b, single__gpu_layers=[60], single__runs=1, multi__enabled=False,
                       models=[{"name": "oom:latest", "baseline": True,
                                "fallback": {"gpu_layers": [0], "tags": ["gemma3:q3_K_M"]}}])
        proc = bench(path, results)
        pulls = [r["model"] for r in a.requests if r["path"] == "/api/pull"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (doc,) = docs(results / "test").values()
    assert doc["effective_config"]["model"] == "gemma3:q3_K_M" and doc["model"]["name"] == "oom:latest"
    assert [(s["model"], s["gpu_layers"], s["outcome"]) for s in doc["ladder"]] == [
        ("oom:latest", 60, "failed"), ("oom:latest", 0, "failed"), ("gemma3:q3_K_M", 60, "ran")]
    assert pulls == ["gemma3:q3_K_M"]


def test_a_runner_killed_mid_stream_walks_the_ladder(tmp_path):
    """A memory-limited runner dies after HTTP 200: an error line, no done line (the recorded
    text). That is a load failure: the run is redone one rung down, not lost."""
    killed = next(line["error"] for line in json.loads(FIXTURE.read_text())["cases"]["midstream"]["lines"]
                  if "error" in line)
    results = tmp_path / "results"
    with servers(max_gpu_layers=60, oom_error=killed, oom_midstream=True) as (a, b):
        path = profile(tmp_path, a, b, models=[{"name": "gemma3:latest", "baseline": True}],
                       single__gpu_layers=[80], single__runs=1, multi__enabled=False)
        proc = bench(path, results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (doc,) = docs(results / "test").values()
    assert doc["effective_config"]["gpu_layers"] == 60
    assert [(s["gpu_layers"], s["outcome"], s["error_kind"]) for s in doc["ladder"]] == [
        (80, "failed", "crash"), (60, "ran", None)]
    (failure,) = [json.loads(line) for line in (results / "test" / "failures.jsonl").read_text().splitlines()]
    assert failure["error_class"] == "load" and killed in failure["error"]


@pytest.mark.parametrize("nth, langs", [(1, ["python"]), (2, ["rust"])], ids=["warmup-python", "counted-rust"])
def test_a_stream_cut_once_per_config_costs_no_config(tmp_path, nth, langs):
    """The connection closes after 5 tokens, once per config: in the warmup (the issue's case), or
    in the first counted call, which the Rust agent then retries itself with the next nonce."""
    results = tmp_path / "results"
    with servers(cut_after=5, cut_nth=nth) as (a, b):
        path = profile(tmp_path, a, b, langs=langs, single__runs=1, multi__runs=1)
        proc = bench(path, results)
        cuts = a.cuts + b.cuts
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = docs(results / "test")
    assert len(runs) == 2 * (2 + 2) and cuts >= 4
    assert not (results / "test" / "failures.jsonl").exists()  # retried per call, nothing lost
    if langs == ["rust"]:
        from bench.config.workload import prompt_nonce

        doc = runs["single/rust/gemma3_latest/gpu60_ctx512_temp08/run_1"]
        first = doc["requests"][0]
        assert first["prompt_nonce"] == prompt_nonce(doc["run_key"], "single", "analysis", "single", 2)


def test_the_retry_pass_recovers_a_run(tmp_path):
    """With one attempt per call, a cut fails its run; the retry pass at the end redoes it."""
    results = tmp_path / "results"
    with servers(cut_after=5, cut_nth=2) as (a, b):
        path = profile(tmp_path, a, b, models=[{"name": "gemma3:latest", "baseline": True}],
                       single__gpu_layers=[60], single__runs=1, multi__enabled=False, workload__retries=1)
        proc = bench(path, results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 failed run(s) (1 recovered by the retry pass)" in proc.stdout
    (failure,) = [json.loads(line) for line in (results / "test" / "failures.jsonl").read_text().splitlines()]
    assert failure["error_kind"] == "stream_cut" and "retry pass" in failure["fallback"]
    assert len(docs(results / "test")) == 1


def test_a_permanent_failure_exits_non_zero_with_one_clear_line(tmp_path):
    results = tmp_path / "results"
    with servers() as (a, b):
        path = profile(tmp_path, a, b, models=[{"name": "garbage:latest", "baseline": True}], multi__enabled=False)
        proc = bench(path, results)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert line.startswith("error: the study stopped at single/python/garbage_latest/gpu60_ctx512_temp08/run_1: "
                           "malformed_stream: ") and "retrying cannot fix it" in line


def test_the_error_gate_trips_when_a_run_is_missing(tmp_path):
    """A required model that no rung loads: its runs are missing after the retry pass, so `bench`
    exits 1 and lists them; `validate` and the report's header agree."""
    results = tmp_path / "results"
    with servers() as (a, b):
        path = profile(tmp_path, a, b, models=[{"name": "gemma3:latest", "baseline": True}, {"name": "oom:latest"}],
                       single__runs=1, multi__enabled=False, fallback={"gpu_layers": [0]})
        proc = bench(path, results, "--models", "oom:latest")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "bench: incomplete: 2 of 2 planned runs missing" in proc.stderr
        missing = [line for line in proc.stdout.splitlines() if line.startswith("  - missing run:")]
        assert len(missing) == 2 and all("no rung of the fallback ladder loaded its config (oom)" in m
                                         for m in missing)
        check = invoke("validate", "--profile", str(path), results=results, timeout=120)
        assert check.returncode == 2 and "2 missing" in check.stdout
        assert all(m.removeprefix("  - ") in check.stderr for m in missing)
        bench(path, results, "--models", "gemma3:latest")  # the other model's runs are all there
        report = invoke("report", "--profile", str(path), results=results, timeout=120)
    assert report.returncode == 0, report.stderr
    header = (results / "test" / "Technical_Report_116.md").read_text().split("## 1.")[0]
    assert "**This study is incomplete: 2 of 4 planned runs missing**" in header
