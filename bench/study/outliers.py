"""The spec's outlier rule: which runs of a config are flagged, and the bounded reruns it plans.

A run is flagged when |x − median| > k × MAD over its config's runs, for throughput
(`decode_tps`) and TTFT (`ttft_ms`) in the single suite and for `speedup` in the multi suite
(bench.core.metrics.outlier_metrics, k = profile.outliers.mad_k). A run whose placement differed from
its config (bench/config/placement.py) is left out of the rule: listed, never flagged, as the analysis
keeps it out of its tables. Flagged runs are never deleted: they stay in every table and the
report lists them.

This module is the rule's one home: bench/analysis/tables.py flags its tables with `outlier_flags`, and
the rerun planner reads the stored documents (Store.iter_runs) through `cell_flags`, so the
runner decides its reruns without the analysis.

Rerun rule: a config gets extra runs until it holds as many unflagged runs as the plan asked
for, and never more than profile.outliers.max_extra_runs extra runs in all. An extra run that
failed (logged in failures.jsonl) still uses up budget, so repeated calls always terminate.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from bench.config.plan import Plan, RunItem
from bench.config.profile import Profile
from bench.core import metrics, stats
from bench.core.records import RunDocument
from bench.core.store import Store


def outlier_flags(runs: Sequence[Mapping[str, float | None]], suite: str, mad_k: float = 2.0) -> dict[str, list[bool]]:
    """Per outlier metric of the suite, the spec's flag of each run of one config (each run given
    as its metrics by name, in any order): |x − median| > mad_k × MAD over those runs
    (stats.mad_outliers). A run without the metric, or with null, is never flagged."""
    return {m: stats.mad_outliers([r.get(m) for r in runs], mad_k) for m in metrics.outlier_metrics(suite)}


def placement_issues(doc: RunDocument) -> str:
    """The run's placement issues as one text ('' when it ran where its config asked): the
    analysis's `placement_issues` column, and what `misplaced` reads."""
    return "; ".join(doc.placement.issues if doc.placement else [])


def misplaced(doc: RunDocument) -> bool:
    """The run ran somewhere its config did not ask for: out of the rule (and the tables)."""
    return placement_issues(doc) != ""


def cell_flags(docs: Sequence[RunDocument], mad_k: float = 2.0) -> dict[int, list[str]]:
    """run_index → the metrics on which that run is flagged (empty list: not flagged), for the
    valid runs of one config folder; a misplaced run is listed, never flagged."""
    placed = [d for d in docs if not misplaced(d)]
    out: dict[int, list[str]] = {d.run_index: [] for d in docs}
    if placed:
        flags = outlier_flags([d.metrics.model_dump() for d in placed], placed[0].suite, mad_k)
        for i, doc in enumerate(placed):
            out[doc.run_index] = [m for m, f in flags.items() if f[i]]
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
    one seen. Returns [] when nothing is flagged, the budget is spent, or the plan is a shard.
    """
    budget_total = profile.outliers.max_extra_runs
    # a shard holds part of each config's runs: its flags are not the config's, and the rerun indices
    # it would pick are another host's (bench/config/plan.py Shard)
    if budget_total <= 0 or plan.shard is not None:
        return []
    failed = _attempted_indices(store)
    extra: list[RunItem] = []
    for cell in plan.cells:
        flags = cell_flags([run.doc for run in store.iter_runs(cell.rel_dir)], profile.outliers.mad_k)
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
