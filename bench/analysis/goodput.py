"""Goodput against the profile's service-level objective, from the stored request records.

Each counted call under load (metrics.counts_for_goodput) is judged against the objective
(metrics.meets_slo, and each objective alone); a run gets its goodput, agent goodput and
per-objective attainment (runs.csv), a config the pooled goodput with the interval that allows for
calls of one run being correlated (stats.goodput_interval), and the objective that breaks first.
The objective is the profile's at analysis time, not the one the study ran with: changing it
re-reports a stored study.
"""

from __future__ import annotations

import pandas as pd

from bench.config import ladder
from bench.core import metrics, stats
from bench.core.errors import TRANSIENT

# the per-run columns goodput adds to runs.csv (registered in bench/core/metrics.py RUN_METRICS)
OBJECTIVE_COLUMNS = tuple(f"slo_{o}_pct" for o in metrics.SLO_OBJECTIVES)
RUN_COLUMNS = ("goodput_pct", "agent_goodput_pct", *OBJECTIVE_COLUMNS, "slo_calls")


def call_verdicts(requests: pd.DataFrame, slo) -> pd.DataFrame:
    """The counted calls under load with each objective's verdict (`ok_<objective>`) and `meets_slo`."""
    if requests.empty:
        return pd.DataFrame()
    under_load = requests[[metrics.counts_for_goodput(s, p) for s, p in zip(requests["suite"], requests["phase"])]]
    rows = [metrics.slo_objectives(_num(t), _num(d), _num(e), slo) for t, d, e in
            zip(under_load["ttft_ms"], under_load["decode_tps_client"], under_load["e2e_ms"])]
    verdicts = pd.DataFrame(rows, index=under_load.index, columns=list(metrics.SLO_OBJECTIVES), dtype=bool)
    out = under_load.assign(**{f"ok_{o}": verdicts[o] for o in metrics.SLO_OBJECTIVES})
    out["meets_slo"] = [metrics.meets_slo(_num(t), _num(d), _num(e), slo) for t, d, e in
                        zip(out["ttft_ms"], out["decode_tps_client"], out["e2e_ms"])]
    return out


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def run_goodput(requests: pd.DataFrame, slo) -> pd.DataFrame:
    """Per run (cell, run): goodput_pct, agent_goodput_pct, slo_<objective>_pct and slo_calls (the
    calls judged), each by its metric in bench/core/metrics.py."""
    judged = call_verdicts(requests, slo)
    rows = []
    if judged.empty:  # no call under load (or none at all): no goodput to give
        return pd.DataFrame(rows, columns=["cell", "run", *RUN_COLUMNS])
    for (cell, run), g in judged.groupby(["cell", "run"], sort=False):
        row = {"cell": cell, "run": run, "goodput_pct": metrics.goodput_pct(list(g["meets_slo"])),
               "agent_goodput_pct": metrics.agent_goodput_pct(
                   {agent: list(a["meets_slo"]) for agent, a in g.groupby("agent", sort=False)}),
               "slo_calls": len(g)}
        for objective, column in zip(metrics.SLO_OBJECTIVES, OBJECTIVE_COLUMNS):
            row[column] = metrics.slo_attainment_pct(list(g[f"ok_{objective}"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["cell", "run", *RUN_COLUMNS])


def add_run_goodput(runs: pd.DataFrame, requests: pd.DataFrame, slo) -> pd.DataFrame:
    """runs with the goodput columns (RUN_COLUMNS) merged in; unchanged without an objective."""
    if slo is None or runs.empty:
        return runs
    return runs.merge(run_goodput(requests, slo), on=["cell", "run"], how="left")


def breaks_first(attainment: dict[str, float | None]) -> str:
    """The objective with the lowest attainment ('none' when every one is at 100 %; ties: the
    first in SLO_OBJECTIVES order)."""
    known = {o: v for o, v in attainment.items() if v is not None and not pd.isna(v)}
    if not known:
        return ""
    worst = min(known, key=lambda o: (known[o], metrics.SLO_OBJECTIVES.index(o)))
    return "none" if known[worst] >= 100.0 else worst


def failed_attempts(failures: list[dict]) -> dict[tuple[str, str], int]:
    """(cell, ran_as) → run attempts that failed on a transient error (timeout, busy or restarting
    server, a cut stream) after the per-call retries: the service failed its calls. Load failures
    (the config did not fit; the ladder took over) and permanent ones (the study stopped) are not
    service failures."""
    out: dict[tuple[str, str], int] = {}
    for f in failures:
        if f.get("error_class") != TRANSIENT or not f.get("cell"):
            continue
        attempted = f.get("attempted_config")
        ran_as = ladder.downgrade(f.get("requested_config"), attempted) if attempted else ""
        out[(f["cell"], ran_as)] = out.get((f["cell"], ran_as), 0) + 1
    return out


def goodput_table(runs: pd.DataFrame, requests: pd.DataFrame, slo, failures: list[dict] | None = None
                  ) -> pd.DataFrame:
    """Per config (cell, ran_as) of the headline runs: the pooled goodput with its interval
    (stats.goodput_interval at the objective's confidence, in %), the pooled agent goodput and
    attainment per objective, and the objective that breaks first. A run attempt that failed on a
    transient error counts as one more run none of whose calls met the objective (its records were
    discarded with it)."""
    if slo is None or runs.empty or requests.empty:
        return pd.DataFrame()
    headline = pd.MultiIndex.from_frame(runs[["cell", "run"]])
    judged = call_verdicts(requests[pd.MultiIndex.from_frame(requests[["cell", "run"]]).isin(headline)], slo)
    failed = failed_attempts(failures or [])
    rows = []
    for (cell, ran_as), g in judged.groupby(["cell", "ran_as"], sort=True):
        rows.append(_config_goodput(cell, ran_as, g, runs[runs["cell"] == cell].iloc[0], slo,
                                    failed.get((cell, ran_as), 0)))
    return pd.DataFrame(rows)


def _config_goodput(cell: str, ran_as: str, calls: pd.DataFrame, first: pd.Series, slo, n_failed: int) -> dict:
    per_run = calls.groupby("run", sort=True)
    met, sizes = list(per_run["meets_slo"].sum()), list(per_run.size())
    size = int(pd.Series(sizes).median())
    met, sizes = [int(m) for m in met] + [0] * n_failed, [int(s) for s in sizes] + [size] * n_failed
    iv = stats.goodput_interval(met, sizes, slo.confidence)
    agents = calls.groupby(["run", "agent"])["meets_slo"].all()
    n_agents_failed = n_failed * calls.groupby("run")["agent"].nunique().median()
    attainment = {o: 100.0 * calls[f"ok_{o}"].sum() / sum(sizes) for o in metrics.SLO_OBJECTIVES}
    row = {k: first.get(k) for k in ("cell", "suite", "lang", "model", "case", "n_agents", "server_settings")
           if k in first}
    row.update({"ran_as": ran_as, "runs": len(sizes), "failed_attempts": n_failed, "calls": sum(sizes),
                "calls_met": sum(met), "goodput_pct": 100.0 * iv.estimate, "goodput_ci_low": 100.0 * iv.low,
                "goodput_ci_high": 100.0 * iv.high, "confidence": slo.confidence,
                "design_effect": iv.design_effect, "effective_calls": iv.effective_calls,
                "agent_goodput_pct": 100.0 * agents.sum() / (len(agents) + n_agents_failed),
                **{f"slo_{o}_pct": v for o, v in attainment.items()},
                "breaks_first": breaks_first(attainment),
                "meets_target": bool(iv.low >= slo.goodput_target)})
    return row
