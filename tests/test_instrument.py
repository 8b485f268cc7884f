"""The instrument's own measurements: client CPU, host load, drift and study overhead, on
scripted values and on real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.analysis import instrument_tables
from bench.study import instrument
from bench.study.instrument import CpuSnapshot


def test_client_block_counts_the_right_process():
    before = CpuSnapshot(wall_ns=0, self_cpu_s=1.0, children_cpu_s=5.0, busy_jiffies=100, total_jiffies=1000)
    after = CpuSnapshot(wall_ns=4_000_000_000, self_cpu_s=1.5, children_cpu_s=6.0, busy_jiffies=700,
                        total_jiffies=1800)
    py = instrument.client_block(before, after, "python")
    assert py["wall_s"] == 4.0 and py["client_cpu_s"] == 0.5 and py["client_cpu_share"] == 0.125
    assert py["host_busy_pct"] == pytest.approx(600 / 800 * 100)
    rs = instrument.client_block(before, after, "rust")
    assert rs["client_cpu_s"] == 1.0 and rs["client_cpu_share"] == 0.25
    boxed = instrument.client_block(before, after, "rust-container")
    assert boxed["client_cpu_s"] is None and "not the agent's CPU" in boxed["cpu_source"]


def test_snapshots_see_own_and_child_cpu():
    a = instrument.snapshot()
    sum(i * i for i in range(3_000_000))  # burn some CPU in this process
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    b = instrument.snapshot()
    assert b.self_cpu_s > a.self_cpu_s and b.children_cpu_s > a.children_cpu_s
    assert b.total_jiffies >= a.total_jiffies and b.busy_jiffies >= a.busy_jiffies


def probe(label, tps, ttft=1000.0):
    return {"label": label, "model": "m", "decode_tps": tps, "decode_tps_client": tps * 0.95, "ttft_ms": ttft}


def test_drift_flags_a_host_that_slowed_and_not_one_that_held():
    steady = instrument_tables.drift_rows([probe("start", 80.0), probe("after gemma", 79.0), probe("end", 80.6)], 5.0)
    assert [r["flag"] for r in steady] == [False, False, False]
    slowed = instrument_tables.drift_rows([probe("start", 79.5), probe("after gemma", 76.0), probe("end", 71.3)], 5.0)
    assert [r["flag"] for r in slowed] == [False, False, True]
    assert slowed[-1]["drift_pct"] == pytest.approx((71.3 / 79.5 - 1) * 100)
    assert instrument_tables.drift_rows([], 5.0) == []


def test_overhead_ratio_and_where_the_time_went():
    events = [
        {"event": "switch", "t_s": 0.0, "duration_s": 2.0},
        {"event": "warmup", "t_s": 2.0, "duration_s": 3.0},
        # a multi run: its together phase's requests overlap, so their union (active) is less than
        # what was counted before (summed: alone + together wall)
        {"event": "run", "t_s": 5.0, "duration_s": 10.0, "active_s": 7.0, "span_s": 9.0, "summed_s": 11.0},
        {"event": "run", "t_s": 15.0, "duration_s": 10.0, "active_s": 8.0, "span_s": 8.5, "summed_s": 8.0},
        {"event": "probe", "t_s": 26.0, "duration_s": 4.0},  # 1 s between the last run and the probe
    ]
    ratio, rows = instrument_tables.overhead_rows(events)
    assert ratio == pytest.approx(30.0 / 15.0)
    parts = {r["part"]: r["seconds"] for r in rows}
    assert parts[instrument_tables.MEASURED] == 15.0
    assert parts["inside runs, between requests (gaps between calls and phases)"] == pytest.approx(2.5)
    assert parts["inside runs, outside requests (process spawn, bookkeeping)"] == pytest.approx(2.5)
    assert parts["warmup"] == 3.0 and parts["switch"] == 2.0 and parts["probe"] == 4.0
    assert parts["other (between events)"] == pytest.approx(1.0)
    assert sum(parts.values()) == pytest.approx(30.0)
    # the old way counted the overlap twice: a smaller ratio that understates the overhead
    assert instrument_tables.study_summed_overhead_ratio(events) == pytest.approx(30.0 / 19.0)
    # an older study's run events carry only measured_s (the summed way)
    old = [{"event": "run", "t_s": 0.0, "duration_s": 10.0, "measured_s": 9.0}]
    assert instrument_tables.overhead_rows(old)[0] == pytest.approx(10.0 / 9.0)


def test_a_runs_time_parts_count_overlapping_requests_once():
    req = lambda start, e2e: {"start_offset_ms": start, "e2e_ms": e2e}  # noqa: E731
    # alone: 0–1 s and 1.5–2.5 s; together: 3–4 s and 3.2–4.4 s (overlapping)
    doc = {"suite": "multi", "metrics": {"seq_s": 2.0, "wall_s": 1.4},
           "requests": [req(0, 1000), req(1500, 1000), req(3000, 1000), req(3200, 1200)]}
    parts = instrument.run_time_parts(doc)
    assert parts["active_s"] == pytest.approx(1.0 + 1.0 + 1.4)
    assert parts["span_s"] == pytest.approx(4.4)
    assert parts["summed_s"] == pytest.approx(3.4)


def _study(tmp_path, name: str, slow_factor: float) -> list[dict]:
    """Two models, single suite, on two test servers whose tokens slow by `slow_factor` from the
    second model's first request on (the host slowing mid-study); the drift table that results."""
    from bench.analysis.tables import load_tables
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile
    from bench.core.store import Store
    from bench.runtimes import create_runtime
    from bench.study.runner import run_matrix

    from conftest import smoke_variant
    from ollama_server import FakeOllama

    kw = dict(token_s=0.01, slow_from_model="qwen2.5:7b", slow_factor=slow_factor)
    with FakeOllama(**kw) as a, FakeOllama(**kw) as b:
        def mutate(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": a.url, "api": "ollama"},
                                                              {"name": "b", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "gemma3:latest", "baseline": True}, {"name": "qwen2.5:7b"}]
            d["workload"].update(num_predict=8, ignore_eos=False)
            d["study"] = name
        loaded = load_profile(smoke_variant(tmp_path, mutate, name=f"{name}.yaml"))
        store = Store(name)
        run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store, progress=False)
    return instrument_tables.drift_rows(load_tables(store).probes, loaded.profile.instrument.drift_threshold_pct)


def test_a_server_that_slows_mid_study_is_flagged_and_a_steady_one_is_not(tmp_path, results_dir):
    slowed = _study(tmp_path, "slowed", slow_factor=1.5)
    assert [r["probe"] for r in slowed] == ["start", "after gemma3:latest", "end"]
    assert [r["flag"] for r in slowed] == [False, False, True]
    assert slowed[-1]["drift_pct"] < -20  # tokens 1.5× slower: the rate falls by a third
    steady = _study(tmp_path, "steady", slow_factor=1.0)
    assert not any(r["flag"] for r in steady)


def test_the_client_cpu_rule_explains_a_language_effect_on_a_short_host():
    """Recorded per-run values from the smoke study on 2 cores (2 servers + 2 clients need 4): the
    Python client used more CPU and its speedup is lower, so the rule names client CPU."""
    import pandas as pd

    from bench.analysis.findings import client_cpu_explains

    rows = [{"suite": "multi", "lang": lang, "speedup": s, "client_cpu_share": c, "host_cores": 2}
            for lang, s, c in [("python", 1.84, 0.21), ("python", 1.88, 0.20), ("python", 1.86, 0.22),
                               ("rust", 1.97, 0.04), ("rust", 1.95, 0.05), ("rust", 1.96, 0.04)]]
    runs = pd.DataFrame(rows)
    why = client_cpu_explains(runs, "multi", "speedup")
    assert why and why.startswith("python's client used 0.17 more cores than rust's on a 2-core host that needs 4")
    # enough cores for every server and client: the rule does not apply
    assert client_cpu_explains(runs.assign(host_cores=8), "multi", "speedup") is None
    # the costlier client is not the slower one: no explanation by CPU
    assert client_cpu_explains(runs.assign(speedup=runs["speedup"][::-1].values), "multi", "speedup") is None


def test_reproduce_reads_the_probes_first():
    from bench.reproduce import host_verdict

    old = [probe("start", 79.5), probe("end", 79.0)]
    assert "the host changed" in host_verdict(old, [probe("start", 71.3)], 5.0)["verdict"]
    held = host_verdict(old, [{"label": "start", "error": "x"}, probe("start", 78.9)], 5.0)
    assert "the host held" in held["verdict"] and held["drift_pct"] == pytest.approx((78.9 / 79.5 - 1) * 100)
    assert host_verdict([], old, 5.0)["drift_pct"] is None
