"""`invoke compare`: two copies of the stored study, one of them edited, matched and merged.

No engine is needed: the copies are the fixture's real runs, with a model's file, a setting, the
host or the numbers changed in one of them, and the merged figures are checked by hand.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest

from bench.core import fmt
from bench.core.errors import BenchError
from bench.core.manifest import parse
from bench.core.sequential import LookPlan, critical_value
from bench.core.store import COMPARISON_STUDIES, COMPARISON_TABLE, COMPARISON_VARIANCE
from bench.host import fingerprint
from bench.report.compare import ALL_FACTORS, WITHIN, compare

from conftest import invoke

FIXTURE = Path(__file__).parent / "fixtures" / "stored-study" / "smoke"
CONFIG = "single/python/gemma3-270m/gpu0_ctx512_temp08"


def copy_study(tmp_path: Path, name: str, manifest=None, run=None, runs: str = "*/*/*/*/run_*/metrics.json") -> Path:
    """The fixture under tmp_path/name; `manifest(m)` edits its manifest, `run(doc)` each run's
    metrics.json matched by `runs`."""
    root = tmp_path / name
    shutil.copytree(FIXTURE, root)
    if manifest:
        m = json.loads((root / "manifest.json").read_text())
        manifest(m)
        (root / "manifest.json").write_text(json.dumps(m))
    if run:
        for p in root.glob(runs):
            doc = json.loads(p.read_text())
            run(doc)
            p.write_text(json.dumps(doc))
    return root


def decode_tps(root: Path, config: str = CONFIG) -> list[float]:
    paths = sorted((root / config).glob("run_*/metrics.json"))
    return [json.loads(p.read_text())["metrics"]["decode_tps"] for p in paths]


def other_host(m: dict) -> None:
    m["host"].update(cpu="Intel Xeon", cores=8, physical_cores=4)
    m["fingerprint"] = fingerprint.derive(parse(m)).model_dump()


def double_decode_tps(doc: dict) -> None:
    doc["metrics"]["decode_tps"] *= 2


def test_a_changed_model_file_is_refused_then_listed_when_allowed(tmp_path, results_dir):
    """The model's identity (tests/test_model_identity.py): here its GGUF file's sha256."""
    a = copy_study(tmp_path, "hostA")
    b = copy_study(tmp_path, "hostB", manifest=lambda m: m["models"][0].update(file_sha256="0" * 64))
    with pytest.raises(BenchError) as err:
        compare([str(a), str(b)])
    msg = str(err.value)
    assert "refusing to compare" in msg and "--allow-mismatch" in msg
    assert "model gemma3-270m: file_sha256 `a5fd3b62230a` in hostA vs `000000000000` in hostB" in msg
    assert "smollm2" not in msg  # the other model is the same in both
    assert not results_dir.exists()  # nothing written

    result = compare([str(a), str(b)], allow_mismatch=True, out="allowed")
    text = result.markdown.read_text()
    assert "## Differences accepted with `--allow-mismatch`" in text
    assert "- model gemma3-270m: file_sha256 `a5fd3b62230a` in hostA vs `000000000000` in hostB" in text
    assert result.matched == 16  # compared by name once allowed


def test_a_changed_server_setting_is_refused_with_what_differs(tmp_path, results_dir):
    a = copy_study(tmp_path, "hostA")

    def two_slots(doc):
        doc["placement"]["after_load"]["collector"]["parallel"] = 2

    b = copy_study(tmp_path, "hostB", run=two_slots, runs=f"{CONFIG}/run_*/metrics.json",
                   manifest=lambda m: m["runtime"]["settings"].update(OLLAMA_NUM_PARALLEL="2"))
    with pytest.raises(BenchError) as err:
        compare([str(a), str(b)])
    msg = str(err.value)
    assert f"setting `server.collector.parallel`: hostA=1, hostB=2 (1 config(s): {CONFIG})" in msg
    assert "runtime `settings.OLLAMA_NUM_PARALLEL`: hostA=1, hostB=2" in msg
    assert "OLLAMA_MODELS" not in msg  # a host path, not a setting


def test_two_hosts_merge_with_host_as_a_factor(tmp_path, results_dir):
    a = copy_study(tmp_path, "hostA")
    b = copy_study(tmp_path, "hostB", manifest=other_host, run=double_decode_tps,
                   runs="single/*/*/*/run_*/metrics.json")
    result = compare([str(a), str(b)], out="merged")
    table = pd.read_csv(result.folder / COMPARISON_TABLE)
    assert result.matched == 16 and result.only_in == [] and result.mismatches == []

    # one config by hand: B's runs are A's with decode_tps doubled
    xs, ys = decode_tps(a), decode_tps(b)
    assert ys == [2 * x for x in xs] and len(xs) >= 2
    rows = table[(table["config"] == CONFIG) & (table["metric"] == "decode_tps")].set_index("study")
    mean_a = statistics.fmean(xs)
    # each study's interval is its configs' repeated interval (bench/core/sequential.py): the stored study
    # ran 3 runs plus at most 1 outlier rerun per config, so its looks are 3 and 4
    half_b = critical_value(LookPlan(3, 4), len(ys)) * statistics.stdev(ys) / math.sqrt(len(ys))
    assert rows.loc["hostA", "mean"] == pytest.approx(mean_a)
    assert rows.loc["hostB", "mean"] == pytest.approx(2 * mean_a)
    assert rows.loc["hostB", "ci95_low"] == pytest.approx(2 * mean_a - half_b)
    assert rows.loc["hostB", "ci95_high"] == pytest.approx(2 * mean_a + half_b)
    assert rows.loc["hostB", "n"] == len(ys) and rows.loc["hostB", "reference"] == "hostA"
    assert rows.loc["hostB", "diff"] == pytest.approx(mean_a)  # 2·mean − mean
    assert rows.loc["hostB", "diff_pct"] == pytest.approx(100.0)
    # the comparison rule: the difference ± √(half_B² + half_A²), the two studies' own intervals
    half_a = critical_value(LookPlan(3, 4), len(xs)) * statistics.stdev(xs) / math.sqrt(len(xs))
    b_row = rows.loc["hostB"]
    assert b_row["diff_ci_low"] == pytest.approx(mean_a - math.hypot(half_a, half_b))
    assert b_row["diff_ci_high"] == pytest.approx(mean_a + math.hypot(half_a, half_b))
    assert rows.loc["hostB", "verdict"] == "better" and rows.loc["hostA", "verdict"] == "reference"
    # what was not scaled does not differ
    same = table[(table["study"] == "hostB") & (table["metric"] != "decode_tps")]
    assert (same["diff"] == 0).all() and (same["verdict"] == "no significant difference").all()

    # the host's share of single decode_tps by hand: SS_between / SS_total over both studies' runs
    va = [v for c in _single_configs(a) for v in decode_tps(a, c)]
    vb = [v for c in _single_configs(b) for v in decode_tps(b, c)]
    grand = statistics.fmean(va + vb)
    ss_total = sum((v - grand) ** 2 for v in va + vb)
    ss_host = len(va) * (statistics.fmean(va) - grand) ** 2 + len(vb) * (statistics.fmean(vb) - grand) ** 2
    var = pd.read_csv(result.folder / COMPARISON_VARIANCE).set_index(["suite", "metric", "factor"])
    assert var.loc[("single", "decode_tps", "host"), "eta_sq"] == pytest.approx(ss_host / ss_total)
    assert var.loc[("single", "decode_tps", "host"), "levels"] == 2
    assert var.loc[("multi", "speedup", "host"), "eta_sq"] == pytest.approx(0.0, abs=1e-12)  # identical runs
    # the analysis' table (eta_squared_table): the last row is 1 − η² of config × study together
    whole, within = var.loc[("single", "decode_tps", ALL_FACTORS)], var.loc[("single", "decode_tps", WITHIN)]
    assert within["eta_sq"] == pytest.approx(1 - whole["eta_sq"]) and within["n"] == len(va + vb)

    studies = pd.read_csv(result.folder / COMPARISON_STUDIES).set_index("study")
    assert studies.loc["hostA", "fingerprint"] == "derived from the manifest"
    assert studies.loc["hostA", "unknown"] == "cores_physical"
    assert studies.loc["hostB", "fingerprint"] == "recorded" and studies.loc["hostB", "cores_logical"] == 8
    assert studies.loc["hostA", "host"] != studies.loc["hostB", "host"]
    text = result.markdown.read_text()
    assert "- cpu: hostA=AMD EPYC, hostB=Intel Xeon" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {CONFIG} ") and "(tok/s, server)" in line)
    assert f"| {fmt.signed(mean_a)} [" in row and "| 100.0 % " in row and "| better " in row


def _single_configs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("single/*/*/*") if p.is_dir())


def test_configs_match_by_digest_and_one_study_only_configs_are_listed(tmp_path, results_dir):
    a = copy_study(tmp_path, "hostA")

    def rename(doc):
        if doc["model"]["name"] == "smollm2-135m":
            doc["model"]["name"] = "smollm2:135m"

    def rename_in_manifest(m):
        m["models"][1]["name"] = "smollm2:135m"

    b = copy_study(tmp_path, "hostB", manifest=rename_in_manifest, run=rename)
    shutil.rmtree(b / "single" / "rust" / "smollm2-135m" / "gpu0_ctx1024_temp08")
    result = compare([str(a), str(b)])
    assert result.matched == 15
    renamed = "smollm2-135m = smollm2:135m"
    assert result.only_in == [{"study": "hostA", "config": f"single/rust/{renamed}/gpu0_ctx1024_temp08"}]
    table = pd.read_csv(result.folder / COMPARISON_TABLE)
    assert "single/python/smollm2-135m = smollm2:135m/gpu0_ctx512_temp08" in set(table["config"])
    text = result.markdown.read_text()
    assert "- hostA: single/rust/smollm2-135m = smollm2:135m/gpu0_ctx1024_temp08" in text


def test_bad_study_arguments_say_what_to_pass(tmp_path, results_dir):
    a = copy_study(tmp_path, "hostA")
    with pytest.raises(BenchError, match="two or more studies"):
        compare([str(a)])
    with pytest.raises(BenchError, match="not found: neither a folder nor a study under"):
        compare([str(a), "no-such-study"])
    with pytest.raises(BenchError, match="the same study is given twice"):
        compare([str(a), str(a)])
    bare = tmp_path / "bare"
    shutil.copytree(FIXTURE / "single", bare / "single")
    with pytest.raises(BenchError, match="has no manifest.json"):
        compare([str(a), str(bare)])
    # a study name resolves under the results root
    shutil.copytree(a, results_dir / "named")
    assert compare(["named", str(a)]).matched == 16


def test_the_task_refuses_a_digest_mismatch_without_a_traceback(tmp_path):
    a = copy_study(tmp_path, "hostA")
    b = copy_study(tmp_path, "hostB", manifest=lambda m: m["models"][1].update(file_sha256="f" * 64))
    proc = invoke("compare", str(a), str(b), results=tmp_path / "r", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "error: refusing to compare" in proc.stderr and "Traceback" not in proc.stderr
    assert "model smollm2-135m: file_sha256 `b179c9523d0e` in hostA vs `ffffffffffff` in hostB" in proc.stderr
    proc = invoke("compare", str(a), str(b), "--allow-mismatch", "--out", "cli", results=tmp_path / "r", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "compare: 16 matched config(s), 0 in one study only, 1 accepted mismatch(es)" in proc.stdout
    assert (tmp_path / "r" / "cli" / "comparison.md").is_file()
