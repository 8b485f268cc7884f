"""Technical_Report_116.md, rendered with jinja2 from the analysis tables and the manifest.

No number in the report is typed by hand: each comes from tables/*.csv (built from the stored
records), from the manifest, or from the metric definitions in bench/metrics.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pandas as pd

from bench import metrics
from bench.analysis import Tables, export_tables, load_tables
from bench.errors import BenchError
from bench.plan import build_plan
from bench.profile import LoadedProfile
from bench.store import Store, atomic_write_text
from bench.summary import summarize_all
from bench.paths import TEMPLATES_DIR

REPORT_NAME = "Technical_Report_116.md"


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _mean_ci(row: pd.Series, metric: str) -> str:
    mean, lo, hi = row.get(f"{metric}_mean"), row.get(f"{metric}_ci95_low"), row.get(f"{metric}_ci95_high")
    if mean is None or pd.isna(mean):
        return "–"
    if lo is None or pd.isna(lo):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def single_table(configs: pd.DataFrame, lang: str) -> str | None:
    df = configs[(configs["suite"] == "single") & (configs["lang"] == lang)] if not configs.empty else configs
    if df.empty:
        return None
    rows = [{"model": r["model"], "config": r["cell"].rsplit("/", 1)[-1], "n": r["n"],
             "decode tok/s (server) [95% CI]": _mean_ci(r, "decode_tps"),
             "decode tok/s (client)": _fmt(r["decode_tps_client_mean"]),
             "CV %": _fmt(r["decode_tps_cv_pct"], 2),
             "TTFT ms [95% CI]": _mean_ci(r, "ttft_ms"),
             "TTFT p95 ms": _fmt(r["ttft_ms_p95"]),
             "latency ms p50 / p95": f"{_fmt(r['latency_ms_p50'])} / {_fmt(r['latency_ms_p95'])}",
             "cold runs": r["cold_runs"]}
            for _, r in df.sort_values(["model", "cell"]).iterrows()]
    return pd.DataFrame(rows).to_markdown(index=False)


def multi_table(configs: pd.DataFrame, lang: str) -> str | None:
    df = configs[(configs["suite"] == "multi") & (configs["lang"] == lang)] if not configs.empty else configs
    if df.empty:
        return None
    rows = [{"model": r["model"], "scenario": r["scenario"], "n": r["n"],
             "speedup × [95% CI]": _mean_ci(r, "speedup"),
             "efficiency %": _fmt(r["efficiency_pct_mean"]),
             "evenness %": _fmt(r["evenness_pct_mean"]),
             "wall s": _fmt(r["wall_s_mean"]), "sequential s": _fmt(r["seq_s_mean"]),
             "contention runs": f"{r['contention_runs']}/{r['n']}",
             "legacy flag runs": f"{r['legacy_contention_runs']}/{r['n']}"}
            for _, r in df.sort_values(["model", "scenario"]).iterrows()]
    return pd.DataFrame(rows).to_markdown(index=False)


def normalized_table(runs: pd.DataFrame, baseline: str) -> str | None:
    """Each model's mean as % of the baseline model's, per suite/language and metric."""
    if runs.empty or baseline not in set(runs["model"]):
        return None
    rows = []
    specs = [("single", "decode_tps", "decode tok/s"), ("single", "ttft_ms", "TTFT ms"),
             ("multi", "speedup", "speedup"), ("multi", "efficiency_pct", "efficiency %")]
    for suite, metric, label in specs:
        sub = runs[runs["suite"] == suite]
        if sub.empty or metric not in sub:
            continue
        for lang, g in sub.groupby("lang"):
            means = g.groupby("model")[metric].mean()
            if baseline not in means or not means[baseline]:
                continue
            for model, v in means.items():
                rows.append({"suite": suite, "lang": lang, "metric": label, "model": model,
                             "mean": _fmt(v), "% of baseline": f"{v / means[baseline] * 100:.1f}"})
    return pd.DataFrame(rows).to_markdown(index=False) if rows else None


def write_report(loaded: LoadedProfile, store: Store | None = None) -> Path:
    profile = loaded.profile
    store = store or Store(profile.study)
    if not store.root.is_dir():
        raise BenchError(f"no results for study '{profile.study}' in {store.root}: run `invoke bench` first")
    plan = build_plan(profile)
    summarize_all(store, plan.cells, profile.outliers.mad_k)
    tables = load_tables(store)
    if tables.runs.empty:
        raise BenchError(f"no metrics.json under {store.root}: run `invoke bench` first")
    export_tables(store, tables)
    manifest_path = store.root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    text = render(profile, tables, manifest, store.failures())
    path = store.root / REPORT_NAME
    atomic_write_text(path, text)
    return path


def render(profile, tables: Tables, manifest: dict, failures: list[dict]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    configs, runs = tables.configs, tables.runs
    ctx = {
        "profile": profile, "manifest": manifest,
        "metric_levels": [("request", "Per request"), ("run", "Per agent run (single suite)"),
                          ("multi", "Multi-agent run")],
        "definitions": metrics.definitions,
        "single_tables": {lang: single_table(configs, lang) for lang in ("python", "rust")},
        "multi_tables": {lang: multi_table(configs, lang) for lang in ("python", "rust")},
        "normalized": normalized_table(runs, profile.baseline.name),
        "n_runs": len(runs), "n_configs": len(configs), "n_requests": len(tables.requests),
        "failures": failures,
        "fmt": _fmt,
    }
    return env.get_template("report.md.j2").render(**ctx)
