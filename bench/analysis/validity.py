"""Reconciliation as a validity gate: a run whose client timings disagree with the engine's own
beyond a stated bound is flagged, kept out of the headline tables and listed with the reason.

The bounds are data (bench/data/validity.yaml), per engine API, on the run's median
`ttft_unaccounted_ms` (client TTFT the engine's durations leave out) and median
`decode_overstatement_pct` (how much the engine's decode rate overstates the client's), both
defined in bench/core/metrics.py. Over a bound the client queued the call, or one side counts
time wrongly: either way the run's client numbers do not measure the engine. The gate reads the
calls made with no agent waiting for a slot by design: every counted call of the single and multi
suites, the alone reference calls of the steps suite (its together calls beyond the slot count wait
for a slot on purpose, which is what goodput and the capacity search measure).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.config.profile import load_yaml
from bench.core.errors import BenchError
from bench.core.paths import DATA_DIR

VALIDITY_FILE = DATA_DIR / "validity.yaml"
GATED = ("ttft_unaccounted_ms", "decode_overstatement_pct")
# which calls the gate reads, as the report states it
GATED_CALLS = ("every counted call of the single and multi suites, and the alone reference calls of the steps "
               "suite (its calls made together wait for a slot by design beyond the slot count, which is what "
               "goodput and the capacity search measure)")


class ReconciliationBound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    ttft_unaccounted_ms: float = Field(gt=0, le=600_000, description="the most a run's median may be (ms)")
    decode_overstatement_pct: float = Field(gt=0, le=1000, description="the most a run's median may be (%)")


class ValidityBounds(BaseModel):
    """One bound per engine API (profile endpoint `api`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ollama: ReconciliationBound
    openai: ReconciliationBound


@lru_cache(maxsize=4)
def load_validity(path: Path = VALIDITY_FILE) -> ValidityBounds:
    """The bounds file, validated; a bad file is a BenchError that names it and the key."""
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
        return ValidityBounds.model_validate(data)
    except OSError as exc:
        raise BenchError(f"validity bounds {path}: cannot read ({exc})") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in err.errors())
        raise BenchError(f"invalid validity bounds {path}: {problems}") from None


def gated_calls(requests: pd.DataFrame) -> pd.DataFrame:
    """The calls the gate reads (GATED_CALLS): those where no agent waits for a slot by design."""
    return requests[(requests["suite"] != "steps") | (requests["phase"] == "alone")]


def validity_flags(requests: pd.DataFrame, bounds: ValidityBounds) -> pd.DataFrame:
    """Per run (cell, run): `validity_flag`, the reasons it fails the gate joined with '; ' ('' when
    it passes or has nothing to judge), per engine API of its gated calls."""
    rows = []
    if requests.empty:
        return pd.DataFrame(rows, columns=["cell", "run", "validity_flag"])
    for (cell, run), g in gated_calls(requests).groupby(["cell", "run"], sort=False):
        reasons = []
        for api, calls in g.groupby("api", sort=True):
            bound = getattr(bounds, str(api), None)
            if bound is None:
                continue
            for column in GATED:
                median = calls[column].dropna().median()
                limit = getattr(bound, column)
                if pd.notna(median) and median > limit:
                    unit = "ms" if column.endswith("_ms") else "%"
                    reasons.append(f"median {column} {median:.1f} {unit} > {limit:g} {unit} ({api})")
        rows.append({"cell": cell, "run": run, "validity_flag": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=["cell", "run", "validity_flag"])


def add_validity_flags(runs: pd.DataFrame, requests: pd.DataFrame, bounds: ValidityBounds) -> pd.DataFrame:
    """runs with `validity_flag` ('' for a run that passes)."""
    flagged = runs.merge(validity_flags(requests, bounds), on=["cell", "run"], how="left")
    flagged["validity_flag"] = flagged["validity_flag"].fillna("")
    return flagged
