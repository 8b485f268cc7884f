"""The typed manifest (bench/core/manifest.py): its JSON Schema mirror, the migration of older
shapes, and the one runtime identity reproduce, compare and the fingerprint share."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from bench.core import manifest as mm
from bench.core.errors import BenchError

from test_report import make_study

FIXTURE_MANIFEST = Path(__file__).parent / "fixtures" / "stored-study" / "smoke" / "manifest.json"


def _fixture() -> dict:
    return json.loads(FIXTURE_MANIFEST.read_text())


def _schema_check(doc: dict) -> None:
    jsonschema.validate(doc, json.loads(mm.SCHEMA_FILE.read_text()))


def test_the_schema_file_is_the_models_schema():
    # after changing a model: `python -m bench.core.manifest` writes the file again
    assert mm.SCHEMA_FILE.read_text() == mm.schema_text()


def test_a_written_manifest_is_the_current_shape_and_round_trips(tmp_path):
    _, store = make_study(tmp_path, overrides={"langs": ["python"]})
    raw = json.loads((store.root / "manifest.json").read_text())
    assert raw["schema_version"] == mm.SCHEMA_VERSION
    _schema_check(raw)
    assert mm.migrate(raw) is raw  # nothing to migrate
    assert mm.parse(raw).to_json() == raw


def test_the_stored_v1_manifest_migrates_to_the_schema():
    raw = _fixture()
    assert raw["schema_version"] == 1 and "fallback_models" not in raw and "learned_limits" not in raw
    migrated = mm.migrate(copy.deepcopy(raw))
    _schema_check(migrated)
    m = mm.Manifest.model_validate(migrated)
    assert m.fallback_models == [] and m.learned_limits == mm.LearnedLimits()
    assert m.invocations[0].command == raw["invocations"][0]["command"]
    assert m.invocations[0].learned_limits == mm.LearnedLimits()  # the v1 invocation had none
    assert m.seeds.bootstrap_seed == 116 and m.seeds.calibration_seed is None
    assert m.fingerprint is None and m.gpu.startswith("none")
    assert m.baseline == next(x["name"] for x in raw["profile"]["resolved"]["models"] if x.get("baseline"))


def test_a_v1_manifest_without_invocations_plans_from_its_overrides():
    raw = _fixture()
    del raw["invocations"], raw["host"], raw["runtime"]
    raw["plan_overrides"] = {"langs": ["python"]}
    m = mm.parse(raw)
    assert [i.plan_overrides.kwargs() for i in m.invocations] == [{"langs": ["python"]}]
    assert m.host == mm.Host() and m.runtime.kind is None  # absent: not recorded


def test_bad_manifests_are_refused_with_what_is_wrong():
    # (a missing file or broken JSON: tests/test_manifest.py)
    raw = _fixture()
    with pytest.raises(BenchError, match="no resolved profile"):
        mm.parse({"schema_version": 1})
    with pytest.raises(BenchError, match="newer than this harness"):
        mm.parse(dict(raw, schema_version=mm.SCHEMA_VERSION + 1))
    with pytest.raises(BenchError, match="is not a version"):
        mm.parse(dict(raw, schema_version="1"))
    with pytest.raises(BenchError, match="does not match the manifest schema.*host.cores_total"):
        mm.parse(dict(raw, host=dict(raw["host"], cores_total=2)))  # a section the harness writes is closed
    with pytest.raises(jsonschema.ValidationError):
        _schema_check(dict(mm.migrate(raw), host=dict(raw["host"], cores_total=2)))


def test_runtime_identity_of_each_runtime():
    ollama = mm.runtime_identity(mm.parse(_fixture()))  # native Ollama
    assert (ollama.engine, ollama.engine_version) == ("ollama", "0.17.4")
    assert set(ollama.build) == {"kind", "ollama_version", "ollama binary sha256"}
    assert "settings.OLLAMA_MODELS" not in ollama.settings  # a host path, not how the server runs
    assert ollama.settings["threads_per_server"] == "1"
    llama = mm.runtime_identity(mm.RuntimeDescription.model_validate(
        {"kind": "local", "engine": "llama.cpp", "llama_server": {"binary_sha256": "aa", "version": "b1"},
         "servers": {"collector": {"port": 1, "total_slots": 2}}}))
    assert llama.engine_version == "b1" and llama.build == {"kind": "local", "llama.cpp binary sha256": "aa"}
    assert llama.settings["servers.collector.total_slots"] == "2"
    docker = mm.runtime_identity(mm.RuntimeDescription.model_validate(
        {"kind": "docker", "containers": [{"service": "ollama-a", "image_id": "sha256:1", "ports": []}]}))
    assert docker.engine == "docker" and docker.build["container image ids"] == {"ollama-a": "sha256:1"}
