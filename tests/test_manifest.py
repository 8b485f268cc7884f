"""manifest.json: what it records, the plan overrides it keeps, and the GGUF header reader."""

from __future__ import annotations

import json

import pytest

from bench.config.manifest_plans import planned_cells, profile_from_manifest
from bench.config.plan import build_plan
from bench.core.errors import BenchError
from bench.core.manifest import load_manifest
from bench.study import manifest_writer as mf

from test_report import FakeRuntime, make_study


def test_manifest_records_everything_issue_5_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "5m")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("HF_TOKEN", "secret-value")
    loaded, store = make_study(tmp_path, overrides={"langs": ["python"], "runs": 3})
    m = json.loads((store.root / "manifest.json").read_text())
    assert set(m["harness"]) == {"commit", "dirty", "diff_sha256"}
    assert m["packages"]["pandas"] and m["packages"]["jinja2"]
    assert m["profile"]["sha256"] == loaded.sha256 and m["profile"]["resolved"]["study"] == "test"
    assert len(m["profile"]["resolved_sha256"]) == 64
    assert m["runtime"]["ollama_version"] == {"collector": "0.12.6", "insight": "0.12.6"}
    assert {x["name"] for x in m["models"]} == {"gemma3:latest", "qwen2.5:7b"}
    assert all(x["digest"].startswith("sha256:") for x in m["models"])
    assert m["ports"] == {"collector": None, "insight": None}  # external runtime: URLs, no ports
    assert {"cpu", "cores", "ram_bytes", "os", "kernel"} <= set(m["host"])
    assert isinstance(m["gpu"], list) or m["gpu"].startswith("none")
    assert {"rustc", "agent_sha256"} <= set(m["rust"])
    assert m["seeds"]["request_seed"] == 42 and m["seeds"]["order_seed"] == 116
    assert m["run_count"] == len(m["run_order"]) == 12 and m["run_order"][0].startswith(("single/python", "multi/python"))
    assert m["started_at"] <= m["finished_at"]
    assert m["environment"] == {"CUDA_VISIBLE_DEVICES": "0", "OLLAMA_KEEP_ALIVE": "5m"}  # never HF_TOKEN
    assert m["plan_overrides"] == {"langs": ["python"], "runs": 3}


def test_invocations_accumulate_and_rebuild_the_union_plan(tmp_path):
    loaded, store = make_study(tmp_path, overrides={"langs": ["python"]})
    plan = build_plan(loaded.profile, langs=["rust"], suites=["single"])
    mf.write_manifest(loaded, plan, FakeRuntime(), store, started_at=mf.utc_now(),
                      overrides={"langs": ["rust"], "suites": ["single"], "models": None})
    m = load_manifest(store.root / "manifest.json")
    assert [i.plan_overrides.kwargs() for i in m.invocations] == [{"langs": ["python"]},
                                                                   {"langs": ["rust"], "suites": ["single"]}]
    assert m.started_at == m.invocations[0].started_at
    keys = {c.key for c in planned_cells(m, profile_from_manifest(m))}
    assert len(keys) == 4 + 2  # python: 2 models × (single + multi); rust: 2 models × single
    assert not any(k.startswith("multi/rust") for k in keys)


def test_overrides_are_checked_and_bad_manifests_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown plan override"):
        mf.normalize_overrides({"lang": ["python"]})
    assert mf.normalize_overrides({"runs": "2", "models": None}) == {"runs": 2}
    with pytest.raises(BenchError, match="manifest not found"):
        load_manifest(tmp_path / "nope.json")
    bad = tmp_path / "manifest.json"
    bad.write_text("{")
    with pytest.raises(BenchError, match="not valid JSON"):
        load_manifest(bad)
    bad.write_text("{}")
    with pytest.raises(BenchError, match="no resolved profile"):
        load_manifest(bad)


def _gguf(path, arch, kvs):
    """A small GGUF file (header and key/values, no tensors), written with the gguf package."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    for key, value in kvs:
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_metadata_reads_quant_and_sizes_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    _gguf(path, "llama", [("general.size_label", "8B"), ("tokenizer.ggml.tokens", ["a", "bb", "ccc"]),
                          ("llama.context_length", 8192), ("general.file_type", 2)])
    meta = mf.gguf_metadata(path, "f" * 64)
    assert meta["quantization"] == "Q4_0" and meta["architecture"] == "llama"
    assert meta["vocab_size"] == 3 and meta["context_length"] == 8192 and meta["size_label"] == "8B"
    path.unlink()  # the second call is answered from the cache, keyed by the file's sha256
    assert mf.gguf_metadata(path, "f" * 64) == meta
    notgguf = tmp_path / "x.gguf"
    notgguf.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(ValueError):
        mf.gguf_metadata(notgguf, "e" * 64)


def test_model_identities_add_gguf_facts_for_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    _gguf(path, "gemma3", [("general.file_type", 15)])

    class Local(FakeRuntime):
        def model_identity(self, model):
            if model.name == "qwen2.5:7b":
                raise RuntimeError("server down")
            return {"name": model.name, "file": str(path), "file_sha256": "d" * 64}

    loaded, _ = make_study(tmp_path)
    ids = mf.model_identities(Local(), loaded.profile)
    assert ids[0]["gguf"]["quantization"] == "Q4_K_M" and ids[0]["gguf"]["architecture"] == "gemma3"
    assert ids[1] == {"name": "qwen2.5:7b", "error": "RuntimeError: server down"}
