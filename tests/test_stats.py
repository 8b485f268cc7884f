"""Statistics on known inputs with outputs that can be checked by hand."""

from __future__ import annotations

import pytest
from scipy import stats as sps

from bench.core import stats


def test_describe_known_values():
    d = stats.describe([10, 12, 14, None])
    assert d["n"] == 3 and d["mean"] == 12 and d["median"] == 12
    assert d["std"] == pytest.approx(2.0)  # sample std of 10, 12, 14
    assert d["cv_pct"] == pytest.approx(2 / 12 * 100)
    assert d["p95"] == pytest.approx(13.8)  # linear interpolation between 12 and 14
    assert stats.describe([]) == {"n": 0}
    one = stats.describe([5.0])
    assert one["std"] == 0 and (one["min"], one["max"]) == (5.0, 5.0)


def test_mad_outlier_rule():
    # median 10, |x - 10| = 0, 1, 1, 0, 20 → MAD = 1; flag when > 2
    values = [10, 11, 9, 10, 30]
    assert stats.mad(values) == 1
    assert stats.mad_outliers(values, k=2) == [False, False, False, False, True]
    # a run exactly at the edge (|x - median| = 2 × MAD) is not flagged
    assert stats.mad_outliers([10, 11, 9, 10, 12], k=2) == [False] * 5
    assert stats.mad_outliers([1, 2], k=2) == [False, False]  # too few runs to judge
    assert stats.mad_outliers([5, None, 5, 5, 7]) == [False, False, False, False, True]


def test_eta_squared_p_value_is_the_one_way_anova():
    # worked by hand: group means 3.1333, 5.1333, 4.0; grand mean 32.8 / 8 = 4.1;
    # SS_between = 3·0.9344 + 3·1.0678 + 2·0.01 = 6.0267; SS_within = 0.1267 + 0.3467 + 0.02 = 0.4933;
    # F = (6.0267 / 2) / (0.4933 / 5) = 30.54 with (2, 5) degrees of freedom
    values = [3.1, 2.9, 3.4, 5.0, 5.6, 4.8, 4.1, 3.9, None]
    groups = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    r = stats.eta_squared(values, groups)
    assert r["n"] == 8 and r["k"] == 3  # the null is dropped with its label
    assert r["eta_sq"] == pytest.approx(6.0267 / (6.0267 + 0.4933), rel=1e-4)
    assert r["p_value"] == pytest.approx(float(sps.f.sf(30.54, 2, 5)), rel=1e-3)
