"""How numbers read in the report and the findings: one formatter per kind of value."""

from __future__ import annotations

import pandas as pd


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA


def num(v, digits: int = 3) -> str:
    if missing(v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def pct(v, digits: int = 1) -> str:
    return "–" if missing(v) else f"{v:.{digits}f} %"


def signed(v) -> str:
    return "–" if missing(v) else f"{v:+.3g}"


def bytes_(v) -> str:
    if missing(v):
        return "–"
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024:
            return f"{v:.3g} {unit}"
        v /= 1024
    return f"{v:.3g} TiB"


def mean_ci(mean, low, high, n=None) -> str:
    """'mean [low, high]' (just the mean without a CI), with ' (n=…)' when n is given."""
    if missing(mean):
        return "–"
    text = num(mean) if missing(low) or missing(high) else f"{num(mean)} [{num(low)}, {num(high)}]"
    return text if n is None else f"{text} (n={n})"
