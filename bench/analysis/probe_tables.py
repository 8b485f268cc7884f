"""The model probes' tables (analysis stage) from what bench/study/probes.py stored: tables/coldstart.csv
and tables/sanity.csv."""

from __future__ import annotations

import pandas as pd

from bench.core import metrics


def coldstart_table(entries: list[dict]) -> pd.DataFrame:
    """tables/coldstart.csv: per model and endpoint, its latest measurement that worked (else its
    latest failure): the engine's load time, cold and warm TTFT and e2e, and the penalties."""
    latest: dict[tuple[str, str], dict] = {}
    for e in entries:
        k = (e.get("model"), e.get("endpoint"))
        if k not in latest or not e.get("error") or latest[k].get("error"):
            latest[k] = e
    rows = []
    for (model, endpoint), e in latest.items():
        cold, warm = e.get("cold") or {}, e.get("warm") or {}
        rows.append({"model": model, "endpoint": endpoint, "api": e.get("api"), "runtime": e.get("runtime"),
                     "at": e.get("at"), "load_ms": cold.get("load_ms"),
                     "cold_ttft_ms": cold.get("ttft_ms"), "cold_e2e_ms": cold.get("e2e_ms"),
                     "warm_load_ms": warm.get("load_ms"), "warm_ttft_ms": warm.get("ttft_ms"),
                     "warm_e2e_ms": warm.get("e2e_ms"),
                     "ttft_penalty_ms": metrics.cold_start_penalty_ms(cold.get("ttft_ms"), warm.get("ttft_ms")),
                     "e2e_penalty_ms": metrics.cold_start_penalty_ms(cold.get("e2e_ms"), warm.get("e2e_ms")),
                     "cold_output_tokens": cold.get("output_tokens"), "warm_output_tokens": warm.get("output_tokens"),
                     "error": e.get("error") or ""})
    return pd.DataFrame(rows)


def sanity_table(doc: dict | None) -> pd.DataFrame:
    """tables/sanity.csv: per model and question, the answer and its verdict, beside the model's."""
    rows = []
    for m in (doc or {}).get("models", {}).values():
        for a in m["answers"]:
            rows.append({"model": m["model"], "endpoint": m["endpoint"], "kind": m["kind"], "judged": m["judged"],
                         "model_verdict": m["verdict"], "model_right": m["right"], "asked": m["asked"],
                         "question": a["id"], "expect": a["expect"], "wrong": ";".join(a["wrong"]),
                         "response": a["response"], "right": a["right"], "error": a["error"] or ""})
    return pd.DataFrame(rows)


def derived_tables(coldstart: list[dict], sanity: dict | None) -> dict[str, pd.DataFrame]:
    """The two tables, only where the study measured them (a study from before has neither)."""
    out = {"coldstart": coldstart_table(coldstart), "sanity": sanity_table(sanity)}
    return {k: v for k, v in out.items() if not v.empty}
