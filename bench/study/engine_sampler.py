"""The engine's own evidence: during each run a background thread polls every endpoint of the study
and keeps timestamped samples, so "an agent waits for a slot" is shown by the engine's queue and
not only inferred from the client's timings.

- llama.cpp (llama-server, started with --metrics and --slots, bench/runtimes/llamacpp.py):
  `GET /metrics` (Prometheus text format, parsed by prometheus_client) gives
  `llamacpp:requests_processing` and `llamacpp:requests_deferred` (requests waiting for a slot),
  and `llamacpp:kv_cache_usage_ratio` where the build exports it (the one built here does not:
  then the busy slots' context fill from /slots stands in); `GET /slots` gives each slot's
  is_processing and task id. Both need the study's API key, sent as the clients send it.
- Ollama: `GET /api/ps` gives the loaded models, their size in VRAM and their expiry. Ollama has
  no queue metric: its scheduler's queue (OLLAMA_MAX_QUEUE) is not exposed, so for Ollama the
  slot wait stays inferred from the client's timings (ttft_unaccounted_ms).
- A poll that fails (refused, timed out, a body that does not parse) is a gap with its reason; it
  never raises into the run. The thread stops when the `with` block ends, however it ends.

The run's `engine` block (metrics.json, schema in bench/data/metrics.schema.json) summarises the
samples with the engine metrics of bench/core/metrics.py (deferred_max, deferred_mean, deferred_s,
slots_busy_max, kv_cache_usage_max, slot_ctx_fill: formulas there, in the report's methodology);
every sample goes to the config's `engine.jsonl` (a rerun replaces its run's lines).

Only runs where agents share the engine are sampled (multi and steps, the capacity search's
points): a single-suite run has one agent, so no queue to show, and its timings are the study's
baseline, which a poller on a 2-core host must not disturb (`EngineMonitor.sample`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.clients.streaming import api_key_for, loopback_session
from bench.config.plan import RunItem
from bench.core import metrics
from bench.core.store import Store, atomic_write_text

# 4 Hz: a smoke-profile call lasts about a second and a slot wait a few hundred ms, so a wait
# shows in one or more samples; two small GETs per endpoint cost the loaded 2-core host ~1 ms.
POLL_INTERVAL_S = 0.25
# A poll that takes longer than this is a gap: the engine is too busy to answer, and waiting
# longer would stretch the interval.
POLL_TIMEOUT_S = 1.0
ENGINE_LOG = "engine.jsonl"
LLAMA_METRICS = {"requests_processing": "llamacpp:requests_processing",
                 "requests_deferred": "llamacpp:requests_deferred",
                 "kv_cache_usage_ratio": "llamacpp:kv_cache_usage_ratio"}
SOURCES = {"llama.cpp": "llama-server /metrics + /slots", "ollama": "ollama /api/ps"}
NO_QUEUE_METRIC = ("Ollama exposes no queue metric (its scheduler queue is not in /api/ps): the slot "
                   "wait is inferred from the client's timings only")
MAX_GAP_REASONS = 5
OLLAMA_PS_FIELDS = ("name", "size", "size_vram", "expires_at", "context_length")
# the suites whose runs are sampled: agents that share the engine (see the module docstring)
SAMPLED_SUITES = ("multi", "steps")


def parse_llama_metrics(text: str) -> dict:
    """requests_processing, requests_deferred and kv_cache_usage_ratio (None when the build does not
    export it) from a llama-server /metrics body. A body without the queue gauges is refused."""
    found: dict[str, float] = {}
    wanted = {name: key for key, name in LLAMA_METRICS.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                found[wanted[sample.name]] = sample.value
    missing = [LLAMA_METRICS[k] for k in ("requests_processing", "requests_deferred") if k not in found]
    if missing:
        raise ValueError(f"/metrics has no {', '.join(missing)} (is it llama-server, started with --metrics?)")
    return {"requests_processing": int(found["requests_processing"]),
            "requests_deferred": int(found["requests_deferred"]),
            "kv_cache_usage_ratio": found.get("kv_cache_usage_ratio")}


def _slot_fill(slot: dict) -> float | None:
    """A busy slot's context in use (metrics.slot_ctx_fill)."""
    n_ctx = slot.get("n_ctx")
    decoded = sum(t.get("n_decoded", 0) for t in slot.get("next_token") or [])
    if not isinstance(n_ctx, int) or not isinstance(slot.get("n_prompt_tokens"), int):
        return None
    return metrics.slot_ctx_fill(slot["n_prompt_tokens"], decoded, n_ctx)


def parse_llama_slots(body) -> dict:
    """slots_total, slots_busy, the busy slots' task ids and their largest context fill, from a
    llama-server /slots body (a list of slots, each with an integer id and a boolean is_processing)."""
    if not isinstance(body, list) or not all(isinstance(s, dict) and isinstance(s.get("id"), int)
                                             and isinstance(s.get("is_processing"), bool) for s in body):
        raise ValueError(f"/slots is not a list of slots with id and is_processing: {str(body)[:120]}")
    busy = [s for s in body if s["is_processing"]]
    fills = [f for f in map(_slot_fill, busy) if f is not None]
    return {"slots_total": len(body), "slots_busy": len(busy), "slot_tasks": [s.get("id_task") for s in busy],
            "slot_ctx_fill_max": max(fills) if fills else None}


def parse_ollama_ps(body) -> dict:
    """The loaded models (name, size, size_vram, expires_at, context_length: the context the runner
    was loaded with, null where the Ollama build does not report it) from an Ollama /api/ps body."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                               for m in models):
        raise ValueError(f"/api/ps has no list of named models: {str(body)[:120]}")
    return {"models": [{k: m.get(k) for k in OLLAMA_PS_FIELDS} for m in models]}


@dataclass
class EndpointPoller:
    """One endpoint's poll: a loopback-only session with the study's key (where its runtime set one)."""

    name: str
    url: str
    engine: str
    timeout_s: float = POLL_TIMEOUT_S
    session: requests.Session = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.session = loopback_session(self.url)
        key = api_key_for(self.url)
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def _get(self, path: str) -> requests.Response:
        resp = self.session.get(self.url + path, timeout=self.timeout_s)
        resp.raise_for_status()
        return resp

    def poll(self) -> dict:
        """The engine's state now; raises requests.RequestException or ValueError when it cannot be read."""
        if self.engine == "ollama":
            return parse_ollama_ps(self._get("/api/ps").json())
        return {**parse_llama_metrics(self._get("/metrics").text), **parse_llama_slots(self._get("/slots").json())}


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


@dataclass
class EngineSampler:
    """Polls every endpoint each `interval_s` in a background thread while the `with` block runs.
    `samples`: one dict per endpoint and tick, {tick, endpoint, t_monotonic_ns, ok, reason, ...}."""

    engine: str
    endpoints: dict[str, str]  # name → base URL
    interval_s: float = POLL_INTERVAL_S
    timeout_s: float = POLL_TIMEOUT_S
    clock: Callable[[], int] = time.perf_counter_ns
    samples: list[dict] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _poll_all(self, pollers: list[EndpointPoller], tick: int) -> None:
        for p in pollers:
            t_ns = self.clock()
            try:
                values, reason = p.poll(), None
            except (requests.RequestException, ValueError) as exc:  # a gap, never an error in the run
                values, reason = {}, _reason(exc)
            self.samples.append({"tick": tick, "endpoint": p.name, "t_monotonic_ns": t_ns,
                                 "ok": reason is None, "reason": reason, **values})

    def _loop(self) -> None:
        pollers = [EndpointPoller(n, u, self.engine, self.timeout_s) for n, u in self.endpoints.items()]
        tick = 0
        try:
            while not self._stop.is_set():
                self._poll_all(pollers, tick)
                tick += 1
                self._stop.wait(self.interval_s)
        finally:
            for p in pollers:
                p.session.close()

    def __enter__(self) -> "EngineSampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="engine-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _ticks(samples: list[dict]) -> list[tuple[int, list[dict]]]:
    """(t of the tick's first poll, its answered samples) per tick, in order."""
    by_tick: dict[int, list[dict]] = {}
    for s in samples:
        by_tick.setdefault(s["tick"], []).append(s)
    return [(min(x["t_monotonic_ns"] for x in group), [x for x in group if x["ok"]])
            for _, group in sorted(by_tick.items())]


def _max(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _queue_summary(ticks: list[tuple[int, list[dict]]], interval_s: float) -> dict:
    """llama-server's queue over the run (the engine metrics of bench/core/metrics.py)."""
    answered = [(t, group) for t, group in ticks if group]
    deferred = [sum(s["requests_deferred"] for s in group) for _, group in answered]
    samples = [s for _, group in answered for s in group]
    by_endpoint: dict[str, int] = {}
    for s in samples:
        by_endpoint[s["endpoint"]] = max(by_endpoint.get(s["endpoint"], 0), s["requests_deferred"])
    return {"queue_metric": True,
            "deferred_max": metrics.deferred_max(deferred),
            "deferred_mean": metrics.deferred_mean(deferred),
            "deferred_s": metrics.deferred_s(deferred, [t / 1e9 for t, _ in answered], interval_s),
            "deferred_max_by_endpoint": by_endpoint,
            "processing_max": _max(sum(s["requests_processing"] for s in g) for _, g in answered),
            "kv_cache_usage_max": metrics.kv_cache_usage_max(s["kv_cache_usage_ratio"] for s in samples),
            "slots_busy_max": metrics.slots_busy_max([sum(s["slots_busy"] for s in g) for _, g in answered]),
            "slots_total": _max(sum(s["slots_total"] for s in g) for _, g in answered),
            "slot_ctx_fill_max": _max(s["slot_ctx_fill_max"] for s in samples),
            "models_loaded": None, "vram_bytes_max": None}


def _ollama_summary(samples: list[dict]) -> dict:
    """Ollama's loaded models over the run (no queue metric: NO_QUEUE_METRIC)."""
    models = [m for s in samples if s["ok"] for m in s["models"]]
    return {"queue_metric": False, "deferred_max": None, "deferred_mean": None, "deferred_s": None,
            "deferred_max_by_endpoint": None, "processing_max": None, "kv_cache_usage_max": None,
            "slots_busy_max": None, "slots_total": None, "slot_ctx_fill_max": None,
            "models_loaded": sorted({m["name"] for m in models}),
            "vram_bytes_max": _max(m["size_vram"] for m in models)}


def summarize(engine: str, samples: list[dict], interval_s: float = POLL_INTERVAL_S) -> dict:
    """The run's `engine` block from its samples."""
    gaps = [s for s in samples if not s["ok"]]
    answered = len(samples) - len(gaps)
    block = {"available": answered > 0, "engine": engine, "source": SOURCES[engine], "interval_s": interval_s,
             "endpoints": sorted({s["endpoint"] for s in samples}), "n_samples": answered, "n_gaps": len(gaps),
             "gap_reasons": [r for r, _ in Counter(s["reason"] for s in gaps).most_common(MAX_GAP_REASONS)],
             "reason": None if answered else "no poll of the engine answered during the run",
             "note": NO_QUEUE_METRIC if engine == "ollama" else None}
    if engine == "ollama":
        return {**block, **_ollama_summary(samples)}
    return {**block, **_queue_summary(_ticks(samples), interval_s)}


def unavailable_block(engine: str, reason: str) -> dict:
    """The block of an engine the sampler cannot read (an OpenAI-compatible server of unknown kind)."""
    return {"available": False, "engine": engine, "source": None, "interval_s": None, "endpoints": [],
            "n_samples": 0, "n_gaps": 0, "gap_reasons": [], "reason": reason, "note": None,
            **{k: None for k in _ollama_summary([])}, "queue_metric": False}


def append_log(store: Store, rel_dir, samples: list[dict], run_index: int) -> None:
    """The run's samples into the config's engine.jsonl (rewritten atomically; a rerun replaces its
    run's lines), each line tagged with its run."""
    path = store.path(rel_dir) / ENGINE_LOG
    kept = []
    if path.is_file():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("run_index") != run_index]
    new = [json.dumps({"run_index": run_index, **s}) for s in samples]
    atomic_write_text(path, "".join(line + "\n" for line in kept + new))


@dataclass
class EngineMonitor:
    """The runner's engine bookkeeping: a sampler around each run, its block and engine.jsonl."""

    store: Store
    engine: str
    endpoints: dict[str, str]
    interval_s: float = POLL_INTERVAL_S

    @property
    def supported(self) -> bool:
        return self.engine in SOURCES

    @staticmethod
    def sampled(suite: str) -> bool:
        """Whether a suite's runs are sampled (SAMPLED_SUITES: agents that share the engine)."""
        return suite in SAMPLED_SUITES

    @contextmanager
    def sample(self, suite: str) -> Iterator[EngineSampler | None]:
        """A sampler around a run of `suite`; None (no thread at all) for a suite that is not sampled
        or an engine without a sampler."""
        if not self.supported or not self.sampled(suite):
            yield None
            return
        with EngineSampler(self.engine, self.endpoints, self.interval_s) as sampler:
            yield sampler

    def block(self, sampler: EngineSampler | None, item: RunItem) -> dict | None:
        """The run's engine block (None for a suite that is not sampled); its samples go to the
        config's engine.jsonl."""
        if not self.sampled(item.cell.suite):
            return None
        if sampler is None:
            return unavailable_block(self.engine, f"no sampler for engine {self.engine!r} "
                                                  f"(llama.cpp and Ollama only)")
        append_log(self.store, item.cell.rel_dir, sampler.samples, item.run_index)
        return summarize(self.engine, sampler.samples, self.interval_s)
