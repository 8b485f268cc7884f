"""The Ollama native client against the protocol-faithful test server (tests/ollama_server.py)."""

from __future__ import annotations

import json

import pytest

from bench.clients.streaming import CallContext, StreamingClient
from bench.core.errors import RequestError, classify

from ollama_memory import FIXTURE
from ollama_server import FakeOllama

MSG = [{"role": "user", "content": "Summarise the benchmark table in one line."}]


@pytest.fixture()
def ollama():
    with FakeOllama(token_s=0.003) as srv:
        yield srv


def ctx():
    import time

    return CallContext("single", "analysis", "single", time.perf_counter_ns(), "0" * 16, cold_load_ms=40)


def test_stream_counts_and_durations(ollama):
    client = StreamingClient(ollama.url, "ollama")
    opts = {"num_predict": 12, "seed": 7, "temperature": 0.8, "num_ctx": 1024, "num_gpu": 80, "ignore_eos": True}
    rec = client.chat("gemma3:latest", MSG, opts, ctx())
    sent = ollama.requests[-1]
    # runner and sampling options travel in `options`; ignore_eos is not an Ollama option
    assert sent["options"] == {"num_predict": 12, "seed": 7, "temperature": 0.8, "num_ctx": 1024, "num_gpu": 80}
    assert sent["stream"] is True
    assert rec.output_tokens == 12 and not rec.output_tokens_estimated
    assert rec.content_chunks == 12  # the last token arrived inside the done:true chunk
    assert rec.done_reason == "length"
    assert rec.load_ms >= 40 and rec.cold_load  # first call loads the model
    # server and client decode rates agree (the server paces tokens with real sleeps)
    assert rec.decode_tps_server == pytest.approx(rec.decode_tps_client, rel=0.35)
    # timing reconciles: TTFT + gaps = last chunk ≤ e2e, and the server's work fits inside e2e
    assert rec.ttft_ms + rec.itl_ms.mean * rec.itl_ms.n <= rec.e2e_ms + 1e-6
    assert rec.load_ms + rec.prompt_eval_ms + rec.eval_ms <= rec.e2e_ms
    warm = client.chat("gemma3:latest", MSG, opts, ctx())
    # a loaded model: Ollama's load_duration is only the time to get the runner (never zero)
    assert warm.load_ms < 5 and not warm.cold_load


def test_runner_option_change_reloads(ollama):
    client = StreamingClient(ollama.url, "ollama")
    client.chat("gemma3:latest", MSG, {"num_predict": 3, "seed": 1, "num_ctx": 512}, ctx())
    same = client.chat("gemma3:latest", MSG, {"num_predict": 3, "seed": 1, "num_ctx": 512}, ctx())
    other = client.chat("gemma3:latest", MSG, {"num_predict": 3, "seed": 1, "num_ctx": 2048}, ctx())
    assert same.load_ms < 5 and other.load_ms >= ollama.load_s * 1000  # a new num_ctx loads the model again


@pytest.mark.parametrize("model, kind, text", [
    ("nope:1b", "not_found", "model 'nope:1b' not found"),
    ("oom", "oom", "unable to allocate CUDA0 buffer"),
    ("busy", "busy", "server busy"),
    ("midstream", "crash", "an error was encountered while running the model"),
    ("garbage", "malformed_stream", "not JSON"),
    ("truncated", "stream_cut", "without a done:true chunk"),
])
def test_errors_are_classified(ollama, model, kind, text):
    client = StreamingClient(ollama.url, "ollama")
    with pytest.raises(RequestError) as err:
        client.chat(model, MSG, {"num_predict": 8, "seed": 1}, ctx())
    assert err.value.kind == kind
    assert text in str(err.value)


@pytest.mark.parametrize("kind, cls", [("busy", "transient"), ("stream_cut", "transient"), ("timeout", "transient"),
                                       ("connection", "transient"), ("oom", "load"), ("crash", "load"),
                                       ("not_found", "permanent"), ("malformed_stream", "permanent"),
                                       ("http", "permanent"), ("exit code 1", "permanent")])
def test_each_kind_has_one_class(kind, cls):
    assert RequestError(kind, "x").cls == cls


def test_the_real_memory_failures_go_to_the_ladder():
    """What a memory-limited Ollama answered (tests/fixtures/ollama_memory_failures.json): killed
    while loading, and an error line after HTTP 200 mid-stream. Both are load failures."""
    cases = json.loads(FIXTURE.read_text())["cases"]
    texts = [cases["load"]["body"]["error"],
             *(line["error"] for line in cases["midstream"]["lines"] if "error" in line)]
    assert len(texts) == 2
    assert [(classify(t), RequestError(classify(t), t).cls) for t in texts] == [("crash", "load")] * 2


def test_dead_server_is_a_connection_error():
    client = StreamingClient("http://127.0.0.1:9", "ollama", timeout_s=2)
    with pytest.raises(RequestError) as err:
        client.chat("gemma3", MSG, {"num_predict": 2, "seed": 1}, ctx())
    assert err.value.kind == "connection" and err.value.cls == "transient"


def test_list_models(ollama):
    assert "gemma3:latest" in StreamingClient(ollama.url, "ollama").list_models()
