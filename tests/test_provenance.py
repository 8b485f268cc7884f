"""Every runs.csv and configs.csv row carries the study's host id and harness commit, read from
its manifest, so a table copied out of its study folder still says where and with what harness
it was made."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from bench.analysis import tables as analysis
from bench.core.errors import BenchError
from bench.core.manifest import as_manifest
from bench.core.store import Store
from bench.host import fingerprint

from test_stored_study import FIXTURE

RECORDED_HOST_ID = "feedc0ffee12"


def _exported(tmp_path, fingerprint_block: dict | None) -> tuple[dict, dict[str, pd.DataFrame]]:
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    path = tmp_path / "smoke" / "manifest.json"
    manifest = json.loads(path.read_text())
    if fingerprint_block is not None:
        manifest["fingerprint"] = fingerprint_block
        path.write_text(json.dumps(manifest))
    store = Store("smoke", root=tmp_path)
    out = analysis.export_tables(store, analysis.load_tables(store))
    return manifest, {name: pd.read_csv(out[name], dtype=str, keep_default_na=False) for name in ("runs", "configs")}


def _assert_every_row(tables: dict[str, pd.DataFrame], host_id: str, commit: str) -> None:
    for name, df in tables.items():
        assert len(df) > 0, name
        assert set(df["host_id"]) == {host_id}, name
        assert set(df["harness_commit"]) == {commit}, name


def test_rows_carry_the_recorded_host_id_and_the_harness_commit(tmp_path):
    block = {"cpu": "AMD EPYC", "cores_logical": 2, "harness_commit": "78289f784da10af0fa871983cbeddcbba420c098",
             "host_id": RECORDED_HOST_ID}
    manifest, tables = _exported(tmp_path, block)
    _assert_every_row(tables, RECORDED_HOST_ID, manifest["harness"]["commit"])


def test_a_manifest_without_a_fingerprint_gives_the_derived_host_id(tmp_path):
    manifest, tables = _exported(tmp_path, None)
    assert "fingerprint" not in manifest  # the stored study predates the recorded block
    derived = fingerprint.of_manifest(as_manifest(manifest))
    assert derived.derived and len(derived.host_id) == fingerprint.HOST_ID_CHARS
    _assert_every_row(tables, derived.host_id, manifest["harness"]["commit"])


def test_a_study_without_a_manifest_has_the_columns_empty(tmp_path):
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    (tmp_path / "smoke" / "manifest.json").unlink()
    results = analysis.load_tables(Store("smoke", root=tmp_path))
    for df in (results.runs, results.configs):
        assert df[list(analysis.PROVENANCE_COLUMNS)].isna().all().all()


def test_an_unreadable_manifest_is_a_clear_error(tmp_path):
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    (tmp_path / "smoke" / "manifest.json").write_text(json.dumps({"harness": {"commit": "x"}}))
    with pytest.raises(BenchError, match="resolved profile"):
        analysis.load_tables(Store("smoke", root=tmp_path))
