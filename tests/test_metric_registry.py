"""The run-metric registry (bench/core/metrics.py RUN_METRICS) drives the tables and the labels: a
metric given a role appears in every table that role drives, and plots name a metric as the
registry does."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from bench.analysis import findings
from bench.analysis import tables as analysis
from bench.config.profile import resolve_profile
from bench.core import metrics
from bench.core.store import Store
from bench.report import plots, summary

from test_stored_study import FIXTURE

# a run column every stored run has, and no table lists today
NEW = "tokens_out"


def _analysed(root, extra: tuple = ()):
    """The stored study analysed (and one single-agent summary made) with `extra` entries
    appended to the registry."""
    shutil.copytree(FIXTURE / "smoke", root / "smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "RUN_METRICS", (*metrics.RUN_METRICS, *extra))
        store = Store("smoke", root=root)
        profile = resolve_profile("smoke").profile
        cells, _ = analysis.study_cells(store, profile)
        results = analysis.build(store, profile, cells)
        made = summary.summarize_cell(store, next(c for c in cells if c.suite == "single"), results)
    return results, made


@pytest.fixture(scope="module")
def with_new_metric(tmp_path_factory):
    """`tokens_out` registered as a single-agent metric with every table role."""
    entry = metrics.RunMetric(NEW, "single", "output tokens (per run)", True, None,
                              frozenset({metrics.NORMALIZED, metrics.LANG_DELTA, metrics.VARIANCE, metrics.CENTRAL,
                                         metrics.CONFIG_STAT, metrics.RUN_COLUMN, metrics.OUTLIER}), own_unit="tok")
    return _analysed(tmp_path_factory.mktemp("registry"), (entry,))


def test_a_role_puts_the_metric_in_every_table_it_drives(with_new_metric):
    results, made = with_new_metric
    derived = results.derived
    for table in ("normalized", "lang_deltas", "variance"):
        assert NEW in set(derived[table]["metric"]), table
        assert set(derived[table][derived[table]["metric"] == NEW]["suite"]) == {"single"}, table
    assert f"single:{NEW}" in results.findings["central_answers"]
    single = results.configs[results.configs["suite"] == "single"]
    assert single[f"{NEW}_mean"].notna().all()
    assert f"outlier_{NEW}" in results.runs and NEW in made["outliers"]
    assert all(NEW in run for run in made["runs"])


def test_without_the_role_the_tables_stay_as_they_were(tmp_path):
    """The control: the same study without the new entry lists none of it."""
    results, made = _analysed(tmp_path)
    for table in ("normalized", "lang_deltas", "variance"):
        assert NEW not in set(results.derived[table]["metric"]), table
    assert f"{NEW}_mean" not in results.configs and f"outlier_{NEW}" not in results.runs
    assert not any(k.endswith(f":{NEW}") for k in results.findings["central_answers"])
    assert NEW not in made["outliers"] and not any(NEW in run for run in made["runs"])


def test_the_queries_answer_in_registry_order():
    assert metrics.with_role(metrics.LANG_DELTA, "single") == ("decode_tps", "decode_tps_client", "ttft_ms")
    assert metrics.role_pairs(metrics.VARIANCE) == (("single", "decode_tps"), ("single", "ttft_ms"),
                                                    ("multi", "speedup"), ("multi", "evenness_pct"),
                                                    ("steps", "speedup"))
    # the central section answers the multi-agent questions first
    assert findings.central_questions()[0] == ("multi", "speedup")
    assert metrics.key_metrics("multi") == {m: metrics.label(m, "multi") for m in metrics.with_role(metrics.KEY,
                                                                                                   "multi")}


def test_plots_name_a_metric_as_the_registry_does(tmp_path, monkeypatch):
    drawn = {}

    def record(df, metric, group_col, ylabel, *args, **kwargs):
        drawn[metric] = ylabel
        return None

    monkeypatch.setattr(plots, "_by_lang_figure", record)
    configs = pd.read_csv(FIXTURE / "tables" / "configs.csv", keep_default_na=False)
    plots.write_plots(tmp_path, configs, pd.DataFrame())
    assert drawn == {"decode_tps": "throughput (tok/s, server)", "ttft_ms": "TTFT (ms)", "speedup": "speedup (×)"}
    assert drawn["decode_tps"] == metrics.label("decode_tps", "single")


def test_bad_lookups_are_clear_errors():
    with pytest.raises(KeyError, match="no run metric 'nope'"):
        metrics.label("nope")
    with pytest.raises(ValueError, match="unknown metric role"):
        metrics.with_role("winner", "single")
    with pytest.raises(ValueError, match="unknown roles"):
        metrics.RunMetric("x", "single", "x", True, "decode_tps", frozenset({"bogus"}))
    with pytest.raises(ValueError, match="one of them"):
        metrics.RunMetric("x", "single", "x", True, None)
