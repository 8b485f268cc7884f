"""The Python agents: one agent run is two calls (analysis, then a report built from it).

- Single suite: the `single` agent on the first endpoint.
- Multi suite: the collector on endpoint A and the insight agent on endpoint B, measured alone
  (one after the other, the other server idle) and together (released at once by a barrier, one
  thread each), in the order the plan gives, back to back on the same servers.
- Steps suite (Python only): one agent alone, then N agents together.
The runner hands each run over as one typed Job (bench/config/job.py) to `run_job`, which returns the
typed document; run_single, run_multi and run_steps are its building blocks. The Rust agents
(rust-agents/, bench/clients/rust.py) take the same Job and produce the same documents.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_attempt, wait_exponential

import bench
from bench.clients.streaming import CallContext, Clock, RequestRecord, StreamingClient
from bench.config.job import Job
from bench.config.profile import AgentConfig, WorkloadSpec
from bench.config.workload import STAGES, Workload, load_workload, nonce_attempt, prompt_nonce
from bench.core import metrics
from bench.core.errors import TRANSIENT, BenchError, RequestError
from bench.core.records import RunDocument
from bench.core.store import utc_now

log = logging.getLogger("bench")

CLIENT_INFO = {"name": "bench.clients.streaming (python-requests)",
               "version": f"{bench.__version__} / CPython {platform.python_version()}"}


def request_options(workload: WorkloadSpec, cfg: AgentConfig | None, threads: int | None = None) -> dict:
    """What a call sends. Without a config (the baseline agent) only the workload controls go:
    the server's own defaults decide temperature, context and layers. `threads` goes to Ollama as
    num_thread (llama-server takes it as a launch flag instead)."""
    opts: dict = {"num_predict": workload.num_predict, "seed": workload.seed}
    if workload.ignore_eos:
        opts["ignore_eos"] = True
    if cfg is not None:
        opts.update(temperature=cfg.temperature, num_ctx=cfg.ctx, num_gpu=cfg.gpu_layers)
    if threads is not None:
        opts["num_thread"] = threads
    return opts


@dataclass
class AgentTarget:
    agent: str
    client: StreamingClient
    model: str
    options: dict


# The wait before retry n of a call: RETRY_WAIT_S × 2^(n−1), at most RETRY_MAX_WAIT_S. The Rust
# agents get these numbers in their job (job.retries) and retry the same calls the same way.
RETRY_WAIT_S, RETRY_MAX_WAIT_S = 0.5, 10.0


def retrying(attempts: int, sleep: Callable[[float], None] = time.sleep) -> Retrying:
    """Retry one call on the transient kinds of data/error_kinds.yaml (busy, restarting server,
    timeout, a cut stream); load failures go to the runner's ladder, permanent ones stop the study."""
    return Retrying(retry=retry_if_exception(lambda e: isinstance(e, RequestError) and e.cls == TRANSIENT),
                    stop=stop_after_attempt(attempts),
                    wait=wait_exponential(multiplier=RETRY_WAIT_S, max=RETRY_MAX_WAIT_S), sleep=sleep, reraise=True,
                    # a retried call is counted (its record says call_attempt); the reason is logged
                    before_sleep=before_sleep_log(log, logging.WARNING))


def nonced_chat(client: StreamingClient, model: str, workload: Workload, options: dict, *, key: str, agent: str,
                stage: str, phase: str, attempt: int, previous: str = "", run_t0_ns: int | None = None,
                cold_load_ms: float = 1000.0, call_attempt: int = 1) -> RequestRecord:
    """One call of an agent's stage whose system message opens with its own prompt nonce
    (workload.prompt_nonce), so it shares no cached prefix with any other call. `attempt` seeds
    the nonce; `call_attempt` (this call's try number) goes into the record."""
    nonce = prompt_nonce(key, agent, stage, phase, attempt)
    ctx = CallContext(agent, stage, phase, time.perf_counter_ns() if run_t0_ns is None else run_t0_ns, nonce,
                      cold_load_ms=cold_load_ms, call_attempt=call_attempt)
    return client.chat(model, workload.messages(agent, stage, nonce, previous), options, ctx)


def run_agent(target: AgentTarget, workload: Workload, phase: str, run_t0_ns: int, run_key: str, *,
              attempts: int = 3, run_attempt: int = 1, cold_load_ms: float = 1000.0) -> list[RequestRecord]:
    """The agent's two calls; the second sees the text the first generated. Each attempt of each
    call, in each attempt of the run, gets its own prompt nonce, so a retry never reuses a prefix
    that a failed attempt cached."""
    records: list[RequestRecord] = []
    previous = ""
    for stage in STAGES:
        for attempt in retrying(attempts):
            with attempt:
                rec = nonced_chat(target.client, target.model, workload, target.options, key=run_key,
                                  agent=target.agent, stage=stage, phase=phase, previous=previous,
                                  attempt=nonce_attempt(run_attempt, attempt.retry_state.attempt_number, attempts),
                                  run_t0_ns=run_t0_ns, cold_load_ms=cold_load_ms,
                                  call_attempt=attempt.retry_state.attempt_number)
        records.append(rec)
        previous = rec.output_text
    return records


# A warmup loads the model (with the counted calls' options) and runs a full prefill; a long
# generation after that warms nothing more, so it is capped (study overhead, not measurement).
WARMUP_TOKENS = 8


def warmup(target: AgentTarget, workload: Workload, n: int, key: str) -> None:
    """Uncounted calls that load the model and warm the caches; their records are dropped. Their
    nonces (phase 'warmup') differ from every counted call's."""
    options = dict(target.options, num_predict=min(target.options["num_predict"], WARMUP_TOKENS))
    for i in range(n):
        for attempt in retrying(5):
            with attempt:
                nonced_chat(target.client, target.model, workload, options, key=key, agent=target.agent,
                            stage="analysis", phase=f"warmup{i + 1}", attempt=attempt.retry_state.attempt_number)


# ---------------------------------------------------------------------------------------------
# Run documents
# ---------------------------------------------------------------------------------------------


def single_metrics(records: list[RequestRecord]) -> dict:
    return {
        "decode_tps": metrics.run_decode_tps([r.output_tokens for r in records], [r.eval_ms for r in records]),
        "decode_tps_client": metrics.run_decode_tps_client([r.output_tokens for r in records],
                                                           [r.decode_span_s for r in records]),
        "ttft_ms": metrics.run_ttft_ms(r.ttft_ms for r in records),
        "latency_ms": metrics.run_latency_ms(r.e2e_ms for r in records),
        "output_tokens": sum(r.output_tokens for r in records),
    }


def base_document(*, study: str, suite: str, model: dict, config: dict, run_index: int,
                  started_at: str, workload: Workload, records: list[RequestRecord],
                  run_metrics: dict, extra_workload: dict | None = None) -> dict:
    return {
        "schema_version": 1, "study": study, "suite": suite, "lang": "python", "client": CLIENT_INFO,
        "model": model, "config": config, "run_index": run_index,
        "started_at": started_at, "finished_at": utc_now(),
        "workload": {"prompts_sha256": workload.prompts_sha256, "dataset_sha256": workload.dataset_sha256,
                     **(extra_workload or {})},
        "requests": [r.to_json() for r in records],
        "metrics": {k: metrics.finite_or_none(v) if isinstance(v, float) else v for k, v in run_metrics.items()},
        "cold_load": any(r.cold_load for r in records),
    }


def run_single(target: AgentTarget, workload: Workload, run_key: str, *, clock: Clock = time.perf_counter_ns,
               attempts: int = 3, run_attempt: int = 1, cold_load_ms: float = 1000.0
               ) -> tuple[str, list[RequestRecord], dict]:
    started_at = utc_now()
    records = run_agent(target, workload, "single", clock(), run_key, attempts=attempts, run_attempt=run_attempt,
                        cold_load_ms=cold_load_ms)
    return started_at, records, single_metrics(records)


def _phase_stats(records: list[RequestRecord]) -> tuple[float | None, float | None]:
    return (metrics.run_decode_tps([r.output_tokens for r in records], [r.eval_ms for r in records]),
            metrics.run_ttft_ms(r.ttft_ms for r in records))


def multi_metrics(records: list[RequestRecord], t_alone: dict[str, float], t_together: dict[str, float],
                  wall: float, min_tps_ratio: float, max_ttft_inflation: float) -> dict:
    agents = {}
    for agent in ("collector", "insight"):
        tps_a, ttft_a = _phase_stats([r for r in records if r.agent == agent and r.phase == "alone"])
        tps_t, ttft_t = _phase_stats([r for r in records if r.agent == agent and r.phase == "together"])
        agents[agent] = {
            "t_alone_s": t_alone[agent], "t_together_s": t_together[agent],
            "decode_tps_alone": tps_a, "decode_tps_together": tps_t,
            "ttft_ms_alone": ttft_a, "ttft_ms_together": ttft_t,
            "tps_ratio": metrics.tps_ratio(tps_t, tps_a),
            "ttft_inflation": metrics.ttft_inflation(ttft_t, ttft_a),
        }
    seq = metrics.seq_s(t_alone["collector"], t_alone["insight"])
    speed = metrics.speedup(seq, wall)
    return {
        "wall_s": wall, "seq_s": seq, "speedup": speed,
        "efficiency_pct": metrics.efficiency_pct(speed),
        "evenness_pct": metrics.evenness_pct(t_together["collector"], t_together["insight"]),
        "contention": metrics.contention([a["tps_ratio"] for a in agents.values()],
                                         [a["ttft_inflation"] for a in agents.values()],
                                         min_tps_ratio, max_ttft_inflation),
        "legacy_contention": metrics.legacy_contention(speed),
        "agents": {name: {k: metrics.finite_or_none(v) for k, v in a.items()} for name, a in agents.items()},
    }


def _together(targets: dict[str, AgentTarget], workload: Workload, run_t0: int, run_key: str, *, clock: Clock,
              attempts: int, run_attempt: int, cold_load_ms: float
              ) -> tuple[dict[str, list[RequestRecord]], int, dict[str, int]]:
    """Every agent's run at once, released by a barrier (one thread each): each agent's records,
    the release stamp (the first agent's start) and each agent's last call's end."""
    barrier = threading.Barrier(len(targets))
    starts: dict[str, int] = {}
    results: dict[str, list[RequestRecord]] = {}
    errors: list[BaseException] = []

    def work(agent: str) -> None:
        try:
            barrier.wait()
            starts[agent] = clock()
            results[agent] = run_agent(targets[agent], workload, "together", run_t0, run_key,
                                       attempts=attempts, run_attempt=run_attempt, cold_load_ms=cold_load_ms)
        except BaseException as exc:  # re-raised on the main thread below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(a,), name=f"agent-{a}") for a in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, min(starts.values()), {a: recs[-1].t_done_ns for a, recs in results.items()}


def run_multi(targets: dict[str, AgentTarget], workload: Workload, run_key: str, *, phase_order: list[str],
              alone_order: list[str], clock: Clock = time.perf_counter_ns, attempts: int = 3,
              run_attempt: int = 1, cold_load_ms: float = 1000.0, min_tps_ratio: float = 0.85,
              max_ttft_inflation: float = 2.0,
              ) -> tuple[str, list[RequestRecord], dict]:
    started_at = utc_now()
    run_t0 = clock()
    records: list[RequestRecord] = []
    t_alone: dict[str, float] = {}
    t_together: dict[str, float] = {}
    wall = 0.0
    for phase in phase_order:
        if phase == "alone":
            for agent in alone_order:
                t_release = clock()
                recs = run_agent(targets[agent], workload, "alone", run_t0, run_key, attempts=attempts,
                                 run_attempt=run_attempt, cold_load_ms=cold_load_ms)
                t_alone[agent] = metrics.agent_time_s(t_release, recs[-1].t_done_ns)
                records.extend(recs)
        else:
            results, t_release, done = _together(targets, workload, run_t0, run_key, clock=clock, attempts=attempts,
                                                 run_attempt=run_attempt, cold_load_ms=cold_load_ms)
            wall = metrics.wall_s(t_release, max(done.values()))
            for agent, t_done in done.items():
                t_together[agent] = metrics.agent_time_s(t_release, t_done)
                records.extend(results[agent])
    return started_at, records, multi_metrics(records, t_alone, t_together, wall,
                                              min_tps_ratio, max_ttft_inflation)


def steps_metrics(records: list[RequestRecord], t_alone: float, t_together: dict[str, float], wall: float,
                  min_tps_ratio: float, max_ttft_inflation: float) -> dict:
    """An agent-count step: N agents together against one agent alone (the same run)."""
    n = len(t_together)
    tps_a, ttft_a = _phase_stats([r for r in records if r.phase == "alone"])
    tps_t, ttft_t = _phase_stats([r for r in records if r.phase == "together"])
    seq = metrics.steps_seq_s(n, t_alone)
    speed = metrics.speedup(seq, wall)
    per_agent = {}
    for agent, t in t_together.items():
        a_tps, a_ttft = _phase_stats([r for r in records if r.agent == agent and r.phase == "together"])
        per_agent[agent] = {"t_together_s": t, "decode_tps_together": a_tps, "ttft_ms_together": a_ttft,
                            "tps_ratio": metrics.tps_ratio(a_tps, tps_a),
                            "ttft_inflation": metrics.ttft_inflation(a_ttft, ttft_a)}
    return {
        "n_agents": n, "t_alone_s": t_alone, "seq_s": seq, "wall_s": wall, "speedup": speed,
        "efficiency_pct": metrics.efficiency_pct(speed, n),
        "decode_tps_alone": tps_a, "decode_tps_together": tps_t,
        "ttft_ms_alone": ttft_a, "ttft_ms_together": ttft_t,
        "tps_ratio": metrics.tps_ratio(tps_t, tps_a), "ttft_inflation": metrics.ttft_inflation(ttft_t, ttft_a),
        "contention": metrics.contention([a["tps_ratio"] for a in per_agent.values()],
                                         [a["ttft_inflation"] for a in per_agent.values()],
                                         min_tps_ratio, max_ttft_inflation),
        "agents": {name: {k: metrics.finite_or_none(v) for k, v in a.items()} for name, a in per_agent.items()},
    }


def run_steps(targets: dict[str, AgentTarget], workload: Workload, run_key: str, *,
              clock: Clock = time.perf_counter_ns, attempts: int = 3, run_attempt: int = 1,
              cold_load_ms: float = 1000.0, min_tps_ratio: float = 0.85, max_ttft_inflation: float = 2.0,
              ) -> tuple[str, list[RequestRecord], dict]:
    """One agent-count step: the first agent alone on an idle instance (the reference), then all
    N agents released together; the agents call the instances round-robin (plan.Cell)."""
    started_at = utc_now()
    run_t0 = clock()
    first = next(iter(targets))
    t_release = clock()
    records = run_agent(targets[first], workload, "alone", run_t0, run_key, attempts=attempts,
                        run_attempt=run_attempt, cold_load_ms=cold_load_ms)
    t_alone = metrics.agent_time_s(t_release, records[-1].t_done_ns)
    results, t_release, done = _together(targets, workload, run_t0, run_key, clock=clock, attempts=attempts,
                                         run_attempt=run_attempt, cold_load_ms=cold_load_ms)
    for agent in targets:
        records.extend(results[agent])
    t_together = {a: metrics.agent_time_s(t_release, t) for a, t in done.items()}
    wall = metrics.wall_s(t_release, max(done.values()))
    return started_at, records, steps_metrics(records, t_alone, t_together, wall, min_tps_ratio, max_ttft_inflation)


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


def _targets(job: Job, clients: Mapping[str, StreamingClient]) -> dict[str, AgentTarget]:
    """Each agent of the job on the runner's client for its endpoint (so sessions are reused)."""
    targets = {}
    for name, agent in job.agents.items():
        client = clients.get(agent.endpoint)
        if client is None or client.api != agent.api:
            raise BenchError(f"job {job.run_key}: no {agent.api} client for {agent.endpoint} (agent {name}); the "
                             f"runner has {', '.join(f'{c.base_url} ({c.api})' for c in clients.values()) or 'none'}")
        targets[name] = AgentTarget(name, client, agent.model, agent.options.model_dump(exclude_unset=True))
    return targets


def run_job(job: Job, clients: Mapping[str, StreamingClient]) -> RunDocument:
    """Run one job with the Python agents and return its document (without the harness's blocks:
    client cost, power, placement, settings, the ladder). `clients`: StreamingClients by endpoint
    URL. The workload is the job's files (load_workload caches them)."""
    workload = load_workload(Path(job.workload_file), Path(job.dataset_dir))
    targets = _targets(job, clients)
    calls = {"attempts": job.retries.attempts, "run_attempt": job.attempt, "cold_load_ms": job.cold_load_ms}
    thresholds = job.contention.model_dump()
    extra = None
    if job.suite == "single":
        started, records, run_metrics = run_single(targets["single"], workload, job.run_key, **calls)
    elif job.suite == "steps":
        started, records, run_metrics = run_steps(targets, workload, job.run_key, **calls, **thresholds)
    else:
        started, records, run_metrics = run_multi(targets, workload, job.run_key, phase_order=list(job.phase_order),
                                                  alone_order=list(job.alone_order), **calls, **thresholds)
        extra = {"phase_order": list(job.phase_order)}
    return RunDocument.model_validate(base_document(
        study=job.study, suite=job.suite, model=job.model.model_dump(exclude_none=True), config=job.config,
        run_index=job.run_index, started_at=started, workload=workload, records=records, run_metrics=run_metrics,
        extra_workload=extra))
