"""Goodput: the interval over correlated calls proven by simulation at a known truth (the naive
pooled interval as the control that fails), per-call SLO checks and run goodput on hand-worked
records."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from bench.core.stats import between_run_icc, exact_binomial_interval, goodput_interval

TRUE_P, CONFIDENCE, REPLICATES = 0.9, 0.95, 1000
# three Monte-Carlo standard errors of a coverage near 0.95 at 1000 replicates
MARGIN = 3 * (CONFIDENCE * (1 - CONFIDENCE) / REPLICATES) ** 0.5


def _coverage(icc: float, seed: int) -> tuple[float, float]:
    """(naive, goodput_interval) coverage of TRUE_P over studies of 3–6 runs with 4–16 calls each,
    each run's success probability drawn from a beta with mean TRUE_P and intra-run correlation icc."""
    rng = np.random.default_rng(seed)
    naive = ours = 0
    for _ in range(REPLICATES):
        runs = int(rng.integers(3, 7))
        calls = rng.integers(4, 17, size=runs)
        if icc > 0:
            a, b = TRUE_P * (1 - icc) / icc, (1 - TRUE_P) * (1 - icc) / icc
            p_run = rng.beta(a, b, size=runs)
        else:
            p_run = np.full(runs, TRUE_P)
        met = rng.binomial(calls, p_run)
        ci = sps.binomtest(int(met.sum()), int(calls.sum())).proportion_ci(CONFIDENCE, method="exact")
        naive += ci.low <= TRUE_P <= ci.high
        iv = goodput_interval(met, calls, CONFIDENCE)
        ours += iv.low <= TRUE_P <= iv.high
    return naive / REPLICATES, ours / REPLICATES


def test_with_runs_that_differ_the_pooled_interval_undercovers_and_goodput_interval_holds():
    naive, ours = _coverage(icc=0.3, seed=20)
    assert naive < CONFIDENCE - 0.1, naive  # the control fails: runs are not independent calls
    assert ours >= CONFIDENCE - MARGIN, ours


def test_without_between_run_variation_both_cover():
    naive, ours = _coverage(icc=0.0, seed=21)
    assert naive >= CONFIDENCE - MARGIN, naive
    assert ours >= CONFIDENCE - MARGIN, ours


def test_exact_interval_is_scipys_clopper_pearson_for_whole_counts():
    for k, n in ((0, 10), (7, 12), (12, 12), (45, 50)):
        ci = sps.binomtest(k, n).proportion_ci(0.9, method="exact")
        assert exact_binomial_interval(k, n, 0.9) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_icc_and_design_effect_on_hand_worked_runs():
    # identical runs: no between-run variation, deff 1
    assert between_run_icc([3, 3, 3], [4, 4, 4]) == 0.0
    # all-or-nothing runs that differ: every call of a run agrees, ICC 1, deff = m̄ = 4
    assert between_run_icc([4, 0, 4], [4, 4, 4]) == 1.0
    assert goodput_interval([4, 0, 4], [4, 4, 4]).design_effect == pytest.approx(4.0)
    # balanced by hand: p = (4, 2, 0)/4 → p̂ 0.5, MSB = 4·(0.25+0+0.25)/2 = 1, MSW = 4·(0+0.25+0)/9 = 1/9,
    # ICC = (1 − 1/9) / (1 + 3/9) = 2/3
    assert between_run_icc([4, 2, 0], [4, 4, 4]) == pytest.approx(2 / 3)
    iv = goodput_interval([4, 2, 0], [4, 4, 4], 0.95)
    assert iv.estimate == 0.5 and iv.n_runs == 3 and iv.n_calls == 12
    assert iv.design_effect == pytest.approx(1 + 3 * 2 / 3)
    # n_eff = 12 / 3 · (z/t₂)², k_eff = n_eff / 2
    n_eff = 4 * (sps.norm.ppf(0.975) / sps.t.ppf(0.975, 2)) ** 2
    assert iv.effective_calls == pytest.approx(n_eff)
    assert (iv.low, iv.high) == pytest.approx(exact_binomial_interval(n_eff / 2, n_eff, 0.95))


def test_goodput_interval_refuses_bad_input_and_one_run_bounds_nothing():
    with pytest.raises(ValueError, match="one met count per run"):
        goodput_interval([1, 2], [3])
    with pytest.raises(ValueError, match="0 ≤ met ≤ calls"):
        goodput_interval([5], [4])
    with pytest.raises(ValueError, match="confidence"):
        goodput_interval([1], [2], 1.0)
    one = goodput_interval([10], [12])
    assert (one.low, one.high) == (0.0, 1.0) and one.estimate == pytest.approx(10 / 12)


# ---- per call, per run and per config, on hand-worked records --------------------------------

import pandas as pd  # noqa: E402

from bench.analysis import goodput  # noqa: E402
from bench.config.profile import ServiceLevelObjective  # noqa: E402
from bench.core import metrics  # noqa: E402

SLO = ServiceLevelObjective(ttft_ms=1000, decode_tps=20, e2e_ms=5000, confidence=0.95)


def test_meets_slo_needs_every_objective_and_a_missing_value_misses():
    assert metrics.meets_slo(1000, 20, 5000, SLO)  # the bounds themselves meet it
    assert not metrics.meets_slo(1000.1, 20, 5000, SLO)
    assert not metrics.meets_slo(900, 19.9, 4000, SLO)
    assert not metrics.meets_slo(900, 25, 5001, SLO)
    assert not metrics.meets_slo(None, 25, 4000, SLO)  # no text arrived
    assert not metrics.meets_slo(900, None, 4000, SLO)  # fewer than two tokens
    assert metrics.slo_objectives(1200, 25, 6000, SLO) == {"ttft": False, "decode": True, "e2e": False}


def _call(cell, run, suite, phase, agent, ttft, decode, e2e):
    return {"cell": cell, "run": run, "suite": suite, "phase": phase, "agent": agent, "ttft_ms": ttft,
            "decode_tps_client": decode, "e2e_ms": e2e, "ran_as": ""}


def _steps_run(run: int, agent_calls: dict[str, list[tuple]]) -> list[dict]:
    """A 2-agent steps run: an alone reference that misses everything (it must not count), then
    each agent's calls together."""
    cell = "steps/python/m/n2"
    rows = [_call(cell, run, "steps", "alone", "agent1", 9999, 1, 99999)] * 2
    for agent, calls in agent_calls.items():
        rows += [_call(cell, run, "steps", "together", agent, *c) for c in calls]
    return rows


OK, SLOW_FIRST, SLOW_DECODE = (800, 30, 3000), (1500, 30, 3500), (800, 10, 4800)


def test_run_goodput_counts_the_calls_made_together_only():
    requests = pd.DataFrame(_steps_run(1, {"agent1": [OK, OK], "agent2": [SLOW_FIRST, OK]}))
    row = goodput.run_goodput(requests, SLO).iloc[0]
    assert row["slo_calls"] == 4  # the two alone calls are the reference, not load
    assert row["goodput_pct"] == 75.0  # 3 of 4 calls met every objective
    assert row["agent_goodput_pct"] == 50.0  # agent2 had one call late
    assert (row["slo_ttft_pct"], row["slo_decode_pct"], row["slo_e2e_pct"]) == (75.0, 100.0, 100.0)


def test_single_and_multi_count_every_counted_call():
    requests = pd.DataFrame([_call("multi/x", 1, "multi", "alone", "collector", *OK),
                             _call("multi/x", 1, "multi", "together", "collector", *SLOW_DECODE),
                             _call("multi/x", 1, "multi", "alone", "insight", *OK),
                             _call("multi/x", 1, "multi", "together", "insight", *OK),
                             _call("single/x", 1, "single", "single", "single", *OK),
                             _call("single/x", 1, "single", "single", "single", None, None, 3000)])
    rows = goodput.run_goodput(requests, SLO).set_index("cell")
    assert rows.loc["multi/x", "goodput_pct"] == 75.0 and rows.loc["multi/x", "agent_goodput_pct"] == 50.0
    assert rows.loc["multi/x", "slo_decode_pct"] == 75.0
    assert rows.loc["single/x", "goodput_pct"] == 50.0 and rows.loc["single/x", "slo_e2e_pct"] == 100.0


def test_config_goodput_pools_runs_names_the_objective_that_breaks_first_and_counts_failed_attempts():
    calls = (_steps_run(1, {"agent1": [OK, OK], "agent2": [OK, SLOW_DECODE]})
             + _steps_run(2, {"agent1": [OK, SLOW_FIRST], "agent2": [SLOW_DECODE, OK]})
             + _steps_run(3, {"agent1": [OK, OK], "agent2": [OK, OK]}))
    requests = pd.DataFrame(calls)
    runs = pd.DataFrame([{"cell": "steps/python/m/n2", "run": r, "ran_as": "", "suite": "steps", "lang": "python",
                          "model": "m", "case": "n2", "n_agents": 2} for r in (1, 2, 3)])
    row = goodput.goodput_table(runs, requests, SLO).iloc[0]
    assert (row["runs"], row["calls"], row["calls_met"]) == (3, 12, 9)
    iv = stats_interval([3, 2, 4], [4, 4, 4])
    assert row["goodput_pct"] == 75.0
    assert (row["goodput_ci_low"], row["goodput_ci_high"]) == pytest.approx((100 * iv.low, 100 * iv.high))
    assert row["agent_goodput_pct"] == pytest.approx(100 * 3 / 6)
    assert row["slo_decode_pct"] == pytest.approx(100 * 10 / 12) and row["slo_ttft_pct"] == pytest.approx(100 * 11 / 12)
    assert row["breaks_first"] == "decode" and not row["meets_target"]
    # a run attempt that timed out under load: one more run of 4 calls, none met
    failure = {"cell": "steps/python/m/n2", "error_class": "transient", "requested_config": {"model": "m"},
               "attempted_config": {"model": "m"}}
    oom = {**failure, "error_class": "load"}  # the config did not fit: not a service failure
    row = goodput.goodput_table(runs, requests, SLO, [failure, oom]).iloc[0]
    assert (row["runs"], row["failed_attempts"], row["calls"], row["calls_met"]) == (4, 1, 16, 9)
    assert row["agent_goodput_pct"] == pytest.approx(100 * 3 / 8)
    iv = stats_interval([3, 2, 4, 0], [4, 4, 4, 4])
    assert row["goodput_ci_low"] == pytest.approx(100 * iv.low)


def stats_interval(met, calls):
    return goodput_interval(met, calls, SLO.confidence)


def test_breaks_first_on_ties_and_full_attainment():
    assert goodput.breaks_first({"ttft": 100.0, "decode": 100.0, "e2e": 100.0}) == "none"
    assert goodput.breaks_first({"ttft": 90.0, "decode": 95.0, "e2e": 90.0}) == "ttft"
    assert goodput.breaks_first({"ttft": None, "decode": 95.0, "e2e": 99.0}) == "decode"


def test_a_run_without_calls_under_load_gets_no_goodput():
    alone_only = pd.DataFrame([_call("st", 1, "steps", "alone", "agent1", *OK)])
    assert goodput.run_goodput(alone_only, SLO).empty and goodput.run_goodput(pd.DataFrame(), SLO).empty
    runs = pd.DataFrame([{"cell": "st", "run": 1, "ran_as": ""}])
    merged = goodput.add_run_goodput(runs, alone_only, SLO)
    assert merged["goodput_pct"].isna().all() and len(merged) == 1
    assert goodput.add_run_goodput(runs, alone_only, None) is runs  # no objective: no columns
