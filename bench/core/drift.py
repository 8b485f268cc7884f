"""Host drift: the reference probe series, and each run adjusted to the host as it was at the start.

The drift probe (bench/study/instrument.py) repeats one fixed call set on the baseline model with the
server defaults at the start of the study, between rounds of runs and at the end. Its decode rate
is the host's speed index pⱼ at time tⱼ. The model:

    a run at time t measures x = x₀ · h(t)^e, h(t) = p(t) / p̄

where x₀ is the value on the host at its mean speed over the study, p(t) is the probe level
linearly interpolated between neighbouring probes (constant before the first and after the last),
p̄ is the mean of the probe levels (one probe taken while the host warmed up would skew a
first-probe reference for every run), and the exponent e follows the metric's unit: +1 for rates (tok/s: a slower host decodes slower), −1 for
times (ms, s: a slower host takes longer), 0 for ratios of two phases of the same run (speedup,
efficiency, tps ratio, TTFT inflation: both phases ran on the same host a few seconds apart, so the
drift cancels). The adjusted value is x₀ = x · h(t)^(−e).

Every adjusted run shares the reference's error, so an adjusted interval is widened by the 95 %
interval of p̄ from the probes' own call-to-call noise (sequential.widen); a comparison between two
adjusted configs is not, because the shared factor scales both sides alike.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

# Units of run metrics and how each scales with the host's speed (the exponent e above).
_RATE_UNITS = ("tok/s", "tok/J")
_TIME_UNITS = ("ms", "s")


def host_exponent(unit: str) -> int:
    """e of the model: +1 for a rate, −1 for a time, 0 for a ratio or a flag."""
    if unit in _RATE_UNITS:
        return 1
    if unit in _TIME_UNITS:
        return -1
    return 0


@dataclass(frozen=True)
class ProbePoint:
    t_s: float  # Unix time of the probe (its middle)
    level: float  # mean decode rate of its calls
    se: float | None  # the standard error of that mean from its calls (None: one call)


def probe_point(t_s: float, rates: Sequence[float | None]) -> ProbePoint | None:
    """A probe's level and its standard error from its calls' decode rates (None: no rate)."""
    xs = np.asarray([r for r in rates if r is not None and math.isfinite(r) and r > 0], dtype=float)
    if len(xs) == 0:
        return None
    return ProbePoint(t_s, float(xs.mean()), float(xs.std(ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else None)


def unix_time(iso: str) -> float:
    """'2026-12-04T03:26:00.123Z' → Unix seconds."""
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class HostDrift:
    """The probe series of one study, as h(t) = p(t) / p(t₀)."""

    def __init__(self, points: Sequence[ProbePoint]):
        self.points = sorted(points, key=lambda p: p.t_s)
        if not self.points:
            raise ValueError("no probe with a decode rate: drift cannot be estimated")
        self._t = np.asarray([p.t_s for p in self.points])
        self._level = np.asarray([p.level for p in self.points])
        self.reference = float(self._level.mean())

    @property
    def reference_rel_half_width(self) -> float | None:
        """The 95 % half-width of p̄ ÷ p̄, from each probe's own standard error (None when a probe
        had a single call): 1.96 · √(Σ seⱼ²) / J / p̄."""
        ses = [p.se for p in self.points]
        if any(se is None for se in ses):
            return None
        return float(sps.norm.isf(0.025) * math.sqrt(sum(se * se for se in ses)) / len(ses) / self.reference)

    def factor(self, t_s: float) -> float:
        """h(t): the interpolated probe level ÷ the mean probe level (1.0 = the host at its mean speed)."""
        return float(np.interp(t_s, self._t, self._level)) / self.reference

    def adjust(self, value: float | None, t_s: float, exponent: int) -> float | None:
        """x₀ = x · h(t)^(−e): the value on the host at its mean speed over the study."""
        if value is None or not math.isfinite(value) or exponent == 0:
            return value
        return value * self.factor(t_s) ** (-exponent)

    def max_drift_pct(self) -> float:
        """The largest |h − 1| over the probes, in %."""
        return float(np.max(np.abs(self._level / self.reference - 1.0)) * 100.0)
