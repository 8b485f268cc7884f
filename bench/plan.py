"""The plan: a profile expanded into the matrix of configs (cells) and the runs of each.

A cell is one (suite, language, model, config[, scenario]) combination: its runs share one output
folder and one summary. The plan fixes the order of runs before anything starts, so an
interrupted study resumes on the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from bench.profile import AgentConfig, ModelSpec, Profile, ServerConfig
from bench.workload import load_workload

AGENTS_MULTI = ("collector", "insight")


def temp_tag(temperature: float) -> str:
    """0.8 → 'temp08', 1.0 → 'temp10' (the spec's folder names)."""
    return f"temp{int(round(temperature * 10)):02d}"


@dataclass(frozen=True)
class Cell:
    suite: str  # "single" | "multi"
    lang: str  # "python" | "rust"
    model: ModelSpec
    scenario: str | None
    # Per agent: its config, or None for "server defaults, send no config options".
    agents: tuple[tuple[str, AgentConfig | None], ...]
    runs: int
    label_config: AgentConfig  # the config that names the folder

    @property
    def agent_configs(self) -> dict[str, AgentConfig | None]:
        return dict(self.agents)

    @property
    def config_tag(self) -> str:
        c = self.label_config
        tag = f"gpu{c.gpu_layers}_ctx{c.ctx}_{temp_tag(c.temperature)}"
        return f"{self.scenario}_{tag}" if self.scenario else tag

    @property
    def rel_dir(self) -> Path:
        return Path(self.suite) / self.lang / self.model.slug / self.config_tag

    @property
    def key(self) -> str:
        return str(self.rel_dir)

    def server_configs(self, endpoint_names: list[str]) -> dict[str, ServerConfig | None]:
        """Which load-time settings each endpoint needs (None: the runtime's defaults)."""
        if self.suite == "single":
            c = self.agent_configs["single"]
            return {endpoint_names[0]: ServerConfig(gpu_layers=c.gpu_layers, ctx=c.ctx)}
        out: dict[str, ServerConfig | None] = {}
        for agent, ep in zip(AGENTS_MULTI, endpoint_names):
            c = self.agent_configs[agent]
            out[ep] = ServerConfig(gpu_layers=c.gpu_layers, ctx=c.ctx) if c else None
        return out


@dataclass(frozen=True)
class RunItem:
    cell: Cell
    run_index: int

    @property
    def rel_dir(self) -> Path:
        return self.cell.rel_dir / f"run_{self.run_index}"


@dataclass
class Plan:
    cells: list[Cell]
    items: list[RunItem] = field(default_factory=list)

    @property
    def run_count(self) -> int:
        return len(self.items)

    def count(self, suite: str | None = None, lang: str | None = None) -> int:
        return sum(1 for i in self.items if (suite is None or i.cell.suite == suite)
                   and (lang is None or i.cell.lang == lang))


def _multi_agents(profile: Profile, scenario: str, lang: str) -> tuple[tuple[str, AgentConfig | None], ...]:
    chimera = profile.multi.chimera_for(lang)
    if scenario == "baseline_vs_chimera":
        return (("collector", None), ("insight", chimera))
    if scenario == "chimera_homo":
        return (("collector", chimera), ("insight", chimera))
    hetero = profile.multi.hetero
    return (("collector", hetero.collector), ("insight", hetero.insight))


def build_plan(profile: Profile, *, models: list[str] | None = None, langs: list[str] | None = None,
               suites: list[str] | None = None, runs: int | None = None) -> Plan:
    """Expand a profile (with the task's overrides) into cells and an ordered list of runs."""
    chosen = [m for m in profile.models if models is None or m.name in models]
    cells: list[Cell] = []
    for model in chosen:
        s = profile.single
        if s.enabled and (suites is None or "single" in suites):
            for lang in s.langs:
                if langs and lang not in langs:
                    continue
                for g in s.gpu_layers:
                    for c in s.ctx:
                        cfg = AgentConfig(gpu_layers=g, ctx=c, temperature=s.temperature)
                        cells.append(Cell("single", lang, model, None, (("single", cfg),), runs or s.runs, cfg))
        m = profile.multi
        if m.enabled and (suites is None or "multi" in suites):
            for lang in m.langs:
                if langs and lang not in langs:
                    continue
                for scenario in m.scenarios:
                    agents = _multi_agents(profile, scenario, lang)
                    label = dict(agents)["insight"]
                    cells.append(Cell("multi", lang, model, scenario, agents, runs or m.runs, label))
    plan = Plan(cells)
    rng = random.Random(profile.workload.order_seed)
    # Models stay in blocks (a model switch is the costly step); within a block, runs of the
    # single suite come before the multi suite, and are shuffled when the profile asks for it.
    for model in chosen:
        for suite in ("single", "multi"):
            block = [RunItem(c, k) for c in cells if c.model == model and c.suite == suite
                     for k in range(1, c.runs + 1)]
            if profile.workload.randomize_order:
                rng.shuffle(block)
            plan.items.extend(block)
    return plan


def estimate_seconds(profile: Profile, plan: Plan) -> float:
    """A rough ETA from the profile's speed hints: prefill + decode per call, plus restarts."""
    hints, wl = profile.eta, profile.workload
    prompt_tokens = len(load_workload().dataset_text) / 3.5 + 60  # ~3.5 characters per token
    call_s = prompt_tokens / hints.prefill_tps + wl.num_predict / hints.decode_tps
    per_run = {"single": 2 * call_s,
               # alone: 2 agents × 2 calls one after the other; together: 2 calls, overlapped
               "multi": 4 * call_s + 2 * call_s * 1.3}
    total = sum(per_run[i.cell.suite] for i in plan.items)
    switches = len({(c.model.name, c.suite, c.config_tag) for c in plan.cells})
    total += switches * (hints.restart_s + wl.warmup_requests * call_s * 2)
    return total
