"""A stored study (real Ollama, both clients, 61 runs, from this host) is analysed again and its
tables must come out byte for byte as they were stored in tests/fixtures/stored-study/tables.

The fixture is the guard for refactors of the analysis path: a change of any number in any table
fails here. A deliberate change (a fixed bug) regenerates the expected tables and says why in its
commit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.profile import resolve_profile
from bench.report import write_report
from bench.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "stored-study"


def test_stored_study_gives_the_stored_tables(tmp_path):
    shutil.copytree(FIXTURE / "smoke", tmp_path / "smoke")
    store = Store("smoke", root=tmp_path)
    write_report(resolve_profile("smoke"), store)
    expected = sorted(p.name for p in (FIXTURE / "tables").glob("*.csv"))
    assert sorted(p.name for p in (store.root / "tables").glob("*.csv")) == expected
    for name in expected:
        got = (store.root / "tables" / name).read_text()
        want = (FIXTURE / "tables" / name).read_text()
        if got != want:
            pytest.fail(f"tables/{name} differs from the stored one:\n"
                        + "\n".join(f"- {a}\n+ {b}" for a, b in zip(want.splitlines(), got.splitlines())
                                    if a != b)[:3000])
