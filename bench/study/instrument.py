"""The study measures its own instrument, so a reader can tell a model effect from the host or
the harness (formulas in bench/core/metrics.py, level "instrument").

- Client cost per run: `CpuMeter` reads the process's own CPU, its children's CPU (the Rust agent
  runs as a child), /proc/stat and the wall clock before and after a run; `client_block()` is the
  run's `client_cost` block in metrics.json.
- Drift guard: `run_probe_pairs()` makes a fixed reference call set (the single agent's analysis
  prompt on the baseline model with the server defaults, each call with its own prompt nonce),
  streamed through the harness and plain, in pairs; the runner makes it at the start, between
  rounds and models and at the end, into probes.jsonl; each probe's harness_to_engine compares
  the harness with the engine's own rate at the same moment.
- Study overhead: the runner's timeline.jsonl (`Timeline`: one line per switch, warmup, probe, idle
  baseline and run, with its duration and the run's `run_time_parts()`).

The tables made from these logs (the drift trend and series, where the time went) are the
analysis's: bench/analysis/instrument_tables.py.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.clients.agents import nonced_chat
from bench.clients.streaming import RequestRecord, ServerCounts, StreamingClient
from bench.config.workload import Workload, prompt_nonce
from bench.core import metrics
from bench.core.protocol import PROBE_PAIRS
from bench.core.store import TIMELINE


def _proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies over all cores; (0, 0) where /proc/stat is missing."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


@dataclass(frozen=True)
class CpuSnapshot:
    wall_ns: int
    self_cpu_s: float
    children_cpu_s: float
    busy_jiffies: int
    total_jiffies: int


def snapshot() -> CpuSnapshot:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, total = _proc_stat()
    return CpuSnapshot(time.perf_counter_ns(), me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime,
                       busy, total)


# Where each language's client CPU comes from (a Rust agent in a container is not our child:
# `docker run` is, and the agent's CPU is then not visible here).
CLIENT_CPU_SOURCE = {
    "python": "the Python process (getrusage self): agents, runner and samplers",
    "rust": "the tr116-agent process (getrusage children, waited for)",
    "rust-container": "the docker CLI only (the agent runs under containerd): not the agent's CPU",
}


def client_block(before: CpuSnapshot, after: CpuSnapshot, source: str) -> dict:
    """The run's `client_cost` block: the client's CPU, its share of a core, and the host's load."""
    wall_s = (after.wall_ns - before.wall_ns) / metrics.NS_PER_S
    cpu_s = (after.children_cpu_s - before.children_cpu_s if source.startswith("rust")
             else after.self_cpu_s - before.self_cpu_s)
    if source == "rust-container":
        cpu_s = None
    return {"cpu_source": CLIENT_CPU_SOURCE[source], "wall_s": wall_s, "client_cpu_s": cpu_s,
            "client_cpu_share": metrics.client_cpu_share(cpu_s, wall_s),
            "host_busy_pct": metrics.host_busy_pct(after.busy_jiffies - before.busy_jiffies,
                                                   after.total_jiffies - before.total_jiffies),
            "host_cores": os.cpu_count()}


def run_probe_pairs(client: StreamingClient, model: str, workload: Workload, key: str, *,
                    options: dict) -> tuple[list[RequestRecord], list[ServerCounts]]:
    """The reference call set: one uncounted call that loads the model, then PROBE_PAIRS pairs, each
    the single agent's analysis prompt streamed through the harness's client and the same prompt
    (another nonce of the same length, so no prefix is reused) in one plain non-streamed call. The
    streamed calls are what the harness measures; the plain ones are the engine's own rate at the
    same prompt, depth, options and threads, a few seconds apart."""
    # loads the model (a prefill is all it takes: one token)
    nonced_chat(client, model, workload, {**options, "num_predict": 1}, key=key, agent="single", stage="analysis",
                phase="probe", attempt=1)
    streamed, plain = [], []
    for i in range(PROBE_PAIRS):
        streamed.append(nonced_chat(client, model, workload, options, key=key, agent="single", stage="analysis",
                                    phase="probe", attempt=2 + 2 * i))
        nonce = prompt_nonce(key, "single", "analysis", "probe", 3 + 2 * i)
        plain.append(client.plain_chat(model, workload.messages("single", "analysis", nonce), options))
    return streamed, plain


def probe_entry(label: str, model: str, records: list[RequestRecord], plain: list[ServerCounts] = (),
                t_s: float | None = None) -> dict:
    """One line of probes.jsonl: the host's speed index (every call's engine decode rate), the
    harness's rates, the engine's own rate and their ratio, the probe's middle in Unix time."""
    def med(values):
        vals = [v for v in values if v is not None]
        return statistics.median(vals) if vals else None

    def mean(values):
        vals = [v for v in values if v is not None]
        return statistics.fmean(vals) if vals else None

    engine = [metrics.decode_tps_server(c.output_tokens, c.eval_ms) for c in plain]
    harness = mean(r.decode_tps_client for r in records)
    return {"label": label, "model": model, "t_s": t_s,
            "decode_tps": med(r.decode_tps_server for r in records),
            "decode_tps_client": med(r.decode_tps_client for r in records),
            "ttft_ms": med(r.ttft_ms for r in records),
            # the drift model's level: every call's engine decode rate (bench/core/drift.py)
            "rates": [r.decode_tps_server for r in records] + engine,
            "engine_decode_tps": mean(engine), "harness_decode_tps": harness,
            "harness_to_engine": metrics.harness_to_engine(harness, mean(engine)),
            "requests": [r.to_json() for r in records],
            "plain": [dataclasses.asdict(c) for c in plain]}


def run_time_parts(doc: dict) -> dict:
    """A run's time as its requests used it (metrics.json as stored): `active_s`, the union of its
    request spans (overlapping requests of the together phase count once: metrics.active_s);
    `span_s`, its first send to its last end; `summed_s`, what the study counted before the union
    (single: Σ e2e; multi and steps: the alone time(s) plus the together wall, which for the steps
    is N × one agent alone, not measured), kept to show both ways."""
    spans = metrics.active_spans([r for r in doc["requests"]])
    m = doc["metrics"]
    summed = (sum(r["e2e_ms"] for r in doc["requests"]) / 1000.0 if doc["suite"] == "single"
              else m["seq_s"] + m["wall_s"])
    return {"active_s": metrics.active_s(spans), "span_s": spans[-1][1] - spans[0][0] if spans else 0.0,
            "summed_s": summed}


class Timeline:
    """The runner's events in timeline.jsonl: what each part of the study cost, in wall time.
    `t_s` is the Unix time at the event's start (bookkeeping only, never a measurement); the
    duration comes from the monotonic clock."""

    def __init__(self, store, invocation: str):
        self.store, self.invocation = store, invocation

    @contextmanager
    def event(self, kind: str, **fields):
        t_s, t0 = time.time(), time.perf_counter()
        extra: dict = {}
        try:
            yield extra  # the caller may add fields (a run's measured time)
        finally:
            self.store.append_jsonl(TIMELINE, {"event": kind, "invocation": self.invocation, "t_s": t_s,
                                               "duration_s": time.perf_counter() - t0, **fields, **extra})
