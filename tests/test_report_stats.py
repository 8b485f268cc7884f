"""The report's statistics on known inputs: bootstrap CI, the winner rule, MAD flags in the tables,
the variance decomposition, and the outlier-rerun rule. Each expected value is worked out by hand."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest

from bench.analysis import tables as analysis
from bench.analysis.findings import central_answer
from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core import stats
from bench.core.records import RunDocument
from bench.core.sequential import LookPlan, compare, interval
from bench.core.store import Store
from bench.study.outliers import cell_flags, outlier_flags, plan_outlier_reruns

from test_records import FIXTURE_ROOT as FIXTURE
from test_report import make_profile, synthetic_doc


def test_winner_rule():
    """The comparison rule (sequential.compare) on the configs' own intervals."""
    plan = LookPlan(3, 3)
    clear = compare(interval([10, 11, 12], plan), interval([1, 2, 3], plan))
    assert clear["winner"] == "a" and clear["ci_low"] > 0
    # same values in another order: the interval straddles 0, nobody wins
    tie = compare(interval([1, 2, 3], plan), interval([3, 1, 2], plan))
    assert tie["diff"] == 0 and tie["ci_low"] < 0 < tie["ci_high"] and tie["winner"] is None
    # lower is better (TTFT): the group with the larger mean loses
    assert compare(interval([300, 310, 305], plan), interval([100, 110, 105], plan),
                   higher_is_better=False)["winner"] == "b"
    # one run has no interval: nothing is called
    assert compare(interval([100], plan), interval([1, 2, 3], plan))["winner"] is None


def test_winners_table_names_the_leader_only_when_significant():
    rows = []
    for k, (a, b) in enumerate([(100, 50), (101, 51), (99, 49)], start=1):
        rows += [{"suite": "single", "lang": "python", "case": "c1", "model": "fast", "run": k, "decode_tps": a},
                 {"suite": "single", "lang": "python", "case": "c1", "model": "slow", "run": k, "decode_tps": b}]
    for k, (a, b) in enumerate([(1.8, 1.85), (1.9, 1.75), (1.7, 1.95)], start=1):
        rows += [{"suite": "multi", "lang": "rust", "case": "s1", "model": "fast", "run": k, "speedup": a},
                 {"suite": "multi", "lang": "rust", "case": "s1", "model": "slow", "run": k, "speedup": b}]
    win = analysis.winners(pd.DataFrame(rows).assign(ran_as="")).set_index("bench")
    assert win.loc["single-python", "winner"] == "fast" and win.loc["single-python", "diff"] == 50
    # means 1.80 vs 1.85: "slow" leads, but the CI of +0.05 includes 0
    assert win.loc["multi-rust", "leader"] == "slow"
    assert win.loc["multi-rust", "verdict"] == "no significant difference"
    assert win.loc["multi-rust", "ci_low"] < 0 < win.loc["multi-rust", "ci_high"]


def test_winners_compare_like_with_like():
    """A model the fallback ladder downgraded ran another config: no winner, and the verdict says
    why; models downgraded alike are compared."""
    rows = [{"suite": "single", "lang": "python", "case": "gpu80", "model": m, "run": k, "decode_tps": v + k,
             "ran_as": ran} for m, v, ran in (("fast", 100, ""), ("slow", 50, "gpu_layers 60")) for k in (1, 2, 3)]
    (row,) = analysis.winners(pd.DataFrame(rows)).to_dict(orient="records")
    assert row["winner"] is None and row["verdict"] == "not compared: slow ran gpu_layers 60 (fallback ladder)"
    (row,) = analysis.winners(pd.DataFrame(rows).assign(ran_as="gpu_layers 60")).to_dict(orient="records")
    assert row["winner"] == "fast" and row["ran_as"] == "gpu_layers 60"


def test_eta_squared_known_values():
    # group means 1.5 and 3.5, grand mean 2.5: SS_between = 2·1 + 2·1 = 4, SS_total = 5 → η² = 0.8;
    # F = (4/1) / (1/2) = 8 on (1, 2) df, i.e. t = √8 on 2 df: p = 1 − t/√(t² + 2) = 1 − √0.8
    r = stats.eta_squared([1, 2, 3, 4], ["x", "x", "y", "y"])
    assert r["eta_sq"] == pytest.approx(0.8)
    assert r["p_value"] == pytest.approx(1 - math.sqrt(0.8))
    # all variance between groups, none within: η² = 1 and no F-test
    assert stats.eta_squared([1, 1, 3, 3], ["x", "x", "y", "y"]) == {"n": 4, "k": 2, "eta_sq": 1.0, "p_value": None}
    # a factor that did not vary explains nothing measurable
    assert stats.eta_squared([1, 2, 3], ["x", "x", "x"])["eta_sq"] is None


def test_variance_decomposition_answers_the_central_question():
    # speedup depends on the scenario only (≈1.9 vs ≈1.25), the model adds nothing
    rows = []
    for model in ("m1", "m2"):
        for scenario, values in (("homo", (1.9, 2.0, 1.85)), ("hetero", (1.2, 1.3, 1.25))):
            for k, v in enumerate(values, start=1):
                rows.append({"suite": "multi", "lang": "python", "model": model, "case": scenario, "run": k,
                             "cell": f"{model}/{scenario}", "speedup": v, "evenness_pct": 90.0 + k})
    var = analysis.variance_shares(pd.DataFrame(rows))
    shares = var[var["metric"] == "speedup"].set_index("factor")
    assert shares.loc["model", "eta_sq"] == pytest.approx(0.0, abs=1e-12)
    assert shares.loc["case", "eta_sq"] > 0.95 and shares.loc["case", "p_value"] < 0.001
    assert pd.isna(shares.loc["language", "eta_sq"])  # one language: not varied
    assert shares.loc["run-to-run (within config)", "eta_sq"] == pytest.approx(1 - shares.loc["config (all factors)",
                                                                                            "eta_sq"])
    answer = central_answer(var, "multi", "speedup")
    assert answer["verdict"] == "architecture dominates (scenario)"
    # evenness varies only with the run index: no factor is significant
    assert central_answer(var, "multi", "evenness_pct")["verdict"].startswith("no factor is significant")


def test_mad_flags_in_summaries_and_tables():
    # median 11, |x − 11| = 1, 0, 19 → MAD 1: only 30 is beyond 2 × MAD; a missing value is never flagged
    runs = [{"decode_tps": v, "ttft_ms": 100.0} for v in (10.0, 11.0, 30.0, None)]
    flags = outlier_flags(runs, "single", 2.0)
    assert flags == {"decode_tps": [False, False, True, False], "ttft_ms": [False] * 4}
    assert outlier_flags([{"speedup": v} for v in (1.9, 1.0, 1.95)], "multi") == {"speedup": [False, True, False]}


def _write(store, cell, values):
    for k, v in values.items():
        store.write_metrics(cell.rel_dir / f"run_{k}", RunDocument.model_validate(synthetic_doc(cell, k, v, store.root.name)))


def test_outlier_reruns_until_enough_clean_runs_within_budget(tmp_path):
    loaded = load_profile(make_profile(tmp_path, lambda d: d["multi"].update(enabled=False)))
    profile = loaded.profile
    plan = build_plan(profile, langs=["python"], models=["gemma3:latest"])
    cell = plan.cells[0]
    store = Store(profile.study, tmp_path / "results")
    _write(store, cell, {1: 10.0, 2: 11.0, 3: 30.0})
    # run 3 is flagged: 2 clean runs of the 3 planned → one extra run, numbered after the last
    extra = plan_outlier_reruns(profile, store, plan)
    assert [(i.cell, i.run_index) for i in extra] == [(cell, 4)]
    # run 4 is clean: median 10.75, MAD 0.5 → only 30 is flagged, 3 clean runs: done
    _write(store, cell, {4: 10.5})
    assert plan_outlier_reruns(profile, store, plan) == []
    # a failed extra run still uses budget: with runs 4 and 5 failed, the budget of 2 is spent
    store2 = Store("other", tmp_path / "results")
    _write(store2, cell, {1: 10.0, 2: 11.0, 3: 30.0})
    for k in (4, 5):
        assert [i.run_index for i in plan_outlier_reruns(profile, store2, plan)] == [k]
        store2.log_failure({"cell": cell.key, "run_index": k, "error_kind": "timeout",
                            "fallback": "run not counted; rerun the study to retry it"})
    assert plan_outlier_reruns(profile, store2, plan) == []


def test_no_reruns_without_budget(tmp_path):
    loaded = load_profile(make_profile(tmp_path, lambda d: d.update(outliers={"mad_k": 2.0, "max_extra_runs": 0})))
    plan = build_plan(loaded.profile, langs=["python"], suites=["single"], models=["gemma3:latest"])
    store = Store(loaded.profile.study, tmp_path / "results")
    _write(store, plan.cells[0], {1: 10.0, 2: 11.0, 3: 30.0})
    assert plan_outlier_reruns(loaded.profile, store, plan) == []


def test_the_rerun_planner_reads_the_flags_the_analysis_shows(tmp_path):
    """One rule, two readers: from the stored documents (the runner's rerun planner, no analysis)
    and from the analysis's frames, every run of every config gets the same flags: on the stored
    study (real runs, some flagged), and on a config with a misplaced run (listed, never flagged,
    and out of the median and MAD of the others)."""
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    store = Store("smoke", root=tmp_path)
    results = analysis.load_tables(store, 2.0)
    cells = sorted({run.cell_key for run in store.iter_runs()})
    from_docs = {key: cell_flags([run.doc for run in store.iter_runs(key)], 2.0) for key in cells}
    assert from_docs == {key: analysis.cell_flags(results, key) for key in cells}
    assert sum(bool(m) for flags in from_docs.values() for m in flags.values()) >= 2

    loaded = load_profile(make_profile(tmp_path, lambda d: d["multi"].update(enabled=False)))
    cell = build_plan(loaded.profile, langs=["python"], models=["gemma3:latest"]).cells[0]
    store = Store(loaded.profile.study, tmp_path / "results")
    _write(store, cell, {1: 10.0, 2: 10.0, 3: 11.0, 4: 13.0})
    misplaced = dict(synthetic_doc(cell, 5, 13.0, store.root.name),
                     placement={"after_load": {}, "end_of_run": {}, "issues": ["4 of 27 layers on the CPU"]})
    store.write_metrics(cell.rel_dir / "run_5", RunDocument.model_validate(misplaced))
    docs = [run.doc for run in store.iter_runs(cell.rel_dir)]
    # runs 1–4: median 10.5, MAD 0.5, so 13 is flagged; with run 5 counted the median would be 11
    # and MAD 1, and 13 would not be
    expected = {1: [], 2: [], 3: [], 4: ["decode_tps"], 5: []}
    assert cell_flags(docs, 2.0) == analysis.cell_flags(analysis.load_tables(store, 2.0), cell.key) == expected
