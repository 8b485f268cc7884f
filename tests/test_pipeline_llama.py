"""The whole job on the embedded runtime with real inference: up, bench, report, down, resume."""

from __future__ import annotations

import json

import pytest

from bench.core.store import schema_errors

from conftest import invoke, smoke_variant

pytestmark = pytest.mark.llama


def test_up_bench_report_down_and_resume(tmp_path):
    path = smoke_variant(tmp_path, lambda d: (d["single"].update(runs=2, ctx=[512, 1024]),
                                              d["multi"].update(enabled=True, scenarios=["chimera_homo"]),
                                              d["models"].pop(1)))
    results = tmp_path / "results"
    p = str(path)
    proc = invoke("up", "--profile", p, "bench", "--profile", p, "--no-progress", "report", "--profile", p,
                  "down", "--profile", p, results=results)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study = results / "test"
    runs = sorted(study.glob("*/*/*/*/run_*/metrics.json"))
    assert len(runs) == 2 * 2 + 1  # single: 2 ctx × 2 runs; multi: 1 scenario × 1 run
    for r in runs:
        assert schema_errors(json.loads(r.read_text())) == []
    cell = study / "single/python/gemma3-270m/gpu0_ctx512_temp08"
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["runs_found"] == 2 and summary["metrics"]["decode_tps"]["n"] == 2
    assert "| throughput (tok/s, server)" in (cell / "summary.md").read_text()
    report = (study / "Technical_Report_116.md").read_text()
    assert "gemma3-270m" in report and "`speedup = seq_s / wall_s`" in report
    assert not list((results / ".runtime").glob("*.json"))  # down stopped both servers

    # Interrupted study: one run lost → the same command redoes only that run.
    victim = cell / "run_2" / "metrics.json"
    before = {r: r.stat().st_mtime_ns for r in runs if r != victim}
    victim.unlink()
    proc = invoke("bench", "--profile", p, "--no-progress", "down", "--profile", p, results=results)
    assert proc.returncode == 0, proc.stderr
    assert "1 runs done, 4 already there" in proc.stdout
    assert victim.is_file()
    assert all(r.stat().st_mtime_ns == t for r, t in before.items())  # finished runs untouched
