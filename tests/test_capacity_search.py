"""The capacity search (bench/study/capacity_search.py) on scripted response curves: goodput falls
with the agent count, each probe point draws its calls with a seeded generator, and the search must
find the true capacity, never probe above its bound, and use the probe points the method implies.
The control: the naive rule (a point passes when its goodput ESTIMATE reaches the target) claims
more agents than the truth allows far more often than the interval rule."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy import stats as sps

from bench.config.plan import NOT_PROBED
from bench.core.stats import goodput_interval
from bench.study.capacity_search import (MEETS, MISSES, NOT_SHOWN, CapacitySearch, look_confidence, verdict,
                                         worst_case_probes)
from bench.study.scheduler import CellSpec, Observation, Scheduler, SearchPoint, Target

from conftest import invoke, smoke_variant

TARGET = 0.95


def clopper_pearson(met: int, calls: int) -> tuple[float, float]:
    """The exact 95 % interval of a share, from the beta distribution (scipy's binomtest, faster)."""
    low = sps.beta.ppf(0.025, met, calls - met + 1) if met else 0.0
    high = sps.beta.ppf(0.975, met + 1, calls - met) if met < calls else 1.0
    return float(low), float(high)


def run_search(curve, max_agents: int, calls: int, rng: random.Random, *, naive: bool = False):
    """Play one search against `curve` (N → true goodput): each point draws `calls` calls."""
    search = CapacitySearch(max_agents, TARGET)
    while (n := search.next_n()) is not None:
        assert 1 <= n <= max_agents
        met = sum(rng.random() < curve(n) for _ in range(calls))
        low, high = clopper_pearson(met, calls)
        if naive:  # the control: the estimate alone decides
            low = high = met / calls
        search.observe(n, met / calls, low, high)
    return search.result()


def step_curve(capacity: int):
    """Goodput 0.999 up to `capacity` agents, 0.5 beyond: the answer is never in doubt."""
    return lambda n: 0.999 if n <= capacity else 0.5


@pytest.mark.parametrize("max_agents", range(1, 9))
def test_the_search_finds_every_true_capacity_within_its_bound(max_agents):
    rng = random.Random(116 + max_agents)
    for true_capacity in range(0, max_agents + 1):
        result = run_search(step_curve(true_capacity), max_agents, 400, rng)
        assert result.capacity == true_capacity
        assert len(result.probes) <= worst_case_probes(max_agents)
        assert max(p.n for p in result.probes) <= max_agents
        if true_capacity == max_agents:
            assert result.first_failing is None
        else:
            assert result.first_failing.n == true_capacity + 1 and not result.first_failing.passed
        if true_capacity:
            assert result.interval.n == true_capacity and result.interval.low >= TARGET
        else:
            assert result.interval is None


@pytest.mark.parametrize("max_agents, capacity, probes", [
    (8, 5, [1, 2, 4, 8, 6, 5]),  # exponential to the first fail at 8, then bisect 4..8
    (8, 3, [1, 2, 4, 3]),
    (8, 8, [1, 2, 4, 8]),  # all pass up to the bound: no bisection
    (6, 6, [1, 2, 4, 6]),  # the exponential step is capped at max_agents
    (6, 0, [1]),  # N = 1 fails: capacity 0 at once
    (7, 6, [1, 2, 4, 7, 5, 6]),
    (1, 1, [1]),
])
def test_the_probe_points_are_the_ones_the_method_implies(max_agents, capacity, probes):
    result = run_search(step_curve(capacity), max_agents, 400, random.Random(7))
    assert [p.n for p in result.probes] == probes
    assert result.capacity == capacity


def test_worst_case_probes_by_hand():
    # max 8: 1, 2, 4, 8 (fails), 6, then 5 or 7 = 6 points; max 5: 1, 2, 4, 5 or 1, 2, 4 (fails), 3 = 4
    assert [worst_case_probes(m) for m in range(1, 9)] == [1, 2, 3, 4, 4, 5, 6, 6]


def test_a_straddling_interval_is_not_shown_and_counts_as_a_fail():
    assert verdict(0.96, 0.99, TARGET) == MEETS
    assert verdict(0.80, 0.94, TARGET) == MISSES
    assert verdict(0.90, 0.99, TARGET) == NOT_SHOWN
    assert verdict(None, None, TARGET) == NOT_SHOWN  # a point whose runs all failed
    search = CapacitySearch(4, TARGET)
    search.observe(1, 0.99, 0.97, 1.0)
    search.observe(2, 0.97, 0.90, 0.99)  # straddles: the search bisects below it, capacity stays 1
    assert search.done and search.result().capacity == 1
    assert search.result().first_failing.verdict == NOT_SHOWN


def test_an_observation_the_search_did_not_ask_for_is_an_error():
    search = CapacitySearch(4, TARGET)
    with pytest.raises(ValueError, match="asked for N = 1"):
        search.observe(2, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="not done"):
        search.result()
    with pytest.raises(ValueError, match="max_agents"):
        CapacitySearch(0, TARGET)


def test_on_a_gradual_curve_the_interval_rule_rarely_overstates_capacity_and_the_naive_rule_does():
    """Goodput falls smoothly with N; at the true capacity (3) it is 0.99, at 4 it is 0.94, just
    under the 0.95 target. Claiming 4 agents is the error a capacity figure must not make: the
    interval rule makes it at most about as often as its interval misses (≤ 5 %), the naive rule
    (the estimate alone) in a large share of searches."""
    curve = {1: 0.999, 2: 0.995, 3: 0.99, 4: 0.94, 5: 0.85, 6: 0.7}.get
    trials, calls = 200, 300
    rng = random.Random(20)
    found = [run_search(curve, 6, calls, rng).capacity for _ in range(trials)]
    naive = [run_search(curve, 6, calls, rng, naive=True).capacity for _ in range(trials)]
    over, over_naive = sum(c > 3 for c in found) / trials, sum(c > 3 for c in naive) / trials
    assert over <= 0.05
    assert over_naive >= 0.2
    assert sum(c == 3 for c in found) / trials >= 0.8  # and it still finds the truth most of the time


# ---- the search inside the scheduler (bench/study/scheduler.py) ---------------------------------

# The scheduler reads each point with the study's goodput interval (bench/core/stats.py), which
# allows for calls of one run being correlated: it needs a few runs to confirm a share.
FIXED = Target(metrics=("efficiency_pct",), rel_half_width=1.0, min_runs=5, max_runs=5, fixed=True)
ADAPTIVE = Target(metrics=("efficiency_pct",), rel_half_width=0.05, min_runs=5, max_runs=8)


def search_cells(max_agents: int, target: Target = FIXED, group="m/python") -> list[CellSpec]:
    return [CellSpec(f"{group}/agents_{n}", "m", ("state", n), target, suite="steps",
                     search=SearchPoint(group, n, max_agents, TARGET)) for n in range(1, max_agents + 1)]


def play(sched: Scheduler, curve, rng: random.Random, calls: int = 100, efficiency=lambda n: 100.0) -> list[str]:
    """Run the study's rounds against a curve (N → true goodput); the configs in the order they ran."""
    ran = []
    while keys := sched.next_round("m"):
        for key in keys:
            n = int(key.rsplit("_", 1)[1])
            met = sum(rng.random() < curve(n) for _ in range(calls))
            sched.record(key, Observation(sched.next_index(key), {"efficiency_pct": efficiency(n)}, 1.0, (met, calls)))
            ran.append(key)
    return ran


def test_the_scheduler_runs_only_the_points_the_search_asks_for():
    sched = Scheduler(search_cells(8), seed=1)
    assert sched.active("m") == ["m/python/agents_1"]  # the others are dormant
    ran = play(sched, step_curve(5), random.Random(3))
    # every probe point runs its five fixed runs before the search reads it; 1, 2, 4, 8, 6, 5
    assert [int(k.rsplit("_", 1)[1]) for k in ran] == [n for n in (1, 2, 4, 8, 6, 5) for _ in range(5)]
    assert sched.search("m/python").result().capacity == 5
    for n in (3, 7):
        assert sched.stop_reason(f"m/python/agents_{n}") == NOT_PROBED
        assert sched.probe(f"m/python/agents_{n}") is None
    assert sched.stop_reason("m/python/agents_6") == "fixed runs"
    six = sched.probe("m/python/agents_6")
    assert six.verdict == MISSES and six.goodput == pytest.approx(0.5, abs=0.1)
    # the interval the search read is the study's goodput interval over the point's two runs
    assert sched.probe("m/python/agents_5").low >= TARGET


def test_an_adaptive_probe_point_runs_until_its_precision_target_then_the_search_reads_it():
    noisy = random.Random(9)
    sched = Scheduler(search_cells(4, ADAPTIVE), seed=2)
    ran = play(sched, step_curve(4), random.Random(4), efficiency=lambda n: 100.0 / n * (1 + 0.2 * noisy.random()))
    runs = {n: sum(k.endswith(f"_{n}") for k in ran) for n in (1, 2, 4)}  # 1, 2, 4 pass: 3 is never asked
    assert all(5 <= r <= 8 for r in runs.values()) and max(runs.values()) > 5  # some point needed more than min
    assert sched.search("m/python").result().capacity == 4
    assert sched.stop_reason("m/python/agents_3") == NOT_PROBED
    assert {sched.stop_reason(f"m/python/agents_{n}") for n in (1, 2, 4)} <= {"target met", "max runs"}


def test_the_time_budget_never_cuts_an_undecided_probe_point_short():
    """Every call meets the SLO, but a point's verdict needs more than its min runs (2 calls a run):
    a budget spent after the first round must not stop a point while it is "not shown" (that would
    read as a fail, capacity 0)."""
    wide = Target(metrics=("efficiency_pct",), rel_half_width=1.0, min_runs=3, max_runs=16)  # met at once
    cells = [CellSpec(f"m/python/agents_{n}", "m", ("state", n), wide, suite="steps", est_run_s=10.0,
                      search=SearchPoint("m/python", n, 4, 0.75, 0.9)) for n in range(1, 5)]
    sched = Scheduler(cells, seed=1, budget_s=30.0)
    elapsed, ran = 0.0, []
    while keys := sched.next_round("m", elapsed_s=elapsed):
        for key in keys:
            n = int(key.rsplit("_", 1)[1])
            sched.record(key, Observation(sched.next_index(key), {"efficiency_pct": 100.0 + len(ran) % 7}, 10.0,
                                          (2 * n, 2 * n)))
            ran.append(n)
            elapsed += 10.0
    assert sched.search("m/python").result().capacity == 4
    assert ran.count(1) == 14  # 1 agent: 28 of 28 calls met shows 75 % at 90 % only at the 14th run
    assert all(sched.probe(f"m/python/agents_{n}").verdict == MEETS for n in (1, 2, 4))
    assert sched.stop_reason("m/python/agents_1") == "target met"  # its precision was met long before


def test_the_searches_time_is_not_charged_to_the_budget_of_the_configs_after_it():
    """A search block that takes 200 s, then a block of ordinary adaptive configs with a 60 s budget:
    the later configs still get their precision runs beyond min runs (before, the search's time had
    spent the budget, and they stopped on it at their min runs)."""
    search = [CellSpec(f"s/python/agents_{n}", "s", ("state", n), FIXED, suite="steps", est_run_s=10.0,
                       search=SearchPoint("s/python", n, 2, 0.5, 0.9)) for n in (1, 2)]
    noisy = Target(metrics=("efficiency_pct",), rel_half_width=0.01, min_runs=3, max_runs=6)
    plain = [CellSpec(f"m/python/c{i}", "m", ("state", 0), noisy, suite="steps", est_run_s=5.0) for i in (1, 2)]
    sched = Scheduler(search + plain, seed=1, budget_s=60.0)
    elapsed, rng = 0.0, random.Random(2)
    for block in ("s", "m"):
        while keys := sched.next_round(block, elapsed_s=elapsed):
            for key in keys:
                cost = 20.0 if block == "s" else 5.0
                sched.record(key, Observation(sched.next_index(key), {"efficiency_pct": 50 + 50 * rng.random()},
                                              cost, (4, 4) if block == "s" else None))
                elapsed += cost
    assert elapsed >= 200.0  # the search's ten runs
    assert [sched.status(f"m/python/c{i}").n for i in (1, 2)] == [6, 6]  # 60 s pays for their 12 runs of 5 s
    assert {sched.stop_reason(f"m/python/c{i}") for i in (1, 2)} == {"max runs"}


def test_a_resumed_study_replays_its_stored_runs_into_the_same_search():
    rng = random.Random(5)
    first = Scheduler(search_cells(8), seed=1)
    play(first, step_curve(5), rng)
    stored = {k.key: list(first._cells[k.key].runs) for k in search_cells(8)}
    again = Scheduler(search_cells(8), seed=1)
    for key, runs in stored.items():  # the runner's resume: config by config, in plan order
        for obs in runs:
            again.record(key, obs)
    assert again.next_round("m") == []  # nothing left to run
    assert again.search("m/python").probes == first.search("m/python").probes
    assert again.stop_reason("m/python/agents_3") == NOT_PROBED


def test_a_failed_point_is_not_shown_and_searches_of_two_settings_run_side_by_side():
    cells = search_cells(4, group="m/python/np1") + search_cells(4, group="m/python/np2")
    sched = Scheduler(cells, seed=3)
    assert sorted(sched.active("m")) == ["m/python/np1/agents_1", "m/python/np2/agents_1"]
    sched.stop("m/python/np1/agents_1", "failed")  # no rung loaded it: no interval, a fail
    assert sched.search("m/python/np1").result().capacity == 0
    assert sched.stop_reason("m/python/np1/agents_2") == NOT_PROBED
    assert sched.active("m") == ["m/python/np2/agents_1"]


def test_a_failed_run_attempt_counts_as_a_run_whose_calls_all_missed():
    """As the analysis counts it (bench/analysis/goodput.py): the service failed those calls."""
    sched = Scheduler(search_cells(2), seed=4)
    key = "m/python/agents_1"
    sched.record_failure(key, 1)
    for i in range(2, 7):
        sched.record(key, Observation(i, {"efficiency_pct": 100.0}, 1.0, (100, 100)))
    one = sched.probe(key)
    assert one.goodput == pytest.approx(500 / 600)  # five runs of 100 met calls and one of 0 of 100
    assert one.verdict == NOT_SHOWN  # one all-missed run among full ones: the correlated interval is wide
    assert sched.search("m/python").result().capacity == 0


# ---- a real search (llama-server, one slot per instance) ---------------------------------------


@pytest.mark.llama
def test_a_capacity_search_on_two_one_slot_llama_servers(tmp_path):
    """A search up to 4 agents on two llama-server instances with one slot each, under an objective
    every call meets: the search probes 1, 2, 4 (each passes), never runs 3, reports capacity 4 in the
    report, findings.json and issue_summary.md, and validate accepts the unprobed config. Four runs a
    point and a 25 % target: the goodput interval allows for calls of a run being correlated (its
    t-based size factor), so N = 1's two calls a run need four runs to show 25 % (and six for 50 %)."""
    def mutate(d):
        d["models"] = [{"name": "smollm2-135m", "baseline": True}]
        d["single"]["enabled"] = False
        d["steps"] = {"enabled": True, "search": {"max_agents": 4}, "runs": 4}
        d["slo"] = {"ttft_ms": 60000, "decode_tps": 0.01, "e2e_ms": 120000, "goodput_target": 0.25}
        d["instrument"]["drift_probes"] = False

    path = smoke_variant(tmp_path, mutate)
    results = tmp_path / "results"
    p = str(path)
    plan = invoke("plan", "--profile", p, results=results)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "at most 16 runs in the worst case" in plan.stdout  # 4 probe points × 4 runs
    try:
        proc = invoke("up", "--profile", p, "bench", "--profile", p, "--no-progress", "report", "--profile", p,
                      "validate", "--profile", p, results=results)
    finally:
        invoke("down", "--profile", p, results=results)
    study = results / "test"
    cells = "steps/python/smollm2-135m/agents_{}_gpu0_ctx1024_temp10"
    for n in (1, 2, 4):
        assert len(list((study / cells.format(n)).glob("run_*/metrics.json"))) == 4, proc.stdout[-3000:]
    assert not (study / cells.format(3)).exists()  # never asked for
    stops = {e["cell"]: e for e in map(json.loads, (study / "sampling.jsonl").read_text().splitlines())}
    assert stops[cells.format(3)]["reason"] == NOT_PROBED
    assert [stops[cells.format(n)]["search"]["verdict"] for n in (1, 2, 4)] == [MEETS] * 3
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    (search,) = json.loads((study / "tables" / "findings.json").read_text())["capacity_search"]
    assert search["capacity"] == 4 and [pt["n"] for pt in search["probes"]] == [1, 2, 4] and search["runs"] == 12
    assert search["interval"]["low"] >= 0.25
    report = (study / "Technical_Report_116.md").read_text()
    assert "### How many agents does it serve within the SLO?" in report
    assert "smollm2-135m (python; np1" in report and "capacity 4 agents" in report
    assert (study / "plots" / "capacity.png").is_file()
    assert "capacity under the SLO: **smollm2-135m (python; np1" in (study / "issue_summary.md").read_text()
    assert "OK: no problems" in proc.stdout and "skipped on purpose" in proc.stdout


@pytest.mark.ollama
def test_a_capacity_search_on_native_ollama(tmp_path):
    """The same search on two native `ollama serve` instances (profile smoke: Ollama's API, one slot
    each), SmolLM2 only, three fixed runs a point, an objective every call meets and a 15 % target
    at 90 % (N = 1's two calls a run show 20.7 % over three runs): the search probes 1, 2, 4, never
    runs 3, finds capacity 4, logs the level its verdicts read (a fixed point: one look, the SLO's
    90 %), and the report, findings.json and validate agree. Ollama's evidence is /api/ps, no queue:
    every run's engine block lists the model loaded, and engine.jsonl the context it was loaded with."""
    def mutate(d):
        d["models"] = [{"name": "smollm2-135m", "source": "gguf", "baseline": True}]
        d["single"]["enabled"] = False
        d["steps"] = {"enabled": True, "search": {"max_agents": 4}, "runs": 3}
        d["slo"] = {"ttft_ms": 60000, "decode_tps": 0.01, "e2e_ms": 120000, "goodput_target": 0.15,
                    "confidence": 0.90}
        d["instrument"]["drift_probes"] = False

    p = str(smoke_variant(tmp_path, mutate, base="smoke"))
    results = tmp_path / "results"
    try:
        proc = invoke("up", "--profile", p, "bench", "--profile", p, "--no-progress", "report", "--profile", p,
                      "validate", "--profile", p, results=results)
    finally:
        invoke("down", "--profile", p, results=results)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    # the header counts the search as `plan` does: 4 probe points at most (1, 2, 4, then 3) × 3 runs
    assert "bench: the capacity search: 1 search(es) over 1..4 agents, at most 12 runs" in proc.stdout
    study = results / "test"
    cells = "steps/python/smollm2-135m/agents_{}_gpu0_ctx1024_temp10"
    for n in (1, 2, 4):
        assert len(list((study / cells.format(n)).glob("run_*/metrics.json"))) == 3
    assert not (study / cells.format(3)).exists()
    stops = {e["cell"]: e for e in map(json.loads, (study / "sampling.jsonl").read_text().splitlines())}
    assert stops[cells.format(3)]["reason"] == NOT_PROBED
    assert [stops[cells.format(n)]["reason"] for n in (1, 2, 4)] == ["fixed runs"] * 3
    logged = [stops[cells.format(n)]["search"] for n in (1, 2, 4)]
    assert [e["verdict"] for e in logged] == [MEETS] * 3 and all(e["goodput"] == 1.0 for e in logged)
    assert {(e["confidence"], e["looks"], e["overall_confidence"]) for e in logged} == {(0.9, 1, 0.9)}
    (search,) = json.loads((study / "tables" / "findings.json").read_text())["capacity_search"]
    assert search["capacity"] == 4 and [pt["n"] for pt in search["probes"]] == [1, 2, 4] and search["runs"] == 9
    assert search["interval"]["low"] >= 0.15 and search["interval_label"] == "verdict interval at 90 %"
    for n in (1, 2, 4):
        for run in (study / cells.format(n)).glob("run_*/metrics.json"):
            block = json.loads(run.read_text())["engine"]
            assert block["engine"] == "ollama" and block["available"] and not block["queue_metric"], block
            assert [m.split(":")[0] for m in block["models_loaded"]] == ["smollm2-135m"]
            assert block["deferred_max"] is None and block["note"]
        samples = [json.loads(x) for x in (study / cells.format(n) / "engine.jsonl").read_text().splitlines()]
        assert {s["run_index"] for s in samples} == {1, 2, 3} and all(s["ok"] for s in samples)
        assert {m["context_length"] for s in samples for m in s["models"]} == {1024}  # the config's ctx
    report = (study / "Technical_Report_116.md").read_text()
    assert "capacity 4 agents" in report and "(verdict interval at 90 %)" in report
    assert f"**{cells.format(4)}** (ollama): no queue metric" in report
    assert "OK: no problems" in proc.stdout and "skipped on purpose" in proc.stdout


# ---- the finding (bench/analysis/findings.py search_capacity) -----------------------------------


def test_the_finding_replays_the_logged_search_and_names_the_cause_at_the_first_failing_count(tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from bench.analysis import findings
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile

    def searched(d):
        d["single"]["enabled"] = False
        d["steps"] = {"enabled": True, "search": {"max_agents": 8}, "runs": 3, "models": ["smollm2-135m"]}

    cells = [c for c in build_plan(load_profile(smoke_variant(tmp_path, searched)).profile).cells if c.suite == "steps"]
    assert sorted(len(c.agents) for c in cells) == list(range(1, 9))
    by_n = {len(c.agents): c.key for c in cells}
    logged = {1: (1.0, 0.97, 1.0), 2: (0.99, 0.96, 1.0), 4: (0.98, 0.955, 1.0), 8: (0.4, 0.3, 0.5),
              6: (0.97, 0.952, 0.99), 7: (0.9, 0.85, 0.96)}  # capacity 6; 3 and 5 never asked for
    stops = {by_n[n]: {"reason": "fixed runs", "n": 3, "search": {"n": n, "goodput": g, "low": lo, "high": hi,
                                                                  "verdict": "", "target": TARGET}}
             for n, (g, lo, hi) in logged.items()}
    stops.update({by_n[n]: {"reason": NOT_PROBED, "n": 0} for n in (3, 5)})
    settings = "np1 fa0 kv f16 · 1 threads"
    runs = pd.DataFrame([{"cell": by_n[n], "run": r, "server_settings": settings} for n in logged for r in (1, 2, 3)])
    steps = pd.DataFrame([{"model": "smollm2-135m", "lang": "python", "server_settings": settings, "n_agents": 7,
                           "efficiency_pct_mean": 55.0, "ttft_inflation_worst": 3.4, "tps_ratio_worst": 0.97}])
    results = SimpleNamespace(cells=cells, stops=stops, runs=runs, derived={"steps": steps})
    (found,) = findings.search_capacity(results, (0.85, 2.0))
    assert [p["n"] for p in found["probes"]] == [1, 2, 4, 8, 6, 7]  # the order the search asked in
    assert found["capacity"] == 6 and found["first_failing"]["n"] == 7 and found["runs"] == 18
    assert found["worst_case_probes"] == 6 and found["linear_points"] == 7  # 1..7 stepped: 7 points, searched: 6
    text = found["finding"]
    assert text.startswith(f"smollm2-135m (python; {settings}): capacity 6 agents, goodput 97.0 % [95.2 %, 99.0 %]")
    assert "7 not shown (goodput 90.0 % [85.0 %, 96.0 %])" in text
    assert "at 7 an agent waits for a slot" in text and "raise OLLAMA_NUM_PARALLEL or add an instance" in text
    from bench.report import plots

    assert plots.plot_capacity([found], tmp_path / "capacity.png").stat().st_size > 10_000
    from bench.report.issue_summary import verdict_lines

    assert verdict_lines({"capacity_search": [found]}) == [f"capacity under the SLO: **{text}**"]
    from bench.report import report_sections, templating

    profile = load_profile(smoke_variant(tmp_path, searched)).profile
    out = SimpleNamespace(results=SimpleNamespace(findings={"capacity_search": [found]}), profile=profile)
    section = report_sections.capacity_search(out)
    md = templating.render("_capacity.md.j2", plots={"capacity": "plots/capacity.png"}, **section)
    assert (f"- **{text}**; 18 runs over 6 probe point(s) (at most 6 for a bound of 8; stepping every count to "
            f"the same answer takes 7).") in md
    assert "![Capacity search: goodput vs agents](plots/capacity.png)" in md
    assert f"TTFT ≤ {profile.slo.ttft_ms:g} ms" in md
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| smollm2")]
    assert [r[3:] for r in rows][-1] == ["7", "6", "3", "90.0 % [85.0 %, 96.0 %]", "not shown",  # N, order, runs
                                         "verdict interval (its level was not logged)"]  # this log has no level
    # an interrupted search (its last point not logged yet) says so instead of a capacity
    del stops[by_n[7]]
    (short,) = findings.search_capacity(results, (0.85, 2.0))
    assert short["capacity"] is None and "did not finish (N = 7 not probed yet)" in short["finding"]


def test_validate_counts_a_config_the_search_skipped_as_skipped_not_missing(tmp_path):
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile
    from bench.report import validate

    def searched(d):
        d["single"]["enabled"] = False
        d["steps"] = {"enabled": True, "search": {"max_agents": 4}, "runs": 2, "models": ["smollm2-135m"]}

    profile = load_profile(smoke_variant(tmp_path, searched)).profile
    cells = build_plan(profile).cells
    by_n = {len(c.agents): c.key for c in cells}
    valid = {by_n[n]: {1, 2} for n in (1, 2, 4)}  # the search ran 1, 2, 4 and never asked for 3
    before = validate.Validation(tmp_path)
    validate._check_counts(cells, valid, {}, [], profile, before)
    assert before.runs_missing == 2  # without the search's stop reason, 3's runs are missing
    after = validate.Validation(tmp_path)
    validate._check_counts(cells, valid, {}, [], profile, after, {by_n[3]})
    assert (after.runs_missing, after.runs_skipped, after.problems) == (0, 2, [])


def test_plan_prints_the_search_worst_case_run_count(tmp_path):
    def searched(d):
        d["single"]["enabled"] = False
        d["steps"] = {"enabled": True, "search": {"max_agents": 8}, "runs": 3, "models": ["smollm2-135m"]}

    proc = invoke("plan", "--profile", str(smoke_variant(tmp_path, searched)), results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one search over 1..8: at most 6 probe points × 3 runs, against 8 counts × 3 runs stepped
    assert ("capacity search: 1 search(es) over 1..8 agents, at most 18 runs in the worst case (worst-case probe "
            "points × max runs per point); stepping every agent count would take up to 24") in proc.stdout


def test_the_linear_rule_leaves_a_searched_series_to_the_search():
    import pandas as pd

    from bench.analysis import findings

    steps = pd.DataFrame([{"model": "m", "lang": "python", "server_settings": s, "n_agents": n,
                           "efficiency_pct_mean": 90.0, "ttft_inflation_worst": 1.1, "tps_ratio_worst": 0.95}
                          for s in ("np1", "np2") for n in (1, 2, 4)])
    kept = findings._stepped(steps, [{"model": "m", "lang": "python", "server_settings": "np1"}])
    assert set(kept["server_settings"]) == {"np2"}
    (line,) = findings.capacity(kept, 0.85, 2.0)
    assert line["server_settings"] == "np2"


# ---- an undecided point runs on; its looks share the confidence (Bonferroni) --------------------

LOOKING = Target(metrics=("efficiency_pct",), rel_half_width=0.05, min_runs=3, max_runs=8)


def test_an_undecided_point_runs_on_until_decided_or_max_runs_and_a_decided_one_stops_at_its_precision_stop():
    """Every point meets its precision target at 3 runs (a constant efficiency). N = 1 and 2 (every
    call met) are "not shown" at 3 and 4 runs and meet at 5; N = 4 (95 of 100 calls each run: the
    target itself) never decides and stops at max_runs; N = 3 (every call missed) misses at once and
    stops at its precision stop, 3 runs, as before. Without the rule each point stopped at 3 runs,
    "not shown", and the search found capacity 0."""
    met = {1: 100, 2: 100, 3: 0, 4: 95}
    sched = Scheduler(search_cells(4, LOOKING), seed=6)
    ran = []
    while keys := sched.next_round("m"):
        for key in keys:
            n = int(key.rsplit("_", 1)[1])
            sched.record(key, Observation(sched.next_index(key), {"efficiency_pct": 100.0}, 1.0, (met[n], 100)))
            ran.append(n)
    assert ran == [1] * 5 + [2] * 5 + [4] * 8 + [3] * 3  # 1, 2, 4 (not shown), then bisect to 3
    reasons = {n: sched.stop_reason(f"m/python/agents_{n}") for n in met}
    assert reasons == {1: "target met", 2: "target met", 3: "target met", 4: "max runs"}
    verdicts = {n: sched.probe(f"m/python/agents_{n}").verdict for n in met}
    assert verdicts == {1: MEETS, 2: MEETS, 3: MISSES, 4: NOT_SHOWN}
    assert sched.search("m/python").result().capacity == 2
    # the search read each point's interval at the Bonferroni level over its 8 − 3 + 1 = 6 looks
    one = sched.probe("m/python/agents_1")
    assert look_confidence(0.95, 6) == pytest.approx(1 - 0.05 / 6)
    assert one.low == pytest.approx(goodput_interval([100] * 5, [100] * 5, 1 - 0.05 / 6).low)
    assert goodput_interval([100] * 4, [100] * 4, 1 - 0.05 / 6).low < TARGET <= one.low  # undecided at 4


def test_a_fixed_suites_point_still_stops_at_its_runs():
    sched = Scheduler(search_cells(1), seed=7)  # FIXED: 5 runs, whatever the verdict
    ran = play(sched, lambda n: 0.95, random.Random(8))
    assert len(ran) == 5 and sched.stop_reason("m/python/agents_1") == "fixed runs"


def judge_point(truth: float, icc: float, calls: int, looking: Target, rng: np.random.Generator,
                goodput_fn=goodput_interval, target: float = 0.8, confidence: float = 0.9) -> str:
    """One search point of a one-point search (N = 1) through the scheduler: each run's goodput is
    drawn around `truth` with between-run correlation `icc` (a beta with that ICC), its calls from
    it; the verdict the search read."""
    cells = [CellSpec("m/python/agents_1", "m", ("state", 1), looking, suite="steps",
                      search=SearchPoint("m/python", 1, 1, target, confidence))]
    sched = Scheduler(cells, seed=0, goodput_fn=goodput_fn)
    size = (1 - icc) / icc
    while sched.next_round("m"):
        met = int(rng.binomial(calls, rng.beta(truth * size, (1 - truth) * size)))
        sched.record("m/python/agents_1", Observation(sched.next_index("m/python/agents_1"),
                                                      {"efficiency_pct": 100.0}, 1.0, (met, calls)))
    return sched.probe("m/python/agents_1").verdict


def test_looking_after_every_run_keeps_the_verdicts_error_only_with_the_bonferroni_split():
    """Points whose true goodput is just under the target (0.79 against 0.80; 16 calls a run, as 8
    agents make, between-run ICC 0.3), looked at after each of runs 3..20 at 90 % confidence. Judging such a point
    "meets" is the error a capacity figure must not make. With each look at look_confidence (90 %
    split over 18 looks) it happens in at most 10 % of points (plus the Monte-Carlo margin); with the
    unsplit 90 % interval read after every run (the control) in more than 10 %: every look is
    another chance for a lucky stretch of runs to clear the target. Measured here: 3 % and 22.5 % of
    the 200 points. (Further under the target, 0.77, the correlated interval is conservative enough
    that even the control stays under 10 %.)"""
    looking = Target(metrics=("efficiency_pct",), rel_half_width=0.05, min_runs=3, max_runs=20)
    trials, alpha = 200, 0.10
    margin = 2 * (alpha * (1 - alpha) / trials) ** 0.5  # two standard errors at the nominal rate
    split = [judge_point(0.79, 0.3, 16, looking, np.random.default_rng(seed)) for seed in range(trials)]
    naive = [judge_point(0.79, 0.3, 16, looking, np.random.default_rng(seed),
                         goodput_fn=lambda met, calls, _confidence: goodput_interval(met, calls, 1 - alpha))
             for seed in range(trials)]
    wrong, wrong_naive = split.count(MEETS) / trials, naive.count(MEETS) / trials
    assert wrong <= alpha + margin
    assert wrong_naive > alpha


# ---- which interval is shown where: the verdict's (Bonferroni-split) against goodput.csv's plain one ----


def test_the_capacity_line_plot_and_points_show_the_verdict_interval_and_the_goodput_table_its_plain_one(tmp_path):
    """The search's verdicts read each look's interval at look_confidence; the goodput table's is at the
    SLO's confidence. The scheduler states the level it read, the runner logs it, and the finding, its
    line, the plot's band and the points table name it; the goodput table names its own level."""
    from types import SimpleNamespace

    import pandas as pd

    from bench.analysis import findings
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile
    from bench.report import plots, report_sections, templating

    sched = Scheduler(search_cells(4, LOOKING), seed=6)  # min 3, max 8 runs: six looks
    assert sched.verdict_level("m/python/agents_1") == (pytest.approx(1 - 0.05 / 6), 6)
    assert Scheduler(search_cells(1), seed=7).verdict_level("m/python/agents_1") == (0.95, 1)  # fixed: one look

    def searched(d):
        d["single"]["enabled"] = False
        d["steps"] = {"enabled": True, "search": {"max_agents": 2}, "runs": 3, "models": ["smollm2-135m"]}

    profile = load_profile(smoke_variant(tmp_path, searched)).profile
    cells = [c for c in build_plan(profile).cells if c.suite == "steps"]
    level = {"confidence": 1 - 0.05 / 10, "looks": 10, "overall_confidence": 0.95}  # as the runner logs it
    stops = {c.key: {"reason": "target met", "n": 12, "search": {"n": len(c.agents), "goodput": 0.99, "low": 0.96,
                                                                 "high": 1.0, "verdict": MEETS, "target": 0.9, **level}}
             for c in cells}
    runs = pd.DataFrame([{"cell": c.key, "run": 1, "server_settings": "np1"} for c in cells])
    results = SimpleNamespace(cells=cells, stops=stops, runs=runs, derived={"steps": pd.DataFrame()})
    (found,) = findings.search_capacity(results, (0.85, 2.0))
    label = "verdict interval at 99.5 % (95 % Bonferroni-split over 10 looks)"
    assert found["verdict_level"] == level and found["interval_label"] == label
    assert "goodput 99.0 % [96.0 %, 100.0 %] (verdict interval at 99.5 % (95 % Bonferroni-split" in found["finding"]
    section = report_sections.capacity_search(SimpleNamespace(results=SimpleNamespace(
        findings={"capacity_search": [found]}), profile=profile))
    md = templating.render("_capacity.md.j2", plots={}, **section)
    assert "goodput [verdict interval]" in md and f"| {label} |" in md
    svg = plots.plot_capacity([found], tmp_path / "capacity.svg").read_text()  # matplotlib keeps the text in SVG
    assert "Bonferroni-split over 10 looks" in svg
    # a log written before the level was logged: the line says so rather than pass it off as another level
    for entry in stops.values():
        for k in level:
            del entry["search"][k]
    (old,) = findings.search_capacity(results, (0.85, 2.0))
    assert old["interval_label"] == "verdict interval (its level was not logged)"
    table = report_sections.goodput_table(pd.DataFrame([{
        "cell": cells[0].key, "ran_as": "", "runs": 3, "failed_attempts": 0, "calls": 6, "calls_met": 6,
        "goodput_pct": 100.0, "goodput_ci_low": 20.7, "goodput_ci_high": 100.0, "confidence": 0.9,
        "design_effect": 1.0, "agent_goodput_pct": 100.0, "slo_ttft_pct": 100.0, "slo_decode_pct": 100.0,
        "slo_e2e_pct": 100.0, "breaks_first": "none"}]), 0.9)
    assert "goodput (% of calls) [interval at 90 %]" in table.splitlines()[0]


# ---- the bench header counts the search as `plan` does ------------------------------------------


def test_the_bench_header_counts_the_search_by_its_worst_case_as_plan_does(tmp_path):
    """Before: 'bench: 26 runs in 10 configs', every searched count's runs as if all ran. Now the
    runs outside the search and the search's worst case, the figure `invoke plan` prints."""
    import tasks
    from bench.config.plan import build_plan
    from bench.config.profile import load_profile

    def searched(d):
        d["steps"] = {"enabled": True, "search": {"max_agents": 8}, "runs": 3, "models": ["smollm2-135m"]}

    plan = build_plan(load_profile(smoke_variant(tmp_path, searched)).profile)
    assert (plan.run_count, len(plan.cells)) == (26, 10)  # 2 single runs + 8 counts × 3 runs
    assert tasks._bench_header(plan, tmp_path) == (
        f"bench: 2 runs in 2 configs, plus the capacity search: 1 search(es) over 1..8 agents, at most 18 runs in "
        f"the worst case (worst-case probe points × max runs per point), at least 3 → {tmp_path}")
    unsearched = build_plan(load_profile(smoke_variant(tmp_path, lambda d: None, name="plain.yaml")).profile)
    assert tasks._bench_header(unsearched, tmp_path) == f"bench: 2 runs in 2 configs → {tmp_path}"
