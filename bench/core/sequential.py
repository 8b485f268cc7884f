"""Intervals that stay valid while the study looks after every run (optional stopping).

An adaptive study looks at a config's interval after each of its runs and stops when the interval
is narrow enough. A plain t-interval checked at every look covers the mean less often than it
claims, because the study stops exactly when the noise made the interval look narrow (the
"peeking" problem; tests/test_sampling_simulation.py shows it as the control). The repeated
interval below is calibrated for every look a config can take at once, so it holds at whatever
run count the study stops: min runs, max runs, or anywhere between.

The method is a repeated t confidence interval with one nominal level for every look (Pocock's
constant-level boundary, Jennison & Turnbull, *Group Sequential Methods*, ch. 9), calibrated by
Monte Carlo for t statistics: under normal runs the t statistic is pivotal (its distribution does
not depend on the mean or the variance), so one simulation of standard normal sequences fixes the
level exactly, up to the simulation's error, for every config and metric. Compared with
Bonferroni's α / K it uses the strong correlation between successive looks and is narrower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import stats as sps

# The calibration's simulation: fixed, so every study and every reader get the same level.
CALIBRATION_DRAWS = 200_000
CALIBRATION_SEED = 116
# Most looks one calibration takes (more looks get diminishing returns and cost memory).
MAX_LOOKS = 60


@dataclass(frozen=True)
class LookPlan:
    """The looks a config's interval is valid over: after each run from `n_min` to `n_max`."""

    n_min: int
    n_max: int
    confidence: float = 0.95

    def __post_init__(self):
        if self.n_min < 2:
            raise ValueError(f"an interval needs at least 2 runs (n_min {self.n_min})")
        if self.n_max < self.n_min:
            raise ValueError(f"n_max {self.n_max} is below n_min {self.n_min}")
        if self.n_max - self.n_min + 1 > MAX_LOOKS:
            raise ValueError(f"at most {MAX_LOOKS} looks (n_min {self.n_min}, n_max {self.n_max})")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")

    @property
    def looks(self) -> int:
        return self.n_max - self.n_min + 1

    def covering(self, n: int) -> "LookPlan":
        """This plan, stretched to cover a run count beyond it (a resumed study that ran more)."""
        return self if n <= self.n_max else LookPlan(self.n_min, n, self.confidence)


@lru_cache(maxsize=None)
def nominal_level(plan: LookPlan) -> float:
    """p* such that P(∃ n ∈ [n_min, n_max]: |x̄ₙ − μ| > t_{1−p*/2, n−1} · sₙ/√n) = 1 − confidence
    for independent normal runs: the two-sided level every look uses.

    Computed as the (1 − confidence) quantile of minₙ pₙ over CALIBRATION_DRAWS simulated standard
    normal sequences (seed CALIBRATION_SEED), pₙ the two-sided t-test p-value of the sequence's
    first n values against 0. With one look it is 1 − confidence exactly (the ordinary t-interval).
    """
    alpha = round(1.0 - plan.confidence, 12)  # 0.05, not 0.050000000000000044
    if plan.looks == 1:
        return alpha
    rng = np.random.default_rng(CALIBRATION_SEED)
    z = rng.standard_normal((CALIBRATION_DRAWS, plan.n_max))
    n = np.arange(1, plan.n_max + 1)
    mean = np.cumsum(z, axis=1) / n
    # sample variance from running sums (standard normals: no cancellation worth worrying about)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (np.cumsum(z * z, axis=1) - n * mean * mean) / (n - 1)
    cols = slice(plan.n_min - 1, plan.n_max)
    t_abs = np.abs(mean[:, cols]) * np.sqrt(n[cols]) / np.sqrt(var[:, cols])
    p = 2.0 * sps.t.sf(t_abs, n[cols] - 1)
    return float(np.quantile(p.min(axis=1), alpha))


@lru_cache(maxsize=4096)
def critical_value(plan: LookPlan, n: int) -> float:
    """t_{1 − p*/2, n − 1}: the multiplier of sₙ/√n at look n."""
    return float(sps.t.isf(nominal_level(plan) / 2.0, n - 1))


@dataclass(frozen=True)
class Interval:
    """A config's mean with its repeated (anytime-valid) interval at the current look."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def rel_half_width(self) -> float | None:
        """half-width / |mean|: what the precision target is stated in."""
        return self.half_width / abs(self.mean) if self.mean else None


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float)


def interval(values: Sequence[float | None], plan: LookPlan) -> Interval | None:
    """x̄ₙ ± t_{1−p*/2, n−1} · sₙ/√n, p* = nominal_level(plan): the repeated interval at look n.

    Valid at every look n ∈ [n_min, n_max] at once (for normal, independent runs), so the study may
    stop at any of them. Nulls are dropped. None below 2 values; a run count beyond the plan is
    covered by a plan stretched to it (`LookPlan.covering`)."""
    xs = _finite(values)
    n = len(xs)
    if n < 2:
        return None
    plan = plan.covering(n)
    mean = float(xs.mean())
    half = critical_value(plan, n) * float(xs.std(ddof=1)) / math.sqrt(n)
    return Interval(n, mean, mean - half, mean + half, plan.confidence)


def widen(iv: Interval, rel_half_width: float) -> Interval:
    """The interval widened in quadrature by an independent relative error of the same confidence:
    half = √(half² + (|mean| · rel_half_width)²). Used for the drift adjustment's reference level
    (bench/core/drift.py), which every adjusted run of the study shares."""
    half = math.hypot(iv.half_width, abs(iv.mean) * rel_half_width)
    return Interval(iv.n, iv.mean, iv.mean - half, iv.mean + half, iv.confidence)


def compare(a: Interval | None, b: Interval | None, *, higher_is_better: bool = True) -> dict:
    """The comparison rule: mean(a) − mean(b) ± √(half_a² + half_b²), each half-width the config's
    own repeated interval; a side wins only when that interval excludes 0. Returns n_a, n_b, diff,
    ci_low, ci_high and `winner` ("a", "b" or None); nothing is decided without both intervals."""
    out = {"n_a": a.n if a else 0, "n_b": b.n if b else 0, "diff": None, "ci_low": None, "ci_high": None,
           "winner": None}
    if a is None or b is None:
        return out
    diff = a.mean - b.mean
    half = math.hypot(a.half_width, b.half_width)
    out.update(diff=diff, ci_low=diff - half, ci_high=diff + half)
    if diff - half > 0 or diff + half < 0:
        out["winner"] = "a" if (diff > 0) == higher_is_better else "b"
    return out
