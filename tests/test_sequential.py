"""The repeated interval, the drift model and the scheduler's rules on inputs worked by hand
(their coverage is proven by simulation in tests/test_sampling_simulation.py)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from bench.core import drift
from bench.core.sequential import LookPlan, compare, critical_value, interval, nominal_level, widen
from bench.study.scheduler import BUDGET, FAILED, MAX_RUNS, TARGET_MET, CellSpec, Observation, Scheduler, Target


def test_one_look_is_the_ordinary_t_interval():
    iv = interval([10, 12, 14, None], LookPlan(3, 3))
    # t(0.975, 2) = 4.302653 and s = 2: half-width 4.302653 · 2 / √3 = 4.96828
    assert (iv.n, iv.mean) == (3, 12)
    assert iv.low == pytest.approx(12 - 4.96828, abs=1e-4) and iv.high == pytest.approx(12 + 4.96828, abs=1e-4)
    assert iv.rel_half_width == pytest.approx(4.96828 / 12, rel=1e-4)


def test_more_looks_cost_width_but_less_than_bonferroni():
    one, many = nominal_level(LookPlan(3, 3)), nominal_level(LookPlan(3, 10))
    assert one == 0.05
    # eight looks: more than α/8 per look (the looks are correlated), less than α
    assert 0.05 / 8 < many < 0.05
    assert critical_value(LookPlan(3, 10), 3) > float(sps.t.isf(0.025, 2))
    # the same plan always gives the same level: the calibration is seeded
    nominal_level.cache_clear()
    assert nominal_level(LookPlan(3, 10)) == many
    # at look n the half-width is t_{1−p*/2, n−1} · s / √n
    iv = interval([10, 11, 12, 13], LookPlan(3, 10))
    assert iv.half_width == pytest.approx(float(sps.t.isf(many / 2, 3)) * math.sqrt(5 / 3) / 2)


def test_a_run_count_beyond_the_plan_is_covered_by_a_stretched_plan():
    plan = LookPlan(3, 4)
    iv = interval([1, 2, 3, 4, 5, 6], plan)
    assert iv.half_width == pytest.approx(critical_value(LookPlan(3, 6), 6) * sps.tstd([1, 2, 3, 4, 5, 6]) / math.sqrt(6))
    assert interval([5.0], plan) is None
    with pytest.raises(ValueError, match="at least 2 runs"):
        LookPlan(1, 3)
    with pytest.raises(ValueError, match="below n_min"):
        LookPlan(4, 3)


def test_compare_and_widen():
    a = interval([100, 101, 99], LookPlan(3, 3))  # half-width 4.303 · 1 / √3 = 2.484
    b = interval([90, 91, 89], LookPlan(3, 3))
    c = compare(a, b)
    assert c["diff"] == 10 and c["winner"] == "a"
    assert c["ci_low"] == pytest.approx(10 - math.hypot(a.half_width, b.half_width))
    assert compare(a, b, higher_is_better=False)["winner"] == "b"
    same = compare(a, interval([100, 103, 97], LookPlan(3, 3)))
    assert same["winner"] is None and same["ci_low"] < 0 < same["ci_high"]
    assert compare(a, None)["winner"] is None
    w = widen(a, 0.03)  # 3 % of 100 in quadrature
    assert w.half_width == pytest.approx(math.hypot(a.half_width, 3.0)) and w.mean == a.mean


def test_the_drift_model_by_hand():
    # probes at 55 and 45 tok/s: the reference is their mean, 50
    series = drift.HostDrift([drift.ProbePoint(100.0, 55.0, 0.5), drift.ProbePoint(200.0, 45.0, 1.0)])
    assert series.reference == 50.0
    assert series.factor(50.0) == pytest.approx(1.1)  # before the first probe: as at the first
    assert series.factor(150.0) == pytest.approx(1.0)  # halfway from 55 to 45
    assert series.factor(500.0) == pytest.approx(0.9)  # after the last: as at the last
    assert series.adjust(18.0, 500.0, +1) == pytest.approx(20.0)  # a rate measured 10 % slow
    assert series.adjust(110.0, 500.0, -1) == pytest.approx(99.0)  # a time measured long
    assert series.adjust(1.9, 500.0, 0) == 1.9  # a ratio of two phases of one run
    assert series.max_drift_pct() == pytest.approx(10.0)
    # the reference's 95 % half-width: 1.96 · √(0.5² + 1²) / 2 / 50
    assert series.reference_rel_half_width == pytest.approx(1.959964 * math.sqrt(1.25) / 2 / 50, rel=1e-5)
    assert [drift.host_exponent(u) for u in ("tok/s", "ms", "s", "×", "%", "ratio")] == [1, -1, -1, 0, 0, 0]
    p = drift.probe_point(0.0, [10.0, 11.0, 12.0, None])
    assert p.level == 11.0 and p.se == pytest.approx(1 / math.sqrt(3))
    assert drift.probe_point(0.0, [None]) is None
    with pytest.raises(ValueError, match="no probe"):
        drift.HostDrift([])


TARGET = Target(metrics=("decode_tps",), rel_half_width=0.05, min_runs=3, max_runs=5)


def _sched(cells, **kw) -> Scheduler:
    return Scheduler([CellSpec(k, b, s, TARGET, suite="single") for k, b, s in cells], seed=1, **kw)


def test_rounds_group_server_states_and_alternate_their_order():
    s = _sched([("a1", "m", "A"), ("a2", "m", "A"), ("b1", "m", "B"), ("c1", "m2", "C")])
    first, second = s.next_round("m"), s.next_round("m")
    states = lambda keys: [k[0].upper() for k in keys]  # noqa: E731 (the state is the key's letter)
    assert sorted(first) == ["a1", "a2", "b1"] and "c1" not in first
    assert states(first) in (list("AAB"), list("BAA"))  # one reload per state
    assert states(second) == states(first)[::-1]  # ABBA: the next round starts where this one ended
    assert s.blocks == ["m", "m2"]


def test_a_config_stops_on_target_only_with_enough_clean_runs():
    s = _sched([("a", "m", "A")])
    for i, v in enumerate([100.0, 100.1, 99.9], start=1):
        s.record("a", Observation(i, {"decode_tps": v}, 1.0))
    assert s.stop_reason("a") == TARGET_MET and s.status("a").met
    s = _sched([("a", "m", "A")])
    # narrow enough at 3 runs, but the rule flags 100.5 (MAD 0): only 2 clean runs, so one more
    for i, v in enumerate([100.0, 100.0, 100.5], start=1):
        s.record("a", Observation(i, {"decode_tps": v}, 1.0))
    st = s.status("a")
    assert st.distance <= 1 and st.clean == 2 and s.stop_reason("a") is None
    s.record("a", Observation(4, {"decode_tps": 100.0}, 1.0))
    assert s.stop_reason("a") == TARGET_MET and s.status("a").clean == 3
    s = _sched([("a", "m", "A")])
    for i, v in enumerate([100.0, 110.0, 90.0, 105.0, 95.0], start=1):  # too noisy for 5 %
        s.record("a", Observation(i, {"decode_tps": v}, 1.0))
    assert s.stop_reason("a") == MAX_RUNS


def test_failures_use_up_run_indices_and_then_stop_the_config():
    s = _sched([("a", "m", "A")])
    for i in range(1, 6):
        assert s.next_index("a") == i
        s.record_failure("a", i)
    assert s.stop_reason("a") == FAILED and s.next_round("m") == []


def test_min_runs_always_run_and_the_budget_stops_the_rest():
    s = _sched([("a", "m", "A"), ("b", "m", "A")], budget_s=10.0)
    for r in range(3):  # mandatory rounds, whatever the budget says
        assert sorted(s.next_round("m", elapsed_s=100.0 * r)) == ["a", "b"]
        for k in ("a", "b"):
            s.record(k, Observation(r + 1, {"decode_tps": 100.0 + 10 * r * (k == "a")}, 5.0))
    assert s.next_round("m", elapsed_s=300.0) == []
    assert s.stop_reason("a") == BUDGET


def test_a_fixed_suite_beside_adaptive_ones_stops_at_its_runs():
    fixed = Target(metrics=("decode_tps",), rel_half_width=1.0, min_runs=1, max_runs=1, fixed=True)
    s = Scheduler([CellSpec("f", "m", "A", fixed, suite="single")], seed=1)
    assert s.next_round("m") == ["f"]
    s.record("f", Observation(1, {"decode_tps": 100.0}, 1.0))
    assert s.stop_reason("f") == "fixed runs" and s.next_round("m") == []
