"""Shard mode (`invoke fleet --shard`, bench/fleet/shard.py) on the real two-host Ray cluster
(tests/fleet_cluster.py): one study whose every config ran on both hosts, host a run 1 and host b run 2,
merged on the head into one study whose runs.csv names the host of each run and whose report exists;
and the refusal of an adaptive profile without --runs, before Ray is reached."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from conftest import invoke, smoke_variant
from fleet_cluster import fleet_hosts  # noqa: F401 (the session fixture)

if not os.environ.get("CI"):  # in CI a missing fleet extra fails, as a missing engine does
    pytest.importorskip("ray", reason="the fleet extra is not installed (scripts/setup.sh --fleet)")
from test_fleet import STUDY, fleet, fleet_doc, fleet_profile  # noqa: E402

pytestmark = pytest.mark.fleet


def test_a_sharded_study_runs_every_config_on_both_hosts_and_is_merged_with_the_host_per_run(fleet_hosts, tmp_path):
    results = tmp_path / "results"
    t0 = time.monotonic()
    proc = fleet(fleet_profile(tmp_path), fleet_hosts.address, results, "--out", "shard", "--shard", "--runs", "2")
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fleet_dir = results / "fleet-shard"
    doc = fleet_doc(results, "shard")
    assert doc["shards"] == {"a": "0/2", "b": "1/2"}
    for name, host in doc["hosts"].items():
        assert (host["status"], host["runs_done"], host["runs_planned"], host["missing_runs"]) == ("ok", 1, 1, [])
        assert host["survey"]["node_ip"] == fleet_hosts.hosts[name].ip  # it ran on its own node
    merged = fleet_dir / "merged" / STUDY
    assert doc["merged"]["study"] == str(merged)
    ran_on = json.loads((merged / "fleet_hosts.json").read_text())["runs"]
    runs = pd.read_csv(merged / "tables" / "runs.csv")
    assert not runs.empty
    for cell, g in runs.groupby("cell"):  # every config: run 1 on host a, run 2 on host b
        assert dict(zip(g["run"], g["fleet_host"])) == {1: "a", 2: "b"}, cell
        assert {ran_on[f"{cell}/run_1"], ran_on[f"{cell}/run_2"]} == {"a", "b"}
        for name, k in (("a", 1), ("b", 2)):  # each host's own study holds only its shard
            held = sorted(p.name for p in (fleet_dir / "hosts" / name / STUDY / cell).glob("run_*"))
            assert held == [f"run_{k}"], (name, held)
    variance = pd.read_csv(merged / "tables" / "variance.csv")
    host = variance[variance["factor"] == "host"]
    assert not host.empty and set(host["levels"]) == {2}
    assert (merged / "Technical_Report_116.md").is_file()
    report = (fleet_dir / "fleet.md").read_text()
    assert "## Merged study (shard mode)" in report and "Mean per host, per config" in report
    print(f"\nsharded fleet of 2 hosts, 2 runs: {wall:.1f} s wall (driver {doc['wall_s']:.1f} s)")


def test_an_adaptive_profile_without_runs_is_refused_before_ray(tmp_path):
    adaptive = smoke_variant(tmp_path, base="smoke")  # smoke's single suite stops on its precision target
    results = tmp_path / "results"
    # no cluster at this address: the refusal comes before the driver connects
    proc = invoke("fleet", "--profile", str(adaptive), "--shard", "--ray-address", "10.116.255.1:1", "--no-progress",
                  results=results, timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "a sharded study needs fixed run counts" in proc.stderr and "give --runs N" in proc.stderr
    assert not results.exists() or not any(results.iterdir())
