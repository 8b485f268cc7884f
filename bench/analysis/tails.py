"""Tail quantiles (p50/p95/p99 of TTFT and e2e) with distribution-free intervals.

A sample quantile is a point; how far the true quantile may lie from it depends on n and q only
through order statistics. Below the n that an order-statistic bound needs, the honest answer is
"n too small", never the sample maximum printed as p99. Pure functions, no servers: the analysis
calls `tail_table` on its requests frame, the report quotes `quantile_interval`'s docstring.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

# Statuses of one quantile's interval, best first.
TWO_SIDED = "two-sided"
UNEQUAL_TAILS = "two-sided, unequal tails"
UPPER_ONLY = "upper bound only"
TOO_SMALL = "n too small"
STATUSES = (TWO_SIDED, UNEQUAL_TAILS, UPPER_ONLY, TOO_SMALL)

# Per quantile, the columns of tail_table: <label>_<part>.
TABLE_PARTS = ("estimate", "low", "high", "status")

# The point estimate's rule: numpy's default, linear interpolation (Hyndman–Fan type 7), the rule
# bench/stats.describe and the records' ITL p95 use, so one sample gives one p95 in every table.
ESTIMATE_METHOD = "linear"


@dataclass(frozen=True)
class Ranks:
    """1-based order-statistic ranks of an interval and its exact coverage (None where absent)."""

    status: str
    low: int | None
    high: int | None
    coverage: float | None


def _check_levels(q: float, confidence: float) -> None:
    for name, v in (("q", q), ("confidence", confidence)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not 0 < v < 1:
            raise ValueError(f"{name} must be a number strictly between 0 and 1, got {v!r}")


def order_statistic_ranks(n: int, q: float, confidence: float = 0.95) -> Ranks:
    """The ranks (j, k) of [X(j), X(k)] for the q-quantile of n iid samples; see quantile_interval."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    _check_levels(q, confidence)
    return _ranks(int(n), float(q), float(confidence))


@lru_cache(maxsize=4096)
def _ranks(n: int, q: float, confidence: float) -> Ranks:
    if n == 0:
        return Ranks(TOO_SMALL, None, None, None)
    alpha = 1 - confidence
    below = sps.binom(n, q)  # B = #{Xᵢ ≤ x_q}
    # scipy's own rank rule (quantile_test(...).confidence_interval(), 0-based there): it returns
    # the values only, so the ranks are taken from the same binom calls; a test checks they agree.
    j = int(below.ppf(alpha / 2))
    k = int(below.isf(alpha / 2)) + 1
    if j >= 1 and k <= n:
        return Ranks(TWO_SIDED, j, k, float(below.cdf(k - 1) - below.cdf(j - 1)))
    shortest = _shortest_ranks(below, n, confidence)
    if shortest is not None:
        return Ranks(UNEQUAL_TAILS, *shortest)
    k = int(below.isf(alpha)) + 1
    if k <= n:
        return Ranks(UPPER_ONLY, None, k, float(below.cdf(k - 1)))
    return Ranks(TOO_SMALL, None, None, None)


def _shortest_ranks(below, n: int, confidence: float) -> tuple[int, int, float] | None:
    """The admissible (j, k) with the fewest ranks between them; ties go to the more balanced tails,
    then the higher coverage. Ranks depend on n, q and the level only, never on the data, so
    choosing among them keeps the coverage guarantee."""
    lt = below.cdf(np.arange(-1, n))  # lt[r] = P(B < r), r = 0..n
    j = np.arange(1, n)
    k = np.searchsorted(lt, lt[j] + confidence, side="left")  # smallest k with P(j ≤ B < k) ≥ level
    ok = k <= n
    if not ok.any():
        return None
    j, k = j[ok], k[ok]
    coverage = lt[k] - lt[j]
    worst_tail = np.maximum(lt[j], 1 - lt[k])
    best = np.lexsort((-coverage, worst_tail, k - j))[0]
    return int(j[best]), int(k[best]), float(coverage[best])


def min_n_for(q: float, confidence: float = 0.95, two_sided: bool = True, *, equal_tailed: bool = False) -> int:
    """The smallest n at which quantile_interval gives an interval for the q-quantile: a two-sided
    one (any admissible ranks; `equal_tailed` asks for scipy's equal tails), or, with
    two_sided=False, at least the one-sided upper bound.

    One-sided: qⁿ ≤ 1 − c (X(n) bounds x_q). Two-sided: qⁿ + (1 − q)ⁿ ≤ 1 − c ([X(1), X(n)]).
    Equal tails: max(q, 1 − q)ⁿ ≤ (1 − c)/2. At c = 0.95: p99 299 / 299 / 368, p95 59 / 59 / 72,
    p50 5 / 6 / 6. Found by scanning the same rank rule, so it never disagrees with it."""
    _check_levels(q, confidence)
    alpha = 1 - confidence
    if not two_sided:
        wanted, floor = set(STATUSES) - {TOO_SMALL}, math.log(alpha) / math.log(q)
    else:
        wanted = {TWO_SIDED} if equal_tailed else {TWO_SIDED, UNEQUAL_TAILS}
        floor = math.log(alpha / 2 if equal_tailed else alpha) / math.log(max(q, 1 - q))
    n = max(1, math.floor(floor) - 1)  # the closed form's n, less one for rounding: the scan decides
    while _ranks(n, float(q), float(confidence)).status not in wanted:
        n += 1
    return n


def quantile_label(q: float) -> str:
    """0.5 → 'p50', 0.99 → 'p99', 0.999 → 'p99.9'."""
    return f"p{q * 100:g}"


def quantile_interval(values: Sequence[float], q: float, confidence: float = 0.95) -> dict:
    """Sample q-quantile with a distribution-free confidence interval from order statistics.

    With X(1) ≤ … ≤ X(n) the sorted sample and B = #{Xᵢ ≤ x_q} ~ Binomial(n, q) (iid samples,
    continuous distribution): P(X(j) ≤ x_q ≤ X(k)) = P(j ≤ B < k) and P(X(k) ≥ x_q) = P(B < k).
    Ranks (j, k) depend on n, q and the level c only, so the coverage holds for any distribution
    (with ties it is at least that). In order of preference:
    - two-sided, equal tails: j = the smallest r with P(B ≤ r) ≥ (1 − c)/2, k = 1 + the smallest
      r with P(B > r) ≤ (1 − c)/2, so each side misses with probability ≤ (1 − c)/2; needs
      max(q, 1 − q)ⁿ ≤ (1 − c)/2 (scipy.stats.quantile_test's interval; p99 n ≥ 368);
    - two-sided, unequal tails (when equal tails are impossible): of all (j, k) with
      P(j ≤ B < k) ≥ c, the fewest ranks k − j, then the more balanced tails; needs
      qⁿ + (1 − q)ⁿ ≤ 1 − c (p99 n ≥ 299);
    - upper bound only: X(k), k = 1 + the smallest r with P(B > r) ≤ 1 − c; needs qⁿ ≤ 1 − c
      (p99 n ≥ 299, p50 n ≥ 5);
    - n too small: nothing, with the n each kind needs (min_n_for).
    The estimate is the sample quantile by linear interpolation (numpy's default, Hyndman–Fan
    type 7), given only with a two-sided interval: below that n it leans on the few most
    extreme samples (below n = 100 the type-7 p99 is between the two slowest requests), so it
    is withheld (None) rather than printed with no statement of its error.

    Returns n, q, confidence, status, estimate, low, high, rank_low, rank_high (1-based j, k),
    coverage (the exact binomial coverage of the ranks), min_n_upper, min_n_two_sided and a
    one-line message. Values must be finite numbers (drop missing ones first)."""
    _check_levels(q, confidence)
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be numbers: {exc}") from None
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite: {int((~np.isfinite(x)).sum())} of {x.size} are NaN or ±inf "
                         "(drop missing values before asking for a quantile)")
    xs = np.sort(x)
    n = xs.size
    r = _ranks(n, float(q), float(confidence))
    two_sided = r.status in (TWO_SIDED, UNEQUAL_TAILS)
    upper, both = min_n_for(q, confidence, two_sided=False), min_n_for(q, confidence, two_sided=True)
    return {"n": n, "q": q, "confidence": confidence, "status": r.status,
            "estimate": float(np.quantile(xs, q, method=ESTIMATE_METHOD)) if two_sided else None,
            "low": float(xs[r.low - 1]) if r.low else None, "high": float(xs[r.high - 1]) if r.high else None,
            "rank_low": r.low, "rank_high": r.high, "coverage": r.coverage,
            "min_n_upper": upper, "min_n_two_sided": both,
            "message": _message(r, n, q, confidence, upper, both)}


def _message(r: Ranks, n: int, q: float, confidence: float, upper: int, both: int) -> str:
    label, level = quantile_label(q), f"{confidence * 100:g} %"
    if r.status == TOO_SMALL:
        return (f"n too small: n = {n}; {label} needs n ≥ {upper} for a {level} upper bound "
                f"and n ≥ {both} for a two-sided interval")
    if r.status == UPPER_ONLY:
        return f"upper bound only: X({r.high}) of {n}; a two-sided {level} interval needs n ≥ {both}"
    tails = "" if r.status == TWO_SIDED else (f", unequal tails (equal tails need n ≥ "
                                              f"{min_n_for(q, confidence, equal_tailed=True)})")
    return f"{level} interval [X({r.low}), X({r.high})] of {n}, exact coverage {r.coverage * 100:.1f} %{tails}"


def tail_table(requests: pd.DataFrame, metrics: Sequence[str] = ("ttft_ms", "e2e_ms"),
               quantiles: Sequence[float] = (0.5, 0.95, 0.99), by: Sequence[str] = ("cell", "ran_as"),
               confidence: float = 0.95) -> pd.DataFrame:
    """Per config (the `by` groups) and metric, the pooled requests' quantiles with their
    order-statistic intervals (quantile_interval). Columns: the `by` columns, metric, n (the
    non-null values pooled), then per quantile <label>_estimate, _low, _high, _status with
    label = p50, p95, p99.

    Caveat: the interval assumes the pooled requests are iid draws from one distribution. The
    requests of one run are not independent (a run's two stages and its phases share a server
    and its state) and runs differ, so the interval describes the pooled request distribution
    under that assumption, not the run-to-run spread (that is configs.csv's job). Requests of
    misplaced runs (non-empty placement_issues) are left out, as configs.csv leaves those runs
    out; null values (a call with no content token has no TTFT) are dropped."""
    needed = [*by, *metrics]
    missing = [c for c in needed if c not in requests.columns]
    if missing:
        raise ValueError(f"tail_table: the requests frame lacks column(s) {missing}")
    labels = [quantile_label(q) for q in quantiles]
    columns = [*by, "metric", "n", *(f"{lab}_{part}" for lab in labels for part in TABLE_PARTS)]
    if "placement_issues" in requests.columns:
        requests = requests[requests["placement_issues"].fillna("") == ""]
    rows = []
    for key, group in requests.groupby(list(by), sort=True, dropna=False):
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="raise").dropna().to_numpy(float)
            row = {**dict(zip(by, key)), "metric": metric, "n": int(values.size)}
            for q, lab in zip(quantiles, labels):
                res = quantile_interval(values, q, confidence)
                row.update({f"{lab}_{part}": res[part] for part in TABLE_PARTS})
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)
