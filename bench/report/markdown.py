"""Technical_Report_116.md, rendered with jinja2 from the analysis tables and the manifest, and
`write_report`, which writes every output of a study: the exporters below, in order, each
`export(out: StudyOutputs) -> list[Path]` over the one analysis (bench/report/outputs.py).

No number in the report is typed by hand: each comes from tables/*.csv (built from the stored
records by bench.analysis.tables), from the manifest, from client_overhead.json, or from the metric
definitions in bench/core/metrics.py. Every conclusion (winners, the central question, the
recommendations) is produced by a rule that the report states next to it. Each section's context
is built by its own function in bench/report/report_sections.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bench.analysis.tables import Results, build
from bench.config.manifest_plans import planned_cells, profile_from_manifest
from bench.config.profile import LoadedProfile
from bench.core.errors import BenchError
from bench.core.manifest import Manifest, as_manifest
from bench.core.store import CLIENT_OVERHEAD_NAME, MANIFEST_NAME, Store, atomic_write_text
from bench.report import html_report, issue_summary, outputs, plots, report_sections, summary, templating
from bench.report.outputs import REPORT_NAME, Exporter, StudyOutputs
from bench.report.validate import validate_study

__all__ = ["REPORT_NAME", "EXPORTERS", "render", "write_report"]

log = logging.getLogger("bench")


def render(out: StudyOutputs, figures: dict[str, str] | None = None) -> str:
    """The markdown report: every section's context (bench/report/report_sections.py) in report.md.j2;
    `figures`: plot name → its path in the study folder."""
    context: dict = {"plots": figures or {}}
    for section in report_sections.SECTIONS:
        context.update(section(out))
    return templating.render("report.md.j2", **context)


def export_markdown(out: StudyOutputs) -> list[Path]:
    """Technical_Report_116.md, with the figures the plots exporter drew."""
    path = out.store.root / REPORT_NAME
    atomic_write_text(path, render(out, plots.figures(out.store.root)))
    return [path]


def export_issue_summary(out: StudyOutputs) -> list[Path]:
    """issue_summary.md: the paste-ready block beside the report."""
    return [issue_summary.write(out.store, out.results, out.manifest, out.incomplete)]


# Every output of `invoke report`, in order: the HTML page is made from the markdown report, and
# the report shows the plots, so each comes after what it reads.
EXPORTERS: tuple[Exporter, ...] = (summary.export, outputs.tables, outputs.findings, plots.export,
                                   export_markdown, html_report.export, export_issue_summary)


def read_manifest(store: Store) -> Manifest | None:
    """The study's manifest.json, typed and migrated (bench/core/manifest.py); None without one,
    or when it does not load (`invoke validate` names what is wrong; the report then shows the
    profile's setup only)."""
    raw = store.read_json(MANIFEST_NAME)
    if not raw:
        return None
    try:
        return as_manifest(raw)
    except BenchError as exc:
        log.warning("%s: %s; the report shows the profile's setup only", store.root / MANIFEST_NAME, exc)
        return None


def study_outputs(loaded: LoadedProfile, store: Store, results: Results | None = None) -> StudyOutputs:
    """The study's analysis (`results` when the caller already built it) and what it stored."""
    profile = loaded.profile
    if not store.root.is_dir():
        raise BenchError(f"no results for study '{profile.study}' in {store.root}: run `invoke bench` first")
    manifest = read_manifest(store)
    # The manifest's plan (with the task's overrides) says how many runs each config expected;
    # without a usable manifest the profile's full plan stands in.
    try:
        cells = planned_cells(manifest, profile_from_manifest(manifest)) if manifest else planned_cells(None, profile)
    except BenchError:
        cells = planned_cells(None, profile)
    results = results if results is not None else build(store, profile, cells)
    if results.runs.empty and results.misplaced.empty:
        raise BenchError(f"no metrics.json under {store.root}: run `invoke bench` first")
    return StudyOutputs(profile=profile, store=store, results=results, manifest=manifest, failures=store.failures(),
                        client_overhead=store.read_json(CLIENT_OVERHEAD_NAME), cells=cells,
                        incomplete=validate_study(loaded, store, results).incomplete)


def write_report(loaded: LoadedProfile, store: Store | None = None, results: Results | None = None) -> Path:
    """Every output of a study (EXPORTERS, in order); returns the markdown report's path."""
    out = study_outputs(loaded, store or Store(loaded.profile.study), results)
    for export in EXPORTERS:
        export(out)
    return out.store.root / REPORT_NAME
