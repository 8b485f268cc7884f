"""Statistics over runs: descriptive stats, t-based CIs, the spec's MAD outlier rule and the
bootstrap CI of a difference. Each function states its formula; tests check them on known inputs.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np
from scipy import stats as sps


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
    med = statistics.median(values)
    return statistics.median(abs(v - med) for v in values)


def mad_outliers(values: Sequence[float | None], k: float = 2.0) -> list[bool]:
    """Flag xᵢ when |xᵢ − median| > k × MAD (the spec: k = 2). Nulls are never flagged.
    With MAD = 0 (over half the values identical) any value off the median is flagged."""
    xs = [v for v in values if v is not None]
    if len(xs) < 3:
        return [False] * len(values)
    med, m = statistics.median(xs), mad(xs)
    return [v is not None and abs(v - med) > k * m for v in values]


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000,
                      confidence: float = 0.95, seed: int = 116) -> tuple[float, float, float]:
    """Percentile bootstrap CI of mean(a) − mean(b): resample each group with replacement,
    independently, n_resamples times. Returns (difference of means, low, high)."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    ia = rng.integers(0, len(xa), (n_resamples, len(xa)))
    ib = rng.integers(0, len(xb), (n_resamples, len(xb)))
    diffs = xa[ia].mean(axis=1) - xb[ib].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(xa.mean() - xb.mean()), float(low), float(high)
