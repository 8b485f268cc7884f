"""Statistics over runs: descriptive stats, the spec's MAD outlier rule and the η² decomposition
(the intervals valid under optional stopping and the comparison rule are bench/core/sequential.py).
Each function states its formula; tests check them on known inputs.
"""

from __future__ import annotations

import math
import statistics
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
