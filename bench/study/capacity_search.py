"""The capacity search: the largest agent count N ≤ max_agents whose goodput meets the SLO's target.

Pure, like the scheduler (bench/study/scheduler.py): no clock, no I/O. The scheduler runs each
probe point with the study's precision rules, then hands the point's goodput interval here and
asks which N to run next; tests/test_capacity_search.py drives it with a scripted response curve.

- **Exponential, then bisection.** Probe N = 1, 2, 4, … (capped at max_agents) until a point
  fails; then bisect between the largest passing and the smallest failing N until they are
  adjacent. Capacity is the largest passing N (0 when N = 1 fails), the first failing N is
  capacity + 1 (none when every point up to max_agents passes).
- **A point passes** when its goodput interval's LOWER bound is ≥ the target ("meets"). Its upper
  bound below the target is "misses". An interval that straddles the target is "not shown" and
  counts as a fail: capacity is a guarantee ("N agents get the SLO"), so it is claimed only where
  the data shows it, never where it merely does not rule it out. With few runs the search thus
  errs low, never high; the report names the straddling points so a reader sees where more runs
  would help. A point whose runs all failed has no interval and is "not shown" too.
- **An undecided point runs on.** The scheduler keeps a "not shown" point running, one run a round,
  until its verdict is meets or misses or it reaches the suite's max_runs, so it looks at the verdict
  after every run from min_runs on. Each look's interval is taken at `look_confidence`: Bonferroni's
  split of 1 − confidence over the max_runs − min_runs + 1 looks a point can take, so the chance
  that ANY look wrongly says "meets" (or "misses") stays within 1 − confidence; the final verdict
  the search reads is the same interval. tests/test_capacity_search.py shows it by simulation, with
  the unsplit interval looked at after every run as the control that overstates.
- **Never above max_agents**, and the probe count is bounded: `worst_case_probes(max_agents)`
  plays every sequence of outcomes the search can see (any sequence of bisection outcomes is one
  some monotone curve produces), so `invoke plan` can state the most runs a search may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MEETS = "meets"  # the interval's lower bound ≥ target
MISSES = "misses"  # its upper bound < target
NOT_SHOWN = "not shown"  # it straddles the target (or there is no interval): a fail, see above


@dataclass(frozen=True)
class Probe:
    n: int
    goodput: float | None  # the point's goodput estimate (share of calls that met the SLO)
    low: float | None  # its interval
    high: float | None
    verdict: str

    @property
    def passed(self) -> bool:
        return self.verdict == MEETS


def look_confidence(confidence: float, looks: int) -> float:
    """1 − (1 − confidence) / looks: the confidence of each look's goodput interval (Bonferroni)

    A point whose verdict is read after each of up to `looks` runs errs if any look errs; by the
    union bound that chance is at most looks × (1 − look confidence) = 1 − confidence. Unlike the
    precision intervals' calibrated level (bench/core/sequential.py, for t statistics of normal runs)
    it needs no model of the goodput interval, whose design effect and run-count factor change
    with every look.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a probability in (0, 1), got {confidence}")
    if looks < 1:
        raise ValueError(f"a point takes at least one look, got {looks}")
    return 1.0 - (1.0 - confidence) / looks


def verdict(low: float | None, high: float | None, target: float) -> str:
    """meets: low ≥ target; misses: high < target; otherwise (straddles, or no interval) not shown."""
    if low is not None and low >= target:
        return MEETS
    if high is not None and high < target:
        return MISSES
    return NOT_SHOWN


@dataclass(frozen=True)
class CapacityResult:
    capacity: int  # the largest N shown to meet the target (0: not even one agent)
    interval: Probe | None  # the capacity point's probe (None when capacity is 0)
    first_failing: Probe | None  # capacity + 1's probe (None when capacity is max_agents)
    probes: tuple[Probe, ...]  # in the order they ran
    max_agents: int
    target: float


@dataclass
class CapacitySearch:
    """One search (one model, language and server settings): ask `next_n()`, run that point,
    `observe()` its interval, until `next_n()` is None; then `result()`."""

    max_agents: int
    target: float
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self):
        if self.max_agents < 1:
            raise ValueError(f"max_agents must be ≥ 1, got {self.max_agents}")
        if not 0 < self.target <= 1:
            raise ValueError(f"the goodput target is a share in (0, 1], got {self.target}")

    def _bounds(self) -> tuple[int, int | None]:
        """(largest passing N, 0 when none; smallest failing N, None when none)."""
        passed = [p.n for p in self.probes if p.passed]
        failed = [p.n for p in self.probes if not p.passed]
        return max(passed, default=0), min(failed, default=None)

    def next_n(self) -> int | None:
        """The agent count to probe next; None when the search is done."""
        lo, hi = self._bounds()
        if hi is None:  # exponential: 1, 2, 4, … capped at max_agents
            if lo >= self.max_agents:
                return None
            return 1 if lo == 0 else min(2 * lo, self.max_agents)
        if hi - lo <= 1:
            return None
        return (lo + hi) // 2

    def observe(self, n: int, goodput: float | None, low: float | None, high: float | None) -> Probe:
        """Record the interval of the point `next_n()` asked for."""
        expected = self.next_n()
        if n != expected:
            raise ValueError(f"the search asked for N = {expected}, got an observation at N = {n}")
        probe = Probe(n, goodput, low, high, verdict(low, high, self.target))
        self.probes.append(probe)
        return probe

    @property
    def done(self) -> bool:
        return self.next_n() is None

    def result(self) -> CapacityResult:
        if not self.done:
            raise ValueError(f"the search is not done: it still asks for N = {self.next_n()}")
        lo, hi = self._bounds()
        by_n = {p.n: p for p in self.probes}
        return CapacityResult(lo, by_n.get(lo), by_n.get(hi) if hi is not None else None, tuple(self.probes),
                              self.max_agents, self.target)


def worst_case_probes(max_agents: int) -> int:
    """The most probe points a search up to `max_agents` can run: every sequence of pass/fail
    outcomes, played through the search itself."""

    def most(search: CapacitySearch) -> int:
        n = search.next_n()
        if n is None:
            return len(search.probes)
        outcomes = []
        for low, high in ((1.0, 1.0), (0.0, 0.0)):  # a pass, a fail
            branch = CapacitySearch(search.max_agents, 1.0, list(search.probes))
            branch.observe(n, None, low, high)
            outcomes.append(most(branch))
        return max(outcomes)

    return most(CapacitySearch(max_agents, 1.0))
