"""`invoke reproduce`: reruns a study from its manifest and compares; refuses changed models/runtimes."""

from __future__ import annotations

import json

import pytest

from bench import reproduce as reproduce_module
from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core.errors import BenchError
from bench.core.manifest import RuntimeDescription
from bench.core.store import Store, atomic_write_json
from bench.reproduce import new_study_name, reproduce
from bench.runtimes import LocalRuntime, create_runtime
from bench.study import manifest_writer as mf
from bench.study.runner import run_matrix

from conftest import smoke_variant
from ollama_server import FakeOllama
from test_report import FakeRuntime


@pytest.fixture()
def ollama_study(tmp_path, results_dir):
    """A small real study over two protocol-faithful Ollama test servers (python, 3 runs)."""
    with FakeOllama(token_s=0.002, prompt_token_s=0.00001) as a, FakeOllama(token_s=0.002, prompt_token_s=0.00001) as b:
        def mutate(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "collector", "url": a.url, "api": "ollama"},
                                                              {"name": "insight", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "gemma3:latest", "baseline": True}]
            d["single"].update(gpu_layers=[80], ctx=[512], runs=3)
            d["multi"].update(enabled=True, runs=3, scenarios=["chimera_homo"],
                              chimera={"gpu_layers": 80, "ctx": 1024, "temperature": 1.0})
            d["workload"].update(num_predict=8, ignore_eos=False)
        loaded = load_profile(smoke_variant(tmp_path, mutate))
        overrides = {"langs": ["python"]}
        plan = build_plan(loaded.profile, **overrides)
        runtime = create_runtime(loaded.profile)
        store = Store(loaded.profile.study)
        started = mf.utc_now()
        run_matrix(loaded, plan, runtime, store, progress=False)
        mf.write_manifest(loaded, plan, runtime, store, started_at=started, overrides=overrides)
        yield store.root / "manifest.json"


def test_reproduce_reruns_and_writes_the_comparison(ollama_study, results_dir):
    result = reproduce(ollama_study, progress=False)
    assert result.study_root.parent == results_dir and result.study_root.name.startswith("test-repro-")
    assert len(list(result.study_root.glob("*/*/*/*/run_*/metrics.json"))) == 6  # same plan: 2 configs × 3 runs
    data = json.loads(result.json.read_text())
    # one row per config and key metric: single (4 metrics) + multi (5 metrics)
    assert len(data["rows"]) == 9 and data["old_study"] == "test"
    assert all(r["new_n"] == 3 and r["old_n"] == 3 for r in data["rows"])
    assert all(isinstance(r["within_old_ci"], bool) for r in data["rows"])
    assert data["within_old_ci"] == result.within == sum(r["within_old_ci"] for r in data["rows"])
    text = result.markdown.read_text()
    assert "# Reproduction of `test`" in text and f"**{result.within} of 9**" in text
    new_manifest = json.loads((result.study_root / "manifest.json").read_text())
    assert new_manifest["reproduces"]["study"] == "test"
    assert new_manifest["plan_overrides"] == {"langs": ["python"]}
    assert (result.study_root / "Technical_Report_116.md").is_file()


def test_a_changed_ollama_digest_is_refused_unless_allowed(ollama_study, results_dir):
    manifest = json.loads(ollama_study.read_text())
    manifest["models"][0]["digest"] = "0" * 64
    atomic_write_json(ollama_study, manifest)
    with pytest.raises(BenchError, match="refusing to reproduce: the models differ") as err:
        reproduce(ollama_study, progress=False)
    assert f"digest was {'0' * 64}, is now a2af6cc3" in str(err.value) and "--allow-mismatch" in str(err.value)
    assert [p.name for p in results_dir.iterdir() if p.name.startswith("test-repro")] == []  # nothing started
    result = reproduce(ollama_study, allow_mismatch=True, progress=False, study="test-accepted")
    assert result.mismatches and "digest was" in result.markdown.read_text()


def test_a_changed_model_file_is_refused(tmp_path, results_dir, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # file hashes are memoised there
    gguf = tmp_path / "cache" / "models" / "model.gguf"  # reproduce reads model files from the cache only
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + bytes(100))
    path = smoke_variant(tmp_path, lambda d: d.update(models=[{"name": "mine", "baseline": True, "file": str(gguf)}]))
    loaded = load_profile(path)
    local = LocalRuntime(loaded.profile, state_dir=tmp_path / "state")

    class Recorder(FakeRuntime):  # the local runtime's real model identity, without a llama-server
        kind = "local"

        def model_identity(self, model):
            return local.model_identity(model)

    store = Store(loaded.profile.study)
    mf.write_manifest(loaded, build_plan(loaded.profile), Recorder(), store, started_at=mf.utc_now())
    old_sha = json.loads((store.root / "manifest.json").read_text())["models"][0]["file_sha256"]
    gguf.write_bytes(b"GGUF" + bytes(99) + b"\x01\x02")  # the same file name, other bytes
    with pytest.raises(BenchError, match=f"model mine: file_sha256 was {old_sha}, is now"):
        reproduce(store.root / "manifest.json", progress=False)
    gguf.unlink()
    with pytest.raises(BenchError, match="model mine: cannot establish its identity now"):
        reproduce(store.root / "manifest.json", progress=False)


def runtime_mismatches(old: dict, new: dict) -> list[str]:
    return reproduce_module.runtime_mismatches(RuntimeDescription.model_validate(old),
                                               RuntimeDescription.model_validate(new))


def test_runtime_mismatches():
    old = {"kind": "local", "llama_server": {"binary_sha256": "aa", "version": "b1"}}
    assert runtime_mismatches(old, {"kind": "local", "llama_server": {"binary_sha256": "aa", "version": "b2"}}) == []
    assert runtime_mismatches(old, {"kind": "local", "llama_server": {"binary_sha256": "bb"}}) == [
        "runtime llama.cpp binary sha256: was aa, is now bb"]
    ollama = {"kind": "external", "ollama_version": {"collector": "0.12.6", "insight": "0.12.6"}}
    newer = {"kind": "external", "ollama_version": {"collector": "0.13.0", "insight": "0.12.6"}}
    assert runtime_mismatches(ollama, newer) == [
        "runtime ollama_version: was {'collector': '0.12.6', 'insight': '0.12.6'}, is now "
        "{'collector': '0.13.0', 'insight': '0.12.6'}"]
    docker = {"kind": "docker", "containers": [{"service": "ollama-a", "image": "ollama/ollama:0.12.6",
                                                "image_id": "sha256:1"}]}
    rebuilt = {"kind": "docker", "containers": [{"service": "ollama-a", "image": "ollama/ollama:0.12.6",
                                                 "image_id": "sha256:2"}]}
    assert runtime_mismatches(docker, rebuilt) == [
        "runtime container image ids: was {'ollama-a': 'sha256:1'}, is now {'ollama-a': 'sha256:2'}"]
    assert new_study_name("smoke").startswith("smoke-repro-")
