"""Every metric the bundle reports, defined once.

Each public function here is one metric. Its docstring starts with the formula; the report's
methodology section is generated from these docstrings (see `definitions()`), and the Rust agents
implement the same formulas (rust-agents/src/metrics.rs). Timestamps are integer nanoseconds from a
monotonic clock (`time.perf_counter_ns` in Python, `Instant` in Rust).
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    unit: str
    level: str  # "request", "run" or "multi"
    formula: str
    description: str
    label: str | None = None  # how a table heads it, with its unit (where a table shows it)


_REGISTRY: dict[str, MetricDefinition] = {}


def metric(name: str, unit: str, level: str, label: str | None = None) -> Callable[[Callable], Callable]:
    """Register a metric function; its docstring's first line is the formula."""

    def register(fn: Callable) -> Callable:
        doc = inspect.cleandoc(fn.__doc__ or "")
        formula, _, rest = doc.partition("\n")
        _REGISTRY[name] = MetricDefinition(name, unit, level, formula.strip(), " ".join(rest.split()), label)
        return fn

    return register


def definitions(level: str | None = None) -> list[MetricDefinition]:
    """The registered metric definitions, in definition order (optionally one level)."""
    return [d for d in _REGISTRY.values() if level is None or d.level == level]


def definition(name: str) -> MetricDefinition:
    """One registered metric's definition; an unregistered name is a clear error."""
    if name not in _REGISTRY:
        raise KeyError(f"no metric {name!r} is registered in bench/core/metrics.py")
    return _REGISTRY[name]


def heading(name: str) -> str:
    """How a table heads a registered metric: its label (its name where it has none)."""
    d = definition(name)
    return d.label or d.name


# --------------------------------------------------------------------------------------------
# Request level: one streamed LLM call.
# --------------------------------------------------------------------------------------------


@metric("ttft_ms", "ms", "request")
def ttft_ms(t_send_ns: int, t_first_content_ns: int | None) -> float | None:
    """ttft_ms = (t_first_content − t_send) / 10⁶

    Client-side time to first token: from just before the request is sent to the arrival of the
    first content message (an NDJSON line / SSE event, stamped when complete) that carries
    non-empty generated text. It includes queueing, any model
    load, prompt processing and the first decode step. Null when no text arrived.
    """
    if t_first_content_ns is None:
        return None
    return (t_first_content_ns - t_send_ns) / NS_PER_MS


@metric("e2e_ms", "ms", "request")
def e2e_ms(t_send_ns: int, t_done_ns: int) -> float:
    """e2e_ms = (t_done − t_send) / 10⁶

    Client-side end-to-end latency: from just before the request is sent until the stream has
    ended (its terminal message read, or the error that ended it).
    """
    return (t_done_ns - t_send_ns) / NS_PER_MS


@metric("itl_ms", "ms", "request")
def inter_token_gaps_ms(content_times_ns: Sequence[int]) -> list[float]:
    """gapᵢ = (t_contentᵢ − t_contentᵢ₋₁) / 10⁶, for i = 2..n

    Inter-token gaps: time between consecutive content messages that carry generated text (one
    stamp per message, in both clients). A record stores their mean, p50, p95 and max. By
    construction ttft_ms + Σ gaps = time of the last text message, which is ≤ e2e_ms.
    """
    return [(b - a) / NS_PER_MS for a, b in zip(content_times_ns, content_times_ns[1:])]


@metric("decode_tps_client", "tok/s", "request")
def decode_tps_client(output_tokens: int, t_first_content_ns: int | None,
                      t_last_content_ns: int | None) -> float | None:
    """decode_tps_client = (N_out − 1) / ((t_last_content − t_first_content) / 10⁹)

    Client-observed decode rate. N_out is the server's count of generated tokens; the first
    token is excluded because its time belongs to TTFT. Null when N_out < 2 or the span is 0.
    """
    if t_first_content_ns is None or t_last_content_ns is None or output_tokens < 2:
        return None
    span_ns = t_last_content_ns - t_first_content_ns
    if span_ns <= 0:
        return None
    return (output_tokens - 1) / (span_ns / NS_PER_S)


@metric("decode_tps_server", "tok/s", "request")
def decode_tps_server(output_tokens: int | None, eval_ms: float | None) -> float | None:
    """decode_tps_server = N_eval / (eval_ms / 10³)

    Server-reported decode rate. Ollama: eval_count / eval_duration (ns, converted); llama.cpp:
    timings.predicted_n / timings.predicted_ms, which is its predicted_per_second.
    """
    if not output_tokens or not eval_ms or eval_ms <= 0:
        return None
    return output_tokens / (eval_ms / 1000.0)


@metric("ttft_unaccounted_ms", "ms", "request")
def ttft_unaccounted_ms(ttft: float | None, load_ms: float | None, prompt_eval_ms: float | None) -> float | None:
    """ttft_unaccounted_ms = ttft_ms − (load_ms + prompt_eval_ms)

    The part of the client's TTFT that the engine's own durations leave out: HTTP, request
    parsing, templating and tokenization, scheduling, and the first decode step up to the first
    text message. llama.cpp has no load time per request (read as 0). Null when the engine reports
    no prompt-eval time or no text arrived.
    """
    if ttft is None or prompt_eval_ms is None:
        return None
    return ttft - ((load_ms or 0.0) + prompt_eval_ms)


@metric("decode_overstatement_pct", "%", "request")
def decode_overstatement_pct(decode_tps_server_value: float | None,
                             decode_tps_client_value: float | None) -> float | None:
    """decode_overstatement_pct = (decode_tps_server / decode_tps_client − 1) × 100

    How much the engine's own decode rate overstates what the client sees: the client's decode
    window (first to last text message, N_out − 1 tokens) against the engine's eval time for the
    same number of tokens. Positive when streaming, HTTP and scheduling add time between tokens
    that the engine's eval duration does not count.
    """
    if not decode_tps_server_value or not decode_tps_client_value:
        return None
    return (decode_tps_server_value / decode_tps_client_value - 1.0) * 100.0


@metric("load_ms", "ms", "request")
def server_duration_ms(duration_ns: int | float | None) -> float | None:
    """load_ms, prompt_eval_ms, eval_ms = server duration (ns) / 10⁶

    Server-side durations. Ollama reports load_duration, prompt_eval_duration and eval_duration in
    nanoseconds (absent when zero, so read as 0); llama.cpp reports prompt_ms and predicted_ms
    directly and has no load time (null).
    """
    if duration_ns is None:
        return None
    return duration_ns / NS_PER_MS


@metric("cold_load", "flag", "request")
def is_cold_load(load_ms: float | None, threshold_ms: float) -> bool:
    """cold_load = load_ms ≥ threshold_ms

    Marks a request that paid for loading the model, by the server's own load time (Ollama's
    load_duration; llama.cpp reports none, so its requests are never flagged). Warmup requests
    absorb these loads and are never counted; a counted cold request is flagged in its run and in
    the report.
    """
    return load_ms is not None and load_ms >= threshold_ms



@metric("cold_start_penalty_ms", "ms", "request")
def cold_start_penalty_ms(cold_ms: float | None, warm_ms: float | None) -> float | None:
    """cold_start_penalty_ms = x(cold call) − x(warm call right after), x = ttft_ms or e2e_ms

    What the first call after the model was freed costs beyond a warm one: the same prompt (each
    with its own nonce) on the same endpoint, once per model, endpoint and study (bench/study/probes.py).
    It holds the model load and any first-use cost of the engine. Null when either call failed.
    """
    if cold_ms is None or warm_ms is None:
        return None
    return cold_ms - warm_ms


@metric("prefill_tps", "tok/s", "request")
def prefill_tps(prompt_tokens: int | None, prompt_eval_ms: float | None) -> float | None:
    """prefill_tps = prompt_tokens / (prompt_eval_ms / 10³)

    The engine's prompt-processing rate over the whole prompt: Ollama prompt_eval_count /
    prompt_eval_duration, llama.cpp usage.prompt_tokens / timings.prompt_ms. A call that reused a
    cached prefix looks too fast, because its count is the whole prompt while its time covers only
    the part evaluated (prefill_reused). Null without both counters or with a zero time.
    """
    if not prompt_tokens or not prompt_eval_ms or prompt_eval_ms <= 0:
        return None
    return prompt_tokens / (prompt_eval_ms / 1000.0)


# The reuse verdict's thresholds; the measurements behind them are in prefill_reuse's docstring.
PREFILL_TEMPLATE_ALLOWANCE_TOKENS = 32
PREFILL_REUSE_FACTOR = 2.0

PREFILL_RULE_CACHE = "cache_n"
PREFILL_RULE_RATE = "rate vs cold reference"
PREFILL_RULE_NO_REFERENCE = "no cold reference"
PREFILL_RULE_NOT_REPORTED = "not reported"


@dataclass(frozen=True)
class PrefillVerdict:
    reused_share: float | None  # estimated share of the prompt the engine did not evaluate
    reused: bool | None  # None: the counters cannot tell
    rule: str  # which rule decided (PREFILL_RULE_*)


@metric("prefill_reused", "flag", "request")
def prefill_reuse(prompt_tokens: int | None, prompt_cached_tokens: int | None, rate_tps: float | None,
                  reference_tps: float | None) -> PrefillVerdict:
    """prefill_reused = cache_n > A where the engine reports cache_n (llama.cpp), else prefill_tps > F × prefill_reference_tps

    Whether the engine reused a cached prompt prefix instead of evaluating the whole prompt, which
    every counted call's nonce (and llama.cpp's cache_prompt: false) is there to prevent.
    llama.cpp reports the tokens it took from its cache (timings.cache_n; usage.prompt_tokens stays
    the whole prompt): reused share = cache_n / prompt_tokens, and the call reused when cache_n
    exceeds A = 32 tokens, room for a chat template's opening, which precedes the nonce and is the
    same in every prompt (measured with the cache on and a new nonce per call: SmolLM2's ChatML
    opening gave cache_n 5–6, Gemma 3 gave 0; Llama 3.1's date header puts about 25 tokens ahead
    of the system text; a repeated prompt gave cache_n = prompt_tokens − 1 or − 5, and every call
    with the cache off gave 0). Ollama's prompt_eval_count is the whole prompt even on a hit
    (0.17.4 counts the inputs before it consults its cache); only prompt_eval_duration shrinks. So
    its call is judged by its prefill rate against prefill_reference_tps, the median prefill_tps
    of the counted single- and alone-phase calls of the same engine instance and config (cell);
    together-phase calls share the engine and are only slower, so they are judged against it but
    never define it. Reused share ≈ 1 − reference / rate (0 when the rate is not above the
    reference); reused when the rate exceeds F = 2 × the reference, that is when about half the
    prompt or more was not evaluated. F sits between the measured spread of cold prefill rates and
    a real cache hit on the 2-core CPU host, under other jobs' load, with both stages' prompt
    lengths mixed: the fastest cold call at 1.1–1.5 × its group's median (Ollama 1.11–1.43,
    llama.cpp up to 1.53, the stored smoke study 1.34), a repeated prompt at 12–177 × (Ollama
    49–101 ×: the same 242 counted tokens in 1660 then 18 ms). On a GPU a hit keeps the fixed cost
    of a call, so its contrast is smaller there. Null when the engine reports no prompt count or
    time, or the group has no cold call to compare with.
    """
    if prompt_cached_tokens is not None and prompt_tokens:
        return PrefillVerdict(prompt_cached_tokens / prompt_tokens,
                              prompt_cached_tokens > PREFILL_TEMPLATE_ALLOWANCE_TOKENS, PREFILL_RULE_CACHE)
    if rate_tps is None:
        return PrefillVerdict(None, None, PREFILL_RULE_NOT_REPORTED)
    if reference_tps is None or reference_tps <= 0:
        return PrefillVerdict(None, None, PREFILL_RULE_NO_REFERENCE)
    share = max(0.0, 1.0 - reference_tps / rate_tps)
    return PrefillVerdict(share, rate_tps > PREFILL_REUSE_FACTOR * reference_tps, PREFILL_RULE_RATE)

# --------------------------------------------------------------------------------------------
# Run level, single suite: one agent run = the analysis call, then the report call.
# --------------------------------------------------------------------------------------------


@metric("decode_tps", "tok/s", "run")
def run_decode_tps(output_tokens: Iterable[int], eval_ms: Iterable[float | None]) -> float | None:
    """decode_tps = Σ N_out / Σ (eval_ms / 10³)

    Throughput of an agent run: server-side decode rate weighted by tokens, so a long call
    counts more than a short one (a mean of per-call rates would not).
    """
    pairs = [(n, e) for n, e in zip(output_tokens, eval_ms) if e]
    total_s = sum(e for _, e in pairs) / 1000.0
    if total_s <= 0:
        return None
    return sum(n for n, _ in pairs) / total_s


@metric("decode_tps_client_run", "tok/s", "run")
def run_decode_tps_client(output_tokens: Iterable[int],
                          decode_spans_s: Iterable[float | None]) -> float | None:
    """decode_tps_client_run = Σ (N_out − 1) / Σ (t_last_content − t_first_content)

    The client-side counterpart of decode_tps over the run's calls.
    """
    pairs = [(n, s) for n, s in zip(output_tokens, decode_spans_s) if s and n >= 2]
    total_s = sum(s for _, s in pairs)
    if total_s <= 0:
        return None
    return sum(n - 1 for n, _ in pairs) / total_s


@metric("ttft_ms_run", "ms", "run")
def run_ttft_ms(ttfts: Iterable[float | None]) -> float | None:
    """ttft_ms_run = mean(ttft_ms) over the run's calls

    Mean client TTFT of the agent's calls.
    """
    values = [t for t in ttfts if t is not None]
    return statistics.fmean(values) if values else None


@metric("latency_ms", "ms", "run")
def run_latency_ms(e2es: Iterable[float]) -> float:
    """latency_ms = Σ e2e_ms over the run's calls

    End-to-end latency of one agent run (analysis + report), as a user of the agent waits for it.
    """
    return float(sum(e2es))


# --------------------------------------------------------------------------------------------
# Multi suite: two agents on two servers, measured alone and together in the same run.
# --------------------------------------------------------------------------------------------


@metric("t_agent_s", "s", "multi")
def agent_time_s(t_release_ns: int, t_agent_done_ns: int) -> float:
    """t_agent_s = (t_agent_done − t_release) / 10⁹

    An agent's elapsed time in a phase: from the moment the phase releases it (a barrier in the
    together phase) until its last call has ended.
    """
    return (t_agent_done_ns - t_release_ns) / NS_PER_S


@metric("wall_s", "s", "multi")
def wall_s(t_release_ns: int, t_all_done_ns: int) -> float:
    """wall_s = (t_last_agent_done − t_release) / 10⁹, together phase

    Wall time of the together phase: both agents released at once, until the later one ends.
    """
    return (t_all_done_ns - t_release_ns) / NS_PER_S


@metric("seq_s", "s", "multi")
def seq_s(t_collector_alone_s: float, t_insight_alone_s: float) -> float:
    """seq_s = t_collector_alone + t_insight_alone

    What the same two workloads take one after the other, each with the other server idle.
    """
    return t_collector_alone_s + t_insight_alone_s


@metric("seq_s_steps", "s", "steps")
def steps_seq_s(n_agents: int, t_alone_s: float) -> float:
    """seq_s (agent-count step) = N × t_alone_s

    The time N agents would take one after another, each as long as one agent alone on an idle
    instance (measured in the same run); the step's speedup is seq_s / wall_s, as in the multi
    suite, and its efficiency_pct divides by N.
    """
    return n_agents * t_alone_s


@metric("speedup", "×", "multi")
def speedup(seq: float, wall: float) -> float:
    """speedup = seq_s / wall_s

    The true concurrency speedup: 2.0 means running the agents together halved the time; 1.0
    means concurrency gained nothing (a shared bottleneck serialised them).
    """
    return seq / wall


@metric("efficiency_pct", "%", "multi")
def efficiency_pct(speedup_value: float, n_agents: int = 2) -> float:
    """efficiency_pct = speedup / n_agents × 100, with n_agents = 2

    Parallel efficiency: 100 % is perfect scaling across the two instances.
    """
    return speedup_value / n_agents * 100.0


@metric("evenness_pct", "%", "multi")
def evenness_pct(t_collector_s: float, t_insight_s: float) -> float:
    """evenness_pct = (t_A + t_B) / (2 · max(t_A, t_B)) × 100, together phase

    How evenly the two agents finished. This is what the original TR110/114/116 called
    "efficiency" (its speedup was (t_A + t_B) / wall with wall ≈ max(t_A, t_B)); it is kept
    under an honest name so results can be set beside those reports. It says nothing about the
    gain from concurrency.
    """
    return (t_collector_s + t_insight_s) / (2.0 * max(t_collector_s, t_insight_s)) * 100.0


@metric("tps_ratio", "ratio", "multi")
def tps_ratio(decode_tps_together: float | None, decode_tps_alone: float | None) -> float | None:
    """tps_ratio = decode_tps(together) / decode_tps(alone), per agent

    Below 1 the agent decoded slower when the other agent ran at the same time.
    """
    if not decode_tps_together or not decode_tps_alone:
        return None
    return decode_tps_together / decode_tps_alone


@metric("ttft_inflation", "ratio", "multi")
def ttft_inflation(ttft_together_ms: float | None, ttft_alone_ms: float | None) -> float | None:
    """ttft_inflation = ttft_ms(together) / ttft_ms(alone), per agent

    Above 1 the agent waited longer for its first token when the other agent ran too.
    """
    if not ttft_together_ms or not ttft_alone_ms:
        return None
    return ttft_together_ms / ttft_alone_ms


@metric("contention", "flag", "multi")
def contention(tps_ratios: Iterable[float | None], ttft_inflations: Iterable[float | None],
               min_tps_ratio: float, max_ttft_inflation: float) -> bool:
    """contention = any agent with tps_ratio < min_tps_ratio or ttft_inflation > max_ttft_inflation

    Resource contention between the agents. The thresholds come from the profile (defaults 0.85
    and 2.0) and are stated in the report.
    """
    slow = any(r is not None and r < min_tps_ratio for r in tps_ratios)
    late = any(i is not None and i > max_ttft_inflation for i in ttft_inflations)
    return slow or late


@metric("legacy_contention", "flag", "multi")
def legacy_contention(speedup_value: float, threshold: float = 1.5) -> bool:
    """legacy_contention = speedup < 1.5

    The original harness's contention flag, kept for comparison with TR110/114/116. Note that
    the original applied it to its finish-time ratio, not to a true speedup.
    """
    return speedup_value < threshold


# --------------------------------------------------------------------------------------------
# The engine's own queue, polled during each multi-agent and agent-count run
# (bench/study/engine_sampler.py). A tick is one poll of every instance; over the instances that
# answered it, deferred(t) = Σ llamacpp:requests_deferred (requests waiting for a free slot) and
# busy(t) = Σ #(slots with is_processing). Ollama exposes no queue: these are null for it.
# --------------------------------------------------------------------------------------------


@metric("deferred_max", "requests", "engine", "most deferred")
def deferred_max(deferred: Sequence[int]) -> int | None:
    """deferred_max = max over the run's answered ticks of deferred(t)

    The most requests the engine held waiting for a slot at one moment of the run. Null without an
    answered tick.
    """
    return max(deferred) if len(deferred) else None


@metric("deferred_mean", "requests", "engine", "mean deferred per tick")
def deferred_mean(deferred: Sequence[int]) -> float | None:
    """deferred_mean = Σ deferred(t) / #(answered ticks)

    How many requests waited for a slot on average over the run's polls. Null without an answered tick.
    """
    return sum(deferred) / len(deferred) if len(deferred) else None


@metric("deferred_s", "s", "engine", "time with a deferred request (s)")
def deferred_s(deferred: Sequence[int], tick_starts_s: Sequence[float], interval_s: float) -> float | None:
    """deferred_s = Σ over answered ticks with deferred(t) ≥ 1 of (t_next − t), the last tick counting the poll interval

    How long at least one request waited for a slot: each answered tick stands for the time until
    the next answered one. Null without an answered tick.
    """
    if not len(deferred):
        return None
    spans = [b - a for a, b in zip(tick_starts_s, tick_starts_s[1:])] + [interval_s]
    return sum(dt for d, dt in zip(deferred, spans) if d >= 1)


@metric("slots_busy_max", "slots", "engine", "busy slots (max)")
def slots_busy_max(busy: Sequence[int]) -> int | None:
    """slots_busy_max = max over the run's answered ticks of busy(t)

    The most slots decoding at once, from llama-server's /slots. Null without an answered tick.
    """
    return max(busy) if len(busy) else None


@metric("kv_cache_usage_max", "ratio", "engine", "KV cache use (max)")
def kv_cache_usage_max(ratios: Iterable[float | None]) -> float | None:
    """kv_cache_usage_max = max over the run's answered polls of llamacpp:kv_cache_usage_ratio

    The fullest the engine's KV cache was. Null where the build does not export the ratio (the
    busy slots' context fill, slot_ctx_fill, stands in).
    """
    known = [r for r in ratios if r is not None]
    return max(known) if known else None


@metric("slot_ctx_fill", "ratio", "engine", "slot context fill (max)")
def slot_ctx_fill(n_prompt_tokens: int, n_decoded: int, n_ctx: int) -> float | None:
    """slot_ctx_fill = (n_prompt_tokens + n_decoded) / n_ctx of a busy slot (/slots)

    How much of its context a busy slot was using; the run's block keeps the largest over its
    slots and ticks (slot_ctx_fill_max). Null without a positive n_ctx.
    """
    return (n_prompt_tokens + n_decoded) / n_ctx if n_ctx > 0 else None


@metric("runs_with_deferred", "runs", "engine", "runs with deferred")
def runs_with_deferred(run_deferred_max: Iterable[int | None]) -> int:
    """runs_with_deferred = #(a config's runs with deferred_max ≥ 1)

    In how many of a config's sampled runs the engine made a request wait for a slot.
    """
    return sum(1 for d in run_deferred_max if (d or 0) >= 1)


@metric("deferred_s_mean", "s", "engine", "deferred s per run")
def deferred_s_mean(run_deferred_s: Iterable[float | None]) -> float | None:
    """deferred_s_mean = Σ deferred_s / #(runs with deferred_s), over a config's runs

    The mean time per run that a request waited for a slot. Null when no run has a queue metric.
    """
    known = [d for d in run_deferred_s if d is not None]
    return sum(known) / len(known) if known else None


# --------------------------------------------------------------------------------------------
# Service level: each counted call against the profile's objective (profile `slo`), applied by the
# analysis to the stored records, so a changed objective re-reports a study without rerunning it.
# --------------------------------------------------------------------------------------------

SLO_OBJECTIVES = ("ttft", "decode", "e2e")  # slo_<objective>_pct, in this order


def slo_objectives(ttft: float | None, decode_tps_client_value: float | None, e2e: float | None,
                   slo) -> dict[str, bool]:
    """Each objective of one call: ttft_ms ≤ slo.ttft_ms, decode_tps_client ≥ slo.decode_tps,
    e2e_ms ≤ slo.e2e_ms (slo: anything with those three attributes, the profile's block). A missing
    value misses its objective."""
    return {"ttft": ttft is not None and ttft <= slo.ttft_ms,
            "decode": decode_tps_client_value is not None and decode_tps_client_value >= slo.decode_tps,
            "e2e": e2e is not None and e2e <= slo.e2e_ms}


@metric("meets_slo", "flag", "request")
def meets_slo(ttft: float | None, decode_tps_client_value: float | None, e2e: float | None, slo) -> bool:
    """meets_slo = ttft_ms ≤ SLO ttft_ms ∧ decode_tps_client ≥ SLO decode_tps ∧ e2e_ms ≤ SLO e2e_ms

    Whether one counted call met every objective of the profile's service-level objective. A call
    with no text (no TTFT) or fewer than two tokens (no decode rate) misses; a call that failed is
    missing by definition: its run attempt was not stored, and the per-config goodput counts every
    call of such an attempt as missed (none of them can be shown to have met it).
    """
    return all(slo_objectives(ttft, decode_tps_client_value, e2e, slo).values())


def counts_for_goodput(suite: str, phase: str) -> bool:
    """The calls goodput is taken over: the steps suite's agents' calls made together (under load),
    not its alone reference; every counted call of the single and multi suites."""
    return phase == "together" if suite == "steps" else True


@metric("goodput_pct", "%", "run")
def goodput_pct(met: Sequence[bool]) -> float | None:
    """goodput_pct = 100 × #(calls that meet_slo) / #(calls), over the run's counted calls under load

    The share of a run's calls that met every objective (the calls: counts_for_goodput). The
    per-config goodput pools the runs' calls and gives it the interval of stats.goodput_interval,
    since calls of one run are not independent. Null without a call.
    """
    return 100.0 * sum(bool(m) for m in met) / len(met) if len(met) else None


@metric("agent_goodput_pct", "%", "run")
def agent_goodput_pct(met_by_agent: Mapping[str, Sequence[bool]]) -> float | None:
    """agent_goodput_pct = 100 × #(agents all of whose calls meet_slo) / #(agents), over the run's calls under load

    The share of a run's agents that were served within the objective on every call: one slow
    call fails its agent's whole task.
    """
    agents = [calls for calls in met_by_agent.values() if len(calls)]
    return 100.0 * sum(all(calls) for calls in agents) / len(agents) if agents else None


@metric("slo_attainment_pct", "%", "run")
def slo_attainment_pct(passed: Sequence[bool]) -> float | None:
    """slo_<objective>_pct = 100 × #(calls that meet that objective) / #(calls), objective ∈ {ttft, decode, e2e}

    Attainment of each objective alone over the run's calls under load; the objective with the
    lowest attainment is the one that breaks first as load grows.
    """
    return 100.0 * sum(bool(p) for p in passed) / len(passed) if len(passed) else None


# --------------------------------------------------------------------------------------------
# Power (GPU hosts only): NVML sampled during each run, energy taken over the active window.
# Times here are seconds from the run's start (the same origin as the records' start_offset_ms).
# --------------------------------------------------------------------------------------------


def active_spans(requests: Iterable[dict]) -> list[tuple[float, float]]:
    """The counted requests' spans [t_send, t_send + e2e] in seconds from the run start, merged
    where they overlap (the together phase of a multi run) and sorted."""
    spans = sorted((r["start_offset_ms"] / 1000.0, (r["start_offset_ms"] + r["e2e_ms"]) / 1000.0)
                   for r in requests)
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


@metric("active_s", "s", "power")
def active_s(spans: Sequence[tuple[float, float]]) -> float:
    """active_s = length(⋃ᵢ [t_sendᵢ, t_sendᵢ + e2eᵢ])

    The active window of a run: from the first request's send to the last request's end, cut to
    the request spans (the gaps between calls, and the harness's own work before and after, are
    left out). Overlapping spans of the together phase count once.
    """
    return float(sum(b - a for a, b in spans))


def cumulative_energy_from_power(t_s: Sequence[float], power_w: Sequence[float]) -> np.ndarray:
    """E(tₖ) = Σ_{i<k} (tᵢ₊₁ − tᵢ) · (Pᵢ + Pᵢ₊₁) / 2: the running trapezoid integral of power samples."""
    t, p = np.asarray(t_s, dtype=float), np.asarray(power_w, dtype=float)
    return np.concatenate([[0.0], np.cumsum(np.diff(t) * (p[1:] + p[:-1]) / 2.0)])


@metric("energy_j", "J", "power")
def energy_over_spans_j(t_s: Sequence[float], cumulative_j: Sequence[float],
                        spans: Sequence[tuple[float, float]]) -> float | None:
    """E_active = Σ_spans (E(b) − E(a)), E(t) linear between samples

    GPU energy over the active window. E(t) is NVML's total-energy counter (mJ since the driver
    loaded, Volta or newer) where the GPU has one, else the running trapezoid integral of the power
    samples; either way it is interpolated linearly between samples at the span ends, so the error
    per span end is at most one sampling interval's energy. `energy_run_j` is the same over the
    whole sampled run. Null with fewer than two samples or no span.
    """
    if len(t_s) < 2 or not spans:
        return None
    t, e = np.asarray(t_s, dtype=float), np.asarray(cumulative_j, dtype=float)
    ends = np.clip(np.asarray(spans, dtype=float), t[0], t[-1])
    return float(np.sum(np.interp(ends[:, 1], t, e) - np.interp(ends[:, 0], t, e)))


@metric("mean_power_w", "W", "power")
def mean_power_w(energy_j: float | None, duration_s: float | None) -> float | None:
    """mean_power_w = E_active / active_s

    Mean GPU board power during active inference (idle and load/warmup excluded, as the spec asks).
    """
    if energy_j is None or not duration_s or duration_s <= 0:
        return None
    return energy_j / duration_s


@metric("idle_power_w", "W", "power")
def idle_power_w(energy_j: float | None, duration_s: float | None) -> float | None:
    """P_idle = E(idle window) / t_idle

    The idle baseline: mean GPU power with the config's servers loaded and warmed up but no request
    in flight, measured after every server (re)load, before the config's runs.
    """
    return mean_power_w(energy_j, duration_s)


def net_energy_j(energy_j: float | None, idle_w: float | None, active: float | None) -> float | None:
    """E_net = E_active − P_idle · active_s (None when either input is missing)."""
    if energy_j is None or idle_w is None or active is None:
        return None
    return energy_j - idle_w * active


@metric("j_per_token", "J/tok", "power")
def joules_per_token(output_tokens: int, energy_j: float | None) -> float | None:
    """j_per_token = E_active / Σ N_out (gross)

    GPU energy per generated token over the active window, idle power included.
    """
    if energy_j is None or output_tokens <= 0:
        return None
    return energy_j / output_tokens


@metric("j_per_token_net", "J/tok", "power")
def joules_per_token_net(output_tokens: int, energy_j: float | None, idle_w: float | None,
                         active: float | None) -> float | None:
    """j_per_token_net = (E_active − P_idle · active_s) / Σ N_out

    Energy per token that inference added above the idle baseline.
    """
    return joules_per_token(output_tokens, net_energy_j(energy_j, idle_w, active))


@metric("tokens_per_j", "tok/J", "power")
def tokens_per_joule(output_tokens: int, energy_j: float | None) -> float | None:
    """tokens_per_j = Σ N_out / E_active (gross)

    Energy efficiency of a run over its active window, idle power included: what the GPU spent
    while serving. The report's frontier plots this one. Null when E_active ≤ 0.
    """
    if not energy_j or energy_j <= 0:
        return None
    return output_tokens / energy_j


@metric("tokens_per_j_net", "tok/J", "power")
def tokens_per_joule_net(output_tokens: int, energy_j: float | None, idle_w: float | None,
                         active: float | None) -> float | None:
    """tokens_per_j_net = Σ N_out / (E_active − P_idle · active_s)

    Tokens per joule of the energy that inference added above the idle baseline. Null when that
    energy is ≤ 0 (the run cost no measurable power above idle).
    """
    return tokens_per_joule(output_tokens, net_energy_j(energy_j, idle_w, active))


@metric("throttled", "flag", "power")
def throttled(reason_masks: Iterable[int | None], throttle_bits: int) -> bool | None:
    """throttled = any clocks-event reason in {power cap, thermal, HW slowdown, power brake}

    NVML's clocks-event (throttle) reasons, read at the start and end of the run and with every
    sample of its active window. A throttled run is kept and marked in the report. Null when NVML
    could not read the reasons.
    """
    masks = [m for m in reason_masks if m is not None]
    if not masks:
        return None
    return any(m & throttle_bits for m in masks)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/inf: map them to null."""
    if value is None or not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# The instrument: what the client, the host and the harness itself cost (bench/study/instrument.py).
# --------------------------------------------------------------------------------------------


@metric("client_cpu_share", "cores", "instrument")
def client_cpu_share(client_cpu_s: float | None, wall_s: float) -> float | None:
    """client_cpu_share = client CPU seconds / run wall seconds

    How many cores the client kept busy on average during the run: the Python process's own CPU
    (getrusage), or the Rust agent process's (the children's getrusage around its run). On a host
    with fewer cores than servers + clients, this is CPU the servers could not use.
    """
    if client_cpu_s is None or wall_s <= 0:
        return None
    return client_cpu_s / wall_s


@metric("host_busy_pct", "%", "instrument")
def host_busy_pct(busy_jiffies: int, total_jiffies: int) -> float | None:
    """host_busy_pct = Δ busy CPU time / Δ total CPU time × 100, over all cores (/proc/stat)

    How loaded the whole host was during the run: servers, clients and anything else running.
    """
    if total_jiffies <= 0:
        return None
    return busy_jiffies / total_jiffies * 100.0


@metric("drift_pct", "%", "instrument")
def drift_pct(probe_tps: float | None, first_probe_tps: float | None) -> float | None:
    """drift_pct = (decode_tps of a reference probe / decode_tps of the study's first probe − 1) × 100

    The same fixed call on the baseline model, repeated at the start, between models and at the
    end: a change here is the host or the engine, not a model or a configuration.
    """
    if not probe_tps or not first_probe_tps:
        return None
    return (probe_tps / first_probe_tps - 1.0) * 100.0


@metric("study_overhead_ratio", "ratio", "instrument")
def study_overhead_ratio(bench_wall_s: float, measured_s: float) -> float | None:
    """study_overhead_ratio = bench wall time / Σ_runs active_s

    Measured time is each run's union of request spans (active_s: requests that overlap, as in
    the together phase, count once). The rest is the harness and the design: model loads, warmups,
    drift probes, the gaps between a run's calls, process spawns.
    """
    if measured_s <= 0:
        return None
    return bench_wall_s / measured_s


@metric("harness_to_engine", "ratio", "instrument")
def harness_to_engine(harness_tps: float | None, engine_tps: float | None) -> float | None:
    """harness_to_engine = mean decode_tps_client of the probe's streamed calls / mean engine decode rate of its plain calls

    Each drift probe interleaves calls streamed through the harness's client with plain
    non-streamed calls of the same prompt, options and threads: below 1, the harness (streaming,
    HTTP, client) sees less than the engine's own rate at the same moment.
    """
    if not harness_tps or not engine_tps:
        return None
    return harness_tps / engine_tps


# --------------------------------------------------------------------------------------------
# The run-level metrics the tables summarise and compare: each one's label, direction and roles,
# stated once. Every table that lists metrics asks this registry which metrics have its role
# (with_role), and every label comes from here (label), so a metric has one name everywhere and a
# metric given a role appears in every table that role drives.
# --------------------------------------------------------------------------------------------

# The roles: which tables a run metric appears in.
KEY = "key"  # summarised per config with its repeated interval and drift-adjusted twin; the A/A check
HEADLINE = "headline"  # the winner rule, the precision target of a fixed config, the CV rule
OUTLIER = "outlier"  # the spec's |x − median| > k × MAD flag applies to it
NORMALIZED = "normalized"  # each model's mean as % of the baseline model's
LANG_DELTA = "language delta"  # Rust − Python with the comparison rule
VARIANCE = "variance factor"  # η² shares of model, language, case, settings and noise
CENTRAL = "central question"  # the report's central answer (from the variance shares)
TOPOLOGY = "topology"  # two instances against one instance with two slots
CONFIG_STAT = "config statistic"  # configs.csv statistics beyond the key metrics, when the runs have it
RUN_COLUMN = "run column"  # a config summary's per-run listing, beyond the key metrics
ROLES = (KEY, HEADLINE, OUTLIER, NORMALIZED, LANG_DELTA, VARIANCE, CENTRAL, TOPOLOGY, CONFIG_STAT, RUN_COLUMN)


@dataclass(frozen=True)
class RunMetric:
    column: str  # the metrics.json key (flattened as analysis.run_row does) and the runs.csv column
    suite: str
    label: str  # how tables and plots name it, with its unit
    higher_is_better: bool
    definition: str | None  # the registered formula that computes it (its unit comes from there)
    roles: frozenset[str] = frozenset()
    own_unit: str | None = None  # the unit of a quantity without a registered formula (definition None)

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"run metric {self.suite}/{self.column}: unknown roles {sorted(unknown)}")
        if (self.definition is None) == (self.own_unit is None):
            raise ValueError(f"run metric {self.suite}/{self.column}: give a registered definition or a unit, "
                             "one of them")

    @property
    def unit(self) -> str:
        return _REGISTRY[self.definition].unit if self.definition else self.own_unit


def _for(suites: Sequence[str], column: str, label: str, higher_is_better: bool, definition: str | None,
         *roles: str, unit: str | None = None) -> tuple[RunMetric, ...]:
    """The same quantity in several suites, one entry each."""
    return tuple(RunMetric(column, suite, label, higher_is_better, definition, frozenset(roles), unit)
                 for suite in suites)


_TABLED = (NORMALIZED, LANG_DELTA, VARIANCE, CENTRAL)
# Registry order is table order: within a suite, every query answers in this order (configs.csv's
# columns, normalized.csv's and variance.csv's rows).
RUN_METRICS: tuple[RunMetric, ...] = (
    *_for(["single"], "decode_tps", "throughput (tok/s, server)", True, "decode_tps", KEY, HEADLINE, OUTLIER,
          *_TABLED),
    *_for(["single"], "decode_tps_client", "throughput (tok/s, client)", True, "decode_tps_client_run", KEY,
          LANG_DELTA),
    *_for(["single"], "ttft_ms", "TTFT (ms)", False, "ttft_ms_run", KEY, OUTLIER, *_TABLED),
    *_for(["single"], "latency_ms", "latency (ms, agent run)", False, "latency_ms", KEY, NORMALIZED),
    *_for(["multi"], "speedup", "speedup (×)", True, "speedup", KEY, HEADLINE, OUTLIER, *_TABLED, TOPOLOGY),
    # efficiency_pct is speedup / 2: flagging it too would only repeat the speedup flags
    *_for(["multi"], "efficiency_pct", "efficiency (%)", True, "efficiency_pct", KEY, NORMALIZED),
    *_for(["multi"], "evenness_pct", "evenness (%)", True, "evenness_pct", KEY, *_TABLED),
    *_for(["multi"], "wall_s", "wall (s)", False, "wall_s", KEY, TOPOLOGY),
    *_for(["multi"], "seq_s", "sequential (s)", False, "seq_s", KEY),
    *_for(["steps"], "speedup", "speedup (×)", True, "speedup", KEY, HEADLINE, OUTLIER, VARIANCE, CENTRAL),
    *_for(["steps"], "efficiency_pct", "efficiency (%)", True, "efficiency_pct", KEY),
    *_for(["steps"], "decode_tps_together", "per-agent decode (tok/s, server)", True, "decode_tps", KEY),
    *_for(["steps"], "ttft_inflation", "TTFT inflation (×)", False, "ttft_inflation", KEY),
    *_for(["steps"], "wall_s", "wall (s)", False, "wall_s", KEY),
    # the statistics configs.csv adds where the runs have the column (power only on a GPU host)
    *_for(["steps"], "n_agents", "agents", True, None, CONFIG_STAT, unit="agents"),
    # served_tps: analysis.DERIVED_DEFINITIONS
    *_for(["single", "steps"], "served_tps", "served tok/s", True, None, CONFIG_STAT, unit="tok/s"),
    *_for(["multi"], "served_tps", "served tok/s", True, None, CONFIG_STAT, TOPOLOGY, unit="tok/s"),
    *_for(["single", "multi", "steps"], "client_cpu_share", "client CPU (cores)", False, "client_cpu_share",
          CONFIG_STAT),
    *_for(["single", "multi", "steps"], "host_busy_pct", "host busy (%)", False, "host_busy_pct", CONFIG_STAT),
    *_for(["single", "multi"], "tokens_per_j", "tokens/J (gross)", True, "tokens_per_j", CONFIG_STAT),
    *_for(["single", "multi"], "tokens_per_j_net", "tokens/J (idle subtracted)", True, "tokens_per_j_net",
          CONFIG_STAT),
    *_for(["single", "multi"], "power_j_per_token", "J/token (gross)", False, "j_per_token", CONFIG_STAT),
    *_for(["single", "multi"], "power_j_per_token_net", "J/token (idle subtracted)", False, "j_per_token_net",
          CONFIG_STAT),
    *_for(["single", "multi"], "power_mean_power_w", "mean active power (W)", False, "mean_power_w", CONFIG_STAT),
    *_for(["single", "multi"], "power_idle_power_w", "idle power (W)", False, "idle_power_w", CONFIG_STAT),
    *_for(["single", "multi"], "power_peak_vram_used_bytes", "peak VRAM (bytes, GPU total)", False, None,
          CONFIG_STAT, unit="bytes"),
    *_for(["multi"], "collector_tps_ratio", "collector tps ratio (together / alone)", True, "tps_ratio",
          CONFIG_STAT, RUN_COLUMN),
    *_for(["multi"], "insight_tps_ratio", "insight tps ratio (together / alone)", True, "tps_ratio",
          CONFIG_STAT, RUN_COLUMN),
    *_for(["multi"], "collector_ttft_inflation", "collector TTFT inflation (×)", False, "ttft_inflation",
          CONFIG_STAT, RUN_COLUMN),
    *_for(["multi"], "insight_ttft_inflation", "insight TTFT inflation (×)", False, "ttft_inflation",
          CONFIG_STAT, RUN_COLUMN),
    *_for(["multi"], "contention", "contention (flag)", False, "contention", RUN_COLUMN),
    *_for(["multi"], "legacy_contention", "legacy contention (speedup < 1.5)", False, "legacy_contention",
          RUN_COLUMN),
    # goodput against the profile's SLO (analysis.tables goodput): per run listed in the config
    # summaries; per config pooled with its own interval in goodput.csv, not averaged over runs
    *_for(["single", "multi", "steps"], "goodput_pct", "goodput (% of calls)", True, "goodput_pct", RUN_COLUMN),
    *_for(["single", "multi", "steps"], "agent_goodput_pct", "agent goodput (% of agents)", True,
          "agent_goodput_pct", RUN_COLUMN),
    *_for(["single", "multi", "steps"], "slo_ttft_pct", "TTFT objective met (% of calls)", True,
          "slo_attainment_pct"),
    *_for(["single", "multi", "steps"], "slo_decode_pct", "decode objective met (% of calls)", True,
          "slo_attainment_pct"),
    *_for(["single", "multi", "steps"], "slo_e2e_pct", "e2e objective met (% of calls)", True,
          "slo_attainment_pct"),
    *_for(["steps"], "tps_ratio", "tps ratio (together / alone)", True, "tps_ratio", CONFIG_STAT),
    *_for(["steps"], "decode_tps_alone", "per-agent decode alone (tok/s, server)", True, "decode_tps",
          CONFIG_STAT),
    *_for(["steps"], "ttft_ms_together", "TTFT together (ms)", False, "ttft_ms_run", CONFIG_STAT),
    *_for(["steps"], "ttft_ms_alone", "TTFT alone (ms)", False, "ttft_ms_run", CONFIG_STAT),
)
SUITES = ("single", "multi", "steps")
LANGS = ("python", "rust")
# A bench is one suite with one client: the winner rule and the report's matrix go bench by bench
# (the agent-count steps run the Python agents only).
BENCHES = tuple(f"{suite}-{lang}" for suite in SUITES for lang in LANGS if (suite, lang) != ("steps", "rust"))


def with_role(role: str, suite: str) -> tuple[str, ...]:
    """The columns of a suite's run metrics that have `role`, in registry order."""
    if role not in ROLES:
        raise ValueError(f"unknown metric role {role!r}; the roles are {', '.join(ROLES)}")
    return tuple(m.column for m in RUN_METRICS if m.suite == suite and role in m.roles)


def role_pairs(role: str) -> tuple[tuple[str, str], ...]:
    """(suite, column) of every run metric that has `role`, suite by suite in SUITES order."""
    return tuple((suite, column) for suite in SUITES for column in with_role(role, suite))


def key_metrics(suite: str) -> dict[str, str]:
    """The metrics summarised per config of a suite, column → label, in table order."""
    return {column: label(column, suite) for column in with_role(KEY, suite)}


def outlier_metrics(suite: str) -> tuple[str, ...]:
    return with_role(OUTLIER, suite)


def _entry(column: str, suite: str | None) -> RunMetric | None:
    return next((m for m in RUN_METRICS if m.column == column and suite in (None, m.suite)), None)


def label(column: str, suite: str | None = None) -> str:
    """How tables and plots name a run metric (the suite's entry; without a suite, the first one)."""
    m = _entry(column, suite)
    if m is None:
        raise KeyError(f"no run metric {column!r}" + (f" in suite {suite!r}" if suite else "")
                       + " in bench/core/metrics.py RUN_METRICS")
    return m.label


def unit_of(suite: str, column: str) -> str | None:
    """The unit of a suite's run metric (None when the suite has no such metric)."""
    m = _entry(column, suite)
    return m.unit if m else None


def headline(suite: str) -> str:
    (m,) = with_role(HEADLINE, suite)
    return m


def lower_is_better(column: str) -> bool:
    """True for a run metric where less is better (times); False for rates, ratios, unknowns."""
    m = _entry(column, None)
    return m is not None and not m.higher_is_better


def bench_label(bench: str) -> str:
    """'single-python' → 'single-agent Python'."""
    suite, lang = bench.split("-", 1)
    return f"{suite}-agent {lang.capitalize()}"
