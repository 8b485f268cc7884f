"""The fleet's driver (`invoke fleet`): connect to Ray, pick the hosts, survey them, refuse the ones
that differ, seed each host with what the head holds, run every host at once, and write fleet.json
and the fleet report. Every actor it starts is killed, and a local Ray it started is shut down, on
every way out (an error, a dead host, Ctrl-C)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from bench.config.plan import Plan, Shard, build_plan, shard_plan
from bench.config.profile import LoadedProfile, resolve_profile
from bench.core import fmt
from bench.core.errors import BenchError
from bench.core.store import Store, atomic_write_json, utc_now
from bench.fleet import report
from bench.fleet import shard as shard_mode
from bench.fleet.actors import Progress, ResultSink, host_study
from bench.fleet.agent import HostAgent
from bench.fleet.transfer import finished_runs, pack
from bench.report.compare import output_folder
from bench.report.markdown import write_report

HOST_RESOURCE = "tr116-host"  # a node that offers it is a fleet host (tests/fleet_cluster.py, the deploy files)
HOST_LABEL = "tr116.host"  # its name
FLEET_PREFIX = "fleet-"
FLEET_JSON = "fleet.json"
# How a host's death reaches the driver in Ray 2.60: its actor, its node, its worker, or the objects it held.
HOST_DIED = (RayActorError, NodeDiedError, WorkerCrashedError, ObjectLostError, OwnerDiedError, ActorUnavailableError)
SURVEY_TIMEOUT_S = 300  # hashing the GGUF files of a cold cache
STOP_TIMEOUT_S = 180  # the agent's: the bundle's own cleanup, then `invoke down`
POLL_S = 0.5
LOG_LINES = 8  # of a failed host's bundle log, under its summary line


@dataclass(frozen=True)
class Host:
    name: str
    node_id: str
    ip: str
    labels: dict = field(hash=False, compare=False)
    resources: dict = field(hash=False, compare=False)


@dataclass
class Job:
    loaded: LoadedProfile
    plan: Plan
    fleet_dir: Path
    runs: int | None
    shards: dict[str, Shard] | None = None  # shard mode: each host's share of every config's runs

    @property
    def study(self) -> str:
        return self.loaded.profile.study

    @property
    def planned(self) -> list[str]:
        return [str(item.rel_dir) for item in self.plan.items]

    def planned_for(self, host: str) -> list[str]:
        """The run folders a host must hold: all of the plan's, or its shard's."""
        return shard_mode.planned_runs(self.plan, self.shards[host]) if self.shards else self.planned


@dataclass
class FleetResult:
    fleet_dir: Path
    hosts: dict[str, dict]
    report: Path | None
    wall_s: float
    merged: Path | None = None  # shard mode: the merged study

    @property
    def ok(self) -> bool:
        return all(h["status"] == "ok" for h in self.hosts.values())


def hosts_of(nodes: list[dict]) -> list[Host]:
    """The alive nodes that offer the fleet's resource, or every alive node where none does (one
    machine, a local Ray), named by their tr116.host label (else their hostname)."""
    alive = [n for n in nodes if n.get("Alive")]
    tagged = [n for n in alive if HOST_RESOURCE in n.get("Resources", {})]
    return sorted((Host(name=(n.get("Labels") or {}).get(HOST_LABEL) or n["NodeManagerHostname"],
                        node_id=n["NodeID"], ip=n["NodeManagerAddress"], labels=n.get("Labels") or {},
                        resources=n.get("Resources", {})) for n in (tagged or alive)), key=lambda h: h.name)


def select_hosts(pool: list[Host], spec: str) -> list[Host]:
    """`all`; `label=value` (a node label); or a comma list of host names and resource names."""
    if spec in ("", "all"):
        chosen = pool
    elif "=" in spec:
        key, value = spec.split("=", 1)
        chosen = [h for h in pool if h.labels.get(key.strip()) == value.strip()]
    else:
        wanted = {w.strip() for w in spec.split(",") if w.strip()}
        chosen = [h for h in pool if h.name in wanted or wanted & set(h.resources)]
    if not chosen:
        raise BenchError(f"--hosts {spec!r} selects no host; the cluster's hosts: "
                         + (", ".join(f"{h.name} ({h.ip})" for h in pool) or "none alive"))
    names = [h.name for h in chosen]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BenchError(f"two nodes call themselves {', '.join(twice)}: give each host its own {HOST_LABEL} label")
    return chosen


def differences(reference: dict, other: dict) -> list[str]:
    """What makes `other` a different study from `reference`: the harness commit and each model's identity."""
    ref, name = reference["host"], other["host"]
    out = []
    if reference["harness_commit"] != other["harness_commit"]:
        out.append(f"harness commit {other['harness_commit'] or 'unknown'} on {name} vs "
                   f"{reference['harness_commit'] or 'unknown'} on {ref}")
    for model in sorted(set(reference["models"]) | set(other["models"])):
        a, b = reference["models"].get(model), other["models"].get(model)
        if a is None or b is None:
            out.append(f"model {model}: {'not in the profile' if b is None else 'in the profile'} on {name}")
            continue
        # a key only one host could read (a digest of a model the other has not pulled yet) is left to
        # compare, which checks the digests every host study records
        for key in sorted(set(a) & set(b)):
            if a[key] != b[key]:
                out.append(f"model {model}: {key} {b[key]} on {name} vs {a[key]} on {ref}")
    return out


@contextmanager
def ray_session(address: str | None):
    """Ray for the driver: the cluster at `address`, or a new single-node Ray of this machine, shut down
    (every process it started) on the way out. Ray binds a local node to the machine's own address
    (it turns 127.0.0.1 into that address itself), so nothing leaves the machine."""
    if ray.is_initialized():
        raise BenchError("Ray is already initialised in this process: the fleet starts and ends its own session")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class Actors:
    """The actors of one fleet run: sink and progress on the head, one agent per host."""

    def __init__(self, fleet_dir: Path):
        head = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.sink = ray.remote(ResultSink).options(num_cpus=0, scheduling_strategy=head).remote(str(fleet_dir))
        self.progress = ray.remote(Progress).options(num_cpus=0, scheduling_strategy=head).remote()
        self.agents: dict[str, ray.actor.ActorHandle] = {}

    def agent(self, host: Host):
        pinned = NodeAffinitySchedulingStrategy(host.node_id, soft=False)
        # two threads: `stop` must reach the agent while `run` is busy
        self.agents[host.name] = ray.remote(HostAgent).options(
            num_cpus=0, max_concurrency=2, scheduling_strategy=pinned, name=None,
            max_restarts=0).remote(host.name, host.ip, self.sink, self.progress)
        return self.agents[host.name]

    def stop(self) -> None:
        """Stop each host's bundle (its own cleanup), then kill every actor."""
        stops = {name: a.stop.remote() for name, a in self.agents.items()}
        for ref in stops.values():
            try:
                ray.get(ref, timeout=STOP_TIMEOUT_S)
            except (*HOST_DIED, GetTimeoutError, RayTaskError):
                pass  # a dead host has nothing left to stop
        for handle in [*self.agents.values(), self.sink, self.progress]:
            ray.kill(handle, no_restart=True)


def survey(actors: Actors, hosts: list[Host], profile_text: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Every host's survey; a host that cannot answer is returned with why."""
    refs = {h.name: actors.agent(h).survey.remote(profile_text) for h in hosts}
    done, failed = {}, {}
    for name, ref in refs.items():
        try:
            done[name] = ray.get(ref, timeout=SURVEY_TIMEOUT_S)
        except (*HOST_DIED, GetTimeoutError) as exc:
            failed[name] = f"no survey: {type(exc).__name__}: {str(exc)[:300]}"
        except RayTaskError as exc:
            failed[name] = f"survey failed: {exc.cause!r}"
    return done, failed


def refuse_mismatches(surveys: dict[str, dict], allow_mismatch: bool) -> dict[str, list[str]]:
    """The differences of every host from the first (by name); an error unless allow_mismatch."""
    names = sorted(surveys)
    found = {n: differences(surveys[names[0]], surveys[n]) for n in names[1:]}
    found = {n: d for n, d in found.items() if d}
    if found and not allow_mismatch:
        lines = [f"  - {n}: {d}" for n, diffs in found.items() for d in diffs]
        raise BenchError(f"refusing the fleet: these hosts would not run the same study as {names[0]}:\n"
                         + "\n".join(lines) + "\npass --allow-mismatch to run anyway (the fleet report lists them)")
    return found


def seed(job: Job, actors: Actors, names: list[str]) -> dict[str, int]:
    """Give each host's study the runs the head holds for it; returns how many each got."""
    held = {n: finished_runs(host_study(job.fleet_dir, n, job.study)) for n in names}
    refs = {n: actors.agents[n].seed.remote(
        job.study, pack(host_study(job.fleet_dir, n, job.study), list(held[n])) if held[n] else None)
        for n in names}
    for ref in refs.values():
        ray.get(ref, timeout=SURVEY_TIMEOUT_S)
    return {n: len(set(held[n]) & set(job.planned_for(n))) for n in names}


class Bars:
    """One bar per host on the head: runs done / planned, ETA (tqdm's, from this session's pace),
    and the config the host is on."""

    def __init__(self, seeded: dict[str, int], planned: dict[str, int], enabled: bool):
        width = max(map(len, seeded)) if seeded else 0
        self.bars = {n: tqdm(total=planned[n], initial=done, desc=n.ljust(width), unit="run", position=i,
                             disable=not enabled, leave=True, dynamic_ncols=True)
                     for i, (n, done) in enumerate(sorted(seeded.items()))}

    def refresh(self, snapshot: dict[str, dict]) -> None:
        for name, bar in self.bars.items():
            state = snapshot.get(name)
            if state is None:
                continue
            if state.get("done", 0) != bar.n:
                bar.update(state["done"] - bar.n)
            bar.set_postfix_str(state.get("config") or state.get("state", ""), refresh=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_hosts(job: Job, actors: Actors, names: list[str], seeded: dict[str, int],
              progress: bool) -> dict[str, dict]:
    """Every host's run at once; returns per host its result, or how it failed."""
    planned = {n: len(job.planned_for(n)) for n in names}
    for n in names:
        actors.progress.start.remote(n, planned[n], seeded[n])
    profile_text = job.loaded.path.read_text()
    pending = {actors.agents[n].run.remote(profile_text, job.study, job.runs,
                                           str(job.shards[n]) if job.shards else None): n for n in names}
    bars = Bars(seeded, planned, progress)
    outcomes: dict[str, dict] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                name = pending.pop(ref)
                outcomes[name] = _outcome(ref)
                actors.progress.finish.remote(name, "ok" if outcomes[name].get("rc") == 0 else "failed")
            bars.refresh(ray.get(actors.progress.snapshot.remote()))
    finally:
        bars.close()
    return outcomes


def _outcome(ref) -> dict:
    try:
        return ray.get(ref)
    except HOST_DIED as exc:
        return {"error": f"host died ({type(exc).__name__}): {str(exc).splitlines()[0][:300]}"}
    except RayTaskError as exc:
        return {"error": f"the agent failed: {exc.cause!r}"}


def host_entries(job: Job, outcomes: dict[str, dict], surveys: dict[str, dict], seeded: dict[str, int],
                 stats: dict[str, dict], mismatches: dict[str, list[str]]) -> dict[str, dict]:
    """fleet.json's per-host block: status, runs done / planned and the missing ones (from what the
    head holds), the bytes shipped, wall time, the survey, and any accepted mismatch."""
    out = {}
    for name in sorted(set(outcomes) | set(surveys)):
        result = outcomes.get(name, {"error": "not run (no survey)"})
        held = set(finished_runs(host_study(job.fleet_dir, name, job.study)))
        planned = job.planned_for(name) if not job.shards or name in job.shards else []  # [] : no survey
        missing = [r for r in planned if r not in held]
        shipped = stats.get(name, {})
        ok = result.get("rc") == 0 and not missing
        error = result.get("error") or (None if ok else f"the bundle exited with {result.get('rc')}" if
                                         result.get("rc") else f"{len(missing)} planned run(s) missing")
        out[name] = {"status": "ok" if ok else "failed", "error": error, "runs_planned": len(planned),
                     "runs_done": len(planned) - len(missing), "runs_seeded": seeded.get(name, 0),
                     "missing_runs": missing, "runs_shipped": shipped.get("runs_shipped", 0),
                     "bytes_shipped": shipped.get("run_bytes", 0) + shipped.get("study_file_bytes", 0),
                     "bytes_per_run": (shipped["run_bytes"] / shipped["runs_shipped"]) if shipped.get("runs_shipped")
                     else None, "wall_s": result.get("wall_s"), "study": str(host_study(job.fleet_dir, name, job.study)),
                     "mismatches": mismatches.get(name, []), "survey": surveys.get(name),
                     "log_tail": None if ok else result.get("log_tail")}
    return out


def summary_line(name: str, h: dict) -> str:
    missing = f", missing {len(h['missing_runs'])}" if h["missing_runs"] else ""
    per_run = f" ({fmt.bytes_(h['bytes_per_run'])}/run)" if h["bytes_per_run"] else ""
    wall = f", {h['wall_s']:.0f} s" if h["wall_s"] is not None else ""
    log = "".join(f"\n    {line}" for line in (h["log_tail"] or "").splitlines()[-LOG_LINES:])
    return (f"{name}: {h['status']}, {h['runs_done']}/{h['runs_planned']} runs ({h['runs_seeded']} held before)"
            f"{missing}, shipped {fmt.bytes_(h['bytes_shipped'])}{per_run}{wall}"
            + (f" — {h['error']}" if h["error"] else "") + log)


def run_fleet(profile: str, *, ray_address: str | None = None, hosts: str = "all", allow_mismatch: bool = False,
              out: str | None = None, runs: int | None = None, progress: bool = True,
              shard: bool = False) -> FleetResult:
    """The whole fleet: see the module docstring. Raises BenchError for a refused fleet. `shard`: one
    study spread over identical hosts and merged (bench/fleet/shard.py)."""
    loaded = resolve_profile(profile)
    plan = build_plan(loaded.profile, runs=runs)
    if shard:
        shard_plan(plan, Shard(0, 1))  # refuses an adaptive plan or a capacity search before Ray starts
    job = Job(loaded, plan, output_folder(FLEET_PREFIX + (out or loaded.profile.study)), runs)
    t0, started = time.time(), utc_now()
    with ray_session(ray_address):
        actors = Actors(job.fleet_dir)
        try:
            chosen = select_hosts(hosts_of(ray.nodes()), hosts)
            surveys, unreachable = survey(actors, chosen, loaded.path.read_text())
            mismatches = refuse_mismatches(surveys, allow_mismatch)
            if shard:
                _shard_hosts(job, surveys, unreachable)
            seeded = seed(job, actors, sorted(surveys))
            outcomes = run_hosts(job, actors, sorted(surveys), seeded, progress)
            outcomes |= {n: {"error": why} for n, why in unreachable.items()}
            stats = ray.get(actors.sink.stats.remote())
        finally:
            actors.stop()
    entries = host_entries(job, outcomes, surveys, seeded, stats, mismatches)
    doc = {"fleet": job.fleet_dir.name, "study": job.study, "profile": str(loaded.path), "started_at": started,
           "wall_s": round(time.time() - t0, 3), "ray_address": ray_address or "local", "allow_mismatch": allow_mismatch,
           "runs_planned_per_host": {n: h["runs_planned"] for n, h in entries.items()} if shard else len(job.planned),
           "shards": {n: str(s) for n, s in job.shards.items()} if job.shards else None, "hosts": entries}
    merged = _merge(job, entries, surveys) if shard else None
    doc["merged"] = merged and {"study": str(merged[0]), "report": str(merged[1])}
    atomic_write_json(job.fleet_dir / FLEET_JSON, doc)
    path = report.write(job.fleet_dir, job.study, entries, allow_mismatch, merged=merged and merged[0])
    return FleetResult(job.fleet_dir, entries, path, doc["wall_s"], merged=merged and merged[0])


def _shard_hosts(job: Job, surveys: dict[str, dict], unreachable: dict[str, str]) -> None:
    """Shard mode: every selected host answered and is identical (else refused); each gets its shard."""
    if unreachable:
        raise BenchError("refusing the sharded study: no survey from " + "; ".join(
            f"{n} ({why})" for n, why in sorted(unreachable.items())) + "; its shard of every config would be missing")
    shard_mode.refuse_unlike_hosts(surveys)
    job.shards = shard_mode.assign(list(surveys))


def _merge(job: Job, entries: dict[str, dict], surveys: dict[str, dict]) -> tuple[Path, Path] | None:
    """The merged study and its report, once every host holds its whole shard (else a rerun finishes it)."""
    if not all(h["status"] == "ok" for h in entries.values()):
        return None
    merged = shard_mode.merge(job.fleet_dir, job.study, job.shards, surveys)
    return merged, write_report(job.loaded, Store(job.study, root=merged.parent))
