"""Runs a plan: switches the runtime to each config, warms it up, runs the agents, stores records.

- Warmup calls follow every server (re)start or reload and are never counted.
- A run whose metrics.json already exists and validates is skipped, so an interrupted study
  resumes where it stopped.
- Load failures (OOM, crash, load timeout) are retried with tenacity after freeing the servers;
  when they persist, the attempt is written to failures.jsonl with the fallback taken (skip the
  config, or the model when it is optional) and the study goes on.
- A dead endpoint or an unknown model stops the study with a clear message; finished runs stay.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tqdm import tqdm

from bench import agents, gpu, power, rust
from bench.agents import AgentTarget
from bench.clients import StreamingClient
from bench.errors import RequestError
from bench.outliers import plan_outlier_reruns
from bench.placement import placement_issues
from bench.plan import AGENTS_MULTI, Cell, Plan, RunItem
from bench.profile import LoadedProfile
from bench.runtimes import Runtime
from bench.store import Store, schema_errors
from bench.summary import summarize_all
from bench.workload import load_workload

log = logging.getLogger("bench")

LOAD_FAILURES = {"oom", "crash", "loading"}
# Failures that no amount of retrying or skipping fixes: stop and tell the user.
FATAL = {"connection", "not_found"}


@dataclass
class Outcome:
    done: int = 0
    resumed: int = 0
    failed: int = 0
    skipped: int = 0
    reruns: int = 0
    notes: list[str] = field(default_factory=list)


class MatrixRunner:
    def __init__(self, loaded: LoadedProfile, plan: Plan, runtime: Runtime, store: Store, *,
                 progress: bool = True, rust_agent: rust.RustAgent | None = None, rust_reason: str = ""):
        self.profile = loaded.profile
        self.plan = plan
        self.runtime = runtime
        self.store = store
        self.progress = progress
        self.rust_agent, self.rust_reason = rust_agent, rust_reason
        self.workload = load_workload()
        self.endpoints = runtime.endpoints()
        self.clients = {e.name: StreamingClient(e.url, e.api, self.profile.workload.timeout_s)
                        for e in self.endpoints}
        self._server_key: tuple | None = None
        self._failed_cells: set[str] = set()
        self._failed_models: set[str] = set()
        self._skipped_cells: set[str] = set()
        self._order_rng = random.Random(self.profile.workload.order_seed)
        self.threads = runtime.threads
        self.gpu_present = gpu.nvidia_gpu_count()[0] > 0
        self._after_load: dict = {}
        self.power = power.PowerMonitor(store)

    # ---- runtime switching -------------------------------------------------------------

    def _ensure_servers(self, cell: Cell) -> None:
        names = [e.name for e in self.endpoints]
        servers = cell.server_configs(names)
        key = (cell.model.name, tuple(sorted((k, v.model_dump_json() if v else None) for k, v in servers.items())))
        if key == self._server_key:
            return

        def free_memory(state) -> None:
            log.warning("load failed (%s); freeing the servers before attempt %d",
                        state.outcome.exception(), state.attempt_number + 1)
            self.runtime.down()
            self._server_key = None

        resolved = {k: v for k, v in servers.items() if v is not None}
        for attempt in Retrying(retry=retry_if_exception(lambda e: isinstance(e, RequestError)
                                                         and e.kind in LOAD_FAILURES),
                                stop=stop_after_attempt(2), wait=wait_exponential(multiplier=1, max=10),
                                before_sleep=free_memory, reraise=True):
            with attempt:
                self.runtime.switch(cell.model, resolved)
        self._server_key = key
        self._warmup(cell)
        self._after_load = self.runtime.placement(cell.model)
        self.power.take_idle_baseline(cell)  # servers loaded and warm, no request (GPU hosts)

    def _warmup(self, cell: Cell) -> None:
        """Warm every endpoint the cell uses with its own options; nothing is recorded."""
        n = self.profile.workload.warmup_requests
        for target in self._targets(cell).values():
            agents.warmup(target, self.workload, n, f"{self.profile.study}/{cell.key}")

    def _targets(self, cell: Cell) -> dict[str, AgentTarget]:
        wl = self.profile.workload
        cfgs = cell.agent_configs
        pairs = [("single", self.endpoints[0])] if cell.suite == "single" else zip(AGENTS_MULTI, self.endpoints)
        # Ollama takes its CPU threads per request; llama-server got them as a launch flag.
        return {agent: AgentTarget(agent, self.clients[ep.name], cell.model.name,
                                   agents.request_options(wl, cfgs[agent],
                                                          self.threads if ep.api == "ollama" else None))
                for agent, ep in pairs}

    def _run_key(self, item: RunItem) -> str:
        return f"{self.profile.study}/{item.rel_dir}"

    def _placement(self, item: RunItem) -> dict:
        """What the engine reported after the load and now, and how it differs from the config."""
        cell = item.cell
        names = [e.name for e in self.endpoints]
        defaults = self.profile.runtime.server_defaults
        expected = {ep: cfg or defaults for ep, cfg in cell.server_configs(names).items()}
        end = self.runtime.placement(cell.model)
        block_count = None
        if self.gpu_present:
            block_count = self.runtime.model_identity(cell.model).get("block_count")
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

    def _run_python(self, item: RunItem) -> dict:
        cell, wl = item.cell, self.profile.workload
        targets = self._targets(cell)
        extra = None
        if cell.suite == "single":
            started, records, run_metrics = agents.run_single(
                targets["single"], self.workload, self._run_key(item), attempts=wl.retries,
                cold_load_ms=wl.cold_load_ms)
        else:
            phases, alone = self._orders()
            th = self.profile.multi.contention
            started, records, run_metrics = agents.run_multi(
                targets, self.workload, self._run_key(item), phase_order=phases, alone_order=alone, attempts=wl.retries,
                cold_load_ms=wl.cold_load_ms, min_tps_ratio=th.min_tps_ratio,
                max_ttft_inflation=th.max_ttft_inflation)
            extra = {"phase_order": phases}
        return agents.base_document(study=self.profile.study, suite=cell.suite, model=self._model_doc(cell),
                                    config=self._config_doc(cell), run_index=item.run_index,
                                    started_at=started, workload=self.workload, records=records,
                                    run_metrics=run_metrics, extra_workload=extra)

    def _run_rust(self, item: RunItem) -> dict:
        cell, wl = item.cell, self.profile.workload
        targets = self._targets(cell)
        phases, alone = self._orders() if cell.suite == "multi" else (None, None)
        job = rust.job_document(
            suite=cell.suite, study=self.profile.study, run_key=self._run_key(item), run_index=item.run_index,
            model=self._model_doc(cell),
            config=self._config_doc(cell),
            agents={name: {"endpoint": t.client.base_url, "api": t.client.api, "model": t.model,
                           "options": t.options} for name, t in targets.items()},
            timeout_s=wl.timeout_s, cold_load_ms=wl.cold_load_ms, retries=wl.retries,
            contention=self.profile.multi.contention.model_dump(), phase_order=phases, alone_order=alone)
        out = self.store.metrics_path(item.rel_dir)
        # The agent retries each call itself, as the Python agents do; a failure here is final.
        rust.run_job(self.rust_agent, job, out, self.store.root.parent, timeout_s=wl.timeout_s * 6 * wl.retries)
        try:
            doc = json.loads(out.read_text())
            errors = schema_errors(doc)
        except (OSError, ValueError) as exc:
            errors = [f"unreadable: {exc}"]
        if errors:
            out.unlink(missing_ok=True)
            raise RequestError("malformed_stream", "Rust metrics.json failed the schema: " + "; ".join(errors[:3]))
        return doc

    # ---- the matrix --------------------------------------------------------------------

    def _log_failure(self, item: RunItem, exc: RequestError, fallback: str) -> None:
        cell = item.cell
        with gpu.PowerSampler() as sampler:  # one reading of VRAM in use at the failure (GPU hosts)
            pass
        vram = sampler.peak_vram_bytes()
        self.store.log_failure({
            "cell": cell.key, "run_index": item.run_index, "suite": cell.suite, "lang": cell.lang,
            "model": cell.model.name, "scenario": cell.scenario,
            "config": self._config_doc(cell), "error_kind": exc.kind, "error": str(exc),
            "observed_vram_used_bytes": vram, "fallback": fallback,
            "evidence": self.runtime.failure_evidence(),
        })

    def run(self) -> Outcome:
        outcome = Outcome()
        todo = []
        for item in self.plan.items:
            if self.store.load_valid(item.rel_dir) is not None:
                outcome.resumed += 1
            else:
                todo.append(item)
        if outcome.resumed:
            log.info("resuming: %d of %d runs already done", outcome.resumed, self.plan.run_count)
        bar = tqdm(total=self.plan.run_count, initial=outcome.resumed, unit="run", disable=not self.progress,
                   desc=self.profile.study, dynamic_ncols=True)
        try:
            for item in todo:
                self._run_item(item, outcome)
                bar.set_postfix_str(f"{item.cell.suite}/{item.cell.lang}/{item.cell.model.slug}", refresh=False)
                bar.update(1)
            # The spec's outlier rule: configs with flagged runs get extra runs, within the
            # profile's budget; every run is kept (bench/outliers.py).
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
        finally:
            bar.close()
        summarize_all(self.store, self.plan.cells, self.profile.outliers.mad_k)
        return outcome

    def _run_item(self, item: RunItem, outcome: Outcome) -> None:
        cell = item.cell
        if cell.model.name in self._failed_models or cell.key in self._failed_cells:
            outcome.skipped += 1
            return
        if cell.lang == "rust" and self.rust_agent is None:
            outcome.skipped += 1
            if cell.key not in self._skipped_cells:
                self._skipped_cells.add(cell.key)
                note = f"Rust suite skipped for {cell.key}: {self.rust_reason}"
                outcome.notes.append(note)
                self.store.log_failure({"cell": cell.key, "suite": cell.suite, "lang": "rust",
                                        "model": cell.model.name, "error_kind": "skipped",
                                        "error": self.rust_reason, "fallback": "Rust suite skipped"})
                tqdm.write(note)
            return
        try:
            self._ensure_servers(cell)
        except RequestError as exc:
            if exc.kind in FATAL:
                raise
            fallback = ("optional model: skipped" if cell.model.optional else "config skipped")
            self._log_failure(item, exc, fallback)
            outcome.failed += 1
            if cell.model.optional:
                self._failed_models.add(cell.model.name)
            else:
                self._failed_cells.add(cell.key)
            self._server_key = None
            tqdm.write(f"load failed for {cell.key} ({exc.kind}): {fallback}")
            return
        try:
            with self.power.measure() as window:  # without NVML: a block of nulls with the reason
                doc = self._run_python(item) if cell.lang == "python" else self._run_rust(item)
            doc["power"] = self.power.block(window, item, doc)
            doc["run_key"] = self._run_key(item)
            doc["placement"] = self._placement(item)
            self.store.write_metrics(item.rel_dir, doc)
            outcome.done += 1
        except RequestError as exc:
            if exc.kind in FATAL:
                raise
            self._log_failure(item, exc, "run not counted; rerun the study to retry it")
            outcome.failed += 1
            self._server_key = None  # a failed run may have left a server in a bad state: reload
            tqdm.write(f"run failed: {item.rel_dir} ({exc.kind}): {exc}")


def run_matrix(loaded: LoadedProfile, plan: Plan, runtime: Runtime, store: Store, *,
               progress: bool = True) -> Outcome:
    needs_rust = any(c.lang == "rust" for c in plan.cells)
    agent, reason = rust.find_rust_agent() if needs_rust else (None, "")
    runner = MatrixRunner(loaded, plan, runtime, store, progress=progress, rust_agent=agent, rust_reason=reason)
    return runner.run()
