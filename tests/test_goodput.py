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
