"""CSV that a spreadsheet opens as data: text from another study (model names, hosts, error
messages) never runs as a formula.

A cell that starts with = + - @ (or a tab or carriage return, which some spreadsheets skip before
looking) is read as a formula by Excel, LibreOffice and Google Sheets; such text cells get a
leading apostrophe, the OWASP "CSV injection" rule. Numbers, in numeric columns or written as text
("-3.5"), are left as they are. Text cells are quoted, so a carriage return inside one (which
pandas' minimal quoting leaves bare) never starts a new row.
"""

from __future__ import annotations

import csv

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralise(value):
    """A text cell that a spreadsheet would run as a formula, quoted; any other value unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def csv_text(df: pd.DataFrame) -> str:
    """df.to_csv(index=False) with every text cell neutralised and quoted."""
    safe = df.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):  # numbers and booleans stay as they are
            safe[column] = safe[column].map(neutralise)
    safe.columns = [neutralise(str(c)) for c in safe.columns]
    return safe.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
