"""The host fingerprint: recorded in every new manifest, derived for a study made before it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.core.manifest import parse
from bench.host import fingerprint

from test_report import make_study

FIXTURE_MANIFEST = Path(__file__).parent / "fixtures" / "stored-study" / "smoke" / "manifest.json"


def test_a_new_manifest_records_the_fingerprint(tmp_path):
    _, store = make_study(tmp_path)
    m = json.loads((store.root / "manifest.json").read_text())
    fp = m["fingerprint"]
    assert fp["cpu"] == m["host"]["cpu"] and fp["cores_logical"] == m["host"]["cores"]
    assert fp["ram_bytes"] == m["host"]["ram_bytes"] and fp["kernel"] == m["host"]["kernel"]
    assert fp["engine"] == "external" and fp["engine_version"] == "0.12.6"  # FakeRuntime: kind, no engine key
    assert fp["harness_commit"] == m["harness"]["commit"]
    assert len(fp["host_id"]) == fingerprint.HOST_ID_CHARS
    assert fingerprint.of_manifest(parse(m)).derived is False


def test_an_old_manifest_gets_a_derived_fingerprint_that_says_what_is_unknown():
    m = json.loads(FIXTURE_MANIFEST.read_text())
    assert "fingerprint" not in m
    fp = fingerprint.of_manifest(parse(m))
    assert fp.derived is True
    assert fp.unknown == ["cores_physical"]  # the only field manifests never had
    assert (fp.cpu, fp.cores_logical, fp.gpus, fp.gpu_driver) == ("AMD EPYC", 2, [], None)
    assert (fp.engine, fp.engine_version) == ("ollama", "0.17.4")
    line = fingerprint.one_line(fp)
    assert line.startswith(f"host `{fp.host_id}`: AMD EPYC · 2 cores · 23.5 GiB RAM · no GPU")
    assert "not recorded: cores_physical" in line


def _host_id(raw: dict) -> str | None:
    return fingerprint.derive(parse(raw)).host_id


def test_the_host_id_hashes_hardware_only():
    m = json.loads(FIXTURE_MANIFEST.read_text())
    base = _host_id(m)
    software = copy.deepcopy(m)
    software["host"].update(kernel="7.0.0", os="Linux-7.0.0", physical_cores=2)
    software["harness"]["commit"] = "0" * 40
    software["runtime"]["ollama_version"] = {"collector": "0.18.0", "insight": "0.18.0"}
    software["host"]["ram_bytes"] += 3 * 2**20  # MemTotal moves by MiBs between kernels
    assert _host_id(software) == base
    other_cpu = copy.deepcopy(m)
    other_cpu["host"]["cpu"] = "Intel Xeon"
    with_gpu = copy.deepcopy(m)
    with_gpu["gpu"] = [{"name": "NVIDIA H100", "vram_total_bytes": 80 * 2**30, "driver": "550.54"}]
    assert len({base, _host_id(other_cpu), _host_id(with_gpu)}) == 3
    assert fingerprint.derive(parse(with_gpu)).gpu_driver == "550.54"
    nothing = fingerprint.derive(parse({k: v for k, v in m.items() if k not in ("host", "gpu")}))
    assert nothing.host_id is None and "cpu" in nothing.unknown and nothing.gpus is None


def test_physical_cores_count_distinct_sibling_lists(tmp_path):
    # 2 cores × 2 threads: cpu0/cpu2 and cpu1/cpu3 are siblings
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_cpus_list").write_text(siblings + "\n")
    (tmp_path / "cpufreq").mkdir()  # not a CPU
    assert fingerprint.physical_cores(tmp_path) == 2
    assert fingerprint.physical_cores(tmp_path / "absent") is None
