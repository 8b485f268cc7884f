"""The paste-ready block `invoke report` writes beside the report (results/<study>/issue_summary.md):
the host fingerprint in one line, the models with their digests, each bench's headline metric per
config and model (mean, t-based 95 % CI, n: the analysis' configs table), and the study's verdict
lines (bench/analysis/findings.py), the capacity search's answer among them. Short enough to paste into an issue; the report has the rest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core import fmt, metrics
from bench.core.errors import BenchError
from bench.core.manifest import Manifest, as_manifest
from bench.core.md_table import md_table
from bench.core.store import ISSUE_SUMMARY, Store, atomic_write_text
from bench.host import fingerprint
from bench.report import templating

TEMPLATE = "issue_summary.md.j2"
# Past this many table rows the block stops being paste-sized: the rest is in the report.
MAX_ROWS = 16


def headline_rows(configs: pd.DataFrame, baseline: str | None) -> tuple[list[str], list[dict]]:
    """One row per bench (suite × language), case and ladder rung; one column per model: the
    suite's headline metric as 'mean [95 % CI] (n=…)'. Returns (models, rows)."""
    if configs.empty:
        return [], []
    models = sorted(configs["model"].unique(), key=lambda m: (m != baseline, m))
    rows = []
    for bench in metrics.BENCHES:
        suite, lang = bench.split("-")
        sub = configs[(configs["suite"] == suite) & (configs["lang"] == lang)]
        metric = metrics.headline(suite)
        for (case, ran_as), g in sub.groupby(["case", "ran_as"], sort=True):
            row = {"bench": bench, "case": case + (f" (ran {ran_as})" if ran_as else ""),
                   "metric": metrics.key_metrics(suite)[metric]}
            for model in models:
                hit = g[g["model"] == model]
                r = hit.iloc[0] if not hit.empty else {}
                row[model] = fmt.mean_ci(r.get(f"{metric}_mean"), r.get(f"{metric}_ci95_low"),
                                         r.get(f"{metric}_ci95_high"), r.get("n")) if len(hit) else "–"
            rows.append(row)
    return models, rows


def verdict_lines(found: dict) -> list[str]:
    """The central answers, each bench's winner verdicts, then each capacity search's answer, one line each."""
    lines = []
    for key, answer in (found.get("central_answers") or {}).items():
        if answer:
            suite, metric = key.split(":")
            what = "agent-count steps" if suite == "steps" else f"{suite}-agent"
            lines.append(f"{what} {metrics.key_metrics(suite).get(metric, metric)}: "
                         f"**{answer['verdict']}** ({answer['detail']})")
    by_bench: dict[str, list[str]] = {}
    for w in found.get("winners") or []:
        by_bench.setdefault(w["bench"], []).append(f"{w['case']} → " + (f"**{w['winner']}**" if w["winner"]
                                                                         else w["verdict"]))
    for bench, cases in by_bench.items():
        lines.append(f"{metrics.bench_label(bench)} winner: " + "; ".join(cases))
    for search in found.get("capacity_search") or []:
        lines.append(f"capacity under the SLO: **{search['finding']}**")
    return lines


def _readable(manifest: Manifest | dict | None) -> Manifest | None:
    """The manifest, or None where there is none or it does not load (the block says so)."""
    try:
        return as_manifest(manifest) if manifest else None
    except BenchError:
        return None


def render(study: str, results, manifest: Manifest | dict | None, incomplete: str | None = None) -> str:
    """`manifest`: a Manifest, or the raw dict bench/report/markdown.py still reads (None or {} when absent)."""
    manifest = _readable(manifest)
    baseline = manifest.baseline if manifest else None
    models, rows = headline_rows(results.configs, baseline)
    table = md_table(rows[:MAX_ROWS])
    return templating.render(
        TEMPLATE, study=study, incomplete=incomplete, n_runs=len(results.runs), n_configs=len(results.configs),
        host=fingerprint.one_line(fingerprint.of_manifest(manifest)) if manifest else "host unknown (no manifest)",
        models=[{"name": m.name, "baseline": m.name == baseline, "identity": fingerprint.identity_text(m)}
                for m in (manifest.models if manifest else [])],
        table=table, more_rows=max(0, len(rows) - MAX_ROWS), verdicts=verdict_lines(results.findings or {}),
        started=((manifest.started_at if manifest else None) or "")[:10])


def write(store: Store, results, manifest: Manifest | dict | None, incomplete: str | None = None) -> Path:
    path = store.root / ISSUE_SUMMARY
    atomic_write_text(path, render(store.root.name, results, manifest, incomplete))
    return path
