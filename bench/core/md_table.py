"""The one way a table of rows becomes markdown (the report, its sections, the summaries, the
issue summary, the comparison): a pipe table, or None when there is no row to show."""

from __future__ import annotations

import pandas as pd


def md_table(rows: list[dict] | pd.DataFrame, **to_markdown) -> str | None:
    """A GitHub pipe table of `rows` (dicts or a frame), no index; None when empty so a template
    can say what is missing instead. `to_markdown` passes tabulate's options (floatfmt)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return df.to_markdown(index=False, **to_markdown) if len(df) else None
