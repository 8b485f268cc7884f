"""Analysis: every stored record as tidy pandas tables, exported to results/<study>/tables/.

- requests.csv: one row per counted LLM call;
- runs.csv: one row per run (the run-level metrics of metrics.json, flattened);
- configs.csv: one row per config (cell): n and mean/median/std/CI of the key metrics.
Every number in the report comes from these tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import stats
from bench.store import Store, atomic_write_text
from bench.summary import KEY_METRICS


@dataclass
class Tables:
    requests: pd.DataFrame
    runs: pd.DataFrame
    configs: pd.DataFrame


def _cell_key(path: Path, root: Path) -> str:
    return str(path.parent.parent.relative_to(root))


def load_tables(store: Store) -> Tables:
    req_rows, run_rows = [], []
    for path in sorted(store.root.glob("*/*/*/*/run_*/metrics.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        cfg = doc["config"]
        base = {"cell": _cell_key(path, store.root), "suite": doc["suite"], "lang": doc["lang"],
                "model": doc["model"]["name"], "baseline": doc["model"].get("baseline", False),
                "scenario": cfg.get("scenario"), "gpu_layers": cfg["gpu_layers"], "ctx": cfg["ctx"],
                "temperature": cfg["temperature"], "run": doc["run_index"], "cold_load": doc.get("cold_load", False),
                "started_at": doc["started_at"]}
        m = doc["metrics"]
        row = dict(base)
        for k, v in m.items():
            if k == "agents":
                for agent, a in v.items():
                    row.update({f"{agent}_{ak}": av for ak, av in a.items()})
            else:
                row[k] = v
        run_rows.append(row)
        for r in doc["requests"]:
            req_rows.append({**base, **{k: v for k, v in r.items() if k not in ("output_text", "itl_ms")},
                             "itl_ms_mean": (r["itl_ms"] or {}).get("mean"),
                             "itl_ms_p95": (r["itl_ms"] or {}).get("p95")})
    runs = pd.DataFrame(run_rows)
    requests = pd.DataFrame(req_rows)
    config_rows = []
    if not runs.empty:
        for cell, g in runs.groupby("cell", sort=True):
            first = g.iloc[0]
            row = {k: first[k] for k in ("cell", "suite", "lang", "model", "baseline", "scenario",
                                         "gpu_layers", "ctx", "temperature")}
            row["n"] = len(g)
            for metric in KEY_METRICS[first["suite"]]:
                d = stats.describe(g[metric].tolist()) if metric in g else {"n": 0}
                for stat in ("mean", "median", "std", "cv_pct", "p50", "p95", "ci95_low", "ci95_high"):
                    row[f"{metric}_{stat}"] = d.get(stat)
            if first["suite"] == "multi":
                row["contention_runs"] = int(g["contention"].sum())
                row["legacy_contention_runs"] = int(g["legacy_contention"].sum())
            row["cold_runs"] = int(g["cold_load"].sum())
            config_rows.append(row)
    return Tables(requests, runs, pd.DataFrame(config_rows))


def export_tables(store: Store, tables: Tables) -> dict[str, Path]:
    out = {}
    for name in ("requests", "runs", "configs"):
        path = store.root / "tables" / f"{name}.csv"
        atomic_write_text(path, getattr(tables, name).to_csv(index=False))
        out[name] = path
    return out
