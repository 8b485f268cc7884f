"""The spec's outlier rule, applied after the matrix: flag runs, and plan bounded reruns.

A run is flagged when |x − median| > k × MAD over its config's runs, for throughput
(`decode_tps`) and TTFT (`ttft_ms`) in the single suite and for `speedup` in the multi suite
(bench.metrics.outlier_metrics, k = profile.outliers.mad_k). Flagged runs are never deleted:
they stay in every table and the report lists them.

Rerun rule: a config gets extra runs until it holds as many unflagged runs as the plan asked
for, and never more than profile.outliers.max_extra_runs extra runs in all. An extra run that
failed (logged in failures.jsonl) still uses up budget, so repeated calls always terminate.
"""

from __future__ import annotations

import pandas as pd

from bench import metrics
from bench.analysis import Results, load_tables
from bench.plan import Plan, RunItem
from bench.profile import Profile
from bench.store import Store


def cell_flags(results: Results, cell_key: str) -> dict[int, list[str]]:
    """run_index → the metrics on which that run is flagged (empty list: not flagged), for the
    valid runs of one config folder; a misplaced run is listed, never flagged."""
    rows = results.cell_runs(cell_key)
    out: dict[int, list[str]] = {}
    for _, r in rows.iterrows():
        out[int(r["run"])] = [m for m in metrics.outlier_metrics(r["suite"])
                              if f"outlier_{m}" in r and not pd.isna(r[f"outlier_{m}"]) and r[f"outlier_{m}"]]
    return out


def _attempted_indices(store: Store) -> dict[str, set[int]]:
    """Run indices per cell that were tried and failed (they count against the rerun budget)."""
    out: dict[str, set[int]] = {}
    for f in store.failures():
        if f.get("run_index") is not None and f.get("cell"):
            out.setdefault(f["cell"], set()).add(int(f["run_index"]))
    return out


def plan_outlier_reruns(profile: Profile, store: Store, plan: Plan) -> list[RunItem]:
    """Extra runs for the configs whose flagged runs leave fewer clean runs than planned.

    For each cell: need = planned runs − unflagged runs; budget = max_extra_runs − extra
    indices already tried (stored or failed); the new items get run indices after the last
    one seen. Returns [] when nothing is flagged or the budget is spent.
    """
    budget_total = profile.outliers.max_extra_runs
    if budget_total <= 0:
        return []
    failed = _attempted_indices(store)
    results = load_tables(store, profile.outliers.mad_k)
    extra: list[RunItem] = []
    for cell in plan.cells:
        flags = cell_flags(results, cell.key)
        flagged = [r for r, metrics in flags.items() if metrics]
        if not flagged:
            continue
        clean = len(flags) - len(flagged)
        tried = set(flags) | failed.get(cell.key, set())
        budget = budget_total - sum(1 for i in tried if i > cell.runs)
        n = min(cell.runs - clean, budget)
        start = max(tried | {cell.runs}) + 1
        extra += [RunItem(cell, start + j) for j in range(max(n, 0))]
    return extra
