"""What every output of a study is made from (report stage): one `StudyOutputs`, built once by
`invoke report` (bench/report/markdown.py write_report), and the exporters that read it. An exporter is
`export(out: StudyOutputs) -> list[Path]`: it writes its files into the study folder and returns
them; the report's list of exporters runs them in order. The analysis's own writers (the tidy
tables and findings.json, bench/analysis/tables.py) are wrapped here to that signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.analysis.tables import Results, export_findings, export_tables
from bench.config.plan import Cell
from bench.config.profile import Profile
from bench.core.manifest import Manifest
from bench.core.store import Store

REPORT_NAME = "Technical_Report_116.md"


@dataclass(frozen=True)
class StudyOutputs:
    """One study's analysis and what the study stored beside its runs."""

    profile: Profile
    store: Store
    results: Results
    manifest: Manifest | None  # manifest.json, typed (None without a readable one)
    failures: list[dict]  # failures.jsonl
    client_overhead: dict | None  # client_overhead.json
    cells: list[Cell]  # the configs the study planned (its manifest's plans, else the profile's)
    incomplete: str | None  # validate's line on the configs short of their runs

    @property
    def planned_runs(self) -> dict[str, int]:
        """Config key → the runs its plan asked for."""
        return {c.key: c.runs for c in self.cells}


Exporter = Callable[[StudyOutputs], list[Path]]


def tables(out: StudyOutputs) -> list[Path]:
    """tables/<name>.csv: every frame of the analysis."""
    return list(export_tables(out.store, out.results).values())


def findings(out: StudyOutputs) -> list[Path]:
    """tables/findings.json: the rule-made conclusions."""
    path = export_findings(out.store, out.results)
    return [path] if path else []
