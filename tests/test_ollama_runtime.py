"""The native Ollama runtime and the Ollama client against real `ollama serve` processes, with the
two small GGUF models created over Ollama's HTTP API."""

from __future__ import annotations

import json
import os
import time

import pytest
import requests

from bench.clients.streaming import CallContext, StreamingClient
from bench.config.placement import placement_issues
from bench.config.profile import ModelSpec, ServerConfig, load_profile
from bench.config.workload import load_workload, prompt_nonce
from bench.core import metrics
from bench.core.errors import BenchError
from bench.runtimes import OllamaRuntime
from bench.runtimes.ollama import ensure_model

from conftest import free_port, smoke_variant

pytestmark = pytest.mark.ollama

MODELS = ("gemma3-270m", "smollm2-135m")


def call(runtime, model: str, key: str, *, endpoint: int = 0, num_predict: int = 16, attempt: int = 1,
         num_ctx: int = 1024):
    """One streamed call of the single agent's analysis prompt, with its own nonce."""
    ep = runtime.endpoints()[endpoint]
    nonce = prompt_nonce(key, "single", "analysis", "single", attempt)
    opts = {"num_predict": num_predict, "seed": 42, "temperature": 0.8, "num_ctx": num_ctx, "num_gpu": 0,
            "num_thread": 1}
    ctx = CallContext("single", "analysis", "single", time.perf_counter_ns(), nonce)
    return StreamingClient(ep.url, ep.api).chat(model, load_workload().messages("single", "analysis", nonce),
                                                 opts, ctx)


def test_up_serves_both_instances_from_one_store(ollama_runtime):
    versions = ollama_runtime.versions()
    assert set(versions.values()) == {"0.17.4"}
    for api in ollama_runtime.apis.values():
        listed = {t["name"] for t in api.tags()}
        assert {f"{m}:latest" for m in MODELS} <= listed
    # the CPU backend runs with SIMD: the startup check read the feature line
    for server in ollama_runtime.servers.values():
        assert "AVX2=1" in server.cpu_features()


def test_create_is_idempotent(ollama_runtime):
    api = ollama_runtime.first_api
    before = {m: api.tag(m)["digest"] for m in MODELS}
    for model in ollama_runtime.profile.models:
        if model.placebo_of:  # the A/A placebo is the original copied: the same manifest and digest
            assert api.tag(model.name)["digest"] == api.tag(model.placebo_of)["digest"]
            continue
        assert ensure_model(api, model) == "kept"
    assert {m: api.tag(m)["digest"] for m in MODELS} == before
    # the Gemma 270M file has no chat template: the profile's Gemma turn format was applied
    show = api.show("gemma3-270m")
    assert "<start_of_turn>" in show["template"] and '"<end_of_turn>"' in show["parameters"]


@pytest.mark.parametrize("model", MODELS)
def test_real_inference_and_reconciliation(ollama_runtime, model):
    ollama_runtime.switch(ModelSpec(name=model), {})
    call(ollama_runtime, model, f"t/{model}/warm")  # load
    rec = call(ollama_runtime, model, f"t/{model}/counted")
    assert rec.error is None and rec.api == "ollama" and rec.prompt_nonce
    assert 1 <= rec.output_tokens <= 16 and not rec.output_tokens_estimated
    assert rec.done_reason in ("stop", "length")
    assert rec.prompt_tokens > 100  # the data set is in the prompt
    assert not rec.cold_load and rec.load_ms < 1000
    # the engine's durations fit inside what the client saw, and the rest is small but positive
    unaccounted = metrics.ttft_unaccounted_ms(rec.ttft_ms, rec.load_ms, rec.prompt_eval_ms)
    assert 0 <= unaccounted < 0.5 * rec.ttft_ms
    assert rec.prompt_eval_ms + rec.eval_ms <= rec.e2e_ms
    if rec.output_tokens > 4:
        assert metrics.decode_overstatement_pct(rec.decode_tps_server, rec.decode_tps_client) > -10


def test_nonce_defeats_the_prompt_cache(ollama_runtime):
    model = "smollm2-135m"
    ollama_runtime.switch(ModelSpec(name=model), {})
    call(ollama_runtime, model, "cache/warm", num_predict=4)
    first = call(ollama_runtime, model, "cache/run_1", num_predict=4)
    second = call(ollama_runtime, model, "cache/run_2", num_predict=4)
    # the same workload with a new nonce: a full prompt eval again
    assert second.prompt_eval_ms == pytest.approx(first.prompt_eval_ms, rel=0.30)
    # control: the same nonce again is a cache hit, so the cache is real and the nonce is what beats it
    repeat = call(ollama_runtime, model, "cache/run_2", num_predict=4)
    assert repeat.prompt_eval_ms < 0.5 * second.prompt_eval_ms


def test_switch_unloads_the_previous_model(ollama_runtime):
    ollama_runtime.switch(ModelSpec(name="gemma3-270m"), {})
    call(ollama_runtime, "gemma3-270m", "switch/a", num_predict=2)
    call(ollama_runtime, "gemma3-270m", "switch/b", endpoint=1, num_predict=2)
    assert all(api.loaded("gemma3-270m") for api in ollama_runtime.apis.values())
    assert ollama_runtime.switch(ModelSpec(name="smollm2-135m"), {}) is True
    for api in ollama_runtime.apis.values():
        assert api.ps() == []  # nothing stale holds memory before the next model loads


def test_free_unloads_both_instances_before_the_next_rung(ollama_runtime):
    """What the fallback ladder does between rungs: every model unloaded, and the same model loads
    again on the next switch."""
    ollama_runtime.switch(ModelSpec(name="smollm2-135m"), {})
    call(ollama_runtime, "smollm2-135m", "free/a", num_predict=2)
    call(ollama_runtime, "smollm2-135m", "free/b", endpoint=1, num_predict=2)
    ollama_runtime.free()
    assert all(api.ps() == [] for api in ollama_runtime.apis.values())
    assert ollama_runtime.switch(ModelSpec(name="smollm2-135m"), {}) is True  # not "already serving it"
    assert call(ollama_runtime, "smollm2-135m", "free/c", num_predict=2).load_ms > 0


def test_placement_is_read_from_the_engine(ollama_runtime):
    model = ModelSpec(name="smollm2-135m")
    ollama_runtime.switch(model, {})
    call(ollama_runtime, model.name, "placement/a", num_predict=2, num_ctx=512)
    seen = ollama_runtime.placement(model)
    a = seen["collector"]
    assert a["loaded"] and a["size_bytes"] > 50e6 and a["size_vram_bytes"] == 0 and a["parallel"] == 1
    assert a["context_length"] == 512
    assert seen["insight"] == {"loaded": False}
    expected = {"collector": ServerConfig(gpu_layers=0, ctx=512)}
    assert placement_issues(expected, seen, gpu_present=False) == []
    # a context other than the one asked for is flagged
    wrong = {"collector": ServerConfig(gpu_layers=0, ctx=1024)}
    assert placement_issues(wrong, seen, gpu_present=False) == ["collector: context 512 instead of 1024"]


def test_unknown_model_is_a_clear_error(ollama_runtime):
    with pytest.raises(BenchError, match="unknown model 'mistral:7b'.*available models: .*smollm2-135m"):
        ollama_runtime.switch(ModelSpec(name="mistral:7b"), {})


def test_down_leaves_nothing_and_a_taken_port_names_its_owner(tmp_path):
    profile = load_profile(smoke_variant(tmp_path, base="smoke")).profile
    rt = OllamaRuntime(profile, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")
    for server in rt.servers.values():
        server.ensure()
    try:
        pids = [s.state().pid for s in rt.servers.values()]
        other = OllamaRuntime(profile, state_dir=tmp_path / "other-state", log_dir=tmp_path / "other-logs")
        with pytest.raises(BenchError, match=rf"port \d+ .* in use by pid {pids[0]}: .*ollama serve"):
            other.servers["collector"].ensure()
    finally:
        rt.down()
    assert not list((tmp_path / "state").glob("*.json"))
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(rt.endpoints()[0].url + "/api/version", timeout=2)


def test_ollama_binary_is_checked_on_a_free_port(tmp_path):
    """A second runtime on other ports starts and stops cleanly beside the session's."""
    path = smoke_variant(tmp_path, base="smoke",
                         mutate=lambda d: d["runtime"]["endpoints"][0].update(port=free_port()))
    rt = OllamaRuntime(load_profile(path).profile, state_dir=tmp_path / "s", log_dir=tmp_path / "l")
    try:
        assert rt.servers["collector"].ensure() is True
        assert rt.servers["collector"].ensure() is False  # same binary and settings: left running
    finally:
        rt.down()
    assert not rt.is_running()


def _shape(url: str, model: str) -> dict:
    """What a client sees of a server: chunk keys, the final chunk's keys and text, /api/ps keys,
    the unknown-model error, the unload answer."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "options": {"num_predict": 3, "num_thread": 1}}
    lines = [json.loads(x) for x in requests.post(url + "/api/chat", json=body, stream=True, timeout=60).iter_lines()
             if x]
    ps = requests.get(url + "/api/ps", timeout=10).json()["models"]
    missing = requests.post(url + "/api/chat", json={"model": "nope", "messages": body["messages"]}, timeout=10)
    whole = requests.post(url + "/api/chat", json={**body, "stream": False}, timeout=60).json()
    unload = requests.post(url + "/api/generate", json={"model": model, "keep_alive": 0}, timeout=60).json()
    return {"chunk_keys": sorted(lines[0]), "message_keys": sorted(lines[0]["message"]),
            "final_keys": sorted(lines[-1]), "final_text": lines[-1]["message"]["content"],
            "model_echo": lines[0]["model"] == model, "n_text_chunks": sum(1 for x in lines if x["message"]["content"]),
            "ps_keys": sorted(ps[0]), "missing": (missing.status_code, missing.json()),
            # the drift probe's plain call (StreamingClient.plain_chat): one final message, the whole text
            "whole_keys": sorted(whole), "whole_has_text": bool(whole["message"]["content"]),
            "unload": sorted(unload), "unload_reason": unload["done_reason"]}


def test_test_server_agrees_with_real_ollama(ollama_runtime):
    """tests/ollama_server.py stands in for faults a real server can't produce on demand; on
    everything a real one does produce, it must answer the same way."""
    from ollama_server import FakeOllama

    ollama_runtime.switch(ModelSpec(name="smollm2-135m"), {})
    real = _shape(ollama_runtime.endpoints()[0].url, "smollm2-135m")
    with FakeOllama(models=["smollm2-135m:latest"]) as fake:
        test = _shape(fake.url, "smollm2-135m")
    assert test == real
