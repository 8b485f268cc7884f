"""The adaptive scheduler: after every round it decides which configs run next, and when each stops.

It holds no clock, runs nothing and reads no file: the runner (bench/study/runner.py) feeds it what each
run measured and how long the study has taken, and the simulation (tests/test_sampling_simulation.py)
feeds it synthetic studies; both drive this same code.

- **Blocks.** The configs of one model form a block that runs to its end before the next model
  loads (a model switch is the costly step).
- **Rounds.** Within a block, a round runs every active config once. Configs that share a server
  state (same settings and load options: `server_key`) run together, so a round reloads the servers
  at most once per state; the states' order is drawn once per block and reversed every other round
  (ABBA), so the state a round ends on is the one the next begins with; configs within a state are
  shuffled every round. Every compared pair thus alternates in time instead of one side running
  first, and the drift probe runs between rounds (bench/core/drift.py).
- **Stopping** (per config): `target met` when every precision metric's repeated interval
  (bench/core/sequential.py) has a relative half-width ≤ the target and at least `min_runs` runs are
  not flagged by the outlier rule (|x − median| > k × MAD, the spec's rule: flagged runs stay in
  the data, and "rerun until enough clean runs" is part of stopping); `max runs` at `max_runs`;
  `budget` when the study's time budget cannot pay for another run of it; `failed` when the runner
  gives up on it (no rung of the fallback ladder loads, or it keeps failing).
- **Budget.** The first `min_runs` of every config are always run, and so is every run a capacity
  search point takes until its goodput verdict is decided: a point the budget cut short would be
  "not shown", a fail, and the search would claim a capacity the data never tested. The searches'
  runs are outside the budget altogether (their time is not charged to it; they are bounded by their
  own worst case, which `invoke plan` prints). Beyond them, each block gets a
  share of the budget left when it starts, in proportion to its configs' cost at min runs; within
  a round the configs furthest from their target (largest half-width ÷ target) go first, while the
  round's predicted cost fits the block's share (each config's mean run time so far, times the
  study's measured overhead factor).
- **Capacity search** (bench/study/capacity_search.py). The plan holds a steps config for every
  agent count a search may probe; each config with a `SearchPoint` stays dormant (never in a
  round) until its search asks for it. A probe point then runs under the rules above, and one
  more: it stops at its precision target only once its goodput verdict is decided (meets or
  misses); a "not shown" point runs on, a run a round, to max_runs (or the budget). The verdict is
  thus read after every run, so its interval (over the runs' SLO counts, `Observation.slo`) is
  taken at `look_confidence`, Bonferroni's split over the max_runs − min_runs + 1 looks, at every
  look and for the final verdict alike. When the point stops that interval goes to the search,
  which wakes the next point. When the search is done its unasked points stop as `not probed by
  the search`. A point that failed, or was skipped, has no interval: "not shown", a fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

from bench.config.plan import NOT_PROBED
from bench.core.sequential import Interval, LookPlan, interval
from bench.core.stats import goodput_interval
from bench.study.capacity_search import NOT_SHOWN, CapacitySearch, Probe, look_confidence, verdict
from bench.study.outliers import outlier_flags

TARGET_MET = "target met"
MAX_RUNS = "max runs"
BUDGET = "budget"
FAILED = "failed"
SKIPPED = "skipped"  # the study skipped it on purpose (no Rust agent)
FIXED = "fixed runs"  # a config sampled with the profile's fixed `runs` (spec parity)
STOP_REASONS = (TARGET_MET, MAX_RUNS, BUDGET, FAILED, SKIPPED, FIXED, NOT_PROBED)


@dataclass(frozen=True)
class Target:
    """A suite's precision target (profile `precision`), in plain values."""

    metrics: tuple[str, ...]
    rel_half_width: float
    min_runs: int
    max_runs: int
    confidence: float = 0.95
    fixed: bool = False  # a suite with the profile's fixed `runs`: it stops there, whatever its interval

    @property
    def looks(self) -> LookPlan:
        return LookPlan(max(2, self.min_runs), max(2, self.max_runs), self.confidence)


@dataclass(frozen=True)
class SearchPoint:
    """A config that is one agent count of a capacity search."""

    group: Hashable  # the search it belongs to (one per model, language and server settings)
    n: int
    max_agents: int
    goodput_target: float
    confidence: float = 0.95  # of the goodput verdict over all its looks (each look: look_confidence)


@dataclass(frozen=True)
class CellSpec:
    key: str
    block: str  # the model: a block's configs run together
    server_key: Hashable  # configs with the same key run without reloading the servers in between
    target: Target
    suite: str = "single"  # whose outlier metrics the spec's rule flags (bench/study/outliers.py)
    est_run_s: float = 10.0  # a run's expected time before any was measured
    search: SearchPoint | None = None


@dataclass
class Observation:
    run_index: int
    values: dict[str, float | None]
    duration_s: float
    slo: tuple[int, int] | None = None  # a search point's run: (calls that met the SLO, calls counted)


@dataclass
class CellStatus:
    n: int
    clean: int  # runs no outlier flag marks
    intervals: dict[str, Interval | None]
    distance: float  # max over the metrics of rel. half-width ÷ target (inf without an interval)
    met: bool


@dataclass
class _Cell:
    spec: CellSpec
    runs: list[Observation] = field(default_factory=list)
    attempts: int = 0  # run indices used, failed ones included
    stopped: str | None = None
    dormant: bool = False  # a search point its search has not asked for (yet)
    failed: set[int] = field(default_factory=set)  # run indices that failed


class Scheduler:
    def __init__(self, cells: Sequence[CellSpec], *, seed: int, mad_k: float = 2.0, budget_s: float | None = None,
                 interval_fn: Callable[..., Interval | None] = interval, goodput_fn: Callable = goodput_interval):
        # interval_fn: the repeated interval; the simulation swaps in the naive one as its control
        self.interval_fn = interval_fn
        self.goodput_fn = goodput_fn
        self._cells = {c.key: _Cell(c, dormant=c.search is not None) for c in cells}
        self._blocks = list(dict.fromkeys(c.block for c in cells))
        self._rng = random.Random(seed)
        self.mad_k = mad_k
        self.budget_s = budget_s
        self._round = {b: 0 for b in self._blocks}
        self._state_order: dict[str, list[Hashable]] = {}
        self._share: dict[str, tuple[float, float]] = {}  # block → (elapsed at its start, its budget)
        self._searches: dict[Hashable, CapacitySearch] = {}
        self._points: dict[Hashable, dict[int, str]] = {}  # search → agent count → config key
        for c in cells:
            if c.search is not None:
                self._searches.setdefault(c.search.group, CapacitySearch(c.search.max_agents, c.search.goodput_target))
                self._points.setdefault(c.search.group, {})[c.search.n] = c.key
        for group in self._searches:
            self._advance(group)

    # ---- what the runner reports ------------------------------------------------------------

    @property
    def blocks(self) -> list[str]:
        return list(self._blocks)

    def record(self, key: str, obs: Observation) -> None:
        """A run's values. A dormant search point keeps them (a resumed study's stored runs) and
        decides when its search asks for it."""
        cell = self._cells[key]
        cell.runs.append(obs)
        cell.attempts = max(cell.attempts, obs.run_index)
        if not cell.dormant:
            self._decide(cell)
            self._search_step(cell)

    def record_failure(self, key: str, run_index: int) -> None:
        """A run that failed: its index is used up; a config whose attempts reach max_runs
        without enough runs stops as failed."""
        cell = self._cells[key]
        cell.attempts = max(cell.attempts, run_index)
        cell.failed.add(run_index)
        if cell.stopped is None and not cell.dormant and cell.attempts >= cell.spec.target.max_runs:
            cell.stopped = FAILED
            self._search_step(cell)

    def stop(self, key: str, reason: str) -> None:
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}")
        cell = self._cells[key]
        cell.stopped, cell.dormant = reason, False
        self._search_step(cell)

    def next_index(self, key: str) -> int:
        return self._cells[key].attempts + 1

    # ---- what it decides ----------------------------------------------------------------------

    def status(self, key: str) -> CellStatus:
        cell = self._cells[key]
        spec = cell.spec
        intervals = {m: self.interval_fn([o.values.get(m) for o in cell.runs], spec.target.looks)
                     for m in spec.target.metrics}
        distance = max((iv.rel_half_width / spec.target.rel_half_width
                        if iv is not None and iv.rel_half_width is not None else float("inf"))
                       for iv in intervals.values())
        clean = len(cell.runs) - sum(self._flags(cell))
        met = distance <= 1.0 and clean >= spec.target.min_runs
        return CellStatus(len(cell.runs), clean, intervals, distance, met)

    def _met(self, cell: _Cell) -> bool:
        """status().met, with the outlier flags computed only once the intervals are narrow enough."""
        spec = cell.spec
        for m in spec.target.metrics:
            iv = self.interval_fn([o.values.get(m) for o in cell.runs], spec.target.looks)
            if iv is None or iv.rel_half_width is None or iv.rel_half_width > spec.target.rel_half_width:
                return False
        return len(cell.runs) - sum(self._flags(cell)) >= spec.target.min_runs

    def stop_reason(self, key: str) -> str | None:
        return self._cells[key].stopped

    def probe(self, key: str) -> Probe | None:
        """A search point's probe: its goodput interval and verdict (None: not probed, or no search)."""
        spec = self._cells[key].spec.search
        if spec is None:
            return None
        return next((p for p in self._searches[spec.group].probes if p.n == spec.n), None)

    def search(self, group: Hashable) -> CapacitySearch:
        return self._searches[group]

    def active(self, block: str) -> list[str]:
        return [k for k, c in self._cells.items() if c.spec.block == block and c.stopped is None and not c.dormant]

    def next_round(self, block: str, elapsed_s: float = 0.0) -> list[str]:
        """The configs of `block` to run next, in order (empty: the block is done). `elapsed_s`:
        the study's time so far, for the budget."""
        active, chosen = self.active(block), []
        while active and not chosen:
            chosen = self._within_budget(block, active, elapsed_s)
            # a search point the budget stopped wakes the search's next point: a round for that one
            active = self.active(block)
        if not chosen:
            return []
        r = self._round[block]
        self._round[block] = r + 1
        order = self._states(block)
        if r % 2:
            order = order[::-1]
        out: list[str] = []
        for state in order:
            group = [k for k in chosen if self._cells[k].spec.server_key == state]
            self._rng.shuffle(group)
            out += group
        return out

    # ---- internals ----------------------------------------------------------------------------

    def _flags(self, cell: _Cell) -> list[bool]:
        """Per run: flagged by the outlier rule on any of the suite's outlier metrics."""
        by_metric = outlier_flags([o.values for o in cell.runs], cell.spec.suite, self.mad_k)
        return [any(flags[i] for flags in by_metric.values()) for i in range(len(cell.runs))]

    def _decide(self, cell: _Cell) -> None:
        if cell.stopped is not None:
            return
        if cell.spec.target.fixed:
            if len(cell.runs) >= cell.spec.target.max_runs:
                cell.stopped = FIXED
            return
        if self._met(cell) and self._decided(cell):
            cell.stopped = TARGET_MET
        elif len(cell.runs) >= cell.spec.target.max_runs:
            cell.stopped = MAX_RUNS

    def _decided(self, cell: _Cell) -> bool:
        """Not a search point, or its goodput verdict is meets or misses: a "not shown" point runs on."""
        point = cell.spec.search
        return point is None or verdict(*self._goodput(cell)[1:], point.goodput_target) != NOT_SHOWN

    def _goodput(self, cell: _Cell) -> tuple[float | None, float | None, float | None]:
        """(estimate, low, high) of a point's goodput over its runs' SLO counts; Nones without runs. A
        run attempt that failed (and no later attempt at its index ran) is one more run none of whose
        calls met the SLO, as the analysis counts it (bench/analysis/goodput.py). The interval is at
        look_confidence over the max_runs − min_runs + 1 looks the point can take (_decide reads it
        after every run), so the verdict keeps its confidence at whichever look the point stops."""
        counted = [o.slo for o in cell.runs if o.slo is not None and o.slo[1] > 0]
        if not counted:
            return None, None, None
        failed = len(cell.failed - {o.run_index for o in cell.runs})
        size = sorted(c for _, c in counted)[len(counted) // 2]
        counted += [(0, size)] * failed
        iv = self.goodput_fn([m for m, _ in counted], [c for _, c in counted], self.verdict_level(cell.spec.key)[0])
        return iv.estimate, iv.low, iv.high

    def verdict_level(self, key: str) -> tuple[float, int]:
        """(the confidence of a search point's goodput interval at each look and for its verdict, the
        looks it can take: max_runs − min_runs + 1, one for a fixed point): look_confidence."""
        spec = self._cells[key].spec
        if spec.search is None:
            raise ValueError(f"{key} is not a capacity-search point")
        looks = max(1, spec.target.max_runs - spec.target.min_runs + 1)
        return look_confidence(spec.search.confidence, looks), looks

    def _search_step(self, cell: _Cell) -> None:
        if cell.spec.search is not None and cell.stopped is not None:
            self._advance(cell.spec.search.group)

    def _advance(self, group: Hashable) -> None:
        """Feed the search every stopped point it asked for, in turn, and wake the next one; when it
        is done, its points never asked for stop as not probed."""
        search, points = self._searches[group], self._points[group]
        while (n := search.next_n()) is not None:
            cell = self._cells[points[n]]
            if cell.dormant:
                cell.dormant = False
                self._decide(cell)  # a resumed study may hold enough runs already
            if cell.stopped is None:
                return
            search.observe(n, *self._goodput(cell))
        for key in points.values():
            if self._cells[key].dormant:
                self._cells[key].dormant = False
                self._cells[key].stopped = NOT_PROBED

    def _states(self, block: str) -> list[Hashable]:
        if block not in self._state_order:
            states = list(dict.fromkeys(c.spec.server_key for c in self._cells.values() if c.spec.block == block))
            self._rng.shuffle(states)
            self._state_order[block] = states
        return self._state_order[block]

    def _run_cost(self, cell: _Cell) -> float:
        if cell.runs:
            return sum(o.duration_s for o in cell.runs) / len(cell.runs)
        return cell.spec.est_run_s

    def _overhead_factor(self, elapsed_s: float) -> float:
        """The budgeted time so far ÷ the time its runs took (≥ 1); search points' runs are outside both."""
        run_s = sum(o.duration_s for c in self._cells.values() if c.spec.search is None for o in c.runs)
        return max(1.0, elapsed_s / run_s) if run_s > 0 else 1.0

    def _search_s(self) -> float:
        """The time the capacity searches' runs took: outside the budget (bounded by their worst case)."""
        return sum(o.duration_s for c in self._cells.values() if c.spec.search is not None for o in c.runs)

    def _within_budget(self, block: str, active: list[str], elapsed_s: float) -> list[str]:
        mandatory = [k for k in active if len(self._cells[k].runs) < self._cells[k].spec.target.min_runs
                     or not self._decided(self._cells[k])]
        if self.budget_s is None:
            return active
        elapsed_s = max(0.0, elapsed_s - self._search_s())
        if block not in self._share:  # the block's share of what is left, by its cost at min runs
            left = max(0.0, self.budget_s - elapsed_s)
            weight = {b: sum(c.spec.est_run_s * c.spec.target.min_runs for c in self._cells.values()
                             if c.spec.block == b and c.spec.search is None)
                      for b in self._blocks[self._blocks.index(block):]}
            total = sum(weight.values())
            self._share[block] = (elapsed_s, left * weight[block] / total if total else left)
        start, share = self._share[block]
        factor = self._overhead_factor(elapsed_s)
        spent = elapsed_s - start + factor * sum(self._run_cost(self._cells[k]) for k in mandatory)
        chosen = list(mandatory)
        optional = sorted((k for k in active if k not in mandatory), key=lambda k: -self.status(k).distance)
        for k in optional:
            cost = factor * self._run_cost(self._cells[k])
            if spent + cost <= share:
                chosen.append(k)
                spent += cost
            else:
                self._cells[k].stopped = BUDGET
                self._search_step(self._cells[k])
        return [k for k in active if k in chosen]
