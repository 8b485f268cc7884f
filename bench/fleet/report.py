"""The fleet report: per host its status, runs and what is missing, the host fingerprints, hosts much
slower than their peers on the reference probe, and `compare`'s report over the host studies with the
fleet's host as the factor (bench/report/compare.py)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from bench.core import fmt
from bench.core.csvsafe import csv_text
from bench.core.errors import BenchError
from bench.core.manifest import Fingerprint
from bench.core.md_table import md_table
from bench.core.store import (
    COMPARISON_STUDIES,
    COMPARISON_TABLE,
    COMPARISON_VARIANCE,
    FLEET_HOSTS,
    MANIFEST_NAME,
    atomic_write_text,
    utc_now,
)
from bench.host import fingerprint
from bench.report import compare
from bench.report.outputs import REPORT_NAME

FLEET_REPORT = "fleet.md"
# A host whose reference probe (its baseline's decode tok/s at the study's start) is below this share of
# the hosts' median is flagged: its numbers say as much about the host's state as about its hardware.
SLOW_SHARE = 0.8


@dataclass
class HostStudy(compare.Study):
    """A host's study, with the fleet's host name as its host: the factor compare's η² groups by."""

    fleet_host: str = ""

    @property
    def host(self) -> str:
        return self.fleet_host


def host_studies(hosts: dict[str, dict]) -> list[HostStudy]:
    """The studies the head holds with a manifest and valid runs (a host that died before its
    bench wrote the manifest has runs but no manifest: it is listed, not compared)."""
    out = []
    for name, h in sorted(hosts.items()):
        root = Path(h["study"])
        if not (root / MANIFEST_NAME).is_file():
            continue
        try:
            study = compare.load(str(root), label=name)
        except BenchError:
            continue
        out.append(HostStudy(**{f.name: getattr(study, f.name) for f in fields(compare.Study)}, fleet_host=name))
    return out


def slow_hosts(studies: list[compare.Study]) -> list[str]:
    probes = {s.label: s.probe()[0] for s in studies if s.probe()[0]}
    if len(probes) < 2:
        return []
    median = statistics.median(probes.values())
    return [f"{h}: reference probe {fmt.num(v)} tok/s, {v / median * 100:.0f} % of the hosts' median {fmt.num(median)}"
            for h, v in sorted(probes.items()) if v < SLOW_SHARE * median]


def _host_rows(hosts: dict[str, dict]) -> list[dict]:
    return [{"host": n, "status": h["status"], "runs": f"{h['runs_done']}/{h['runs_planned']}",
             "held before": h["runs_seeded"], "missing": len(h["missing_runs"]),
             "shipped": fmt.bytes_(h["bytes_shipped"]),
             "per run": fmt.bytes_(h["bytes_per_run"]) if h["bytes_per_run"] else "–",
             "wall s": fmt.num(h["wall_s"]) if h["wall_s"] is not None else "–",
             "commit": ((h["survey"] or {}).get("harness_commit") or "–")[:12], "error": h["error"] or ""}
            for n, h in sorted(hosts.items())]


def _fingerprint_rows(hosts: dict[str, dict]) -> list[dict]:
    rows = []
    for n, h in sorted(hosts.items()):
        fp = (h["survey"] or {}).get("fingerprint")
        rows.append({"host": n, "node": (h["survey"] or {}).get("node_ip", "–"),
                     "fingerprint": fingerprint.one_line(Fingerprint(**fp)) if fp else "no survey"})
    return rows


def _comparison(fleet_dir: Path, studies: list[HostStudy], allow_mismatch: bool) -> str:
    if len(studies) < 2:
        return f"No comparison: {len(studies)} host stud{'y' if len(studies) == 1 else 'ies'} with a manifest."
    matching = compare.match(studies, allow_mismatch)
    if matching.mismatches and not allow_mismatch:
        return "No comparison: the host studies differ in what was measured:\n\n" + "\n".join(
            f"- {m}" for m in matching.mismatches)
    table = compare.comparison_table(studies, matching)
    var = compare.variance(compare.merged_runs(studies, matching))
    atomic_write_text(fleet_dir / COMPARISON_TABLE, csv_text(table))
    atomic_write_text(fleet_dir / COMPARISON_VARIANCE, csv_text(var))
    atomic_write_text(fleet_dir / COMPARISON_STUDIES, csv_text(compare.studies_table(studies)))
    body = compare.render(studies, matching, table, var, allow_mismatch, utc_now())
    return body.replace("# Comparison:", "## Comparison by host:", 1)


def _merged_section(merged: Path) -> str:
    """Shard mode: where the merged study is, the host's share of each metric's variance in it, and
    per config the mean of each host (its tables/variance.csv and tables/host_means.csv)."""
    tables = merged / "tables"
    var = pd.read_csv(tables / "variance.csv") if (tables / "variance.csv").is_file() else pd.DataFrame()
    host = var[var["factor"] == "host"] if not var.empty else var
    means = pd.read_csv(tables / "host_means.csv") if (tables / "host_means.csv").is_file() else pd.DataFrame()
    parts = ["## Merged study (shard mode)", "",
             f"Every host ran its shard of every config; the merged study `{merged}` records the host of each run "
             f"(`{FLEET_HOSTS}`, runs.csv `fleet_host`) and has its own report, `{merged / REPORT_NAME}`.", "",
             "η² of the host (tables/variance.csv):", "",
             md_table([{"suite": r.suite, "metric": r.metric, "hosts": r.levels, "runs": r.n,
                        "η²": fmt.num(r.eta_sq, 3), "p": fmt.num(r.p_value)} for r in host.itertuples()]) or "none", "",
             "Mean per host, per config (tables/host_means.csv):", "",
             md_table([{"config": r.cell, "metric": r.metric, "host": r.fleet_host, "runs": r.n,
                        "mean": fmt.num(r.mean), "vs config mean": "–" if pd.isna(r.vs_config_pct) else f"{r.vs_config_pct:+.1f} %"}
                       for r in means.itertuples()]) or "none"]
    return "\n".join(parts)


def write(fleet_dir: Path, study: str, hosts: dict[str, dict], allow_mismatch: bool,
          merged: Path | None = None) -> Path:
    """fleet.md; `merged`: shard mode's merged study, shown instead of the comparison of the host studies
    (each holds only its shard of every config)."""
    studies = host_studies(hosts)
    parts = [f"# Fleet {fleet_dir.name}: study {study} on {len(hosts)} host(s)", "",
             f"*Written by `invoke fleet` at {utc_now()}; the numbers per host are fleet.json's.*", "",
             "## Hosts", "", md_table(_host_rows(hosts)) or "none", ""]
    for n, h in sorted(hosts.items()):
        if h["missing_runs"]:
            parts += [f"Missing on {n} (a rerun of the same command runs only these):", "",
                      *[f"- `{r}`" for r in h["missing_runs"]], ""]
        if h["mismatches"]:
            parts += [f"Accepted differences of {n} (--allow-mismatch):", "", *[f"- {m}" for m in h["mismatches"]], ""]
    slow = slow_hosts(studies)
    parts += ["## Host fingerprints", "", md_table(_fingerprint_rows(hosts)) or "none", "",
              "## Slow hosts", "", *([f"- {s}" for s in slow] or [
                  f"None below {SLOW_SHARE:.0%} of the hosts' median reference probe (or fewer than two hosts "
                  f"ran the probe)."]), "",
              _merged_section(merged) if merged else _comparison(fleet_dir, studies, allow_mismatch), ""]
    path = fleet_dir / FLEET_REPORT
    atomic_write_text(path, "\n".join(parts))
    return path
