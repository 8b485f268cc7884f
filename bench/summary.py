"""Per-config summaries: summary.json and summary.md beside the runs of each cell.

For each key metric: n, mean, median, std, CV, p50, p95 and the 95 % CI of the mean over runs,
plus the spec's outlier flag per run (|x − median| > k × MAD, k from the profile), and the runs the
fallback ladder downgraded, with what they ran.
"""

from __future__ import annotations

import pandas as pd

from bench import ladder, stats
from bench.plan import Cell
from bench.store import Store, atomic_write_json, atomic_write_text

# The metrics summarised per suite, with the label used in tables.
KEY_METRICS = {
    "single": {"decode_tps": "throughput (tok/s, server)", "decode_tps_client": "throughput (tok/s, client)",
               "ttft_ms": "TTFT (ms)", "latency_ms": "latency (ms, agent run)"},
    "multi": {"speedup": "speedup (×)", "efficiency_pct": "efficiency (%)", "evenness_pct": "evenness (%)",
              "wall_s": "wall (s)", "seq_s": "sequential (s)"},
}
# The spec's outlier rule applies to throughput and TTFT; a multi run's headline is its speedup
# (efficiency_pct is speedup / 2, so flagging it too would only repeat the same flags).
OUTLIER_METRICS = {"single": ("decode_tps", "ttft_ms"), "multi": ("speedup",)}


def outlier_flags(df: pd.DataFrame, suite: str, mad_k: float = 2.0) -> dict[str, list[bool]]:
    """Per outlier metric of the suite, the spec's flag of each row (run) of one config:
    |x − median| > mad_k × MAD over that config's runs (see stats.mad_outliers)."""
    return {k: stats.mad_outliers([None if pd.isna(v) else v for v in df[k]] if k in df else [None] * len(df),
                                  mad_k)
            for k in OUTLIER_METRICS[suite]}


def run_values(doc: dict, suite: str) -> dict:
    m = doc["metrics"]
    values = {k: m.get(k) for k in KEY_METRICS[suite]}
    if suite == "multi":
        for agent, a in m["agents"].items():
            values[f"{agent}_tps_ratio"] = a["tps_ratio"]
            values[f"{agent}_ttft_inflation"] = a["ttft_inflation"]
        values["contention"] = m["contention"]
        values["legacy_contention"] = m["legacy_contention"]
    return values


def summarize_cell(store: Store, cell: Cell, mad_k: float = 2.0) -> dict | None:
    docs = store.run_docs(cell.rel_dir)
    if not docs:
        return None
    suite = cell.suite
    rows = []
    for path, doc in docs:
        rows.append({"run": doc["run_index"], "cold_load": doc.get("cold_load", False),
                     "ran_as": ladder.downgrade(doc.get("requested_config"), doc.get("effective_config")),
                     **run_values(doc, suite)})
    df = pd.DataFrame(rows).sort_values("run")
    stats_by_metric = {k: stats.describe(df[k].tolist()) for k in KEY_METRICS[suite]}
    flags = outlier_flags(df, suite, mad_k)
    for k, f in flags.items():
        df[f"outlier_{k}"] = f
    first = docs[0][1]
    summary = {
        "study": store.root.name, "suite": suite, "lang": cell.lang, "model": first["model"],
        "scenario": cell.scenario, "config": first.get("requested_config", first["config"]),
        "config_tag": cell.config_tag,
        "runs_expected": cell.runs, "runs_found": len(docs),
        "metrics": stats_by_metric,
        "outlier_rule": f"|x - median| > {mad_k} x MAD",
        "outliers": {k: [int(r) for r, f in zip(df["run"], v) if f] for k, v in flags.items()},
        "cold_runs": [int(r) for r, c in zip(df["run"], df["cold_load"]) if c],
        "downgraded_runs": {int(r): a for r, a in zip(df["run"], df["ran_as"]) if a},
        "runs": df.where(pd.notna(df), None).to_dict(orient="records"),
    }
    if suite == "multi":
        summary["contention_runs"] = int(df["contention"].sum())
        summary["legacy_contention_runs"] = int(df["legacy_contention"].sum())
    out_dir = store.path(cell.rel_dir)
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", render_markdown(summary, df))
    return summary


def render_markdown(summary: dict, df: pd.DataFrame) -> str:
    labels = KEY_METRICS[summary["suite"]]
    table = pd.DataFrame([
        {"metric": labels[k], **{c: s.get(c) for c in ("n", "mean", "median", "std", "cv_pct", "p50", "p95",
                                                       "ci95_low", "ci95_high")}}
        for k, s in summary["metrics"].items()])
    cfg = summary["config"]
    lines = [
        f"# {summary['suite']}-agent · {summary['lang']} · {summary['model']['name']} · {summary['config_tag']}",
        "",
        f"Study `{summary['study']}`; runs found {summary['runs_found']} of {summary['runs_expected']}; "
        f"seed {cfg['seed']}, num_predict {cfg['num_predict']}, ctx {cfg['ctx']}, gpu layers {cfg['gpu_layers']}, "
        f"temperature {cfg['temperature']}"
        + (f", scenario `{summary['scenario']}`" if summary["scenario"] else "") + ".",
        "",
        table.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"Outlier rule: {summary['outlier_rule']}. Flagged runs: "
        + ("; ".join(f"{k}: {v}" for k, v in summary["outliers"].items() if v) or "none") + ".",
        f"Runs with a counted cold load: {summary['cold_runs'] or 'none'}.",
        "Runs the fallback ladder downgraded (they ran another config, see `ran_as`): "
        + ("; ".join(f"run {r}: {a}" for r, a in summary["downgraded_runs"].items()) or "none") + ".",
    ]
    if summary["suite"] == "multi":
        lines.append(f"Runs with contention: {summary['contention_runs']} of {summary['runs_found']} "
                     f"(legacy speedup < 1.5 flag: {summary['legacy_contention_runs']}).")
    lines += ["", "## Runs", "", df.to_markdown(index=False, floatfmt=".4g"), ""]
    return "\n".join(lines)


def summarize_all(store: Store, cells: list[Cell], mad_k: float = 2.0) -> list[dict]:
    return [s for c in cells if (s := summarize_cell(store, c, mad_k))]

