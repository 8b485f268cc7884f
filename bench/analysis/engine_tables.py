"""The engine's own evidence per config (the runs' `engine` blocks, bench/study/engine_sampler.py),
beside the queue time the client saw but the engine did not count: `ttft_unaccounted_ms` of the
calls, as the requests frame has it (bench/analysis/tables.py request_rows), over the calls that
ran with others (phase `together`; the single suite's own calls) and, for contrast, the calls that
ran alone (phase `alone`). The per-config figures are the engine metrics of bench/core/metrics.py."""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from bench.core import metrics
from bench.core.store import StoredRun

# the calls that shared the engine with others, and the ones that had it to themselves
SHARED_PHASES = ("together", "single")
ALONE_PHASE = "alone"


def _max(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _config_row(blocks: list[dict]) -> dict:
    """One config's engine evidence over its runs' blocks."""
    queued = [b for b in blocks if b.get("queue_metric")]
    return {"engine": blocks[0]["engine"], "interval_s": blocks[0].get("interval_s"),
            "queue_metric": bool(queued), "runs_sampled": len(blocks),
            "runs_with_deferred": metrics.runs_with_deferred(b.get("deferred_max") for b in queued),
            "deferred_max": _max([b.get("deferred_max") for b in queued]),
            "deferred_s_mean": metrics.deferred_s_mean(b.get("deferred_s") for b in queued),
            "processing_max": _max([b.get("processing_max") for b in queued]),
            "slots_busy_max": _max([b.get("slots_busy_max") for b in queued]),
            "slots_total": _max([b.get("slots_total") for b in queued]),
            "kv_cache_usage_max": _max([b.get("kv_cache_usage_max") for b in queued]),
            "slot_ctx_fill_max": _max([b.get("slot_ctx_fill_max") for b in queued]),
            "models_loaded": ";".join(sorted({m for b in blocks for m in b.get("models_loaded") or []})),
            "samples": sum(b["n_samples"] for b in blocks), "gaps": sum(b["n_gaps"] for b in blocks)}


def _unaccounted(requests: pd.DataFrame, cell: str) -> dict:
    """Median and largest ttft_unaccounted_ms of the config's shared calls, median of its alone calls."""
    if requests.empty or "ttft_unaccounted_ms" not in requests:
        return {"ttft_unaccounted_ms_shared_median": None, "ttft_unaccounted_ms_shared_max": None,
                "ttft_unaccounted_ms_alone_median": None}
    g = requests[requests["cell"] == cell]
    shared = g[g["phase"].isin(SHARED_PHASES)]["ttft_unaccounted_ms"].dropna()
    alone = g[g["phase"] == ALONE_PHASE]["ttft_unaccounted_ms"].dropna()
    return {"ttft_unaccounted_ms_shared_median": float(shared.median()) if len(shared) else None,
            "ttft_unaccounted_ms_shared_max": float(shared.max()) if len(shared) else None,
            "ttft_unaccounted_ms_alone_median": float(alone.median()) if len(alone) else None}


def engine_table(runs: Iterable[StoredRun], requests: pd.DataFrame) -> pd.DataFrame:
    """Per config with sampled runs: the engine's queue (runs with a deferred request, the most
    deferred, the mean time with one deferred, busy slots, KV-cache use) or, for Ollama, the models
    /api/ps listed, and the client's unaccounted TTFT of the same config's calls. Empty when no
    stored run has an engine block (studies made before the sampler)."""
    by_cell: dict[str, tuple[StoredRun, list[dict]]] = {}
    for run in runs:
        if run.doc is not None and run.doc.engine is not None:
            by_cell.setdefault(run.cell_key, (run, []))[1].append(run.doc.engine)
    rows = []
    for cell, (first, blocks) in sorted(by_cell.items()):
        doc = first.doc
        rows.append({"cell": cell, "suite": doc.suite, "lang": doc.lang, "model": doc.model.name,
                     "scenario": doc.config.scenario, **_config_row(blocks), **_unaccounted(requests, cell)})
    return pd.DataFrame(rows)
