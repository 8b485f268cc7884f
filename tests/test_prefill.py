"""Verified cold prefill (bench/analysis/prefill.py, the rule in bench/core/metrics.py prefill_reuse): the rule on
hand-made tables at its boundaries, on the stored fixture study, and on real engines, where a
repeated prompt is a real cache hit and the study's own nonced calls are not."""

from __future__ import annotations

import inspect
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis import tables as analysis
from bench.analysis.prefill import COLUMNS, verify_prefill
from bench.clients import agents
from bench.clients import streaming as clients
from bench.clients.streaming import CallContext, StreamingClient
from bench.config.profile import ModelSpec, ServerConfig
from bench.config.workload import load_workload
from bench.core import metrics
from bench.core.store import Store

A = metrics.PREFILL_TEMPLATE_ALLOWANCE_TOKENS
F = metrics.PREFILL_REUSE_FACTOR
FIXTURE = Path(__file__).parent / "fixtures" / "stored-study" / "smoke"


def call(rate_tps: float | None = 100.0, *, phase: str = "single", api: str = "ollama", cell: str = "c",
         endpoint: str = "http://a", model: str = "m", tokens: int | None = 200, cached: int | None = None) -> dict:
    """One requests-table row whose prompt ran at `rate_tps` (None: no prompt-eval time reported)."""
    ms = None if rate_tps is None else (tokens or 100) / rate_tps * 1000.0
    return {"api": api, "model": model, "endpoint": endpoint, "cell": cell, "phase": phase, "run": 1,
            "prompt_tokens": tokens, "prompt_eval_ms": ms, "prompt_cached_tokens": cached}


def verdicts(rows: list[dict]) -> pd.DataFrame:
    return verify_prefill(pd.DataFrame(rows))


# ---- the rule on hand-made tables --------------------------------------------------------------


def test_prefill_rate_formula():
    assert metrics.prefill_tps(250, 500.0) == pytest.approx(500.0)
    assert metrics.prefill_tps(None, 500.0) is None
    assert metrics.prefill_tps(250, None) is None
    assert metrics.prefill_tps(250, 0.0) is None  # Ollama omits a zero duration: no rate, not an infinite one
    assert metrics.prefill_tps(0, 10.0) is None


def test_the_docstring_states_the_thresholds_the_code_uses():
    doc = inspect.getdoc(metrics.prefill_reuse)
    assert f"A = {A} tokens" in doc and f"F = {F:g} ×" in doc


def test_cache_n_boundary_is_the_template_allowance():
    got = verdicts([call(cached=0), call(cached=A), call(cached=A + 1), call(cached=199)])
    assert list(got["prefill_reused"]) == [False, False, True, True]
    assert list(got["prefill_rule"]) == [metrics.PREFILL_RULE_CACHE] * 4
    assert list(got["prefill_reused_share"]) == pytest.approx([0.0, A / 200, (A + 1) / 200, 199 / 200])


def test_rate_boundary_is_the_reuse_factor():
    cold = [call(100.0), call(90.0), call(110.0)]  # reference: their median, 100
    judged = [call(100.0 * F, phase="together"), call(100.0 * F * 1.01, phase="together"),
              call(50.0, phase="together"), call(100.0 * F * 10, phase="together")]
    got = verdicts(cold + judged)
    assert list(got["prefill_reference_tps"]) == pytest.approx([100.0] * 7)
    assert list(got["prefill_reused"]) == [False, False, False, False, True, False, True]
    assert list(got["prefill_rule"]) == [metrics.PREFILL_RULE_RATE] * 7
    # share ≈ 1 − reference / rate; a slower call reused nothing
    assert list(got["prefill_reused_share"]) == pytest.approx(
        [0.0, 0.0, 1 - 100 / 110, 1 - 1 / F, 1 - 1 / (F * 1.01), 0.0, 1 - 1 / (F * 10)])


def test_together_calls_are_judged_but_never_define_the_reference():
    # Five contended calls at a tenth of the speed: pooled with the three alone calls, the median
    # would be 10 tok/s and every alone call would look like a 10× cache hit.
    rows = [call(100.0, phase="alone") for _ in range(3)] + [call(10.0, phase="together") for _ in range(5)]
    got = verdicts(rows)
    assert got["prefill_reference_tps"].tolist() == pytest.approx([100.0] * 8)
    assert not got["prefill_reused"].any()
    naive = pd.DataFrame(rows).pipe(lambda d: d["prompt_tokens"] / (d["prompt_eval_ms"] / 1000)).median()
    assert 100.0 > F * naive, "the control: a reference that pools the together phase flags the cold calls"


def test_each_engine_instance_and_config_has_its_own_reference():
    # the same model on the same endpoint, offloaded to a GPU in another cell: 20× the CPU rate
    rows = ([call(100.0, cell="cpu") for _ in range(3)] + [call(2000.0, cell="gpu") for _ in range(3)]
            + [call(150.0, endpoint="http://b") for _ in range(3)] + [call(400.0, model="other") for _ in range(3)])
    got = verdicts(rows)
    assert list(got["prefill_reference_tps"]) == pytest.approx([100.0] * 3 + [2000.0] * 3 + [150.0] * 3 + [400.0] * 3)
    assert not got["prefill_reused"].any()


def test_a_config_without_cold_calls_on_an_endpoint_takes_that_endpoints_other_configs():
    # an agent-count step: its agents on the second instance only ever run together
    rows = ([call(150.0, endpoint="http://b", cell="multi", phase="alone") for _ in range(3)]
            + [call(140.0, endpoint="http://b", cell="steps", phase="together"),
               call(150.0 * F * 1.5, endpoint="http://b", cell="steps", phase="together")])
    got = verdicts(rows)
    assert list(got["prefill_reference_tps"]) == pytest.approx([150.0] * 5)
    assert list(got["prefill_reused"]) == [False, False, False, False, True]


def test_a_call_cache_n_marks_reused_never_defines_the_reference():
    rows = [call(100.0, api="openai", cached=0), call(5000.0, api="openai", cached=199),
            call(5000.0, api="openai", cached=199)]
    got = verdicts(rows)
    assert got["prefill_reference_tps"].tolist() == pytest.approx([100.0] * 3)
    assert list(got["prefill_reused"]) == [False, True, True]


def test_without_cache_n_openai_calls_take_the_rate_rule():
    """An older llama.cpp build reports no cache_n: its prompt count is the whole prompt, as Ollama's."""
    got = verdicts([call(100.0, api="openai") for _ in range(3)] + [call(1000.0, api="openai")])
    assert list(got["prefill_rule"]) == [metrics.PREFILL_RULE_RATE] * 4
    assert list(got["prefill_reused"]) == [False, False, False, True]


def test_missing_counters_are_not_reported_and_never_guessed():
    rows = [call(100.0), call(100.0), call(None), call(100.0, tokens=None), call(100.0, tokens=0)]
    got = verdicts(rows)
    assert list(got["prefill_reused"]) == [False, False, None, None, None]
    assert list(got["prefill_rule"].iloc[2:]) == [metrics.PREFILL_RULE_NOT_REPORTED] * 3
    assert got["prefill_reused_share"].iloc[2:].isna().all() and got["prefill_tps"].iloc[2:].isna().all()
    # a group whose calls all shared the engine has no cold rate to compare with
    got = verdicts([call(100.0, phase="together"), call(100.0, phase="together")])
    assert list(got["prefill_reused"]) == [None, None]
    assert set(got["prefill_rule"]) == {metrics.PREFILL_RULE_NO_REFERENCE}


def test_records_stored_before_the_field_are_judged_by_their_rate():
    rows = pd.DataFrame([call(100.0), call(100.0), call(300.0)]).drop(columns="prompt_cached_tokens")
    got = verify_prefill(rows)
    assert list(got["prefill_reused"]) == [False, False, True]
    assert "prompt_cached_tokens" not in got  # the input's columns are kept as they came


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no cell, prompt_eval_ms column"):
        verify_prefill(pd.DataFrame([call()]).drop(columns=["cell", "prompt_eval_ms"]))
    empty = verify_prefill(pd.DataFrame(columns=list(call())))
    assert empty.empty and set(COLUMNS) <= set(empty.columns)


def test_the_stored_fixture_study_prefilled_every_call_cold(tmp_path):
    """A whole stored study (Ollama, made before prompt_cached_tokens was kept), through the
    analysis's own requests table: every call judged by its rate, none reused."""
    shutil.copytree(FIXTURE, tmp_path / "smoke")
    requests = analysis.load_tables(Store("smoke", root=tmp_path)).requests
    got = verify_prefill(requests)
    assert len(got) == len(requests) > 200
    assert got["prompt_cached_tokens"].isna().all()
    assert set(got["prefill_rule"]) == {metrics.PREFILL_RULE_RATE}
    assert not got["prefill_reused"].astype(bool).any()
    ratio = got["prefill_tps"] / got["prefill_reference_tps"]
    cold = got["phase"].isin(["single", "alone"])
    assert ratio[cold].max() < 1.5  # the cold spread the reuse factor is set above
    assert ratio.max() < F


# ---- real engines ------------------------------------------------------------------------------

MODEL = "smollm2-135m"


def frame(records, phases) -> pd.DataFrame:
    """The requests table's shape (bench/analysis/tables.py request_rows) for records made here."""
    return pd.DataFrame([{**r.to_json(), "cell": "test", "run": 1, "phase": p} for r, p in zip(records, phases)])


def nonced(client, options, key: str, n: int):
    """n counted calls as a study makes them: each with its own nonce (bench.clients.agents.nonced_chat)."""
    wl = load_workload()
    return [agents.nonced_chat(client, MODEL, wl, options, key=key, agent="single", stage="analysis", phase="single",
                               attempt=i + 1) for i in range(n)]


def without_nonce(client, options):
    """One call of the analysis prompt with its nonce line taken out: the same bytes every time."""
    system, user = load_workload().messages("single", "analysis", "0" * 16)
    messages = [{"role": "system", "content": system["content"].split("\n", 1)[1]}, user]
    ctx = CallContext("single", "analysis", "single", time.perf_counter_ns(), "0123456789abcdef")
    return client.chat(MODEL, messages, options, ctx)


@pytest.mark.ollama
def test_ollama_repeated_prompt_is_caught_and_nonced_calls_are_not(ollama_runtime):
    ollama_runtime.switch(ModelSpec(name=MODEL), {})
    ep = ollama_runtime.endpoints()[0]
    client = StreamingClient(ep.url, ep.api)
    options = {"num_predict": 4, "seed": 42, "temperature": 0.8, "num_ctx": 1024, "num_gpu": 0, "num_thread": 1}
    nonced(client, options, "prefill/warmup", 1)  # loads the model, as a study's warmup does
    study = nonced(client, options, "prefill/counted", 4)
    first, hit = without_nonce(client, options), without_nonce(client, options)
    # What Ollama 0.17.4 reports for a cache hit: the whole prompt counted, a fraction of the time.
    assert hit.prompt_tokens == first.prompt_tokens > 100
    assert hit.prompt_eval_ms < 0.1 * first.prompt_eval_ms
    assert all(r.prompt_cached_tokens is None for r in (*study, first, hit))
    got = verify_prefill(frame([*study, first, hit], ["single"] * 6))
    assert list(got["prefill_reused"]) == [False] * 5 + [True]
    assert set(got["prefill_rule"]) == {metrics.PREFILL_RULE_RATE}
    assert got["prefill_reused_share"].iloc[-1] > 0.8


@pytest.mark.llama
def test_llama_cache_n_shows_reuse_only_with_the_prompt_cache_on(llama_runtime, monkeypatch):
    llama_runtime.switch(ModelSpec(name=MODEL), {"a": ServerConfig(gpu_layers=0, ctx=1024)})
    ep = llama_runtime.endpoints()[0]
    client = StreamingClient(ep.url, ep.api)
    options = {"num_predict": 4, "seed": 42, "temperature": 0.8}
    study = nonced(client, options, "prefill/counted", 3)  # the bundle's calls: cache_prompt false
    repeat_off = [without_nonce(client, options) for _ in range(2)]
    assert [r.prompt_cached_tokens for r in (*study, *repeat_off)] == [0] * 5
    assert repeat_off[1].prompt_eval_ms > 0.5 * repeat_off[0].prompt_eval_ms

    build = clients.build_request

    def cache_on(*args):
        path, body = build(*args)
        assert body["cache_prompt"] is False  # what every counted call sends
        return path, {**body, "cache_prompt": True}

    monkeypatch.setattr(clients, "build_request", cache_on)
    # new nonces with the cache on: only the chat template's opening (ChatML's '<|im_start|>system\n'
    # and the nonce line's first tokens) is shared, which the allowance leaves alone
    fresh = nonced(client, options, "prefill/cache-on", 2)
    assert all(0 < r.prompt_cached_tokens <= A for r in fresh), [r.prompt_cached_tokens for r in fresh]
    # The prompt sent twice above with the cache off, now with it on: llama-server kept it in its
    # host-memory prompt cache (--cache-ram) all along, and only cache_prompt false stopped the reuse.
    hit = without_nonce(client, options)
    assert hit.prompt_tokens == repeat_off[0].prompt_tokens  # usage.prompt_tokens: the whole prompt
    assert hit.prompt_tokens - 8 <= hit.prompt_cached_tokens < hit.prompt_tokens
    assert hit.prompt_eval_ms < 0.1 * repeat_off[0].prompt_eval_ms
    got = verify_prefill(frame([*study, *repeat_off, *fresh, hit], ["single"] * 8))
    assert list(got["prefill_reused"]) == [False] * 7 + [True]
    assert set(got["prefill_rule"]) == {metrics.PREFILL_RULE_CACHE}
    assert got["prefill_reused_share"].iloc[-1] > 0.9
