"""`invoke validate`: passes on a complete study, fails precisely on a deleted or corrupted record."""

from __future__ import annotations

import json

import pytest

from bench.analysis.tables import load_tables
from bench.config.manifest_plans import planned_cells
from bench.core.errors import BenchError
from bench.core.records import RunDocument
from bench.core.store import atomic_write_json
from bench.report.summary import summarize_all
from bench.report.validate import validate_study

from conftest import invoke
from test_report import default_value, make_study

RUN = "single/python/gemma3_latest/gpu80_ctx512_temp08/run_2/metrics.json"


def summarize(loaded, store):
    manifest = json.loads((store.root / "manifest.json").read_text())
    mad_k = loaded.profile.outliers.mad_k
    summarize_all(store, planned_cells(manifest, loaded.profile), load_tables(store, mad_k), mad_k)


def complete_study(tmp_path, **kw):
    loaded, store = make_study(tmp_path, **kw)
    summarize(loaded, store)
    return loaded, store


def test_a_complete_study_passes(tmp_path):
    loaded, store = complete_study(tmp_path)
    v = validate_study(loaded, store)
    assert v.problems == [] and v.warnings == []
    assert v.metrics_files == 24 and v.configs == 8  # 2 models × (2 single + 2 multi configs) × 3 runs
    v.raise_for_problems()  # no exception
    assert "OK: no problems" in v.render()


def test_a_deleted_metrics_json_is_named(tmp_path):
    loaded, store = complete_study(tmp_path)
    (store.root / RUN).unlink()
    v = validate_study(loaded, store)
    assert v.problems == [f"missing run: {RUN} (the config expects 3 runs, 2 valid found)"]
    with pytest.raises(BenchError, match="failed validation with 1 problem"):
        v.raise_for_problems()


def test_a_corrupted_metrics_json_is_named(tmp_path):
    loaded, store = complete_study(tmp_path)
    path = store.root / RUN
    path.write_text(path.read_text()[:100])  # a truncated write
    v = validate_study(loaded, store)
    assert len(v.problems) == 1 and v.problems[0].startswith(f"{RUN}: not valid JSON (")


def test_a_schema_violation_names_the_field(tmp_path):
    loaded, store = complete_study(tmp_path)
    path = store.root / RUN
    doc = json.loads(path.read_text())
    del doc["metrics"]["decode_tps"]
    atomic_write_json(path, doc)
    v = validate_study(loaded, store)
    assert v.problems == [f"{RUN}: does not match the schema: metrics: 'decode_tps' is a required property"]


def test_plan_overrides_from_the_manifest_set_the_expected_runs(tmp_path):
    loaded, store = complete_study(tmp_path, overrides={"langs": ["python"], "runs": 2})
    v = validate_study(loaded, store)
    assert v.problems == [] and v.metrics_files == 8 and v.configs == 4
    # without the recorded overrides the full plan (Rust, 3 runs) is expected
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["plan_overrides"] = {}
    manifest["invocations"] = [dict(manifest["invocations"][0], plan_overrides={})]
    atomic_write_json(store.root / "manifest.json", manifest)
    problems = validate_study(loaded, store).problems
    assert len(problems) == 4 * 3 + 4 * 1  # 4 Rust configs × 3 runs, and run_3 of each Python config


def test_deliberate_skips_are_warnings_and_failed_runs_are_problems(tmp_path):
    loaded, store = complete_study(tmp_path)
    for path in store.root.glob("single/rust/qwen2.5_7b/*/run_*/metrics.json"):
        path.unlink()
    store.log_failure({"cell": "single/rust/qwen2.5_7b/gpu80_ctx512_temp08", "suite": "single", "lang": "rust",
                       "model": "qwen2.5:7b", "error_kind": "skipped", "error": "no cargo",
                       "fallback": "Rust suite skipped"})
    (store.root / RUN).unlink()
    store.log_failure({"cell": "single/python/gemma3_latest/gpu80_ctx512_temp08", "run_index": 2,
                       "error_kind": "timeout", "error": "read timed out",
                       "fallback": "run not counted; rerun the study to retry it"})
    v = validate_study(loaded, store)
    assert v.warnings == ["single/rust/qwen2.5_7b/gpu80_ctx512_temp08: 3 of 3 runs absent, accounted for: "
                          "Rust suite skipped (skipped: no cargo)"]
    assert v.problems == [f"missing run: {RUN} (the config expects 3 runs, 2 valid found); it failed (timeout): "
                          "rerun `invoke bench` to retry it"]


def test_outlier_flags_are_listed_not_problems(tmp_path):
    def value(cell, k):
        return 300.0 if (cell.suite, cell.lang, cell.model.name, k) == ("single", "python", "gemma3:latest", 3) \
            else default_value(cell, k)
    loaded, store = complete_study(tmp_path, value=value)
    v = validate_study(loaded, store)
    assert v.problems == []
    assert "single/python/gemma3_latest/gpu80_ctx512_temp08 run_3: decode_tps" in v.flags


def test_invoke_validate_exits_non_zero_with_the_list(tmp_path):
    loaded, store = complete_study(tmp_path)
    (store.root / RUN).unlink()
    proc = invoke("validate", "--profile", str(loaded.path), results=tmp_path / "results", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"missing run: {RUN}" in proc.stderr


def test_outlier_reruns_are_accepted_within_the_budget(tmp_path):
    loaded, store = complete_study(tmp_path)
    cell_dir = store.root / RUN.rsplit("/", 2)[0]
    doc = json.loads((cell_dir / "run_1" / "metrics.json").read_text())
    for k in (4, 5):
        store.write_metrics(cell_dir.relative_to(store.root) / f"run_{k}", RunDocument.model_validate(dict(doc, run_index=k)))
    summarize(loaded, store)
    assert validate_study(loaded, store).problems == []
    store.write_metrics(cell_dir.relative_to(store.root) / "run_6", RunDocument.model_validate(dict(doc, run_index=6)))
    summarize(loaded, store)
    assert validate_study(loaded, store).problems == [
        "single/python/gemma3_latest/gpu80_ctx512_temp08: 3 runs beyond the plan's 3 ([4, 5, 6]); outlier reruns "
        "allow at most 2"]


def test_atomic_writes_leave_no_temp_file_and_normal_permissions(tmp_path):
    import os
    import stat

    from bench.core.store import atomic_write_json

    target = tmp_path / "a" / "metrics.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
