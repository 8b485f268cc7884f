"""Statistics over runs: descriptive stats, t-based CIs, the spec's MAD outlier rule and the
bootstrap CI of a difference. Each function states its formula; tests check them on known inputs.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np
from scipy import stats as sps

# Seed of every bootstrap: the same data always give the same CI (recorded in the manifest).
BOOTSTRAP_SEED = 116


def describe(values: Sequence[float | None]) -> dict:
    """n, mean, median, std (sample, n−1), CV % = std/mean·100, p50, p95 (linear interpolation)
    and the 95 % CI of the mean, mean ± t(0.975, n−1)·std/√n. Nulls are dropped."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"n": 0}
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if n > 1 else 0.0
    out = {"n": n, "mean": mean, "median": statistics.median(xs), "std": std,
           "cv_pct": std / mean * 100 if mean else None,
           "p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)),
           "min": min(xs), "max": max(xs), "ci95_low": None, "ci95_high": None}
    if n > 1:
        half = float(sps.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out["ci95_low"], out["ci95_high"] = mean - half, mean + half
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


def _diff_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    # Along `axis`, so scipy evaluates all resamples in one vectorized call.
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000,
                      confidence: float = 0.95, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Percentile bootstrap CI of mean(a) − mean(b): resample each group with replacement,
    independently, n_resamples times. Returns (difference of means, low, high). Each group needs
    two or more values (scipy's bootstrap refuses fewer; compare_groups' min_n keeps that)."""
    # scipy draws group a's index matrix, then b's, from this generator: the same resamples the
    # earlier hand-written loop drew with the same seed.
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    res = sps.bootstrap((xa, xb), _diff_of_means, n_resamples=n_resamples, vectorized=True,
                        paired=False, confidence_level=confidence, method="percentile",
                        rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return float(xa.mean() - xb.mean()), float(low), float(high)


def compare_groups(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool = True,
                   min_n: int = 2, confidence: float = 0.95, seed: int = BOOTSTRAP_SEED) -> dict:
    """The winner rule: a is compared with b through the percentile-bootstrap CI of
    mean(a) − mean(b). A side wins only when that CI excludes 0; with fewer than `min_n`
    values on either side nothing is decided. Returns n_a, n_b, diff, ci_low, ci_high and
    `winner` ("a", "b" or None)."""
    xa = [float(v) for v in a if v is not None and math.isfinite(v)]
    xb = [float(v) for v in b if v is not None and math.isfinite(v)]
    out = {"n_a": len(xa), "n_b": len(xb), "diff": None, "ci_low": None, "ci_high": None, "winner": None}
    if len(xa) < min_n or len(xb) < min_n:
        return out
    diff, low, high = bootstrap_diff_ci(xa, xb, confidence=confidence, seed=seed)
    out.update(diff=diff, ci_low=low, ci_high=high)
    if low > 0 or high < 0:  # the CI excludes 0
        a_better = (diff > 0) == higher_is_better
        out["winner"] = "a" if a_better else "b"
    return out


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
