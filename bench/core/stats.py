"""Statistics over runs: descriptive stats, the spec's MAD outlier rule, the η² decomposition and
the goodput interval over correlated calls
(the intervals valid under optional stopping and the comparison rule are bench/core/sequential.py).
Each function states its formula; tests check them on known inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps


def describe(values: Sequence[float | None]) -> dict:
    """n, mean, median, std (sample, n−1), CV % = std/mean·100, p50, p95 (linear interpolation),
    min and max. Nulls are dropped. (A config's interval is bench/core/sequential.py's, which holds at
    every run count its study could have stopped at.)"""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"n": 0}
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if n > 1 else 0.0
    out = {"n": n, "mean": mean, "median": statistics.median(xs), "std": std,
           "cv_pct": std / mean * 100 if mean else None,
           "p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)),
           "min": min(xs), "max": max(xs)}
    return out


def mad(values: Sequence[float]) -> float:
    """MAD = median(|xᵢ − median(x)|), unscaled (the spec's rule uses it as is)."""
    # scale=1.0 said outright: the rule's thresholds are in raw MAD, not the normal-consistent 1.4826·MAD
    return float(sps.median_abs_deviation(np.asarray(values, float), scale=1.0))


def mad_outliers(values: Sequence[float | None], k: float = 2.0) -> list[bool]:
    """Flag xᵢ when |xᵢ − median| > k × MAD (the spec: k = 2). Nulls are never flagged.
    With MAD = 0 (over half the values identical) any value off the median is flagged."""
    xs = [v for v in values if v is not None]
    if len(xs) < 3:
        return [False] * len(values)
    med, m = statistics.median(xs), mad(xs)
    return [v is not None and abs(v - med) > k * m for v in values]


def eta_squared(values: Sequence[float], groups: Sequence) -> dict:
    """Share of the variance of `values` explained by a grouping, from group means:
    η² = SS_between / SS_total, SS_between = Σ_g n_g (mean_g − mean)², SS_total = Σ (x − mean)².
    Also the one-way ANOVA F-test p-value of the grouping (scipy.stats.f_oneway) (None with one group, or no
    within-group variance). η² is None when the grouping has one level (the factor did not
    vary, so it explains nothing measurable). Nulls are dropped with their group label."""
    pairs = [(float(v), g) for v, g in zip(values, groups) if v is not None and math.isfinite(v)]
    by_group: dict = {}
    for v, g in pairs:
        by_group.setdefault(g, []).append(v)
    k, n = len(by_group), len(pairs)
    out = {"n": n, "k": k, "eta_sq": None, "p_value": None}
    if k < 2:
        return out
    grand = statistics.fmean(v for v, _ in pairs)
    ss_total = sum((v - grand) ** 2 for v, _ in pairs)
    ss_between = sum(len(vs) * (statistics.fmean(vs) - grand) ** 2 for vs in by_group.values())
    out["eta_sq"] = ss_between / ss_total if ss_total > 0 else 0.0
    ss_within = ss_total - ss_between
    if n > k and ss_within > 1e-12 * ss_total:  # all-equal groups: F is undefined
        out["p_value"] = float(sps.f_oneway(*by_group.values()).pvalue)
    return out


@dataclass(frozen=True)
class GoodputInterval:
    """A goodput share with its interval: `estimate` the pooled share of calls that met the SLO,
    [low, high] its interval, over n_calls calls in n_runs runs (goodput_interval)."""

    low: float
    estimate: float
    high: float
    n_runs: int
    n_calls: int
    design_effect: float
    effective_calls: float  # n_eff: how many independent calls the interval treats them as


def between_run_icc(met_per_run: Sequence[int], calls_per_run: Sequence[int]) -> float:
    """ICC = (MSB − MSW) / (MSB + (m₀ − 1)·MSW), floored at 0 (one-way ANOVA estimator, unequal run sizes)

    With pᵢ = kᵢ/mᵢ, p̂ = Σk/Σm, n = Σm, R runs: MSB = Σ mᵢ(pᵢ − p̂)² / (R − 1),
    MSW = Σ mᵢ pᵢ(1 − pᵢ) / (n − R) (the within-run sum of squares of 0/1 outcomes),
    m₀ = (n − Σ mᵢ²/n) / (R − 1). 0 with one run (nothing to estimate it from) or no variation at all;
    1 when every run is all-met or all-missed but the runs differ.
    """
    k, m = np.asarray(met_per_run, float), np.asarray(calls_per_run, float)
    runs, n = len(m), float(m.sum())
    if runs < 2 or n <= runs:
        return 0.0
    p_run, p = k / m, k.sum() / n
    msb = float(np.sum(m * (p_run - p) ** 2) / (runs - 1))
    msw = float(np.sum(m * p_run * (1 - p_run)) / (n - runs))
    m0 = (n - float(np.sum(m ** 2)) / n) / (runs - 1)
    denominator = msb + (m0 - 1) * msw
    if denominator <= 0:
        return 0.0
    return float(min(1.0, max(0.0, (msb - msw) / denominator)))


def goodput_interval(met_per_run: Sequence[int], calls_per_run: Sequence[int],
                     confidence: float = 0.95) -> GoodputInterval:
    """[low, high] = Clopper–Pearson at n_eff = n / deff · (z_{1−α/2} / t_{1−α/2, R−1})², k_eff = p̂ · n_eff; deff = 1 + (m̄ − 1) · ICC

    The goodput of a config from its R runs: kᵢ of mᵢ counted calls met the SLO in run i, p̂ = Σk/Σm.
    Calls of one run share its moment on the host (a slow run misses many at once), so they are not
    independent and the pooled binomial interval is too narrow. Kish's design effect (m̄ = n/R the
    mean calls per run, ICC between_run_icc) says how many independent calls they are worth; the
    exact (Clopper–Pearson) interval is taken at that size, shrunk further because the between-run
    variance is known only from R − 1 degrees of freedom (Korn & Graubard 1998, the `beta` interval of
    R's survey::svyciprop): the beta quantiles B(α/2; k_eff, n_eff − k_eff + 1) and
    B(1 − α/2; k_eff + 1, n_eff − k_eff). Without that second factor the interval covers far less than
    its confidence with 3–6 runs (tests/test_goodput.py: 0.88–0.90 for a between-run ICC of 0.2–0.3 at
    95 %), because a few runs that all met every objective show no between-run variation at all. With
    one run nothing bounds the between-run variation: the interval is [0, 1].
    """
    k, m = [int(x) for x in met_per_run], [int(x) for x in calls_per_run]
    if len(k) != len(m) or not m:
        raise ValueError(f"goodput_interval needs one met count per run, got {len(k)} counts for {len(m)} runs")
    if any(c < 1 for c in m) or any(not 0 <= a <= c for a, c in zip(k, m)):
        raise ValueError(f"each run needs 0 ≤ met ≤ calls and calls ≥ 1, got met {k} of calls {m}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a probability in (0, 1), got {confidence}")
    runs, n, met = len(m), sum(m), sum(k)
    p = met / n
    deff = 1.0 + (n / runs - 1.0) * between_run_icc(k, m)
    if runs < 2:
        return GoodputInterval(0.0, p, 1.0, runs, n, deff, 0.0)
    alpha = 1.0 - confidence
    df_factor = (sps.norm.ppf(1 - alpha / 2) / sps.t.ppf(1 - alpha / 2, runs - 1)) ** 2
    n_eff = float(n / deff * df_factor)
    low, high = exact_binomial_interval(p * n_eff, n_eff, confidence)
    return GoodputInterval(low, p, high, runs, n, deff, n_eff)


def exact_binomial_interval(successes: float, trials: float, confidence: float) -> tuple[float, float]:
    """[B(α/2; k, n − k + 1), B(1 − α/2; k + 1, n − k)]: Clopper–Pearson's beta quantiles, for a
    count that may be fractional (an effective sample size); 0 and 1 at the edges. For whole counts
    it is scipy's binomtest(k, n).proportion_ci(method="exact")."""
    alpha = 1.0 - confidence
    k, n = float(successes), float(trials)
    low = 0.0 if k <= 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k >= n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high
