"""Runs a plan: switches the runtime to each config, warms it up, runs the agents, stores records.

- Warmup calls follow every server (re)start or reload and are never counted.
- A run whose metrics.json already exists, validates and carries this plan's fingerprint
  (bench/study/plan_identity.py) is skipped, so an interrupted study resumes where it stopped. A stored
  run of another plan (or without a fingerprint: an older harness, an agent's bare document) is
  never pooled: it is moved aside (Store.set_aside) before anything runs, and `bench` says how
  many and why.
- A failure is handled by its class (data/error_kinds.yaml). Transient ones are retried per call
  by the agents (Python and Rust alike); a run that still fails is tried once more in a retry pass
  at the end. Load failures (OOM, a killed runner) walk the fallback ladder (bench/config/ladder.py),
  freeing the servers before each rung; the run that works is stored under the config it asked
  for, with what ran and why, and the rungs that failed are not tried again for that model. When
  no rung loads, the config is skipped (an optional model: the model). Permanent failures, and a
  server that stays unreachable, stop the study with one clear message; finished runs stay.
- Every failed attempt is one line of failures.jsonl: the config asked for and the one attempted,
  the error, the VRAM in use and in total at the failure (NVML), and the decision taken.
- Each run attempt is one typed Job (bench/config/job.py), built here once and handed to either backend
  (agents.run_job, rust.run_job); each returns a typed RunDocument, to which the harness adds
  its blocks (client cost, power, placement, settings, the ladder) before the store writes it.
- The runner measures; it never analyses. Summaries, tables and the report read the store
  afterwards (`invoke bench`, `invoke report`); the outlier reruns read the stored documents.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from bench.clients import agents, rust
from bench.clients.agents import AgentTarget
from bench.clients.streaming import StreamingClient
from bench.config import ladder
from bench.config.job import Job, data_files
from bench.config.placement import placement_issues
from bench.config.plan import AGENTS_MULTI, Cell, Plan, RunItem, estimate_seconds
from bench.config.profile import LoadedProfile
from bench.config.workload import load_workload
from bench.core import metrics
from bench.core.drift import unix_time
from bench.core.errors import LOAD, PERMANENT, BenchError, RequestError
from bench.core.protocol import PROBE_TOKENS
from bench.core.records import RunDocument
from bench.core.store import PROBES, SAMPLING, SUPERSEDED_DIR, Store, utc_now
from bench.host import gpu
from bench.runtimes import Runtime
from bench.runtimes.docker import stop_agent_containers
from bench.study import engine_sampler, instrument, outliers, overhead, plan_identity, power, probes, scheduler
from bench.study.outliers import plan_outlier_reruns

log = logging.getLogger("bench")

# Between two rungs, after freeing the servers: the driver hands memory back asynchronously.
LADDER_WAIT_S = 1.0


def _with_blocks(doc: RunDocument, **blocks) -> RunDocument:
    """The document with the harness's blocks added, each checked by its RunDocument field."""
    return RunDocument.model_validate({**doc.to_json(), **blocks})


@dataclass
class Outcome:
    done: int = 0
    resumed: int = 0
    failed: int = 0  # runs that failed past their retries or ladder, counted again if the retry pass fails
    recovered: int = 0  # runs the retry pass completed
    downgraded: int = 0  # runs stored after the fallback ladder lowered their config
    skipped: int = 0
    reruns: int = 0
    notes: list[str] = field(default_factory=list)
    learned_limits: dict = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)  # stored runs of another plan, per reason
    ignored_to: Path | None = None  # the folder they were moved to

    def ignored_text(self) -> str:
        """How many stored runs were ignored, why, and where they went."""
        return (f"ignored {sum(self.ignored.values())} stored run(s) this plan did not make ("
                + "; ".join(f"{n}: {why}" for why, n in self.ignored.items()) + f"); moved aside to {self.ignored_to}")


class MatrixRunner:
    def __init__(self, loaded: LoadedProfile, plan: Plan, runtime: Runtime, store: Store, *,
                 progress: bool = True, rust_agent: rust.RustAgent | None = None, rust_reason: str = ""):
        self.loaded, self.profile = loaded, loaded.profile
        self.plan = plan
        self.runtime = runtime
        self.store = store
        self.progress = progress
        self.rust_agent, self.rust_reason = rust_agent, rust_reason
        self.workload = load_workload()
        self.endpoints = runtime.endpoints()
        self.clients = {e.name: StreamingClient(e.url, e.api, self.profile.workload.timeout_s, api_key=e.api_key)
                        for e in self.endpoints}
        self._clients_by_url = {c.base_url: c for c in self.clients.values()}  # what a job's agents name
        self._server_key: tuple | None = None
        self._failed_cells: set[str] = set()
        self._failed_models: set[str] = set()
        self._skipped_cells: set[str] = set()
        self._order_rng = random.Random(self.profile.workload.order_seed)
        self.threads = runtime.threads
        self.gpu_present = gpu.nvidia_gpu_count()[0] > 0
        self._after_load: dict = {}
        self._block_counts: dict[str, int | None] = {}
        self.power = power.PowerMonitor(store)
        self.engine = engine_sampler.EngineMonitor(store, runtime.engine, {e.name: e.url for e in self.endpoints})
        self.limits = ladder.Limits()
        self._run_attempts: dict[Path, int] = {}  # per run, for new prompt nonces on each attempt
        self._retry: list[RunItem] = []
        self._retry_pass = False
        self.timeline = instrument.Timeline(store, utc_now())
        self._fingerprints: dict[str, dict] = {}  # per model name: its runs' plan fingerprint
        self._last_probe = float("-inf")  # perf_counter seconds of the last drift probe
        # whose CPU the client block can see: a containerized agent is not our child process
        self._rust_cpu = "rust-container" if rust_agent and rust_agent.prefix[0] == "docker" else "rust"

    # ---- runtime switching -------------------------------------------------------------

    def _server_state(self, cell: Cell) -> tuple:
        """What the servers must hold for a cell: the model, each used endpoint's load options and
        every instance's settings. Cells with the same state run without a reload in between."""
        names = [e.name for e in self.endpoints]
        servers = cell.server_configs(names)
        settings = cell.instance_settings(names, self.profile.runtime.pinned_settings)
        return (cell.model.name, tuple(sorted((k, v.model_dump_json() if v else None) for k, v in servers.items())),
                tuple(sorted((k, v.model_dump_json()) for k, v in settings.items())))

    def _ensure_servers(self, cell: Cell, eff: Cell) -> None:
        """Serve `eff` (the cell as a rung runs it), loaded and warm; `cell` names the folder."""
        names = [e.name for e in self.endpoints]
        servers = eff.server_configs(names)
        settings = eff.instance_settings(names, self.profile.runtime.pinned_settings)
        key = self._server_state(eff)
        if key == self._server_key:
            return
        self._server_key = None
        with self.timeline.event("settings", cell=eff.key) as event:
            # slots, flash attention, KV cache: an instance whose settings change restarts
            event["changed"] = self.runtime.apply_settings(settings)
        with self.timeline.event("switch", cell=eff.key) as event:
            # whether a server restarted or the model changed: the timeline tells a cheap switch
            # (the same server, warm again) from a reload
            event["changed"] = self.runtime.switch(eff.model, {k: v for k, v in servers.items() if v is not None})
        with self.timeline.event("warmup", cell=eff.key):
            self._warmup(eff)  # Ollama loads here: a load failure surfaces in the warmup
        self._server_key = key
        self._after_load = self.runtime.placement(eff.model)
        with self.timeline.event("idle_baseline", cell=eff.key):
            self.power.take_idle_baseline(cell)  # servers loaded and warm, no request (GPU hosts)

    def _free_before(self, item: RunItem, eff: Cell) -> None:
        """Free the servers before the rung `eff`, then give the driver time to hand the memory
        back. A failure here (an unload slower than its wait) is the server's, not the rung's: it is
        logged and raised as it is, never learned, and the retry pass runs the run at `eff`."""
        self._server_key = None
        try:
            self.runtime.free()
        except RequestError as exc:
            self._log_failure(item, eff, exc, f"servers not freed before the next rung "
                                              f"({ladder.describe(eff)}): {self._retry_decision(exc)}")
            raise
        time.sleep(LADDER_WAIT_S)

    def _warmup(self, cell: Cell) -> None:
        """Warm every endpoint the cell uses with its own options, all at once (each endpoint is
        its own server); nothing is recorded, and the first failure is raised."""
        n = self.profile.workload.warmup_requests
        targets = list(self._targets(cell).values())
        with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="warmup") as pool:
            for done in [pool.submit(agents.warmup, t, self.workload, n, f"{self.profile.study}/{cell.key}")
                         for t in targets]:
                done.result()

    def _targets(self, cell: Cell) -> dict[str, AgentTarget]:
        wl = self.profile.workload
        cfgs = cell.agent_configs
        by_name = {e.name: e for e in self.endpoints}
        used = cell.agent_endpoints(list(by_name))
        return {agent: AgentTarget(agent, self.clients[ep], cell.model.name,
                                   agents.request_options(wl, cfgs[agent], self._request_threads(cell, ep)))
                for agent, ep in used.items()}

    def _request_threads(self, cell: Cell, endpoint: str) -> int | None:
        """The CPU threads a request asks for: Ollama takes them per request (llama-server got them
        as a launch flag). The shared instance of the topology control gets the threads of every
        instance, so one copy with two slots has the same CPU as two copies."""
        if self.threads is None or next(e.api for e in self.endpoints if e.name == endpoint) != "ollama":
            return None
        return self.threads * len(self.endpoints) if cell.shared_instance else self.threads

    def _server_settings(self, cell: Cell) -> dict:
        """The run's `server_settings` block: the topology and each used instance's settings."""
        names = [e.name for e in self.endpoints]
        used = sorted(set(cell.agent_endpoints(names).values()), key=names.index)
        settings = cell.instance_settings(names, self.profile.runtime.pinned_settings)
        return {"topology": "one_instance" if len(used) == 1 else "two_instances",
                "instances": {ep: {**settings[ep].model_dump(), "threads": self._request_threads(cell, ep) or self.threads}
                              for ep in used}}

    def _run_key(self, item: RunItem) -> str:
        return f"{self.profile.study}/{item.rel_dir}"

    def _placement(self, cell: Cell) -> dict:
        """What the engine reported after the load and now, and how it differs from the config."""
        names = [e.name for e in self.endpoints]
        defaults = self.profile.runtime.server_defaults
        expected = {ep: cfg or defaults for ep, cfg in cell.server_configs(names).items()}
        end = self.runtime.placement(cell.model)
        if self.gpu_present and cell.model.name not in self._block_counts:  # one /api/show per model
            self._block_counts[cell.model.name] = self.runtime.model_identity(cell.model).get("block_count")
        block_count = self._block_counts.get(cell.model.name)
        return {"after_load": self._after_load, "end_of_run": end,
                "issues": placement_issues(expected, end, gpu_present=self.gpu_present, block_count=block_count)}

    # ---- one run -----------------------------------------------------------------------

    def _config_doc(self, cell: Cell) -> dict:
        wl = self.profile.workload
        c = cell.label_config
        doc = {"gpu_layers": c.gpu_layers, "ctx": c.ctx, "temperature": c.temperature, "seed": wl.seed,
               "num_predict": wl.num_predict, "ignore_eos": wl.ignore_eos, "scenario": cell.scenario}
        if cell.suite == "multi":
            doc["agents"] = {a: (cfg.model_dump() if cfg else None) for a, cfg in cell.agents}
        return doc

    def _model_doc(self, cell: Cell) -> dict:
        return {"name": cell.model.name, "slug": cell.model.slug, "baseline": cell.model.baseline}

    def _orders(self) -> tuple[list[str], list[str]]:
        """Phase order and alone-phase agent order of a multi run: random, seeded by the profile."""
        phases = ["alone", "together"]
        alone = list(AGENTS_MULTI)
        self._order_rng.shuffle(phases)
        self._order_rng.shuffle(alone)
        return phases, alone

    def _job(self, item: RunItem, eff: Cell, attempt: int) -> Job:
        """The run attempt as one job: the run named as asked (`item`), run as `eff` runs it."""
        wl = self.profile.workload
        orders = {}
        if eff.suite == "multi":
            orders = dict(zip(("phase_order", "alone_order"), self._orders()))
        try:
            return Job(suite=eff.suite, study=self.profile.study, run_key=self._run_key(item), attempt=attempt,
                       run_index=item.run_index,
                       retries={"attempts": wl.retries, "wait_s": agents.RETRY_WAIT_S,
                                "max_wait_s": agents.RETRY_MAX_WAIT_S},
                       model=self._model_doc(item.cell), config=self._config_doc(eff), **data_files(),
                       timeout_s=wl.timeout_s, cold_load_ms=wl.cold_load_ms,
                       contention=self.profile.multi.contention.model_dump(),
                       agents={name: {"endpoint": t.client.base_url, "api": t.client.api, "model": t.model,
                                      "options": t.options} for name, t in self._targets(eff).items()},
                       **orders)
        except ValidationError as exc:  # the profile was checked: a harness bug, said plainly
            raise BenchError(f"cannot build the job of {item.rel_dir}: {exc}") from None

    def _run_job(self, item: RunItem, job: Job, lang: str) -> RunDocument:
        if lang == "python":
            return agents.run_job(job, self._clients_by_url)
        # The agent retries each call itself, as the Python agents do; a failure here is final.
        return rust.run_job(self.rust_agent, job, self.store.path(item.rel_dir), self.store.root.parent,
                            timeout_s=rust.agent_timeout_s(job))

    def _run_once(self, item: RunItem, eff: Cell) -> RunDocument:
        """One attempt at a run, with the cell as `eff` runs it; the document is not stored yet."""
        attempt = self._run_attempts[item.rel_dir] = self._run_attempts.get(item.rel_dir, 0) + 1
        with self.timeline.event("run", cell=item.cell.key, run=item.run_index, lang=eff.lang) as event:
            before = instrument.snapshot()
            # without NVML: a power block of nulls with the reason; the engine's queue is polled alongside
            # where agents share it (multi, steps: engine_sampler.SAMPLED_SUITES)
            with self.power.measure() as window, self.engine.sample(eff.suite) as engine_run:
                job = self._job(item, eff, attempt)
                doc = self._run_job(item, job, eff.lang)
            client_cost = instrument.client_block(before, instrument.snapshot(),
                                                  "python" if eff.lang == "python" else self._rust_cpu)
            stored = doc.to_json()  # instrument and power read the document as metrics.json holds it
            event.update(instrument.run_time_parts(stored))  # its requests' union, span and summed time
        engine = self.engine.block(engine_run, item)  # None: a suite that is not sampled, no block
        return _with_blocks(doc, client_cost=client_cost, power=self.power.block(window, item, stored),
                            **({"engine": engine} if engine is not None else {}), run_key=job.run_key,
                            server_settings=self._server_settings(eff), placement=self._placement(eff))

    def _walk_ladder(self, item: RunItem) -> RunDocument:
        """Run `item` on the first rung of its ladder that loads (bench/config/ladder.py). Rungs that
        failed before for the model are passed over; each failed attempt is logged, the servers are
        freed, and the next rung is tried, whichever phase the load failure hit (switch, warmup,
        first or later call). Raises ladder.Exhausted when no rung is left; any other failure
        (one between two rungs too) leaves the run to the retry pass, where the rungs learned here
        are passed over, so the rung decided is the one that runs."""
        cell, model = item.cell, item.cell.model.name
        steps: list[dict] = []
        pending = iter(ladder.rungs(cell, self.profile.fallback_for(cell.model)))

        def next_rung() -> Cell | None:
            for rung in pending:
                eff = ladder.apply(cell, rung)
                known = self.limits.known_failure(model, eff)
                if known is None:
                    return eff
                steps.append(ladder.step(eff, "skipped", known["error_kind"],
                                         f"failed before in {known['learned_at']}"))
            return None

        eff = next_rung()
        if eff is None:
            known = steps[0]
            exc = ladder.Exhausted(known["error_kind"], f"no rung of the fallback ladder is left: {known['error']}")
            self._log_failure(item, None, exc, self._decision(item, exc, None))
            raise exc
        while True:
            try:
                self._ensure_servers(cell, eff)
                doc = self._run_once(item, eff)
                break
            except RequestError as exc:
                failed = eff
                if exc.cls == LOAD:
                    self.limits.failure(model, failed, exc.kind, cell.key)
                    steps.append(ladder.step(failed, "failed", exc.kind, exc.detail))
                    eff = next_rung()
                self._log_failure(item, failed, exc, self._decision(item, exc, eff if exc.cls == LOAD else None))
                if exc.cls != LOAD:
                    raise
                if eff is None:
                    raise ladder.Exhausted.of(exc) from None
                log.warning("%s; freeing the servers before the next rung (%s)", exc, ladder.describe(eff))
            self._free_before(item, eff)
        self.limits.success(model, eff)
        return _with_blocks(doc, requested_config={"model": model, **self._config_doc(cell)},
                            effective_config={"model": eff.model.name, **self._config_doc(eff)},
                            ladder=[*steps, ladder.step(eff, "ran")] if steps else [])

    # ---- the matrix --------------------------------------------------------------------

    def _decision(self, item: RunItem, exc: RequestError, next_rung: Cell | None) -> str:
        if exc.cls == LOAD:
            if next_rung is not None:
                return f"next rung: {ladder.describe(next_rung)}"
            return ladder.Skip.OPTIONAL_MODEL if item.cell.model.optional else ladder.Skip.CONFIG
        return self._retry_decision(exc)

    def _retry_decision(self, exc: RequestError) -> str:
        """What becomes of a run that failed short of its ladder's end."""
        if self._stops(exc):
            return "study stopped"
        if self._retry_pass:
            return "run not counted after the retry pass; rerun `invoke bench` to retry it"
        return "run not counted; the retry pass at the end tries it again"

    @staticmethod
    def _stops(exc: RequestError) -> bool:
        """Permanent failures, and a server still unreachable after the per-call retries."""
        return exc.cls == PERMANENT or exc.kind == "connection"

    def _log_failure(self, item: RunItem, eff: Cell | None, exc: RequestError, decision: str) -> None:
        cell = item.cell
        used, total = gpu.vram_now()
        self.store.log_failure({
            "cell": cell.key, "run_index": item.run_index, "suite": cell.suite, "lang": cell.lang,
            "model": cell.model.name, "scenario": cell.scenario,
            "requested_config": {"model": cell.model.name, **self._config_doc(cell)},
            "attempted_config": {"model": eff.model.name, **self._config_doc(eff)} if eff else None,
            "error_kind": exc.kind, "error_class": exc.cls, "error": str(exc),
            "observed_vram_used_bytes": used, "observed_vram_total_bytes": total, "fallback": decision,
            "evidence": self.runtime.failure_evidence(),
        })

    def run(self) -> Outcome:
        outcome = Outcome()
        bar = tqdm(total=self.plan.run_count, unit="run", disable=not self.progress, desc=self.profile.study,
                   dynamic_ncols=True)
        try:
            self._model_probes()
            self._fingerprints = self._plan_fingerprints()
            self._set_aside_other_plans(outcome)
            if self.plan.scheduled:
                self._run_adaptive(outcome, bar)
            else:
                self._run_fixed(outcome, bar)
            if self.profile.instrument.floors:
                self._floors()
        except BaseException:  # Ctrl-C, SIGTERM (bench/study/interrupt.py), an error: no agent left running
            self._stop_agent_containers()
            raise
        finally:
            bar.close()
        outcome.learned_limits = self.limits.to_json()
        return outcome

    # ---- resume: only runs of this plan count ----------------------------------------------

    def _plan_fingerprints(self) -> dict[str, dict]:
        """Each plan model's fingerprint. An Ollama digest comes from a server: where the servers
        are not up yet (a lone `bench`), they are started here rather than at the first run."""
        models = list({c.model.name: c.model for c in self.plan.cells}.values())
        try:
            try:
                identities = {m.name: self.runtime.model_identity(m) for m in models}
            except RequestError:
                if self.runtime.is_running():
                    raise
                self.runtime.up()  # a GGUF file needs no server; an Ollama digest does
                self._server_key = None
                identities = {m.name: self.runtime.model_identity(m) for m in models}
        except RequestError as exc:
            raise BenchError(f"cannot identify the plan's models ({exc.kind}): {exc}") from None
        workload = plan_identity.workload_part(self.profile.workload)
        runtime = plan_identity.runtime_part(self.runtime)
        commit = plan_identity.harness_commit()
        return {m.name: plan_identity.fingerprint(workload, plan_identity.model_part(identities[m.name], m),
                                                  runtime, commit) for m in models}

    def _set_aside_other_plans(self, outcome: Outcome) -> None:
        """Move every stored run of the plan's configs that another plan made out of the study, so
        neither resume nor any reader pools it; count them per reason for `bench` to say."""
        stamp = utc_now().replace(":", "")
        for cell in self.plan.cells:
            expected = self._fingerprints[cell.model.name]
            for run in self.store.iter_runs(cell.rel_dir):
                stored = run.doc.plan_fingerprint
                why = plan_identity.mismatch(stored.model_dump() if stored else None, expected)
                if why is None:
                    continue
                self.store.set_aside(run.rel_dir, {"reason": why, "expected": expected,
                                                   "stored": stored.model_dump() if stored else None}, stamp)
                outcome.ignored[why] = outcome.ignored.get(why, 0) + 1
        if outcome.ignored:
            outcome.ignored_to = self.store.path(Path(SUPERSEDED_DIR) / stamp)
            tqdm.write(outcome.ignored_text())

    def _stop_agent_containers(self) -> None:
        """A containerized Rust agent outlives its killed `docker run` client: stop this study's."""
        if self._rust_cpu != "rust-container":
            return
        for name in stop_agent_containers(self.store.root):
            log.warning("stopped the Rust agent container %s", name)

    def _run_fixed(self, outcome: Outcome, bar: tqdm) -> None:
        """The plan's runs in its order (spec parity), the retry pass, then the outlier reruns."""
        todo = []
        for item in self.plan.items:
            if self.store.load_valid(item.rel_dir) is not None:
                outcome.resumed += 1
            else:
                todo.append(item)
        if outcome.resumed:
            log.info("resuming: %d of %d runs already done", outcome.resumed, self.plan.run_count)
            bar.update(outcome.resumed)
        if todo:
            self._probe("start")
        for prev, item in zip([None, *todo], todo):
            if prev is not None and prev.cell.model != item.cell.model:
                self._probe(f"after {prev.cell.model.name}")
            elif prev is not None and self._probe_due():
                self._probe(f"{item.cell.model.name} at run {bar.n + 1}")
            self._run_item(item, outcome)
            bar.set_postfix_str(f"{item.cell.suite}/{item.cell.lang}/{item.cell.model.slug}", refresh=False)
            bar.update(1)
        self._run_retry_pass(outcome)
        # The spec's outlier rule: configs with flagged runs get extra runs, within the
        # profile's budget; every run is kept (bench/study/outliers.py).
        for _ in range(self.profile.outliers.max_extra_runs):
            extra = plan_outlier_reruns(self.profile, self.store, self.plan)
            if not extra:
                break
            self.plan.items.extend(extra)  # the manifest's run order lists the reruns too
            outcome.reruns += len(extra)
            bar.total += len(extra)
            for item in extra:
                self._run_item(item, outcome)
                bar.update(1)
        if todo:
            self._probe("end")

    # ---- the adaptive study (bench/study/scheduler.py) --------------------------------------------

    def _cell_spec(self, cell: Cell) -> scheduler.CellSpec:
        p = cell.precision
        target = (scheduler.Target(tuple(p.metrics), p.rel_half_width, p.min_runs, p.max_runs, p.confidence) if p
                  # a fixed suite beside adaptive ones: exactly its runs (its headline for the record)
                  else scheduler.Target((metrics.headline(cell.suite),), 1.0, cell.runs, cell.runs, fixed=True))
        return scheduler.CellSpec(cell.key, cell.model.name, self._server_state(cell), target, cell.suite,
                                  est_run_s=self._estimated_run_s(cell), search=self._search_point(cell))

    def _search_point(self, cell: Cell) -> scheduler.SearchPoint | None:
        """A capacity-search config's place in its search: one search per model, language and settings."""
        if cell.search is None:
            return None
        slo = self.profile.slo
        if slo is None:
            raise BenchError("steps.search needs the profile's `slo` block: the search measures goodput against it")
        return scheduler.SearchPoint((cell.model.name, cell.lang, cell.settings_tag), len(cell.agents),
                                     cell.search.max_agents, slo.goodput_target, slo.confidence)

    def _estimated_run_s(self, cell: Cell) -> float:
        from_plan = estimate_seconds(self.profile, Plan([cell], [RunItem(cell, 1)]), switches=False)
        return max(from_plan, 1.0)

    def _observation(self, doc: RunDocument, cell: Cell) -> scheduler.Observation:
        values = {k: v for k, v in doc.metrics.model_dump().items() if isinstance(v, (int, float))}
        duration = max(0.0, unix_time(doc.finished_at) - unix_time(doc.started_at))
        slo = None
        if cell.search is not None:  # a search point: how many of its calls under load met the SLO
            calls = [r for r in doc.requests if metrics.counts_for_goodput(cell.suite, r.phase)]
            slo = (sum(metrics.meets_slo(r.ttft_ms, r.decode_tps_client, r.e2e_ms, self.profile.slo) for r in calls),
                   len(calls))
        return scheduler.Observation(doc.run_index, values, duration, slo)

    def _resume(self, sched: scheduler.Scheduler, outcome: Outcome) -> None:
        """What the study already holds counts: its valid runs (placed where their config says) and
        the run indices earlier attempts used up."""
        failed: dict[str, set[int]] = {}
        for f in self.store.failures():
            if f.get("run_index") is not None and f.get("cell"):
                failed.setdefault(f["cell"], set()).add(int(f["run_index"]))
        for cell in self.plan.cells:
            for idx in sorted(failed.get(cell.key, ())):
                sched.record_failure(cell.key, idx)
            for run in self.store.iter_runs(cell.rel_dir):
                if not outliers.misplaced(run.doc):
                    sched.record(cell.key, self._observation(run.doc, cell))
                    self.plan.items.append(RunItem(cell, run.doc.run_index))
                    outcome.resumed += 1
        if outcome.resumed:
            log.info("resuming: %d runs already done", outcome.resumed)

    def _run_adaptive(self, outcome: Outcome, bar: tqdm) -> None:
        """Rounds within model blocks until every config stops (bench/study/scheduler.py); a drift probe
        at the start, between rounds once probe_interval_s has passed, between models and at the end."""
        cells = {c.key: c for c in self.plan.cells}
        sched = scheduler.Scheduler([self._cell_spec(c) for c in cells.values()], seed=self.profile.workload.order_seed,
                                    mad_k=self.profile.outliers.mad_k, budget_s=self.profile.sampling.budget_s)
        self.plan.items = []  # from here on the run order as it happens: stored runs first, then each new one
        self._resume(sched, outcome)
        bar.update(outcome.resumed)
        t0 = time.perf_counter()
        self._probe("start")
        for block in sched.blocks:
            rounds = 0
            while True:
                if rounds and self._probe_due():
                    self._probe(f"{block} round {rounds + 1}")
                keys = sched.next_round(block, elapsed_s=time.perf_counter() - t0)
                if not keys:
                    break
                rounds += 1
                for key in keys:
                    self._adaptive_run(sched, cells[key], outcome, bar)
            self._log_stops(sched, [k for k, c in cells.items() if c.model.name == block])
            if block != sched.blocks[-1]:
                self._probe(f"after {block}")
        self._probe("end")

    def _adaptive_run(self, sched: scheduler.Scheduler, cell: Cell, outcome: Outcome, bar: tqdm) -> None:
        item = RunItem(cell, sched.next_index(cell.key))
        self.plan.items.append(item)  # the manifest's run order
        if bar.n >= bar.total:
            bar.total += 1
        started = time.perf_counter()
        doc = self._run_item(item, outcome)
        bar.set_postfix_str(f"{cell.suite}/{cell.lang}/{cell.model.slug}", refresh=False)
        bar.update(1)
        if doc is not None:
            obs = self._observation(doc, cell)
            obs.duration_s = time.perf_counter() - started  # what the next run of it will cost, switch included
            sched.record(cell.key, obs)
        elif cell.model.name in self._failed_models or cell.key in self._failed_cells:
            sched.stop(cell.key, scheduler.FAILED)
        elif cell.key in self._skipped_cells:
            sched.stop(cell.key, scheduler.SKIPPED)
        else:
            sched.record_failure(cell.key, item.run_index)

    def _log_stops(self, sched: scheduler.Scheduler, keys: list[str]) -> None:
        """One sampling.jsonl line per config of a finished block: its runs, why it stopped, and
        its precision metrics' intervals at that point."""
        for key in keys:
            st, probe = sched.status(key), sched.probe(key)
            self.store.append_jsonl(SAMPLING, {
                "cell": key, "reason": sched.stop_reason(key), "n": st.n, "clean": st.clean,
                "intervals": {m: (None if iv is None else {"mean": iv.mean, "low": iv.low, "high": iv.high,
                                                           "rel_half_width": iv.rel_half_width})
                              for m, iv in st.intervals.items()},
                **({"search": self._search_entry(sched, key, probe)} if probe else {})})

    def _search_entry(self, sched: scheduler.Scheduler, key: str, probe) -> dict:
        """A probed point as the search read it: its goodput interval, the verdict, and the level of
        that interval (each look's, Bonferroni over its looks, so the report can say which interval it shows)."""
        level, looks = sched.verdict_level(key)
        return {"n": probe.n, "goodput": probe.goodput, "low": probe.low, "high": probe.high, "verdict": probe.verdict,
                "target": self.profile.slo.goodput_target, "confidence": level, "looks": looks,
                "overall_confidence": self.profile.slo.confidence}

    def _probe_due(self) -> bool:
        return time.perf_counter() - self._last_probe >= self.profile.sampling.probe_interval_s

    def _run_item(self, item: RunItem, outcome: Outcome) -> RunDocument | None:
        """Run one item through its ladder and store it; the stored document, or None."""
        cell = item.cell
        if cell.model.name in self._failed_models or cell.key in self._failed_cells:
            outcome.skipped += 1
            return None
        if cell.lang == "rust" and self.rust_agent is None:
            outcome.skipped += 1
            if cell.key not in self._skipped_cells:
                self._skipped_cells.add(cell.key)
                note = f"Rust suite skipped for {cell.key}: {self.rust_reason}"
                outcome.notes.append(note)
                self.store.log_failure({"cell": cell.key, "suite": cell.suite, "lang": "rust",
                                        "model": cell.model.name, "error_kind": "skipped",
                                        "error": self.rust_reason, "fallback": ladder.Skip.RUST_SUITE})
                tqdm.write(note)
            return None
        try:
            doc = self._walk_ladder(item)
        except RequestError as exc:
            self._server_key = None  # a failed run may have left a server in a bad state: reload
            if cell.lang == "rust":
                self._stop_agent_containers()  # a timed-out agent's container outlives its killed client
            outcome.failed += 1
            if self._stops(exc):
                why = "retrying cannot fix it" if exc.cls == PERMANENT else "the server stayed unreachable"
                raise BenchError(f"the study stopped at {item.rel_dir}: {exc.kind}: {exc} ({why}); "
                                 f"finished runs are kept") from None
            if isinstance(exc, ladder.Exhausted):
                if cell.model.optional:
                    self._failed_models.add(cell.model.name)
                else:
                    self._failed_cells.add(cell.key)
                tqdm.write(f"no rung of the fallback ladder loads {cell.key} ({exc.kind}): "
                           f"{ladder.Skip.OPTIONAL_MODEL if cell.model.optional else ladder.Skip.CONFIG}")
            else:
                if not self._retry_pass and not self.plan.scheduled:  # scheduled: the next round tries again
                    self._retry.append(item)
                tqdm.write(f"run failed: {item.rel_dir} ({exc.kind}): {exc}")
            return None
        # the harness alone stamps the plan: an agent's document without it is never resumed
        doc = _with_blocks(doc, plan_fingerprint=self._fingerprints[cell.model.name])
        self.store.write_metrics(item.rel_dir, doc)
        outcome.done += 1
        outcome.downgraded += doc.requested_config.model_dump() != doc.effective_config.model_dump()
        return doc

    def _probe(self, label: str) -> None:
        """The drift guard's reference call set on the baseline model with the server defaults
        (bench/study/instrument.py), into probes.jsonl. A failed probe is noted, never fatal."""
        if not self.profile.instrument.drift_probes:
            return
        base, ep, wl = self.profile.baseline, self.endpoints[0], self.profile.workload
        options = {"num_predict": PROBE_TOKENS, "seed": wl.seed}
        if ep.api == "ollama" and self.threads is not None:
            options["num_thread"] = self.threads
        if wl.ignore_eos:
            options["ignore_eos"] = True
        self._server_key = None  # the probe leaves the baseline loaded with the server defaults
        self._restore_pinned_settings()  # every probe on the same settings, so drift is the host's
        self._last_probe = time.perf_counter()
        with self.timeline.event("probe", label=label):
            try:
                self.runtime.switch(base, {})
                t_start = time.time()
                records, plain = instrument.run_probe_pairs(self.clients[ep.name], base.name, self.workload,
                                                            f"{self.profile.study}/probe/{label}", options=options)
                t_mid = (t_start + time.time()) / 2  # the probe's time on the runs' clock (Unix)
            except RequestError as exc:
                tqdm.write(f"drift probe '{label}' failed ({exc.kind}): {exc}")
                self.store.append_jsonl(PROBES, {"label": label, "model": base.name, "error": str(exc)})
                return
        self.store.append_jsonl(PROBES, instrument.probe_entry(label, base.name, records, plain, t_mid))

    def _restore_pinned_settings(self) -> None:
        """Every instance back on the runtime's pinned settings (after the topology control or a
        swept value), so the probes measure what the first probe measured."""
        pinned = self.profile.runtime.pinned_settings
        with self.timeline.event("settings", cell="pinned") as event:
            event["changed"] = self.runtime.apply_settings({e.name: pinned for e in self.endpoints})
        if event["changed"]:
            self._server_key = None

    def _model_probes(self) -> None:
        """Cold start and answer sanity of each model of the plan, once per study (bench/study/probes.py)."""
        self._restore_pinned_settings()
        models = list({c.model.name: c.model for c in self.plan.cells}.values())
        probes.measure(self.runtime, self.clients, self.store, self.timeline, self.profile, self.workload, models,
                       self.threads)
        self._server_key = None  # the probes freed and switched models

    def _floors(self) -> None:
        """The client floors (bench/study/overhead.py), measured once per host and harness commit and
        cached, so every report has them; the harness-vs-engine ratio is the probes' (interleaved)."""
        with self.timeline.event("floors") as event:
            try:
                _, event["cached"] = overhead.cached_measure(self.loaded, self.runtime, self.store, engine=False)
            except (RequestError, BenchError) as exc:
                tqdm.write(f"client floors not measured: {exc}")
        self._server_key = None  # the ratio's calls switched models (llama.cpp: stopped the servers)

    def _run_retry_pass(self, outcome: Outcome) -> None:
        """One more try at each run that failed on a transient error past its per-call retries."""
        retry, self._retry = self._retry, []
        if not retry:
            return
        tqdm.write(f"retry pass: {len(retry)} failed run(s)")
        self._retry_pass = True
        for item in retry:
            done = outcome.done
            self._run_item(item, outcome)
            outcome.recovered += outcome.done - done


def run_matrix(loaded: LoadedProfile, plan: Plan, runtime: Runtime, store: Store, *,
               progress: bool = True) -> Outcome:
    needs_rust = any(c.lang == "rust" for c in plan.cells)
    agent, reason = rust.find_rust_agent(containerized=runtime.kind == "docker") if needs_rust else (None, "")
    runner = MatrixRunner(loaded, plan, runtime, store, progress=progress, rust_agent=agent, rust_reason=reason)
    return runner.run()
