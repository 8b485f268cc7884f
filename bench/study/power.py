"""Power per the spec: NVML sampled during every run, energy over the active window only.

- An idle baseline is taken after every server (re)load and warmup, before the config's runs:
  servers loaded, no request in flight, `IDLE_SETTLE_S` to let the warmup's clocks drop, then
  `IDLE_S` of samples. Its mean power is subtracted for the net J/token.
- Each run is sampled every `SAMPLE_INTERVAL_S` from just before its agents start until they end.
  Its energy is taken over the request spans (first send to last end, gaps cut out), and the run's
  block in metrics.json carries gross and idle-subtracted J/token and tokens/J (formulas in
  bench/core/metrics.py), the GPU's state at the start and end, and whether it throttled.
- Every sample goes to the config's `power.csv`: the spec's power_log.csv columns (power.draw,
  utilization.gpu, temperature.gpu) plus memory used, the energy counter, the clocks-event
  reasons and a monotonic timestamp.
- Without NVML the block is all nulls with the reason, and nothing waits or samples.

Alignment: request times are offsets from the run's own start (`run_t0`). The run window's origin
is the runner's clock read just before the agents start. In Python both are `perf_counter_ns` in
one process and the agents read `run_t0` within microseconds of it. A Rust run starts its clock
in the agent process after spawn, so its requests appear early by the process start-up time;
`alignment_slack_s` (the runner's elapsed time minus the last request's end) bounds that offset.
"""

from __future__ import annotations

import io
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pandas as pd

from bench.config.plan import Cell, RunItem
from bench.core import metrics
from bench.core.protocol import IDLE_S, IDLE_SETTLE_S
from bench.core.store import Store, atomic_write_text
from bench.host import gpu

SAMPLE_INTERVAL_S = 0.1  # 10 Hz: the spec logs at 1 Hz; runs of a few seconds need more points
POWER_LOG = "power.csv"
COLUMNS = ["t_monotonic_ns", "run_index", "segment", "power.draw [W]", "utilization.gpu [%]",
           "temperature.gpu", "memory.used [MiB]", "energy.total [mJ]", "clocks_event_reasons"]
ALIGNMENT = {
    "python": "run start = runner clock (perf_counter_ns) just before the agents start, in-process",
    "rust": "run start = runner clock just before the agent process is spawned; the agent's own "
            "start is later by its start-up time, at most alignment_slack_s",
}
BLOCK_FIELDS = ("source", "power_field", "interval_s", "n_samples", "n_active_samples", "alignment",
                "alignment_slack_s", "active_s", "energy_j", "energy_run_j", "mean_power_w", "idle_power_w",
                "idle_s", "energy_net_j", "j_per_token", "j_per_token_net", "tokens_per_j",
                "tokens_per_j_net", "mean_util_pct", "max_temp_c", "peak_vram_used_bytes", "gpu_start",
                "gpu_end", "throttled", "throttle_reasons")


@dataclass
class IdleBaseline:
    power_w: float | None
    duration_s: float
    n_samples: int
    cell: str


@dataclass
class RunWindow:
    """One run's sampler and its window on the runner's clock."""

    sampler: gpu.PowerSampler
    t0_ns: int = 0
    t_end_ns: int = 0


def cumulative_energy(samples: list[gpu.PowerSample], t0_ns: int) -> tuple[list[float], list[float], str] | None:
    """(t_s, E_j, source): the energy counter where every sample has it, else integrated power."""
    samples = sorted(samples, key=lambda x: x.t_ns)  # the idle window's first sample comes from another thread
    counter = [(s.t_ns, s.energy_mj) for s in samples if s.energy_mj is not None]
    if len(counter) >= 2 and len(counter) == len(samples):
        return ([(t - t0_ns) / 1e9 for t, _ in counter], [(e - counter[0][1]) / 1000.0 for _, e in counter],
                "nvml_energy_counter")
    powered = [(s.t_ns, s.power_w) for s in samples if s.power_w is not None]
    if len(powered) < 2:
        return None
    t_s = [(t - t0_ns) / 1e9 for t, _ in powered]
    return t_s, list(metrics.cumulative_energy_from_power(t_s, [p for _, p in powered])), "nvml_power_samples"


def idle_baseline(samples: list[gpu.PowerSample], t_from_ns: int, cell: str) -> IdleBaseline:
    """Mean power over the samples from `t_from_ns` on (the settle time before it is left out)."""
    window = [s for s in samples if s.t_ns >= t_from_ns]
    curve = cumulative_energy(window, t_from_ns)
    if curve is None:
        return IdleBaseline(None, 0.0, len(window), cell)
    t_s, e_j, _ = curve
    duration = t_s[-1] - t_s[0]
    return IdleBaseline(metrics.idle_power_w(e_j[-1] - e_j[0], duration), duration, len(window), cell)


def _in_spans(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in spans)


def null_block(reason: str) -> dict:
    return {"available": False, "reason": reason, "gpu_index": None, **{k: None for k in BLOCK_FIELDS}}


def run_block(window: RunWindow, doc: dict, idle: IdleBaseline | None) -> dict:
    """The run's power block for metrics.json (see the module docstring and bench/core/metrics.py)."""
    s = window.sampler
    if not s.available:
        return null_block(s.reason)
    spans = metrics.active_spans(doc["requests"])
    tokens = sum(r["output_tokens"] for r in doc["requests"])
    curve = cumulative_energy(s.samples, window.t0_ns)
    active = metrics.active_s(spans)
    energy = energy_run = None
    if curve:
        t_s, e_j, _ = curve
        energy = metrics.energy_over_spans_j(t_s, e_j, spans)
        energy_run = metrics.energy_over_spans_j(t_s, e_j, [(t_s[0], t_s[-1])])
    idle_w = idle.power_w if idle else None
    active_samples = [x for x in s.samples if _in_spans((x.t_ns - window.t0_ns) / 1e9, spans)]
    temps = [x.temp_c for x in s.samples if x.temp_c is not None]
    utils = [x.util_pct for x in active_samples if x.util_pct is not None]
    masks = [s.state_start.get("clocks_event_reasons"), s.state_end.get("clocks_event_reasons")]
    masks += [x.reasons for x in active_samples]
    seen = 0
    for m in masks:
        seen |= m or 0
    return {
        "available": True, "reason": None, "gpu_index": s.device_index,
        "source": curve[2] if curve else None, "power_field": s.power_field, "interval_s": s.interval_s,
        "n_samples": len(s.samples), "n_active_samples": len(active_samples),
        "alignment": ALIGNMENT[doc["lang"]],
        "alignment_slack_s": ((window.t_end_ns - window.t0_ns) / 1e9 - spans[-1][1]) if spans else None,
        "active_s": active, "energy_j": energy, "energy_run_j": energy_run,
        "mean_power_w": metrics.mean_power_w(energy, active),
        "idle_power_w": idle_w, "idle_s": idle.duration_s if idle else None,
        "energy_net_j": metrics.net_energy_j(energy, idle_w, active),
        "j_per_token": metrics.joules_per_token(tokens, energy),
        "j_per_token_net": metrics.joules_per_token_net(tokens, energy, idle_w, active),
        "tokens_per_j": metrics.tokens_per_joule(tokens, energy),
        "tokens_per_j_net": metrics.tokens_per_joule_net(tokens, energy, idle_w, active),
        "mean_util_pct": sum(utils) / len(utils) if utils else None,
        "max_temp_c": max(temps) if temps else None,
        "peak_vram_used_bytes": s.peak_vram_bytes(),
        "gpu_start": s.state_start, "gpu_end": s.state_end,
        "throttled": metrics.throttled(masks, gpu.THROTTLE_MASK),
        "throttle_reasons": [n for n, bit in gpu.THROTTLE_REASONS.items() if seen & bit],
    }


def log_rows(samples: list[gpu.PowerSample], run_index: int | None,
             segment: Callable[[gpu.PowerSample], str]) -> pd.DataFrame:
    return pd.DataFrame([{
        "t_monotonic_ns": x.t_ns, "run_index": run_index, "segment": segment(x),
        "power.draw [W]": x.power_w, "utilization.gpu [%]": x.util_pct, "temperature.gpu": x.temp_c,
        "memory.used [MiB]": x.vram_used_bytes / 2**20 if x.vram_used_bytes is not None else None,
        "energy.total [mJ]": x.energy_mj, "clocks_event_reasons": x.reasons} for x in samples], columns=COLUMNS)


def append_log(store: Store, cell: Cell, rows: pd.DataFrame, run_index: int | None = None) -> None:
    """Add rows to the config's power.csv (rewritten atomically; a rerun replaces its run's rows)."""
    path = store.path(cell.rel_dir) / POWER_LOG
    if path.is_file():
        old = pd.read_csv(path)
        if run_index is not None:
            old = old[old["run_index"] != run_index]
        rows = pd.concat([old, rows], ignore_index=True) if not old.empty else rows
    out = io.StringIO()
    rows.astype({"run_index": "Int64", "energy.total [mJ]": "Int64", "clocks_event_reasons": "Int64"}
                ).to_csv(out, index=False)
    atomic_write_text(path, out.getvalue())


@dataclass
class PowerMonitor:
    """The runner's power bookkeeping: idle baselines, run windows, blocks and power.csv."""

    store: Store
    interval_s: float | None = field(default_factory=lambda: SAMPLE_INTERVAL_S)
    idle_s: float = field(default_factory=lambda: IDLE_S)
    settle_s: float = field(default_factory=lambda: IDLE_SETTLE_S)
    clock: Callable[[], int] = time.perf_counter_ns
    sleep: Callable[[float], None] = time.sleep
    idle: IdleBaseline | None = None

    def _sampler(self) -> gpu.PowerSampler:
        return gpu.PowerSampler(interval_s=self.interval_s, clock=self.clock)

    def take_idle_baseline(self, cell: Cell) -> IdleBaseline | None:
        """Servers loaded and warm, nothing in flight: settle, then sample the idle power."""
        with self._sampler() as s:
            if not s.available:
                return None  # no NVML: no waiting either
            self.sleep(self.settle_s)
            t_from = s.sample_once().t_ns  # a sample exactly at the window's start
            self.sleep(self.idle_s)
        self.idle = idle_baseline(s.samples, t_from, cell.key)
        append_log(self.store, cell, log_rows(s.samples, None, lambda x: "idle" if x.t_ns >= t_from else "settle"))
        return self.idle

    @contextmanager
    def measure(self) -> Iterator[RunWindow]:
        with self._sampler() as s:
            window = RunWindow(s)
            window.t0_ns = self.clock()  # the origin the run's request offsets are aligned to
            yield window
            window.t_end_ns = self.clock()

    def block(self, window: RunWindow, item: RunItem, doc: dict) -> dict:
        """The run's power block; its samples go to the config's power.csv."""
        block = run_block(window, doc, self.idle)
        if block["available"]:
            spans = metrics.active_spans(doc["requests"])
            rows = log_rows(window.sampler.samples, item.run_index,
                            lambda x: "active" if _in_spans((x.t_ns - window.t0_ns) / 1e9, spans) else "gap")
            append_log(self.store, item.cell, rows, item.run_index)
        return block
