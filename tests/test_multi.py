"""Multi-agent formulas on a scripted clock, and the speedup measured against real test servers."""

from __future__ import annotations

import threading

import pytest

from bench.clients import agents
from bench.clients.agents import AgentTarget
from bench.clients.streaming import RequestRecord, StreamingClient
from bench.config.workload import load_workload
from bench.core import metrics

from ollama_server import FakeOllama

S = 1_000_000_000


def rec(agent, phase, tokens, eval_ms, ttft):
    return RequestRecord(agent=agent, stage="analysis", phase=phase, endpoint="e", api="ollama", model="m",
                         prompt_nonce="0" * 16, call_attempt=1, start_offset_ms=0, ttft_ms=ttft, e2e_ms=1, itl_ms=None, content_chunks=tokens,
                         output_tokens=tokens, output_tokens_estimated=False, prompt_tokens=1,
                         decode_tps_client=None, decode_tps_server=None, load_ms=0, prompt_eval_ms=1,
                         eval_ms=eval_ms, cold_load=False, done_reason="length", error=None, error_kind=None,
                         output_text="")


def test_formulas_on_known_phase_times():
    # alone: collector 4 s, insight 6 s → seq 10 s; together: released at t=100 s,
    # collector done at 105 s, insight at 108 s → wall 8 s
    t_alone = {"collector": metrics.agent_time_s(0, 4 * S), "insight": metrics.agent_time_s(10 * S, 16 * S)}
    t_together = {"collector": metrics.agent_time_s(100 * S, 105 * S),
                  "insight": metrics.agent_time_s(100 * S, 108 * S)}
    wall = metrics.wall_s(100 * S, 108 * S)
    records = [rec("collector", "alone", 100, 1000, 100), rec("collector", "together", 100, 2000, 300),
               rec("insight", "alone", 100, 1000, 100), rec("insight", "together", 90, 1000, 150)]
    m = agents.multi_metrics(records, t_alone, t_together, wall, min_tps_ratio=0.85, max_ttft_inflation=2.0)
    assert m["wall_s"] == 8 and m["seq_s"] == 10
    assert m["speedup"] == pytest.approx(1.25)
    assert m["efficiency_pct"] == pytest.approx(62.5)
    # the original's "efficiency": (5 + 8) / (2 · 8) = 81.25 %
    assert m["evenness_pct"] == pytest.approx(81.25)
    c, i = m["agents"]["collector"], m["agents"]["insight"]
    assert c["tps_ratio"] == pytest.approx(0.5)  # 50 tok/s together vs 100 alone
    assert c["ttft_inflation"] == pytest.approx(3.0)
    assert i["tps_ratio"] == pytest.approx(0.9) and i["ttft_inflation"] == pytest.approx(1.5)
    assert m["contention"] is True  # collector: 0.5 < 0.85
    assert m["legacy_contention"] is True  # 1.25 < 1.5


def test_perfect_overlap_and_the_evenness_trap():
    # Two agents that each take 5 s alone and 5 s together: speedup 2, efficiency 100 %.
    assert metrics.speedup(metrics.seq_s(5, 5), 5) == 2
    assert metrics.efficiency_pct(2) == 100
    # Fully serialised (together = one after the other, 10 s wall) with equal finish times:
    # the original's metric still reads 100 %, the true speedup reads 1.0.
    assert metrics.speedup(metrics.seq_s(5, 5), 10) == 1
    assert metrics.evenness_pct(10, 10) == 100
    assert not metrics.contention([0.9, 1.0], [1.1, 1.9], 0.85, 2.0)
    assert metrics.contention([0.9, None], [2.1, None], 0.85, 2.0)


def run_pair(lock_a, lock_b, order=("alone", "together")):
    with FakeOllama(token_s=0.01, prompt_token_s=0.00005, shared_lock=lock_a) as a, \
            FakeOllama(token_s=0.01, prompt_token_s=0.00005, shared_lock=lock_b) as b:
        wl = load_workload()
        opts = {"num_predict": 30, "seed": 1}
        targets = {"collector": AgentTarget("collector", StreamingClient(a.url, "ollama"), "gemma3", opts),
                   "insight": AgentTarget("insight", StreamingClient(b.url, "ollama"), "gemma3", opts)}
        for t in targets.values():
            agents.warmup(t, wl, 1, "test/warmup")
        _, records, m = agents.run_multi(targets, wl, "test/multi/run_1", phase_order=list(order),
                                         alone_order=["insight", "collector"])
        return records, m


def test_speedup_separates_independent_from_shared_servers():
    _, independent = run_pair(threading.Lock(), threading.Lock())
    shared = threading.Lock()
    _, contended = run_pair(shared, shared, order=("together", "alone"))
    # independent servers overlap fully; one shared resource serialises the token steps
    assert independent["speedup"] > 1.7
    assert contended["speedup"] < 1.25
    assert independent["efficiency_pct"] > 85 and contended["efficiency_pct"] < 62.5
    # both finish evenly, so the original's metric cannot tell them apart
    assert independent["evenness_pct"] > 90 and contended["evenness_pct"] > 90
    assert contended["contention"] and not independent["contention"]
    for agent in ("collector", "insight"):
        assert contended["agents"][agent]["tps_ratio"] < 0.7
        assert independent["agents"][agent]["tps_ratio"] > 0.85


def test_run_multi_records_phases_and_offsets():
    records, m = run_pair(threading.Lock(), threading.Lock(), order=("together", "alone"))
    assert [r.phase for r in records[:4]] == ["together"] * 4
    alone = [r for r in records if r.phase == "alone"]
    assert [r.agent for r in alone] == ["insight", "insight", "collector", "collector"]
    assert [r.stage for r in alone] == ["analysis", "report"] * 2
    # every counted call has its own prompt nonce: no prefix-cache hit between phases or agents
    assert len({r.prompt_nonce for r in records}) == len(records) == 8
    # alone calls never overlap: each starts after the previous one ended
    for prev, nxt in zip(alone, alone[1:]):
        assert nxt.start_offset_ms >= prev.start_offset_ms + prev.e2e_ms - 1e-6
    # together: both agents started within a few ms of each other (the barrier)
    together = [r for r in records if r.phase == "together" and r.stage == "analysis"]
    assert abs(together[0].start_offset_ms - together[1].start_offset_ms) < 50
    assert m["seq_s"] == pytest.approx(m["agents"]["collector"]["t_alone_s"] + m["agents"]["insight"]["t_alone_s"])
