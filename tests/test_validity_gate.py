"""Reconciliation as a validity gate (bench/analysis/validity.py): a run whose median client-vs-engine
gap is over its API's bound (bench/data/validity.yaml) is flagged with the reason, kept out of the
headline tables and listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis import tables, validity
from bench.core.errors import BenchError
from bench.core.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "stored-study"
BOUNDS = validity.ValidityBounds(ollama={"ttft_unaccounted_ms": 500, "decode_overstatement_pct": 25},
                                 openai={"ttft_unaccounted_ms": 250, "decode_overstatement_pct": 25})


def _calls(cell, run, suite, phase, api, unaccounted, overstatement, n=3):
    return [{"cell": cell, "run": run, "suite": suite, "phase": phase, "api": api,
             "ttft_unaccounted_ms": unaccounted, "decode_overstatement_pct": overstatement}] * n


def test_a_run_over_its_apis_bound_is_flagged_with_the_reason():
    requests = pd.DataFrame(_calls("s/a", 1, "single", "single", "ollama", 120, 5)
                            + _calls("s/a", 2, "single", "single", "ollama", 800, 5)
                            + _calls("s/b", 1, "single", "single", "openai", 300, 30)
                            + _calls("s/b", 2, "single", "single", "openai", None, None))
    flags = validity.validity_flags(requests, BOUNDS).set_index(["cell", "run"])["validity_flag"]
    assert flags[("s/a", 1)] == ""
    assert flags[("s/a", 2)] == "median ttft_unaccounted_ms 800.0 ms > 500 ms (ollama)"
    # the same 300 ms passes Ollama's bound and fails llama-server's; both reasons are given
    assert flags[("s/b", 1)] == ("median ttft_unaccounted_ms 300.0 ms > 250 ms (openai); "
                                 "median decode_overstatement_pct 30.0 % > 25 % (openai)")
    assert flags[("s/b", 2)] == ""  # nothing to judge


def test_the_steps_suite_is_gated_on_its_alone_calls_not_on_the_slot_wait_under_load():
    # together, a call waits for another agent's slot by design: that wait is what goodput measures
    requests = pd.DataFrame(_calls("st", 1, "steps", "alone", "ollama", 50, 4)
                            + _calls("st", 1, "steps", "together", "ollama", 4000, 4, n=6))
    assert validity.validity_flags(requests, BOUNDS)["validity_flag"].tolist() == [""]
    requests = pd.DataFrame(_calls("st", 1, "steps", "alone", "ollama", 900, 4))
    assert validity.validity_flags(requests, BOUNDS)["validity_flag"].tolist() != [""]


def test_a_flagged_run_is_kept_out_of_the_headline_tables_and_listed(tmp_path):
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    store = Store("smoke", root=tmp_path)
    cell = "single/python/smollm2-135m/gpu0_ctx512_temp08"
    path = tmp_path / "smoke" / cell / "run_2" / "metrics.json"
    doc = json.loads(path.read_text())
    for rec in doc["requests"]:  # the client waited 1 s more than the engine accounts for (a client queue)
        rec["ttft_ms"] += 1000
        rec["e2e_ms"] += 1000
    path.write_text(json.dumps(doc))
    results = tables.load_tables(store)
    assert list(zip(results.invalid["cell"], results.invalid["run"])) == [(cell, 2)]
    assert results.invalid["validity_flag"].iloc[0].startswith("median ttft_unaccounted_ms 10")
    assert not ((results.runs["cell"] == cell) & (results.runs["run"] == 2)).any()
    assert (results.runs["validity_flag"] == "").all()
    assert results.configs.set_index("cell").loc[cell, "n"] == 3  # 4 stored runs, one kept out
    assert 2 in set(results.cell_runs(cell)["run"])  # still listed with its config's runs
    out = tables.export_tables(store, results)
    assert "validity_flag" in out["invalid_runs"].read_text()


def test_the_bounds_file_is_validated(tmp_path):
    assert validity.load_validity() == validity.load_validity(validity.VALIDITY_FILE)
    bad = tmp_path / "validity.yaml"
    bad.write_text("ollama: {ttft_unaccounted_ms: 500, decode_overstatement_pct: 25}\n"
                   "openai: {ttft_unaccounted_ms: -1, decode_overstatement_pct: 25, extra: 1}\n")
    with pytest.raises(BenchError, match=r"openai.ttft_unaccounted_ms: .*greater than 0.*openai.extra"):
        validity.load_validity(bad)


def test_the_report_lists_each_kept_out_run_with_its_reason_and_goodput_per_config():
    from types import SimpleNamespace

    from bench.config.profile import ServiceLevelObjective
    from bench.report import report_sections

    invalid = pd.DataFrame([{"cell": "single/x", "run": 2, "validity_flag": "median ttft_unaccounted_ms 900.0 ms > "
                                                                              "500 ms (ollama)"}])
    tab = pd.DataFrame([{"cell": "steps/x", "ran_as": "", "runs": 4, "failed_attempts": 1, "calls": 16,
                         "calls_met": 9, "goodput_pct": 56.25, "goodput_ci_low": 10.0, "goodput_ci_high": 90.0,
                         "design_effect": 1.5, "agent_goodput_pct": 37.5, "slo_ttft_pct": 68.75,
                         "slo_decode_pct": 62.5, "slo_e2e_pct": 100.0, "breaks_first": "decode"}])
    out = SimpleNamespace(profile=SimpleNamespace(slo=ServiceLevelObjective(ttft_ms=1000, decode_tps=20, e2e_ms=5000)),
                          results=SimpleNamespace(invalid=invalid, derived={"goodput": tab}))
    section = report_sections.goodput_and_validity(out)
    assert "| single/x" in section["invalid_runs"] and "900.0 ms > 500 ms (ollama)" in section["invalid_runs"]
    assert "56.2 % [10.0 %, 90.0 %]" in section["goodput_table"] and "4 (1 failed)" in section["goodput_table"]
    assert "| decode" in section["goodput_table"]
    assert section["validity_bounds"]["ollama"]["ttft_unaccounted_ms"] == 500
    assert report_sections.goodput_and_validity in report_sections.SECTIONS
