"""The plan: a profile expanded into the matrix of configs (cells) and the runs of each.

A cell is one (suite, language, model, config[, scenario]) combination: its runs share one output
folder and one summary. The plan fixes the order of runs before anything starts, so an
interrupted study resumes on the same order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from bench.config.profile import (
    SHARED_INSTANCE_SCENARIOS,
    AgentConfig,
    CapacitySearch,
    ModelSpec,
    Precision,
    Profile,
    ServerConfig,
    ServerSettings,
)
from bench.config.workload import load_workload
from bench.core.errors import BenchError
from bench.core.sequential import LookPlan, critical_value

AGENTS_MULTI = ("collector", "insight")
# The stop reason of a capacity-search config its search never asked for (bench/study/scheduler.py):
# planned, deliberately not run, so validate does not count its runs as missing.
NOT_PROBED = "not probed by the search"


def temp_tag(temperature: float) -> str:
    """0.8 → 'temp08', 1.0 → 'temp10' (the spec's folder names)."""
    return f"temp{int(round(temperature * 10)):02d}"


def step_agents(n: int) -> tuple[str, ...]:
    """The agents of an agent-count step: agent1 … agentN."""
    return tuple(f"agent{i}" for i in range(1, n + 1))


@dataclass(frozen=True)
class Cell:
    suite: str  # "single" | "multi" | "steps"
    lang: str  # "python" | "rust"
    model: ModelSpec
    scenario: str | None  # multi: the scenario; steps: "agents_<N>"
    # Per agent: its config, or None for "server defaults, send no config options".
    agents: tuple[tuple[str, AgentConfig | None], ...]
    runs: int
    label_config: AgentConfig  # the config that names the folder
    # Swept server settings (profile.settings_sweep); None: the runtime's pinned settings.
    settings: ServerSettings | None = None
    settings_tag: str = ""  # the swept values that differ from the pinned ones, in the folder name
    # Adaptive sampling (bench/study/scheduler.py): runs from precision.min_runs (= `runs`) to max_runs.
    # None: the fixed `runs` of the profile or of `--runs`.
    precision: Precision | None = None
    # A steps config of the capacity search: it runs only when the search asks for its agent count.
    search: CapacitySearch | None = None

    @property
    def max_runs(self) -> int:
        """The most runs the plan may give this config (outlier reruns of a fixed plan aside)."""
        return self.precision.max_runs if self.precision else self.runs

    def looks(self, extra_runs: int = 0) -> LookPlan:
        """The run counts at which the study may have stopped this config, which its interval must
        hold at (bench/core/sequential.py): min to max runs (adaptive), or the fixed runs to the runs
        plus the outlier reruns the profile allows (the reruns depend on the data too)."""
        if self.precision:
            return LookPlan(self.precision.min_runs, self.precision.max_runs, self.precision.confidence)
        return LookPlan(max(2, self.runs), max(2, self.runs + extra_runs))

    @property
    def shared_instance(self) -> bool:
        """Both agents on the first instance (the topology control scenario)."""
        return self.scenario in SHARED_INSTANCE_SCENARIOS

    @property
    def agent_configs(self) -> dict[str, AgentConfig | None]:
        return dict(self.agents)

    @property
    def config_tag(self) -> str:
        c = self.label_config
        tag = f"gpu{c.gpu_layers}_ctx{c.ctx}_{temp_tag(c.temperature)}"
        if self.settings_tag:
            tag += f"_{self.settings_tag}"
        return f"{self.scenario}_{tag}" if self.scenario else tag

    @property
    def rel_dir(self) -> Path:
        return Path(self.suite) / self.lang / self.model.slug / self.config_tag

    @property
    def key(self) -> str:
        return str(self.rel_dir)

    def agent_endpoints(self, endpoint_names: list[str]) -> dict[str, str]:
        """Which endpoint each agent calls: the single agent the first; the multi agents one each
        (both the first in the shared-instance scenario); step agents round-robin."""
        if self.suite == "single":
            return {"single": endpoint_names[0]}
        if self.suite == "steps":
            return {a: endpoint_names[i % len(endpoint_names)] for i, (a, _) in enumerate(self.agents)}
        if self.shared_instance:
            return {a: endpoint_names[0] for a in AGENTS_MULTI}
        return dict(zip(AGENTS_MULTI, endpoint_names))

    def server_configs(self, endpoint_names: list[str]) -> dict[str, ServerConfig | None]:
        """Which load-time settings each used endpoint needs (None: the runtime's defaults)."""
        out: dict[str, ServerConfig | None] = {}
        for agent, ep in self.agent_endpoints(endpoint_names).items():
            c = self.agent_configs[agent]
            out.setdefault(ep, ServerConfig(gpu_layers=c.gpu_layers, ctx=c.ctx) if c else None)
        return out

    def instance_settings(self, endpoint_names: list[str], pinned: ServerSettings) -> dict[str, ServerSettings]:
        """The settings every instance runs with for this cell: the swept or pinned ones, and one
        parallel slot per agent on the shared instance of the topology control."""
        base = self.settings or pinned
        out = {name: base for name in endpoint_names}
        if self.shared_instance:
            out[endpoint_names[0]] = base.model_copy(update={"num_parallel": max(base.num_parallel,
                                                                                 len(AGENTS_MULTI))})
        return out


@dataclass(frozen=True)
class RunItem:
    cell: Cell
    run_index: int

    @property
    def rel_dir(self) -> Path:
        return self.cell.rel_dir / f"run_{self.run_index}"


@dataclass(frozen=True)
class Shard:
    """Host `index` of `count` in a sharded study (`invoke fleet --shard`): it runs the run indices r
    with (r − 1) mod count == index of every config, so every config runs on every host that has a
    run of it (the host is a blocking factor, never confounded with the config)."""

    index: int  # 0-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/H' with 0 ≤ K < H."""
        k, sep, h = str(text).partition("/")
        try:
            shard = cls(int(k), int(h)) if sep else None
        except ValueError:
            shard = None
        if shard is None or not 0 <= shard.index < shard.count:
            raise BenchError(f"--shard {text!r}: expected K/H with 0 <= K < H (host K of H hosts, e.g. 0/2)")
        return shard

    def holds(self, run_index: int) -> bool:
        return (run_index - 1) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Plan:
    cells: list[Cell]
    items: list[RunItem] = field(default_factory=list)
    shard: Shard | None = None  # only this shard's runs are in items (shard_plan)

    @property
    def run_count(self) -> int:
        return len(self.items)

    @property
    def adaptive(self) -> bool:
        """Some config stops when its interval is narrow enough (items then hold each config's min runs)."""
        return any(c.precision is not None for c in self.cells)

    @property
    def scheduled(self) -> bool:
        """The scheduler decides what runs (bench/study/scheduler.py): an adaptive plan, or one with a
        capacity search, whose configs run only when the search asks for them."""
        return self.adaptive or any(c.search is not None for c in self.cells)

    def count(self, suite: str | None = None, lang: str | None = None) -> int:
        return sum(1 for i in self.items if (suite is None or i.cell.suite == suite)
                   and (lang is None or i.cell.lang == lang))


def _multi_agents(profile: Profile, scenario: str, lang: str) -> tuple[tuple[str, AgentConfig | None], ...]:
    chimera = profile.multi.chimera_for(lang)
    if scenario == "baseline_vs_chimera":
        return (("collector", None), ("insight", chimera))
    if scenario in ("chimera_homo", *SHARED_INSTANCE_SCENARIOS):
        return (("collector", chimera), ("insight", chimera))
    hetero = profile.multi.hetero
    return (("collector", hetero.collector), ("insight", hetero.insight))


@dataclass(frozen=True)
class _Expansion:
    """What every suite's cells share: the profile, the task's language filter and `--runs`."""
    profile: Profile
    langs: list[str] | None
    runs: int | None

    def langs_of(self, spec) -> list[str]:
        return [lang for lang in spec.langs if not self.langs or lang in self.langs]

    def settings_for(self, suite: str) -> list[tuple[ServerSettings | None, str]]:
        """The server settings a suite's configs run under: the pinned ones (tagged ''), or the
        sweep's points where the sweep covers the suite."""
        pinned, sweep = self.profile.runtime.pinned_settings, self.profile.settings_sweep
        points = sweep.points(pinned) if suite in sweep.suites else [pinned]
        return [(None, "") if p == pinned else (p, p.tag(pinned)) for p in points]

    def sampled(self, spec) -> dict:
        """The cell's run count and precision: `--runs` forces the fixed mode (spec parity)."""
        if self.runs:
            return {"runs": self.runs, "precision": None}
        return {"runs": spec.precision.min_runs if spec.precision else spec.runs, "precision": spec.precision}


def _single_cells(x: _Expansion, model: ModelSpec) -> list[Cell]:
    s = x.profile.single
    return [Cell("single", lang, model, None, (("single", cfg),), label_config=cfg, settings=st, settings_tag=tag,
                 **x.sampled(s))
            for lang in x.langs_of(s) for g in s.gpu_layers for c in s.ctx
            for cfg in [AgentConfig(gpu_layers=g, ctx=c, temperature=s.temperature)]
            for st, tag in x.settings_for("single")]


def _multi_cells(x: _Expansion, model: ModelSpec) -> list[Cell]:
    m = x.profile.multi
    return [Cell("multi", lang, model, scenario, agents, label_config=dict(agents)["insight"], settings=st,
                 settings_tag=tag, **x.sampled(m))
            for lang in x.langs_of(m) for scenario in m.scenarios
            for agents in [_multi_agents(x.profile, scenario, lang)]
            for st, tag in x.settings_for("multi")]


def _steps_cells(x: _Expansion, model: ModelSpec) -> list[Cell]:
    s = x.profile.steps
    if s.models and model.name not in s.models:
        return []
    cfg = s.config or x.profile.multi.chimera
    # a search: a config for every count it may probe, so the plan (and resume) is the same whatever it finds
    counts = range(1, s.search.max_agents + 1) if s.search else s.agents
    return [Cell("steps", lang, model, f"agents_{n}", tuple((a, cfg) for a in step_agents(n)), label_config=cfg,
                 settings=st, settings_tag=tag, search=s.search, **x.sampled(s))
            for lang in x.langs_of(s) for n in counts for st, tag in x.settings_for("steps")]


SUITE_CELLS = {"single": _single_cells, "multi": _multi_cells, "steps": _steps_cells}


def _run_order(profile: Profile, models: list[ModelSpec], cells: list[Cell]) -> list[RunItem]:
    """Models stay in blocks (a model switch is the costly step); within a block, runs of the
    single suite come before the multi suite, and are shuffled when the profile asks for it.
    An adaptive plan lists each config's min runs here; the scheduler orders and extends them."""
    rng = random.Random(profile.workload.order_seed)
    items: list[RunItem] = []
    for model in models:
        for suite in SUITE_CELLS:
            block = [RunItem(c, k) for c in cells if c.model == model and c.suite == suite
                     for k in range(1, c.runs + 1)]
            if profile.workload.randomize_order:
                rng.shuffle(block)
            items.extend(block)
    return items


def build_plan(profile: Profile, *, models: list[str] | None = None, langs: list[str] | None = None,
               suites: list[str] | None = None, runs: int | None = None) -> Plan:
    """Expand a profile (with the task's overrides) into cells and an ordered list of runs."""
    chosen = [m for m in profile.models if models is None or m.name in models]
    x = _Expansion(profile, langs, runs)

    def wanted(model: ModelSpec, suite: str) -> bool:
        return (getattr(profile, suite).enabled and (suites is None or suite in suites)
                and (model.suites is None or suite in model.suites))

    cells = [c for model in chosen for suite, expand in SUITE_CELLS.items() if wanted(model, suite)
             for c in expand(x, model)]
    return Plan(cells, _run_order(profile, chosen, cells))


def shard_plan(plan: Plan, shard: Shard) -> Plan:
    """The plan's runs of one shard, in the plan's order; its cells stay whole, so each run's plan
    fingerprint and folder are the same as in the whole study's. Fixed runs only: an adaptive config
    stops, and a capacity search picks its next agent count, on all of a config's runs at once."""
    if plan.adaptive:
        raise BenchError("a sharded study needs fixed run counts: adaptive stopping decides on all of a config's "
                         "runs at once; give --runs N")
    if plan.scheduled:
        raise BenchError("a sharded study cannot run a capacity search: it picks the next agent count from all of "
                         "a count's runs at once; leave the steps suite's search out of the profile")
    return Plan(plan.cells, [i for i in plan.items if shard.holds(i.run_index)], shard=shard)


def expected_runs(cell: Cell, cv_pct: dict[str, float]) -> int:
    """The runs an adaptive config is expected to need: the first n ≥ min_runs at which every
    precision metric's repeated interval, with the metric's coefficient of variation `cv_pct`
    (measured, or the profile's hint), reaches the target: t-multiplier(n) · CV / √n ≤ target;
    max_runs when none does. A fixed config: its runs."""
    p = cell.precision
    if p is None:
        return cell.runs
    plan = LookPlan(p.min_runs, p.max_runs, p.confidence)
    for n in range(p.min_runs, p.max_runs + 1):
        if all(critical_value(plan, n) * cv_pct.get(m, 0.0) / 100 / math.sqrt(n) <= p.rel_half_width
               for m in p.metrics):
            return n
    return p.max_runs


def estimate_seconds(profile: Profile, plan: Plan, *, switches: bool = True) -> float:
    """A rough ETA from the profile's speed hints: prefill + decode per call, plus restarts."""
    hints, wl = profile.eta, profile.workload
    prompt_tokens = len(load_workload().dataset_text) / 3.5 + 60  # ~3.5 characters per token
    call_s = prompt_tokens / hints.prefill_tps + wl.num_predict / hints.decode_tps
    per_run = {"single": 2 * call_s,
               # alone: 2 agents × 2 calls one after the other; together: 2 calls, overlapped
               "multi": 4 * call_s + 2 * call_s * 1.3}
    # steps: one agent alone (2 calls), then N agents at once (2 calls each, overlapping by the slots)
    total = sum(per_run[i.cell.suite] if i.cell.suite in per_run
                else 2 * call_s * (1 + len(i.cell.agents) * 0.75) for i in plan.items)
    if switches:
        n_switches = len({(c.model.name, c.suite, c.config_tag) for c in plan.cells})
        total += n_switches * (hints.restart_s + wl.warmup_requests * call_s * 2)
    return total
