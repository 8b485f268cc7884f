"""The fleet report's slow-host flag (bench/fleet/report.py slow_hosts) on real stored data: the stored
smoke study (tests/fixtures/stored-study) with the drift probes of a real smoke study of this host
(tests/fixtures/smoke-probes.jsonl: `invoke bench`, profile smoke, native Ollama, 2026-12-04; three
probes of gemma3-270m, 37-40 tok/s), one copy per host, one host's probe rates scaled down."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.fleet.report import SLOW_SHARE, slow_hosts
from bench.report import compare

FIXTURES = Path(__file__).parent / "fixtures"
RATES = ("decode_tps", "decode_tps_client", "decode_tps_server")


def scaled(entry, factor: float):
    """A probe line with every decode rate in it (the probe's, each call's, the drift model's) × factor."""
    if isinstance(entry, dict):
        return {k: (v * factor if k in RATES and isinstance(v, (int, float)) else
                    [r * factor for r in v] if k == "rates" and isinstance(v, list) else scaled(v, factor))
                for k, v in entry.items()}
    if isinstance(entry, list):
        return [scaled(e, factor) for e in entry]
    return entry


def host_copy(tmp_path: Path, name: str, factor: float) -> compare.Study:
    root = tmp_path / name / "smoke"
    shutil.copytree(FIXTURES / "stored-study" / "smoke", root)
    lines = [json.loads(line) for line in (FIXTURES / "smoke-probes.jsonl").read_text().splitlines() if line.strip()]
    (root / "probes.jsonl").write_text("".join(json.dumps(scaled(p, factor)) + "\n" for p in lines))
    return compare.load(str(root), label=name)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> dict[str, compare.Study]:
    tmp = tmp_path_factory.mktemp("slow-hosts")
    return {name: host_copy(tmp, name, factor) for name, factor in (("a", 1.0), ("b", 0.6), ("c", 0.95))}


def test_the_copies_carry_the_scaled_reference_probe(hosts):
    a, b, c = (hosts[n].probe()[0] for n in "abc")
    assert a == pytest.approx(39.97083308324499)  # the fixture's first probe
    assert (b / a, c / a) == (pytest.approx(0.6), pytest.approx(0.95))


def test_a_host_40_percent_slower_on_the_reference_probe_is_flagged_and_its_peer_is_not(hosts):
    flagged = slow_hosts([hosts["a"], hosts["b"]])
    assert len(flagged) == 1 and flagged[0].startswith("b: reference probe 24"), flagged
    assert "75 % of the hosts' median" in flagged[0]  # 24 / median(40, 24) = 0.75 < SLOW_SHARE
    assert SLOW_SHARE > 0.75


def test_a_5_percent_difference_is_not_flagged(hosts):
    assert slow_hosts([hosts["a"], hosts["c"]]) == []
    assert slow_hosts([hosts["a"]]) == []  # one host has no peers to be slower than
