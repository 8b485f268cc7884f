"""The adaptive study's statistics, proven by simulation at a known truth.

Thousands of simulated studies are driven through the real scheduler (bench/study/scheduler.py), the
real repeated interval (bench/core/sequential.py) and the real drift adjustment (bench/core/drift.py): only
the engine is replaced, by draws from a noise model around a known true value, on a host that
slows linearly or not at all. The controls, which must fail, are the naive rule (a plain
t-interval checked after every run) and the raw (unadjusted) values under drift.

Study layout: two model blocks of two configs each, every config a rate (tok/s, exponent +1) with
its own noise level; the first config of each block has the same true value (an A/A pair measured
at different times, as a placebo model would be). Each run takes RUN_S of simulated time; a probe
(PROBE_CALLS calls, each with its own noise) runs at the start, between rounds once PROBE_EVERY_S
has passed, and at the end. The truth is the config's value on the host at its mean speed over
the probes, which is what the adjustment refers to (bench/core/drift.py); raw values miss it because
each config ran at its own time. Without drift the host's speed is constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from bench.core import drift as host
from bench.core.sequential import LookPlan, compare, interval, widen
from bench.study.scheduler import BUDGET, MAX_RUNS, TARGET_MET, CellSpec, Observation, Scheduler, Target

STUDIES = 2000
HICCUP_P, HICCUP_SCALE = 0.1, 3.0
RUN_S, PROBE_S, PROBE_EVERY_S = 10.0, 5.0, 60.0
PROBE_CALLS, PROBE_CV = 4, 0.03  # two streamed + two plain calls, each as noisy as measured here
DRIFT_PER_S = 0.20 / 600  # the host loses 20 % of its speed in ten minutes
TRUTH = {"m1/a": 100.0, "m1/b": 80.0, "m2/a": 100.0, "m2/b": 60.0}  # m1/a and m2/a: the A/A pair
# Run-to-run noise near the target (CPU studies see 2–10 %): the study must often look several times.
CV = {"m1/a": 0.07, "m1/b": 0.05, "m2/a": 0.06, "m2/b": 0.08}
TARGET = Target(metrics=("decode_tps",), rel_half_width=0.05, min_runs=3, max_runs=15)


def _noise(kind: str, rng: np.random.Generator, cv: float, size=None) -> np.ndarray:
    """Multiplicative noise with mean 1 and standard deviation cv."""
    if kind == "normal":
        return 1.0 + cv * rng.standard_normal(size)
    if kind == "lognormal":  # right-skewed, as run times are
        s = math.sqrt(math.log(1 + cv * cv))
        return np.exp(s * rng.standard_normal(size) - s * s / 2)
    if kind == "heavy":  # hiccups: 1 run in 10 slowed by an exponential amount (a long one-sided tail)
        x = rng.standard_normal(size) - HICCUP_SCALE * rng.exponential(1.0, size) * (rng.random(size) < HICCUP_P)
        mean = -HICCUP_SCALE * HICCUP_P
        sd = math.sqrt(1.0 + HICCUP_SCALE ** 2 * (2 * HICCUP_P - HICCUP_P ** 2))
        return 1.0 + cv * (x - mean) / sd
    raise ValueError(kind)


def _naive(values, plan: LookPlan):
    """The control: a plain 95 % t-interval at every look, as if each look were the only one."""
    n = sum(v is not None for v in values)
    return interval(values, LookPlan(max(n, 2), max(n, 2), plan.confidence))


@dataclass
class Study:
    final: dict[str, list[float]]  # raw values per config when it stopped
    adjusted: dict[str, list[float]]
    reasons: dict[str, str]
    drift: host.HostDrift
    host_mean: float  # the true host speed averaged over the probe times: what adjusted values refer to


def simulate(kind: str, slope: float, seed: int, interval_fn=interval, budget_s: float | None = None) -> Study:
    rng = np.random.default_rng(seed)
    cells = [CellSpec(k, k.split("/")[0], k, TARGET, suite="single", est_run_s=RUN_S) for k in TRUTH]
    sched = Scheduler(cells, seed=seed, budget_s=budget_s, interval_fn=interval_fn)
    clock = {"t": 0.0, "last_probe": -1e9}
    probes: list[host.ProbePoint] = []
    true_levels: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in TRUTH}

    def h(t: float) -> float:
        return 1.0 - slope * t

    def probe():
        rates = 50.0 * h(clock["t"]) * _noise("normal", rng, PROBE_CV, PROBE_CALLS)
        probes.append(host.probe_point(clock["t"] + PROBE_S / 2, list(rates)))
        true_levels.append(h(clock["t"]))
        clock["t"] += PROBE_S
        clock["last_probe"] = clock["t"]

    probe()
    for block in sched.blocks:
        while True:
            if clock["t"] - clock["last_probe"] >= PROBE_EVERY_S:
                probe()
            chosen = sched.next_round(block, elapsed_s=clock["t"])
            if not chosen:
                break
            for key in chosen:
                t_mid = clock["t"] + RUN_S / 2
                value = TRUTH[key] * h(t_mid) * float(_noise(kind, rng, CV[key]))
                times[key].append(t_mid)
                sched.record(key, Observation(sched.next_index(key), {"decode_tps": value}, RUN_S))
                clock["t"] += RUN_S
        probe()  # between model blocks, as the runner does
    drift = host.HostDrift(probes)
    final = {k: [o.values["decode_tps"] for o in sched._cells[k].runs] for k in TRUTH}
    adjusted = {k: [drift.adjust(v, t, +1) for v, t in zip(final[k], times[k])] for k in TRUTH}
    return Study(final, adjusted, {k: sched.stop_reason(k) for k in TRUTH}, drift,
                 float(np.mean(true_levels)))


@dataclass
class Verdicts:
    coverage: float  # share of config intervals, at their stopping time, that hold the truth
    aa_false_positive: float  # share of studies whose A/A pair was called different
    runs: float  # mean runs per config


def evaluate(kind: str, slope: float, interval_fn=interval) -> dict[str, Verdicts]:
    """STUDIES simulated studies, judged on their raw values and on their drift-adjusted ones."""
    tally = {"raw": [0, 0, 0], "adjusted": [0, 0, 0]}
    total = 0
    for seed in range(STUDIES):
        s = simulate(kind, slope, seed, interval_fn=interval_fn)
        total += len(TRUTH)
        for how, values in (("raw", s.final), ("adjusted", s.adjusted)):
            ivs = {}
            for k, xs in values.items():
                iv = interval_fn(xs, TARGET.looks)
                if how == "adjusted":  # every adjusted run shares the reference's error
                    iv = widen(iv, s.drift.reference_rel_half_width)
                ivs[k] = iv
                # the config's value on the host at its mean speed (what the adjustment refers to)
                tally[how][0] += iv.low <= TRUTH[k] * s.host_mean <= iv.high
                tally[how][2] += len(xs)
            tally[how][1] += compare(ivs["m1/a"], ivs["m2/a"])["winner"] is not None
    return {how: Verdicts(c / total, fp / STUDIES, r / total) for how, (c, fp, r) in tally.items()}


@pytest.mark.parametrize("kind", ["normal", "lognormal", "heavy"])
def test_repeated_interval_covers_at_the_stopping_time_and_the_naive_rule_does_not(kind):
    ours = evaluate(kind, 0.0)["raw"]
    naive = evaluate(kind, 0.0, interval_fn=_naive)["raw"]
    print(f"{kind}, no drift: repeated {ours}; naive {naive}")
    assert ours.coverage >= 0.94
    assert ours.aa_false_positive <= 0.05
    assert naive.coverage < 0.94  # the control: peeking with a fixed-n interval covers less than it claims


@pytest.mark.parametrize("kind", ["normal", "lognormal", "heavy"])
def test_drift_adjusted_values_cover_the_truth_and_raw_ones_do_not(kind):
    both = evaluate(kind, DRIFT_PER_S)
    adjusted, raw = both["adjusted"], both["raw"]
    print(f"{kind}, drift: adjusted {adjusted}; raw {raw}")
    assert adjusted.coverage >= 0.94
    assert adjusted.aa_false_positive <= 0.05  # the placebo pair comes out "no difference"
    assert raw.coverage < 0.94
    assert raw.aa_false_positive > 0.05


def test_stop_reasons_and_the_budget():
    s = simulate("normal", 0.0, 1)
    assert set(s.reasons.values()) <= {TARGET_MET, MAX_RUNS}
    tight = simulate("normal", 0.0, 1, budget_s=4 * 3 * RUN_S + 30)  # min runs and a little more
    assert BUDGET in set(tight.reasons.values())
    assert all(len(v) >= TARGET.min_runs for v in tight.final.values())  # min runs are always run
