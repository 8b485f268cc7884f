"""The whole pipeline through the Ollama protocol: external runtime, two test servers."""

from __future__ import annotations

import json

import pytest

from bench.config.profile import load_profile
from bench.core.store import schema_errors
from bench.study.instrument import CLIENT_CPU_SOURCE

from conftest import invoke, smoke_variant
from ollama_server import FakeOllama


@pytest.fixture()
def two_servers():
    with FakeOllama(token_s=0.002) as a, FakeOllama(token_s=0.002) as b:
        yield a, b


def external_profile(tmp_path, a, b, langs=("python",)):
    def mutate(d):
        d["runtime"] = {"kind": "external", "endpoints": [{"name": "collector", "url": a.url, "api": "ollama"},
                                                          {"name": "insight", "url": b.url, "api": "ollama"}]}
        d["models"] = [{"name": "gemma3:latest", "baseline": True}, {"name": "qwen2.5:7b"}]
        d["single"].update(gpu_layers=[60, 80], ctx=[512], runs=2, langs=list(langs))
        d["multi"].update(enabled=True, runs=2, chimera={"gpu_layers": 80, "ctx": 2048, "temperature": 1.0},
                          langs=list(langs))
        d["workload"].update(num_predict=10, ignore_eos=False)
    return smoke_variant(tmp_path, mutate)


def test_bench_report_over_ollama(tmp_path, two_servers):
    a, b = two_servers
    path = external_profile(tmp_path, a, b)
    results = tmp_path / "results"
    proc = invoke("bench", "--profile", str(path), "--no-progress", "report", "--profile", str(path),
                  results=results, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study = results / "test"
    docs = [json.loads(p.read_text()) for p in study.glob("*/*/*/*/run_*/metrics.json")]
    # 2 models × (single 2 configs × 2 runs + multi 2 scenarios × 2 runs)
    assert len(docs) == 2 * (4 + 4)
    assert all(schema_errors(d) == [] for d in docs)
    single = next(d for d in docs if d["suite"] == "single")
    assert {r["api"] for r in single["requests"]} == {"ollama"}
    assert all(not r["cold_load"] for d in docs for r in d["requests"])  # warmups took the loads
    # baseline_vs_chimera: the collector sends no config options (server defaults), insight does
    chats = [r for r in a.requests if r["path"] == "/api/chat"]
    bvc = [r for r in chats if "num_ctx" not in r["options"]]
    assert bvc and all(set(r["options"]) == {"num_predict", "seed"} for r in bvc)
    assert all(r["options"].get("num_ctx") == 2048 for r in b.requests if r["path"] == "/api/chat"
               and r["options"].get("temperature") == 1.0)
    multi = next(d for d in docs if d["suite"] == "multi")
    assert {r["phase"] for r in multi["requests"]} == {"alone", "together"}
    assert multi["metrics"]["speedup"] > 1.3  # independent servers overlap
    report = (study / "Technical_Report_116.md").read_text()
    assert "## 4. Results: single-agent" in report and "gemma3:latest" in report
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["runtime"]["ollama_version"] == {"collector": "0.12.6", "insight": "0.12.6"}
    digest = next(m for m in manifest["models"] if m["name"] == "gemma3:latest")["digest"]
    assert digest.startswith("a2af6cc3")
    for table in ("requests", "runs", "configs"):
        assert (study / "tables" / f"{table}.csv").is_file()


def test_an_optional_model_that_never_loads_is_skipped_with_its_rationale(tmp_path, two_servers):
    """Every rung of the ladder fails (one failures.jsonl line each); the model is skipped, the
    study goes on and passes the error gate, and the report says why the model is absent."""
    a, b = two_servers
    path = external_profile(tmp_path, a, b)
    import yaml

    data = yaml.safe_load(path.read_text())
    data["models"].append({"name": "oom:latest", "optional": True})
    data["multi"]["enabled"] = False
    path.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    proc = invoke("bench", "--profile", str(path), "--no-progress", "--models", "gemma3:latest,oom:latest",
                  "report", "--profile", str(path), results=results, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    failures = [json.loads(line) for line in (results / "test" / "failures.jsonl").read_text().splitlines()]
    assert [f["attempted_config"]["gpu_layers"] for f in failures] == [60, 40, 20, 0]  # the gpu60 config's ladder
    assert {f["error_kind"] for f in failures} == {"oom"} and "unable to allocate CUDA0 buffer" in failures[0]["error"]
    assert failures[-1]["fallback"] == "optional model: skipped"
    assert "1 failed run(s)" in proc.stdout  # four failed attempts, one run
    assert load_profile(path).profile.models[-1].optional
    notes = (results / "test" / "Technical_Report_116.md").read_text().split("### Downgrades required")[1]
    assert ("**oom:latest** (optional) was not measured: no rung of its fallback ladder loaded on this host "
            "(4 attempt(s): oom:latest gpu_layers 60 ctx 512, oom:latest gpu_layers 40 ctx 512") in notes


def _run_in_process(tmp_path, a, b, langs):
    from bench.config.plan import build_plan
    from bench.core.store import Store
    from bench.runtimes import create_runtime
    from bench.study.runner import run_matrix

    loaded = load_profile(external_profile(tmp_path, a, b, langs))
    plan = build_plan(loaded.profile, models=["gemma3:latest"], runs=1)
    store = Store("test")
    return plan, store, run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False)


def test_rust_agents_over_ollama(tmp_path, two_servers, results_dir):
    a, b = two_servers
    plan, store, outcome = _run_in_process(tmp_path, a, b, ["rust"])
    assert outcome.done == len(plan.items) == 4 and outcome.failed == 0
    for cell in plan.cells:
        (run,) = store.iter_runs(cell.rel_dir)
        doc = run.doc.to_json()
        assert doc["lang"] == "rust" and schema_errors(doc) == []
        assert {r["api"] for r in doc["requests"]} == {"ollama"}
        if cell.suite == "multi":
            assert doc["metrics"]["speedup"] > 1.3
        # the harness's blocks on the agent's document: the agent process's CPU, the run's key
        assert doc["client_cost"]["cpu_source"] == CLIENT_CPU_SOURCE["rust"] and doc["client_cost"]["client_cpu_s"] > 0
        assert doc["run_key"] == f"test/{cell.rel_dir}/run_1" and "placement" in doc and "server_settings" in doc
        # the agent wrote its own file, read once and deleted: only the harness writes metrics.json
        assert sorted(p.name for p in run.path.parent.iterdir()) == ["job.json", "metrics.json"]


def test_rust_suite_recorded_as_skipped_without_an_agent(tmp_path, two_servers, results_dir, monkeypatch):
    from bench.clients import rust

    monkeypatch.setattr(rust, "find_rust_agent", lambda containerized=True: (None, "no Docker image; no cargo to build rust-agents"))
    a, b = two_servers
    plan, store, outcome = _run_in_process(tmp_path, a, b, ["python", "rust"])
    assert outcome.skipped == 4 and outcome.done == 4
    assert any("Rust suite skipped" in n and "no cargo" in n for n in outcome.notes)
    skipped = [f for f in store.failures() if f["error_kind"] == "skipped"]
    assert {f["cell"] for f in skipped} == {c.key for c in plan.cells if c.lang == "rust"}


def test_runner_executes_outlier_reruns(tmp_path, two_servers, results_dir, monkeypatch):
    """The runner runs what the outlier planner asks for, once per round, within the budget."""
    import bench.study.runner as runner_mod
    from bench.config.plan import RunItem, build_plan
    from bench.core.store import Store
    from bench.runtimes import create_runtime

    a, b = two_servers
    path = external_profile(tmp_path, a, b)
    import yaml

    data = yaml.safe_load(path.read_text())
    data["outliers"]["max_extra_runs"] = 2
    data["multi"]["enabled"] = False
    path.write_text(yaml.safe_dump(data))
    loaded = load_profile(path)
    plan = build_plan(loaded.profile, models=["gemma3:latest"])
    rounds = []

    def planner(profile, store, plan_):
        rounds.append(len(plan_.items))
        cell = plan_.cells[0]
        return [RunItem(cell, cell.runs + 1)] if len(rounds) == 1 else []

    monkeypatch.setattr(runner_mod, "plan_outlier_reruns", planner)
    store = Store("test")
    outcome = runner_mod.run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False)
    assert outcome.reruns == 1 and rounds == [4, 5]  # a second round found nothing more to do
    assert [r.doc.run_index for r in store.iter_runs(plan.cells[0].rel_dir)] == [1, 2, 3]
    assert plan.items[-1].run_index == 3 and plan.items[-1].cell == plan.cells[0]
