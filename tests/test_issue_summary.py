"""The paste-ready block `invoke report` writes: fingerprint, models, headline figures, verdicts."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from scipy import stats as sps

from bench.config.profile import resolve_profile
from bench.core import fmt
from bench.core.sequential import LookPlan, nominal_level
from bench.core.store import ISSUE_SUMMARY, Store
from bench.report.markdown import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "stored-study" / "smoke"


def test_report_writes_a_short_block_with_figures_and_verdicts(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "smoke")
    store = Store("smoke", root=tmp_path)
    write_report(resolve_profile("smoke"), store)
    text = (store.root / ISSUE_SUMMARY).read_text()
    lines = text.splitlines()
    assert len(lines) <= 30, len(lines)

    # the host in one line, derived (the fixture predates the fingerprint) and saying what it lacks
    host = next(line for line in lines if line.startswith("- host `"))
    assert "AMD EPYC · 2 cores · 23.5 GiB RAM · no GPU" in host and "ollama 0.17.4" in host
    assert "not recorded: cores_physical" in host
    # both models with their digests, the baseline named
    models = next(line for line in lines if line.startswith("- models: "))
    assert "gemma3-270m (baseline): GGUF sha256 `a5fd3b62230a`, Ollama digest `cbe2f8ce47f0`" in models
    assert "smollm2-135m: GGUF sha256 `b179c9523d0e`, Ollama digest `eafe44428a73`" in models

    # one headline figure worked out by hand from the stored runs: the repeated interval of a config
    # that ran 3 runs plus at most 1 outlier rerun (looks at 3 and 4): mean ± t(1 − p*/2, n−1)·s/√n
    cfg = store.root / "single" / "python" / "gemma3-270m" / "gpu0_ctx512_temp08"
    xs = [json.loads(p.read_text())["metrics"]["decode_tps"] for p in sorted(cfg.glob("run_*/metrics.json"))]
    p_star = nominal_level(LookPlan(3, 4))
    mean = statistics.fmean(xs)
    half = sps.t.isf(p_star / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    want = f"{fmt.num(mean)} [{fmt.num(mean - half)}, {fmt.num(mean + half)}] (n={len(xs)})"
    row = next(line for line in lines if line.startswith("| single-python | gpu0_ctx512_temp08 "))
    assert "throughput (tok/s, server)" in row and want in row.split("|")[4], (want, row)
    # every bench has its rows: 2 single configs and 2 multi scenarios per language
    for bench in ("single-python", "single-rust", "multi-python", "multi-rust"):
        assert sum(line.startswith(f"| {bench} ") for line in lines) == 2, bench

    # the verdict lines are the findings' own
    found = json.loads((store.root / "tables" / "findings.json").read_text())
    for key, answer in ((k, a) for k, a in found["central_answers"].items() if a):  # None: not measured
        assert any(f"**{answer['verdict']}**" in line for line in lines), key
    winner = next(w for w in found["winners"] if w["bench"] == "single-python" and w["winner"])
    assert any(line.startswith("- single-agent Python winner: ") and f"{winner['case']} → **{winner['winner']}**"
               in line for line in lines)
