"""The spec's fallback ladder: what a config that does not load is retried with ("downscale
ctx/gpu layers if needed and document", "retry with lower quant or reduced ctx").

A rung caps the configs of a cell and may swap the model's tag. After the config as asked come
fewer GPU layers (the model's `fallback.gpu_layers` below the asked value, largest first), then,
at the fewest, the context halved down to `fallback.ctx_floor`, then the same walk for each of
`fallback.tags` (another quant of the model). The runner (bench/study/runner.py) tries them in order,
frees the servers between two, and stores the run that works under the config it asked for.

What the host showed is learned per model (`Limits`): a rung needs at least the memory of one
that failed when it has as many GPU layers or more and as much context or more, on the same tag,
in the same suite or one that loads more (a multi run loads the model on two instances). Such a
rung is not tried again, so later configs of the model start from what fits.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from bench.config.plan import Cell
from bench.config.profile import AgentConfig, Fallback
from bench.core.errors import RequestError

# How many instances of the model a suite loads: a failure in one suite predicts failures in the
# suites that load as much or more.
SUITE_LOAD = {"single": 1, "multi": 2}


class Skip(enum.StrEnum):
    """Why planned runs were not made on purpose: the `fallback` value of a failures.jsonl line
    (the strings are what stored studies hold)."""

    OPTIONAL_MODEL = "optional model: skipped"  # no rung loaded an optional model: its runs are absent
    RUST_SUITE = "Rust suite skipped"  # no Rust agent on this host
    CONFIG = "config skipped"  # no rung loaded a required model's config: a problem


class Exhausted(RequestError):
    """No rung of a config's ladder is left: its last load failure. Only this skips a config; a
    load failure with a rung still to run (or a failure between two rungs) leaves the run to the
    retry pass, which starts at that rung."""

    @classmethod
    def of(cls, exc: RequestError) -> "Exhausted":
        return cls(exc.kind, exc.detail, exc.endpoint)


@dataclasses.dataclass(frozen=True)
class Rung:
    tag: str
    gpu_layers: int | None = None  # a cap on every agent's layers; None keeps the config's
    ctx: int | None = None  # a cap on every agent's context


def _layers(gpu_layers: int) -> float:
    """-1 asks for every layer (Ollama's default: as many as fit), more than any rung."""
    return math.inf if gpu_layers < 0 else gpu_layers


def rungs(cell: Cell, fallback: Fallback) -> list[Rung]:
    """The rungs of a cell in the order they are tried, the config as asked first."""
    asked = cell.label_config
    layers = [None, *sorted({g for g in fallback.gpu_layers if g < _layers(asked.gpu_layers)}, reverse=True)]
    halves = []
    ctx = asked.ctx // 2
    while ctx >= fallback.ctx_floor:
        halves.append(ctx)
        ctx //= 2
    out: list[Rung] = []
    for tag in [cell.model.name, *fallback.tags]:
        out += [Rung(tag, g) for g in layers]
        out += [Rung(tag, layers[-1], c) for c in halves]
    return out


def apply(cell: Cell, rung: Rung) -> Cell:
    """The cell as the rung runs it (its rel_dir names the effective config, not the folder the
    run is stored in: that stays the requested cell's)."""

    def cap(cfg: AgentConfig | None) -> AgentConfig | None:
        if cfg is None:
            return None  # the baseline agent sends no options: the server's defaults decide
        update = {}
        if rung.gpu_layers is not None and _layers(cfg.gpu_layers) > rung.gpu_layers:
            update["gpu_layers"] = rung.gpu_layers
        if rung.ctx is not None and cfg.ctx > rung.ctx:
            update["ctx"] = rung.ctx
        return cfg.model_copy(update=update)

    model = cell.model
    if rung.tag != model.name:
        model = model.model_copy(update={"name": rung.tag, "source": "pull", "file": None})
    return dataclasses.replace(cell, model=model, agents=tuple((a, cap(c)) for a, c in cell.agents),
                               label_config=cap(cell.label_config))


def describe(cell: Cell) -> str:
    c = cell.label_config
    return f"{cell.model.name} gpu_layers {c.gpu_layers} ctx {c.ctx}"


def downgrade(requested: dict | None, effective: dict | None) -> str:
    """What ran instead of the requested config, from two run-document configs ('' when the run
    ran as asked): the model tag, GPU layers and context that differ."""
    if not requested or not effective or requested == effective:
        return ""
    parts = [effective["model"]] if effective.get("model") != requested.get("model") else []
    parts += [f"{key} {effective[key]}" for key in ("gpu_layers", "ctx") if effective[key] != requested[key]]
    return ", ".join(parts) or "capped agent configs"


def step(eff: Cell, outcome: str, kind: str | None = None, error: str | None = None) -> dict:
    """One rung as the run document's `ladder` lists it."""
    c = eff.label_config
    return {"model": eff.model.name, "gpu_layers": c.gpu_layers, "ctx": c.ctx, "outcome": outcome,
            "error_kind": kind, "error": error}


@dataclasses.dataclass
class Limits:
    """What loaded and what did not on this host, per model of the profile (the manifest's
    `learned_limits`)."""

    failed: list[dict] = dataclasses.field(default_factory=list)
    worked: list[dict] = dataclasses.field(default_factory=list)

    @staticmethod
    def _entry(model: str, eff: Cell) -> dict:
        c = eff.label_config
        return {"model": model, "tag": eff.model.name, "suite": eff.suite, "gpu_layers": c.gpu_layers, "ctx": c.ctx}

    def known_failure(self, model: str, eff: Cell) -> dict | None:
        """A failure that a rung at least as large already had, or None."""
        c = eff.label_config
        return next((f for f in self.failed if f["model"] == model and f["tag"] == eff.model.name
                     and SUITE_LOAD[f["suite"]] <= SUITE_LOAD[eff.suite]
                     and _layers(f["gpu_layers"]) <= _layers(c.gpu_layers) and f["ctx"] <= c.ctx), None)

    def failure(self, model: str, eff: Cell, kind: str, learned_at: str) -> None:
        self.failed.append({**self._entry(model, eff), "error_kind": kind, "learned_at": learned_at})

    def success(self, model: str, eff: Cell) -> None:
        entry = self._entry(model, eff)
        if entry not in self.worked:
            self.worked.append(entry)

    def to_json(self) -> dict:
        return {"failed": self.failed, "worked": self.worked}
