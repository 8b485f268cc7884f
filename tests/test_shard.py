"""Shard mode's pieces without a cluster (issue 21, `invoke fleet --shard`): the plan's shard filter
(bench/config/plan.py), validation of a shard's study, the refusal of hosts whose fingerprints differ,
and the head's merge of host shards into one study whose analysis has the host of every run
(bench/fleet/shard.py, runs.csv `fleet_host`), on the stored real study split in two shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.analysis import tables
from bench.config.plan import Shard, build_plan, shard_plan
from bench.config.profile import load_profile, resolve_profile
from bench.core.errors import BenchError
from bench.core.store import FLEET_HOSTS, Store
from bench.fleet import shard
from bench.fleet.actors import host_study
from bench.report.validate import validate_study
from bench.study.outliers import plan_outlier_reruns
from conftest import smoke_variant
from test_validate import complete_study, summarize

STORED = Path(__file__).parent / "fixtures" / "stored-study" / "smoke"


def fixed_profile(tmp_path: Path, runs: int):
    path = smoke_variant(tmp_path, lambda d: (d["single"].update(langs=["python", "rust"], runs=runs),
                                              d["multi"].update(enabled=True, runs=runs, precision=None),
                                              d["single"].update(precision=None)), base="smoke")
    return load_profile(path).profile


@pytest.mark.parametrize("runs,hosts", [(2, 2), (3, 2), (5, 3), (1, 2)])
def test_the_shards_split_every_config_s_runs_by_index_and_together_are_the_plan(tmp_path, runs, hosts):
    profile = fixed_profile(tmp_path, runs)
    whole = build_plan(profile)
    parts = [shard_plan(build_plan(profile), Shard(k, hosts)) for k in range(hosts)]
    for k, part in enumerate(parts):
        assert part.shard == Shard(k, hosts) and part.cells == whole.cells  # the same configs and folders
        assert all((i.run_index - 1) % hosts == k for i in part.items)
        assert [i for i in whole.items if i in part.items] == part.items  # the plan's order
        if runs >= hosts:  # every config runs on every host: the host is never confounded with the config
            assert {i.cell.key for i in part.items} == {c.key for c in whole.cells}
    together = [i for part in parts for i in part.items]
    assert sorted(map(str, (i.rel_dir for i in together))) == sorted(str(i.rel_dir) for i in whole.items)
    assert len(together) == len(whole.items)  # disjoint


def test_host_k_of_2_runs_run_k_plus_1_of_each_config(tmp_path):
    profile = fixed_profile(tmp_path, 2)
    for k in (0, 1):
        part = shard_plan(build_plan(profile), Shard(k, 2))
        assert {i.run_index for i in part.items} == {k + 1}


def test_an_adaptive_plan_and_a_capacity_search_are_refused(tmp_path):
    adaptive = load_profile(smoke_variant(tmp_path, base="smoke")).profile  # smoke's single suite: precision
    assert build_plan(adaptive).adaptive
    with pytest.raises(BenchError, match=r"adaptive stopping decides on all of a config's runs at once; give --runs N"):
        shard_plan(build_plan(adaptive), Shard(0, 2))
    shard_plan(build_plan(adaptive, runs=2), Shard(0, 2))  # --runs: fixed
    smoke = resolve_profile("smoke").profile  # its steps suite searches the capacity
    assert any(c.search for c in build_plan(smoke, runs=2).cells)
    with pytest.raises(BenchError, match="capacity search"):  # --runs makes it fixed; the search stays
        shard_plan(build_plan(smoke, runs=2), Shard(0, 2))


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0", "a/b", "0/0", "1/2/3"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(BenchError, match="expected K/H with 0 <= K < H"):
        Shard.parse(text)


def test_a_shard_parses_and_prints_as_given():
    assert Shard.parse("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"


def test_a_shard_study_validates_against_its_own_runs_and_asks_for_no_outlier_reruns(tmp_path):
    loaded, store = complete_study(tmp_path)  # 3 runs per config
    for run in store.root.glob("*/*/*/*/run_2"):  # shard 1/2's runs: another host's
        shutil.rmtree(run)
    summarize(loaded, store)
    whole = validate_study(loaded, store)
    assert whole.problems and all(p.startswith("missing run:") and "/run_2/" in p for p in whole.problems)
    mine = validate_study(loaded, store, shard=Shard(0, 2))
    assert mine.problems == [] and mine.runs_planned == 2 * mine.configs
    assert validate_study(loaded, store, shard=Shard(1, 2)).runs_missing == mine.configs  # run_2 of each
    plan = shard_plan(build_plan(loaded.profile), Shard(0, 2))
    assert plan_outlier_reruns(loaded.profile, store, plan) == []


def survey(host: str, **fingerprint) -> dict:
    fp = {"gpus": [{"name": "NVIDIA H200", "vram_total_bytes": 150_000_000_000}], "gpu_driver": "570.86",
          "engine": "ollama", "engine_version": "0.17.4", "cpu": "Xeon"}
    return {"host": host, "fingerprint": fp | fingerprint}


def test_hosts_that_differ_in_gpu_driver_or_engine_version_are_refused_with_the_fields():
    a = survey("a")
    assert shard.fingerprint_differences(a, survey("b", cpu="EPYC")) == []  # the CPU does not set the numbers
    b = survey("b", gpus=[{"name": "NVIDIA A100"}], engine_version="0.18.0")
    assert shard.fingerprint_differences(a, b) == ["GPU model ['NVIDIA A100'] on b vs ['NVIDIA H200'] on a",
                                                   "engine version 0.18.0 on b vs 0.17.4 on a"]
    with pytest.raises(BenchError) as err:
        shard.refuse_unlike_hosts({"a": a, "b": b, "c": survey("c", gpu_driver="580.1")})
    text = str(err.value)
    assert "GPU driver 580.1 on c vs 570.86 on a" in text and "engine version 0.18.0 on b" in text
    assert "without --shard" in text
    shard.refuse_unlike_hosts({"a": a, "b": survey("b")})  # identical hosts: no error


def split_stored_study(fleet_dir: Path, shards: dict[str, Shard]) -> None:
    """The stored study as two hosts' shards: each host holds the manifest and its shard's run folders."""
    for name, s in shards.items():
        dest = host_study(fleet_dir, name, "smoke")
        shutil.copytree(STORED, dest, ignore=lambda d, names: [n for n in names if n.startswith("run_")
                                                                  and not s.holds(int(n.split("_")[1]))])


def test_the_merged_study_holds_every_host_s_runs_and_its_analysis_has_the_host(tmp_path):
    fleet_dir, shards = tmp_path / "fleet-x", shard.assign(["b", "a"])
    assert shards == {"a": Shard(0, 2), "b": Shard(1, 2)}
    split_stored_study(fleet_dir, shards)
    metrics_before = {p: p.read_bytes() for p in fleet_dir.rglob("metrics.json")}
    merged = shard.merge(fleet_dir, "smoke", shards, {"a": {"node_ip": "10.116.0.2"}, "b": {}})
    assert merged == fleet_dir / "merged" / "smoke"
    runs = sorted(str(p.parent.relative_to(merged)) for p in merged.glob("*/*/*/*/run_*/metrics.json"))
    stored = sorted(str(p.parent.relative_to(STORED)) for p in STORED.glob("*/*/*/*/run_*/metrics.json"))
    assert runs == stored  # every run, once
    doc = json.loads((merged / FLEET_HOSTS).read_text())
    assert doc["hosts"]["a"]["shard"] == "0/2" and doc["hosts"]["b"]["shard"] == "1/2"
    assert all(doc["runs"][r] == ("a" if int(r.rsplit("_", 1)[1]) % 2 else "b") for r in runs)
    assert {p: p.read_bytes() for p in fleet_dir.glob("hosts/**/metrics.json")} == metrics_before
    profile = resolve_profile("smoke").profile
    results = tables.build(Store("smoke", merged.parent), profile)
    ran = results.runs.assign(folder=results.runs["cell"] + "/run_" + results.runs["run"].astype(str))
    assert (ran["fleet_host"] == ran["folder"].map(doc["runs"])).all()
    host = results.derived["variance"]
    host = host[host["factor"] == "host"]
    assert not host.empty and set(host["levels"]) == {2} and host["eta_sq"].notna().all()
    means = results.derived["host_means"]
    assert set(means["fleet_host"]) == {"a", "b"}
    one = means[(means["metric"] == "decode_tps") & (means["cell"] == means["cell"].iloc[0])]
    cell_runs = ran[ran["cell"] == one["cell"].iloc[0]]
    for r in one.itertuples():
        assert r.mean == pytest.approx(cell_runs[cell_runs["fleet_host"] == r.fleet_host]["decode_tps"].mean())


def test_a_study_of_one_host_has_no_host_column(tmp_path):
    shutil.copytree(STORED, tmp_path / "smoke")
    results = tables.build(Store("smoke", tmp_path), resolve_profile("smoke").profile)
    assert "fleet_host" not in results.runs and "host_means" not in results.derived
    assert "host" not in set(results.derived["variance"]["factor"])


def test_overlapping_shards_are_refused(tmp_path):
    fleet_dir = tmp_path / "fleet-x"
    split_stored_study(fleet_dir, {"a": Shard(0, 1), "b": Shard(0, 2)})
    with pytest.raises(BenchError, match="was run by both a and b"):
        shard.merge(fleet_dir, "smoke", {"a": Shard(0, 2), "b": Shard(1, 2)}, {})
    assert not (fleet_dir / "merged" / "smoke").exists() and not list((fleet_dir / "merged").glob(".*"))
