"""Shard mode (`invoke fleet --shard`): one study's runs spread over identical hosts, merged into one study.

Host k of H (by name) runs the run indices r with (r − 1) mod H == k of every config (bench/config/plan.py
Shard), so every config runs on every host where its runs ≥ H: the host is a blocking factor, never
confounded with the config. Hosts must match on what moves the numbers (GPU model, driver, engine and
its version): refused with the differing fields otherwise, before anything runs. The head merges the
host studies it holds into results/fleet-<name>/merged/<study>/: every host's run folders (their run
indices are disjoint), the first host's manifest (run order and count of all hosts), every host's
failures, and fleet_hosts.json (run folder → host, the hosts and their shards), which the analysis reads
as runs.csv's `fleet_host` column and a factor of the variance table. No host's metrics.json is rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.config.plan import Plan, Shard
from bench.core.errors import BenchError
from bench.core.store import (
    FAILURES,
    FLEET_HOSTS,
    HTML_REPORT_NAME,
    ISSUE_SUMMARY,
    MANIFEST_NAME,
    PROBES,
    atomic_write_json,
    atomic_write_text,
)
from bench.fleet.actors import host_study
from bench.fleet.transfer import finished_runs
from bench.report.outputs import REPORT_NAME

MERGED_DIR = "merged"  # results/fleet-<name>/merged/<study>/
# The fingerprint fields two hosts of one sharded study must share: what sets the numbers.
SAME_FIELDS = {"GPU model": lambda fp: sorted(g.get("name") or "?" for g in fp.get("gpus") or []),
               "GPU driver": lambda fp: fp.get("gpu_driver"),
               "engine": lambda fp: fp.get("engine"),
               "engine version": lambda fp: fp.get("engine_version")}
# Study-level files each host writes about its own state, not the merged study's: left in the host
# studies (the drift probes of one host would adjust another host's runs), and outputs the report rewrites.
HOST_ONLY = {PROBES, REPORT_NAME, HTML_REPORT_NAME, ISSUE_SUMMARY}


def merged_study(fleet_dir: Path, study: str) -> Path:
    return fleet_dir / MERGED_DIR / study


def assign(names: list[str]) -> dict[str, Shard]:
    """Host k of H by name order: its shard."""
    ordered = sorted(names)
    return {n: Shard(k, len(ordered)) for k, n in enumerate(ordered)}


def planned_runs(plan: Plan, shard: Shard) -> list[str]:
    """The run folders of a shard, in the plan's order."""
    return [str(i.rel_dir) for i in plan.items if shard.holds(i.run_index)]


def fingerprint_differences(reference: dict, other: dict) -> list[str]:
    """The SAME_FIELDS on which `other`'s survey differs from `reference`'s (the hosts' fingerprints)."""
    ref, mine = reference.get("fingerprint") or {}, other.get("fingerprint") or {}
    out = []
    for label, read in SAME_FIELDS.items():
        a, b = read(ref), read(mine)
        if a != b:
            out.append(f"{label} {b or 'unknown'} on {other['host']} vs {a or 'unknown'} on {reference['host']}")
    return out


def refuse_unlike_hosts(surveys: dict[str, dict]) -> None:
    """A sharded study pools every host's runs per config: refuse hosts whose fingerprints differ
    (no --allow-mismatch: the host would be confounded with what differs)."""
    names = sorted(surveys)
    found = {n: fingerprint_differences(surveys[names[0]], surveys[n]) for n in names[1:]}
    lines = [f"  - {n}: {d}" for n, diffs in found.items() for d in diffs]
    if lines:
        raise BenchError(f"refusing the sharded study: its hosts must be identical in "
                         f"{', '.join(SAME_FIELDS)}, and these differ from {names[0]}:\n" + "\n".join(lines)
                         + "\nrun them without --shard: one study per host, compared by host")


def merge(fleet_dir: Path, study: str, shards: dict[str, Shard], surveys: dict[str, dict]) -> Path:
    """The merged study from the host studies the head holds (see the module docstring); made
    beside its final place and moved there in one step, replacing an older merge."""
    final = merged_study(fleet_dir, study)
    staging = final.with_name(f".{study}.merging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names = sorted(shards)
    try:
        ran_on = _copy_runs(fleet_dir, study, names, staging)
        _study_files(fleet_dir, study, names, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_json(staging / FLEET_HOSTS, {
        "hosts": {n: {"shard": str(shards[n]), "node_ip": (surveys.get(n) or {}).get("node_ip"),
                      "host_id": ((surveys.get(n) or {}).get("fingerprint") or {}).get("host_id"),
                      "study": str(host_study(fleet_dir, n, study))} for n in names},
        "runs": ran_on})
    if final.exists():
        old = final.with_name(f".{study}.old-{os.getpid()}")
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(staging, final)
    return final


def _copy_runs(fleet_dir: Path, study: str, names: list[str], dest: Path) -> dict[str, str]:
    """Every host's finished run folders under dest; returns run folder → host."""
    ran_on: dict[str, str] = {}
    for name in names:
        source = host_study(fleet_dir, name, study)
        for rel in sorted(finished_runs(source)):
            if rel in ran_on:
                raise BenchError(f"{rel} was run by both {ran_on[rel]} and {name}: their shards overlap")
            shutil.copytree(source / rel, dest / rel)
            ran_on[rel] = name
    return ran_on


def _study_files(fleet_dir: Path, study: str, names: list[str], dest: Path) -> None:
    """The first host's study-level files (not HOST_ONLY); its manifest with every host's run order
    and count; every host's failures."""
    first = host_study(fleet_dir, names[0], study)
    if not (first / MANIFEST_NAME).is_file():
        raise BenchError(f"no {MANIFEST_NAME} from {names[0]} ({first}): its bench did not finish")
    for path in first.iterdir():
        if path.is_file() and path.name not in HOST_ONLY | {FAILURES}:
            shutil.copy2(path, dest / path.name)
    manifest = json.loads((first / MANIFEST_NAME).read_text())
    orders = [json.loads((host_study(fleet_dir, n, study) / MANIFEST_NAME).read_text()).get("run_order") or []
              for n in names if (host_study(fleet_dir, n, study) / MANIFEST_NAME).is_file()]
    manifest["run_order"] = [r for order in orders for r in order]
    manifest["run_count"] = len(manifest["run_order"])
    atomic_write_json(dest / MANIFEST_NAME, manifest)
    failures = "".join(p.read_text() for n in names if (p := host_study(fleet_dir, n, study) / FAILURES).is_file())
    if failures:
        atomic_write_text(dest / FAILURES, failures if failures.endswith("\n") else failures + "\n")
