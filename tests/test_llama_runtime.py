"""The local runtime and the OpenAI-compatible client against real llama-server processes."""

from __future__ import annotations

import os
import time

import pytest
import requests

from bench.clients.streaming import CallContext, StreamingClient
from bench.config.profile import ModelSpec, ServerConfig, load_profile
from bench.config.workload import load_workload
from bench.core.errors import BenchError, RequestError
from bench.runtimes import LocalRuntime

from conftest import free_port, smoke_variant

pytestmark = pytest.mark.llama
NONCE = "0123456789abcdef"  # llama-server gets cache_prompt: false, so a repeated prompt is measured in full


def ctx():
    return CallContext("single", "analysis", "single", time.perf_counter_ns(), NONCE)


@pytest.mark.parametrize("model", ["gemma3-270m", "smollm2-135m"])
def test_real_inference_both_models(llama_runtime, model):
    llama_runtime.switch(ModelSpec(name=model), {"a": ServerConfig(gpu_layers=0, ctx=1024)})
    ep = llama_runtime.endpoints()[0]
    client = StreamingClient(ep.url, ep.api)
    wl = load_workload()
    opts = {"num_predict": 16, "seed": 42, "ignore_eos": True, "temperature": 0.8}
    client.chat(model, wl.messages("single", "analysis", NONCE), opts, ctx())  # warmup
    rec = client.chat(model, wl.messages("single", "analysis", NONCE), opts, ctx())
    assert rec.error is None and rec.model == model
    assert rec.output_tokens == 16 and not rec.output_tokens_estimated  # ignore_eos: exactly num_predict
    assert rec.prompt_tokens > 100  # the data set is in the prompt, and the prompt cache is off
    assert rec.ttft_ms > 0 and rec.e2e_ms > rec.ttft_ms
    assert rec.ttft_ms + rec.itl_ms.mean * rec.itl_ms.n <= rec.e2e_ms + 1e-6
    # server-side prefill + decode fit inside the client's end-to-end time
    assert rec.prompt_eval_ms + rec.eval_ms <= rec.e2e_ms
    # client and server decode rates measure the same thing on loopback
    assert rec.decode_tps_client == pytest.approx(rec.decode_tps_server, rel=0.25)
    assert rec.load_ms is None  # llama.cpp reports no load time


def test_same_seed_same_text(llama_runtime):
    llama_runtime.switch(ModelSpec(name="smollm2-135m"), {"a": ServerConfig(gpu_layers=0, ctx=1024)})
    ep = llama_runtime.endpoints()[0]
    client = StreamingClient(ep.url, ep.api)
    msgs = load_workload().messages("single", "analysis", NONCE)
    opts = {"num_predict": 12, "seed": 123, "temperature": 0.8}
    a = client.chat("smollm2-135m", msgs, opts, ctx())
    b = client.chat("smollm2-135m", msgs, opts, ctx())
    assert a.output_text == b.output_text and a.output_text


def test_switch_restarts_only_on_change(llama_runtime):
    model = ModelSpec(name="smollm2-135m")
    llama_runtime.switch(model, {"a": ServerConfig(gpu_layers=0, ctx=512)})
    pids = {name: server.state().pid for name, server in llama_runtime.servers.items()}
    assert llama_runtime.switch(model, {"a": ServerConfig(gpu_layers=0, ctx=512)}) is False
    assert llama_runtime.switch(model, {"a": ServerConfig(gpu_layers=0, ctx=1024)}) is True
    assert llama_runtime.servers["a"].state().pid != pids["a"]  # a restarted with the new flags
    assert llama_runtime.servers["b"].state().pid == pids["b"]  # b kept running
    props = llama_runtime.servers["a"].get_json("/props", llama_runtime.api_key())
    assert props["default_generation_settings"]["n_ctx"] == 1024
    assert props["total_slots"] == 1  # -np 1: the whole context in one slot
    placement = llama_runtime.placement(model)
    assert placement["a"]["ctx"] == placement["a"]["slot_ctx"] == 1024 and placement["a"]["parallel"] == 1


def test_context_overflow_is_a_clear_error(llama_runtime):
    # llama-server's smallest context is 256 tokens; a prompt of ~600 tokens cannot fit it.
    llama_runtime.switch(ModelSpec(name="smollm2-135m"), {"a": ServerConfig(gpu_layers=0, ctx=256)})
    ep = llama_runtime.endpoints()[0]
    client = StreamingClient(ep.url, ep.api)
    long_prompt = [{"role": "user", "content": load_workload().dataset_text * 3}]
    with pytest.raises(RequestError) as err:
        client.chat("smollm2-135m", long_prompt, {"num_predict": 8, "seed": 1}, ctx())
    assert err.value.kind == "context"
    assert "exceeds the available context size" in str(err.value)


def _server_pids(runtime: LocalRuntime) -> list[int]:
    return [st.pid for st in (s.state() for s in runtime.servers.values()) if st]


def test_up_down_leaves_no_process(tmp_path):
    profile = load_profile(smoke_variant(tmp_path)).profile
    rt = LocalRuntime(profile, state_dir=tmp_path / "state")
    try:
        rt.up()
        pids = _server_pids(rt)
        assert len(pids) == 2
        for ep in rt.endpoints():
            assert requests.get(ep.url + "/health", timeout=5).json()["status"] == "ok"
        # a second runtime object (another `invoke` process) finds and stops the same servers
        LocalRuntime(profile, state_dir=tmp_path / "state").down()
    finally:
        rt.down()  # a no-op when the second object stopped them; no server outlives a failure
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    assert _server_pids(rt) == []
    for e in profile.runtime.endpoints:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{e.port}/health", timeout=2)


def test_port_taken_is_a_clear_error(tmp_path):
    import socket

    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        path = smoke_variant(tmp_path, lambda d: d["runtime"]["endpoints"][0].update(port=port))
        rt = LocalRuntime(load_profile(path).profile, state_dir=tmp_path / "state")
        with pytest.raises(BenchError, match=f"port {port} on 127.0.0.1 is already in use"):
            rt.up()
        rt.down()
        assert _server_pids(rt) == []
    finally:
        blocker.close()


def test_unknown_model_lists_available(tmp_path):
    rt = LocalRuntime(load_profile(smoke_variant(tmp_path)).profile, state_dir=tmp_path / "state")
    with pytest.raises(BenchError, match="available models: gemma3-270m, smollm2-135m"):
        rt.switch(ModelSpec(name="llama3.1:8b"), {})


def test_gguf_metadata_of_the_embedded_model(tmp_path, monkeypatch):
    from bench.host import assets
    from bench.study.manifest_writer import gguf_metadata

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    path = assets.model_file("smollm2-135m")
    meta = gguf_metadata(path, assets.EMBEDDED_MODELS["smollm2-135m"].sha256)
    assert meta["architecture"] == "llama" and meta["quantization"] == "Q4_1"
    assert meta["parameters"] == 134_515_008 and meta["context_length"] == 8192  # as llama-server reports
    assert meta["vocab_size"] == 49152
