"""The spec's outlier rule, applied after the matrix: flag runs, and plan bounded reruns.

A run is flagged when |x − median| > k × MAD over its config's runs, for throughput
(`decode_tps`) and TTFT (`ttft_ms`) in the single suite and for `speedup` in the multi suite
(bench.summary.OUTLIER_METRICS, k = profile.outliers.mad_k). Flagged runs are never deleted:
they stay in every table and the report lists them.

Rerun rule: a config gets extra runs until it holds as many unflagged runs as the plan asked
for, and never more than profile.outliers.max_extra_runs extra runs in all. An extra run that
failed (logged in failures.jsonl) still uses up budget, so repeated calls always terminate.
"""

from __future__ import annotations

import pandas as pd

from bench.plan import Cell, Plan, RunItem
from bench.profile import Profile
from bench.store import Store, schema_errors
from bench.summary import outlier_flags, run_values


def cell_flags(store: Store, cell: Cell, mad_k: float) -> dict[int, list[str]]:
    """run_index → the metrics on which that run is flagged (empty list: not flagged)."""
    # Only schema-valid records count: an invalid one is redone by the runner, never judged.
    docs = [(p, d) for p, d in store.run_docs(cell.rel_dir) if not schema_errors(d)]
    if not docs:
        return {}
    df = pd.DataFrame([{"run": d["run_index"], **run_values(d, cell.suite)} for _, d in docs])
    flags = outlier_flags(df, cell.suite, mad_k)
    return {int(run): [m for m, f in flags.items() if f[i]] for i, run in enumerate(df["run"])}


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
    extra: list[RunItem] = []
    for cell in plan.cells:
        flags = cell_flags(store, cell, profile.outliers.mad_k)
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
