"""Verified cold prefill: did the engine evaluate each counted call's whole prompt?

Every counted call's system message opens with its own prompt nonce (bench/config/workload.py) and
llama-server is sent `cache_prompt: false` (bench/clients/streaming.py), so no counted call should reuse a
cached prompt prefix. This checks it per call from the engine's own counters, with the rule of
bench/core/metrics.py `prefill_reuse` (its thresholds and the measurements behind them are there):
llama.cpp says how many prompt tokens it took from its cache; Ollama does not, so its calls are
judged by their prefill rate against the cold rate of the same engine instance and config.
"""

from __future__ import annotations

import pandas as pd

from bench.core import metrics

# One reference per engine instance and config: the same model on the same endpoint runs other
# configs in other cells (GPU layers, threads, server settings), and those move the prefill rate by
# more than the reuse factor.
REFERENCE_GROUP = ("api", "model", "endpoint", "cell")
# A config with no cold call on an endpoint (an agent-count step's agents on the second instance
# only run together) is judged against that instance's cold calls in its other configs.
FALLBACK_GROUP = ("api", "model", "endpoint")
# The phases whose calls have the engine to themselves; together-phase calls are only slower.
REFERENCE_PHASES = ("single", "alone")
REQUIRED = (*REFERENCE_GROUP, "phase", "prompt_tokens", "prompt_eval_ms")
COLUMNS = ("prefill_tps", "prefill_reference_tps", "prefill_reused_share", "prefill_reused", "prefill_rule")


def _value(x):
    """A table cell as the metric functions take it: None for a missing value (NaN, None)."""
    return None if pd.isna(x) else x


def verify_prefill(requests: pd.DataFrame) -> pd.DataFrame:
    """The requests table (bench/analysis/tables.py request_rows) with the verdict columns added:
    prefill_tps, prefill_reference_tps (the median prefill_tps of the call's group's counted
    single/alone calls that cache_n does not mark reused; a config with none on that endpoint:
    the endpoint's in its other configs), prefill_reused_share, prefill_reused
    (True/False, None when the counters cannot tell) and prefill_rule. Records stored before
    prompt_cached_tokens was kept are read as not reporting it."""
    missing = [c for c in REQUIRED if c not in requests.columns]
    if missing:
        raise ValueError(f"verify_prefill: the requests table has no {', '.join(missing)} column")
    out = requests.copy()
    if out.empty:
        return out.assign(**{c: pd.Series(dtype=object) for c in COLUMNS})
    cached = (out["prompt_cached_tokens"] if "prompt_cached_tokens" in out.columns
              else pd.Series(None, index=out.index, dtype=object)).map(_value)
    tokens = out["prompt_tokens"].map(_value)
    out["prefill_tps"] = pd.Series([metrics.prefill_tps(n, ms) for n, ms in
                                    zip(tokens, out["prompt_eval_ms"].map(_value))], index=out.index, dtype=float)
    # A call that cache_n marks reused would make the reference too fast: it never defines one.
    cache_reused = cached.map(lambda n: n is not None and n > metrics.PREFILL_TEMPLATE_ALLOWANCE_TOKENS)
    cold = out["phase"].isin(REFERENCE_PHASES) & out["prefill_tps"].notna() & ~cache_reused.astype(bool)
    out["prefill_reference_tps"] = float("nan")
    for group in (list(REFERENCE_GROUP), list(FALLBACK_GROUP)):
        reference = out[cold].groupby(group)["prefill_tps"].median().rename("ref")
        out["prefill_reference_tps"] = out["prefill_reference_tps"].fillna(out[group].join(reference, on=group)["ref"])
    verdicts = [metrics.prefill_reuse(n, c, _value(rate), _value(ref))
                for n, c, rate, ref in zip(tokens, cached, out["prefill_tps"], out["prefill_reference_tps"])]
    out["prefill_reused_share"] = pd.Series([v.reused_share for v in verdicts], index=out.index, dtype=float)
    out["prefill_reused"] = pd.Series([v.reused for v in verdicts], index=out.index, dtype=object)
    out["prefill_rule"] = [v.rule for v in verdicts]
    return out
