"""Per-config summaries: summary.json and summary.md beside the runs of each cell.

For each key metric: n, mean, median, std, CV, p50, p95 and the repeated 95 % interval of the mean
over runs (bench/core/sequential.py: valid at whatever run count the study stopped), how the config was
sampled and why it stopped,
plus the spec's outlier flag per run (|x − median| > k × MAD, k from the profile), and the runs the
fallback ladder downgraded, with what they ran.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.analysis.tables import STATS, Results
from bench.config.plan import Cell
from bench.core import metrics
from bench.core.md_table import md_table
from bench.core.store import Store, atomic_write_json, atomic_write_text
from bench.report.outputs import StudyOutputs


def summarize_cell(store: Store, cell: Cell, results: Results, mad_k: float = 2.0) -> dict | None:
    """summary.json and summary.md of one config from the study's analysis: every stored run of
    the folder (downgraded and misplaced ones marked), and the key metrics' statistics and the
    outlier flags as the analysis computed them (configs.csv's row of the runs that ran as asked;
    with every run downgraded, of what they ran)."""
    rows = results.cell_runs(cell.key)
    if rows.empty:
        return None
    suite = cell.suite
    keys = list(metrics.key_metrics(suite))
    outlier_cols = [f"outlier_{m}" for m in metrics.outlier_metrics(suite)]
    # beyond the key metrics, the registry's run columns (multi: the contention evidence)
    cols = ["run", "cold_load", "ran_as", *keys, *metrics.with_role(metrics.RUN_COLUMN, suite), *outlier_cols]
    df = rows.reindex(columns=cols).reset_index(drop=True)
    df[outlier_cols] = df[outlier_cols].fillna(False).astype(bool)  # a misplaced run is never flagged
    first = rows.iloc[0]
    summary = {
        "study": store.root.name, "suite": suite, "lang": cell.lang,
        "model": {"name": first["model"], "slug": cell.model.slug, "baseline": bool(first["baseline"])},
        "scenario": cell.scenario, "config": results.asked[cell.key],
        "config_tag": cell.config_tag,
        "runs_expected": cell.runs, "runs_found": len(df),
        "sampling": {"mode": "adaptive" if cell.precision else "fixed", "min_runs": cell.runs,
                     "max_runs": cell.max_runs,
                     "target": cell.precision.model_dump() if cell.precision else None,
                     "stop_reason": (results.stops.get(cell.key) or {}).get("reason")
                     or ("fixed runs" if not cell.precision else None)},
        "metrics": _config_stats(results, cell.key, keys),
        "outlier_rule": f"|x - median| > {mad_k} x MAD",
        "outliers": {c.removeprefix("outlier_"): [int(r) for r, f in zip(df["run"], df[c]) if f] for c in outlier_cols},
        "cold_runs": [int(r) for r, c in zip(df["run"], df["cold_load"]) if c],
        "downgraded_runs": {int(r): a for r, a in zip(df["run"], df["ran_as"]) if a},
        "misplaced_runs": [int(r) for r, p in zip(rows["run"], rows["placement_issues"]) if p],
        "runs": df.astype(object).where(pd.notna(df), None).to_dict(orient="records"),
    }
    if suite == "multi":
        summary["contention_runs"] = int(df["contention"].sum())
        summary["legacy_contention_runs"] = int(df["legacy_contention"].sum())
    out_dir = store.path(cell.rel_dir)
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", render_markdown(summary, df))
    return summary


def _config_stats(results: Results, cell_key: str, keys: list[str]) -> dict[str, dict]:
    rows = results.configs[results.configs["cell"] == cell_key] if not results.configs.empty else results.configs
    if rows.empty:  # every run misplaced: nothing was pooled
        return {k: {"n": 0} for k in keys}
    row = rows[rows["ran_as"] == ""].iloc[0] if (rows["ran_as"] == "").any() else rows.iloc[0]
    return {k: {"n": int(row["n"]), **{st: None if pd.isna(row.get(f"{k}_{st}")) else float(row[f"{k}_{st}"])
                                       for st in STATS}} for k in keys}


def render_markdown(summary: dict, df: pd.DataFrame) -> str:
    labels = metrics.key_metrics(summary["suite"])
    table = pd.DataFrame([
        {"metric": labels[k], **{c: s.get(c) for c in ("n", "mean", "median", "std", "cv_pct", "p50", "p95",
                                                       "ci95_low", "ci95_high")}}
        for k, s in summary["metrics"].items()])
    cfg = summary["config"]
    lines = [
        f"# {summary['suite']}-agent · {summary['lang']} · {summary['model']['name']} · {summary['config_tag']}",
        "",
        f"Study `{summary['study']}`; runs found {summary['runs_found']} of "
        + (f"{summary['sampling']['min_runs']}–{summary['sampling']['max_runs']} (adaptive, stopped: "
           f"{summary['sampling']['stop_reason']})" if summary["sampling"]["mode"] == "adaptive"
           else str(summary["runs_expected"])) + "; "
        f"seed {cfg['seed']}, num_predict {cfg['num_predict']}, ctx {cfg['ctx']}, gpu layers {cfg['gpu_layers']}, "
        f"temperature {cfg['temperature']}"
        + (f", scenario `{summary['scenario']}`" if summary["scenario"] else "") + ".",
        "",
        md_table(table, floatfmt=".3g"),
        "",
        "The interval columns hold the repeated 95 % interval (valid at every run count the study could "
        "have stopped at; bench/core/sequential.py).",
        f"Outlier rule: {summary['outlier_rule']}. Flagged runs: "
        + ("; ".join(f"{k}: {v}" for k, v in summary["outliers"].items() if v) or "none") + ".",
        f"Runs with a counted cold load: {summary['cold_runs'] or 'none'}.",
        "Runs the fallback ladder downgraded (they ran another config, see `ran_as`): "
        + ("; ".join(f"run {r}: {a}" for r, a in summary["downgraded_runs"].items()) or "none") + ".",
    ]
    if summary["suite"] == "multi":
        lines.append(f"Runs with contention: {summary['contention_runs']} of {summary['runs_found']} "
                     f"(legacy speedup < 1.5 flag: {summary['legacy_contention_runs']}).")
    lines += ["", "## Runs", "", md_table(df, floatfmt=".4g"), ""]
    return "\n".join(lines)


def summarize_all(store: Store, cells: list[Cell], results: Results, mad_k: float = 2.0) -> list[dict]:
    return [s for c in cells if (s := summarize_cell(store, c, results, mad_k))]


def export(out: StudyOutputs) -> list[Path]:
    """summary.json and summary.md of every planned config that has runs."""
    paths = []
    for cell in out.cells:
        if summarize_cell(out.store, cell, out.results, out.profile.outliers.mad_k) is not None:
            folder = out.store.path(cell.rel_dir)
            paths += [folder / "summary.json", folder / "summary.md"]
    return paths

