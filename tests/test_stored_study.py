"""A stored study (real Ollama, both clients, 61 runs, from this host) is analysed again and its
tables must come out as they were stored in tests/fixtures/stored-study/tables: the same files,
columns, rows and text, and every number equal up to floating-point rounding (relative 1e-9:
scipy's bootstrap quantiles and ANOVA sum in another order than the code they replaced, which
moves the last digits of some CI bounds and p-values).

A table or a column added since the fixture was stored (a feature the stored runs predate) may
appear only empty: the stored runs have nothing to fill it with.

The fixture is the guard for refactors of the analysis path: a change of any number beyond
rounding fails here. A deliberate change (a fixed bug) regenerates the expected tables and says
why in its commit.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd

from bench.config.profile import resolve_profile
from bench.core.store import Store
from bench.report.markdown import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "stored-study"
REL_TOL = 1e-9


def _differences(name: str, want_text: str, got_text: str) -> list[str]:
    if not want_text.strip() or not got_text.strip():
        return [] if want_text.strip() == got_text.strip() else [f"{name}: one side is empty"]
    want = pd.read_csv(io.StringIO(want_text), keep_default_na=False)
    got = pd.read_csv(io.StringIO(got_text), keep_default_na=False)
    added = [c for c in got.columns if c not in want.columns]
    filled = [c for c in added if (got[c].astype(str) != "").any()]
    if filled:
        return [f"{name}: new columns {filled} have values the stored runs cannot give"]
    got = got.drop(columns=added)
    if list(want.columns) != list(got.columns) or len(want) != len(got):
        return [f"{name}: columns or row count differ: {list(want.columns)} × {len(want)} vs "
                f"{list(got.columns)} × {len(got)}"]
    out = []
    for col in want.columns:
        for i, (a, b) in enumerate(zip(want[col], got[col])):
            if a == b:
                continue
            try:
                fa, fb = float(a), float(b)
            except (TypeError, ValueError):
                out.append(f"{name} row {i} {col}: {a!r} → {b!r}")
                continue
            if abs(fa - fb) > REL_TOL * max(abs(fa), abs(fb)):
                out.append(f"{name} row {i} {col}: {a!r} → {b!r}")
    return out


def test_stored_study_gives_the_stored_tables(tmp_path):
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    store = Store("smoke", root=tmp_path)
    write_report(resolve_profile("smoke"), store)
    expected = sorted(p.name for p in (FIXTURE / "tables").glob("*.csv"))
    made = sorted(p.name for p in (store.root / "tables").glob("*.csv"))
    assert set(expected) <= set(made), set(expected) - set(made)
    for name in set(made) - set(expected):  # a newer table: nothing in the stored runs feeds it
        assert not (store.root / "tables" / name).read_text().strip(), name
    diffs = []
    for name in expected:
        diffs += _differences(name, (FIXTURE / "tables" / name).read_text(),
                              (store.root / "tables" / name).read_text())
    assert not diffs, "\n".join(diffs[:40])


def test_the_comparison_catches_a_changed_number():
    text = "a,b\nx,1.0\n"
    assert _differences("t", text, "a,b\nx,1.0000000000001\n") == []  # rounding
    assert _differences("t", text, "a,b\nx,1.001\n") == ["t row 0 b: 1.0 → 1.001"]
    assert _differences("t", text, "a,b\ny,1.0\n") == ["t row 0 a: 'x' → 'y'"]
    assert _differences("t", text, "a,b,c\nx,1.0,\n") == []  # a new column, empty for old runs
    assert _differences("t", text, "a,b,c\nx,1.0,2\n") == ["t: new columns ['c'] have values the stored runs cannot give"]
