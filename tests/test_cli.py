"""Bad input through the real `invoke` entry point: a clear message, a non-zero exit, no traceback."""

from __future__ import annotations

from conftest import free_port, invoke, smoke_variant


def assert_clean_failure(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in proc.stderr + proc.stdout, proc.stderr


def test_unknown_profile_key_fails_before_any_server_starts(tmp_path):
    path = smoke_variant(tmp_path, lambda d: d["workload"].update(num_predicts=8))
    results = tmp_path / "results"
    proc = invoke("up", "--profile", str(path), "bench", "--profile", str(path), results=results, timeout=120)
    assert_clean_failure(proc, str(path), "workload.num_predicts: unknown key", "num_predict")
    assert not (results / ".runtime").exists()  # nothing was started


def test_unreachable_endpoint(tmp_path):
    def external(d):
        d["runtime"] = {"kind": "external", "endpoints": [
            {"name": "a", "url": f"http://127.0.0.1:{free_port()}", "api": "ollama"},
            {"name": "b", "url": f"http://127.0.0.1:{free_port()}", "api": "ollama"}]}
    path = smoke_variant(tmp_path, external)
    proc = invoke("bench", "--profile", str(path), "--no-progress", results=tmp_path / "r", timeout=120)
    assert_clean_failure(proc, "cannot reach the server", "127.0.0.1")


def test_unknown_model_lists_available_models(tmp_path):
    path = smoke_variant(tmp_path, lambda d: d["models"].append({"name": "mistral:7b"}))
    proc = invoke("bench", "--profile", str(path), "--models", "mistral:7b", "--no-progress",
                  results=tmp_path / "r", timeout=120)
    assert_clean_failure(proc, "unknown model 'mistral:7b'", "available models: gemma3-270m, smollm2-135m")


def test_unknown_model_filter_lists_profile_models(tmp_path):
    path = smoke_variant(tmp_path)
    proc = invoke("plan", "--profile", str(path), "--models", "qwen9", results=tmp_path / "r", timeout=60)
    assert_clean_failure(proc, "unknown model(s) ['qwen9']", "gemma3-270m, smollm2-135m")


def test_plan_counts_runs(tmp_path):
    proc = invoke("plan", "--profile", "smoke", results=tmp_path / "r", timeout=60)
    assert proc.returncode == 0, proc.stderr
    # smoke, adaptive, at its min runs: 3 models (the placebo in single only) × single 2 langs × 3
    # runs, 2 models × multi 2 langs × 3 runs, and the capacity search for one model: a config for
    # each of 1..4 agents × 3 runs (the plan holds every count it may probe), worst case 4 × 20
    assert "runs: 42 (single 18, multi 12, steps 12; python 27, rust 15) in 14 configs" in proc.stdout
    assert "at most 80 runs in the worst case" in proc.stdout
    assert "adaptive: 42 runs at the minimum" in proc.stdout and "the time budget stops extra runs" in proc.stdout
    assert "not a capacity search's" in proc.stdout
    proc = invoke("plan", "--profile", "smoke", "--runs", "2", results=tmp_path / "r", timeout=60)
    assert "runs: 28 " in proc.stdout and "ETA: ~" in proc.stdout  # --runs: the fixed mode


def test_list_has_one_line_help_per_task(tmp_path):
    proc = invoke("--list", results=tmp_path / "r", timeout=60)
    for name in ("up", "bench", "report", "down", "plan", "build-rust", "test"):
        assert f"  {name} " in proc.stdout


def test_readme_defines_every_metric():
    from bench.core import metrics

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    missing = [d.name for d in metrics.definitions() if f"`{d.name}`" not in readme]
    assert not missing, f"README's metric table lacks {missing}"


def test_one_profile_flag_applies_to_every_task_on_the_line(tmp_path):
    """`invoke up bench report down --profile X`: invoke binds the flag to `down` alone; the tasks
    take it as every task's default, so `validate` here checks study `test`, not the auto pick."""
    import tasks

    assert tasks._line_profile(["up", "bench", "down", "--profile", "docker-smoke"]) == "docker-smoke"
    assert tasks._line_profile(["up", "-p", "a.yaml", "down", "--profile=a.yaml"]) == "a.yaml"
    assert tasks._line_profile(["up", "--profile", "smoke", "down", "--profile", "tr116"]) == "auto"
    assert tasks._line_profile(["up", "bench"]) == "auto"
    path = smoke_variant(tmp_path)
    proc = invoke("validate", "plan", "--profile", str(path), results=tmp_path / "r", timeout=60)
    assert_clean_failure(proc, f"profile: test ({path})", "study")
    assert "profile: smoke" not in proc.stdout
