"""invoke tasks: `invoke up bench report down` is the whole job.

Every task takes --profile (default `auto`: the full `tr116` study where Docker and an NVIDIA GPU
are usable, else the `smoke` study on the embedded CPU runtime). Expected failures print one
clear message and exit non-zero, without a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path

from invoke import Exit, task

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def _friendly(fn):
    """Turn the bundle's expected errors into a message and an exit code. SIGTERM is handled like
    Ctrl-C (bench/study/interrupt.py): the task's cleanup runs, and a second signal exits at once."""

    @functools.wraps(fn)
    def wrapper(c, *args, **kwargs):
        from bench.core.errors import BenchError
        from bench.study import interrupt

        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        with interrupt.graceful():
            try:
                return fn(c, *args, **kwargs)
            except BenchError as exc:
                raise Exit(f"error: {exc}", code=2) from None
            except KeyboardInterrupt:
                # The task's own cleanup has run (servers it started, agents, locks). Exit now:
                # a worker thread still inside a request must not hold the process up.
                print("interrupted: finished runs are saved; run the same command again to resume",
                      file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(interrupt.exit_code(interrupt.Interrupted.signum))

    return wrapper


def _load(profile: str):
    from bench.config.profile import resolve_profile

    loaded = resolve_profile(profile)
    print(f"profile: {loaded.profile.study} ({loaded.path}) — {loaded.reason}")
    return loaded


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _plan(loaded, models, langs, suites, runs):
    from bench.config.plan import build_plan
    from bench.core.errors import BenchError

    names = _split(models)
    if names:
        known = [m.name for m in loaded.profile.models]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BenchError(f"unknown model(s) {unknown} for profile {loaded.profile.study}; "
                             f"the profile's models are: {', '.join(known)}")
    plan = build_plan(loaded.profile, models=names, langs=_split(langs), suites=_split(suites),
                      runs=int(runs) if runs else None)
    if not plan.items:
        raise BenchError("the plan is empty: check --models, --langs and --suites against the profile")
    return plan


def _line_profile(argv: list[str]) -> str:
    """The --profile of the whole command line. invoke binds a flag to the task just before it, so
    in `invoke up bench report down --profile docker-smoke` only `down` would get it and the others
    would run `auto`. A --profile given once (or always the same) is therefore every task's
    default; a task's own --profile still wins, and different ones leave the default at auto."""
    given = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--profile", "-p")}
    given |= {a.split("=", 1)[1] for a in argv if a.startswith(("--profile=", "-p="))}
    return given.pop() if len(given) == 1 else "auto"


LINE_PROFILE = _line_profile(sys.argv[1:])
PROFILE_HELP = ("auto (default), smoke, docker-smoke, tr116, or a path to a profile YAML; given once, it "
                "applies to every task on the command line")
FILTER_HELP = {"profile": PROFILE_HELP, "runs": "runs per config (overrides the profile, e.g. 3)",
               "models": "comma-separated subset of the profile's models",
               "langs": "python,rust subset", "suites": "single,multi subset"}


@task(help={"profile": PROFILE_HELP})
@_friendly
def up(c, profile=LINE_PROFILE):
    """Bring up the two inference servers (and the Rust agent image where Docker is usable)."""
    from bench.host import locks
    from bench.runtimes import create_runtime

    loaded = _load(profile)
    runtime = create_runtime(loaded.profile)
    t0 = time.perf_counter()
    with locks.for_profile("up", loaded.profile):  # held while starting: a bench after it takes them
        runtime.up()
    for ep in runtime.endpoints():
        print(f"  endpoint {ep.name}: {ep.url} ({ep.api})")
    print(f"up: {runtime.kind} runtime ready in {time.perf_counter() - t0:.1f} s")


SHARD_HELP = ("K/H: run only host K's share of every config's runs, of H hosts (run r where (r - 1) mod H == K); "
              "`invoke fleet --shard` gives each host its own")


@task(help=FILTER_HELP | {"no_progress": "hide the progress bar", "shard": SHARD_HELP})
@_friendly
def bench(c, profile=LINE_PROFILE, runs=None, models=None, langs=None, suites=None, no_progress=False, shard=None):
    """Run the benchmark matrix (resumes an interrupted study; finished runs are kept)."""
    from bench.config.plan import Shard, shard_plan
    from bench.host import locks

    loaded = _load(profile)
    plan = _plan(loaded, models, langs, suites, runs)
    if shard:
        plan = shard_plan(plan, Shard.parse(shard))
    # the whole task, analysis included: a second bench (or a down) on this study or these ports
    # refuses at once instead of sharing the servers and stopping them under this one
    with locks.for_profile("bench", loaded.profile):
        _bench(loaded, plan, runs, models, langs, suites, no_progress)


def _bench(loaded, plan, runs, models, langs, suites, no_progress):
    from bench.core.store import Store
    from bench.runtimes import create_runtime
    from bench.study import manifest_writer as manifest

    runtime = create_runtime(loaded.profile)
    store = Store(loaded.profile.study)
    print(_bench_header(plan, store.root))
    started = manifest.utc_now()
    from bench.study.runner import run_matrix

    # Servers that `up` started stay up for the next task; servers this task had to start itself
    # are stopped when it ends, even on an error or Ctrl-C, so a lone `bench` leaves nothing behind.
    owns_servers = not runtime.is_running()
    try:
        outcome = run_matrix(loaded, plan, runtime, store, progress=not no_progress)
        manifest.write_manifest(loaded, plan, runtime, store, started_at=started,
                                overrides={"models": _split(models), "langs": _split(langs),
                                           "suites": _split(suites), "runs": int(runs) if runs else None},
                                learned_limits=outcome.learned_limits)
    finally:
        if owns_servers:
            runtime.down()
    print(f"bench: {outcome.done} runs done, {outcome.resumed} already there, "
          f"{outcome.failed} failed run(s) ({outcome.recovered} recovered by the retry pass), "
          f"{outcome.skipped} skipped" + (f" ({outcome.reruns} outlier reruns)" if outcome.reruns else ""))
    if outcome.ignored:
        print(f"  {outcome.ignored_text()}")
    if outcome.downgraded:
        print(f"  {outcome.downgraded} run(s) ran on a lower rung of the fallback ladder (metrics.json "
              f"effective_config; the report's downgrade table)")
    for note in outcome.notes:
        print(f"  note: {note}")
    if outcome.failed:
        print(f"  failures are listed in {store.root / 'failures.jsonl'}")
    # The study analysed once: the per-config summaries and the error gate (the study `validate`
    # checks, after the runner's retry pass) read the same results.
    from bench.analysis import tables as analysis
    from bench.report.summary import summarize_all
    from bench.report.validate import validate_study

    results = analysis.build(store, loaded.profile)
    summarize_all(store, plan.cells, results, loaded.profile.outliers.mad_k)
    precision = results.findings.get("precision") or {}
    if plan.adaptive and precision:
        per = ", ".join(f"{n} runs: {k}" for n, k in precision["runs_per_config"].items())
        why = ", ".join(f"{k} {v}" for k, v in precision["stop_reasons"].items())
        print(f"  sampling: {precision['runs']} runs in {precision['configs']} configs ({per} configs); stopped: {why}")
    check = validate_study(loaded, store, results, shard=plan.shard)
    if not check.ok:
        for problem in check.problems:
            print(f"  - {problem}")
        raise Exit(f"bench: {check.incomplete or 'the study has problems'} ({len(check.problems)} problem(s) "
                   f"listed above)", code=1)


@task(help={"profile": PROFILE_HELP})
@_friendly
def report(c, profile=LINE_PROFILE):
    """Write summaries, tables, plots, Technical_Report_116.md and its single-file .html from the stored results."""
    from bench.core.store import HTML_REPORT_NAME
    from bench.report.markdown import write_report

    loaded = _load(profile)
    path = write_report(loaded)
    print(f"report: {path}")
    print(f"report: {path.with_name(HTML_REPORT_NAME)}")


@task(help={"profile": PROFILE_HELP})
@_friendly
def down(c, profile=LINE_PROFILE):
    """Stop the inference servers and clean up (no process is left behind)."""
    from bench.host import locks
    from bench.runtimes import create_runtime

    loaded = _load(profile)
    runtime = create_runtime(loaded.profile)
    with locks.for_profile("down", loaded.profile):  # never the servers of a bench that runs
        runtime.down()
    print(f"down: {runtime.kind} runtime stopped")


@task(help={"profile": PROFILE_HELP, "images": "also remove the local images (scripts/build-images.sh remove)"})
@_friendly
def clean(c, profile=LINE_PROFILE, images=False):
    """Docker runtime: remove the model volume (and with --images the local images). Refuses while
    the containers run, so it never pulls them from under a study: `invoke down` first."""
    from bench.core.errors import BenchError
    from bench.host import locks
    from bench.runtimes import DockerRuntime, create_runtime

    loaded = _load(profile)
    runtime = create_runtime(loaded.profile)
    if not isinstance(runtime, DockerRuntime):
        raise BenchError(f"clean removes the docker runtime's volume and images; the {runtime.kind} runtime "
                         f"has neither")
    with locks.for_profile("clean", loaded.profile):
        removed = runtime.clean(images=images)
    for what in removed:
        print(f"clean: removed {what}")


@task(name="plan", help=FILTER_HELP)
@_friendly
def plan_(c, profile=LINE_PROFILE, runs=None, models=None, langs=None, suites=None):
    """Dry run: print the matrix, the run count and an ETA (adaptive: the expected runs); starts nothing."""
    import pandas as pd

    from bench.config.plan import estimate_seconds, expected_runs
    from bench.core.store import Store

    loaded = _load(profile)
    plan = _plan(loaded, models, langs, suites, runs)
    store = Store(loaded.profile.study)
    cv = _noise_hints(loaded.profile, store)
    rows = []
    for cell in plan.cells:
        done = sum(1 for r in store.iter_runs(cell.rel_dir)) if store.path(cell.rel_dir).is_dir() else 0
        rows.append({"suite": cell.suite, "lang": cell.lang, "model": cell.model.name, "config": cell.config_tag,
                     "runs": f"{cell.runs}–{cell.max_runs}" if cell.precision else cell.runs,
                     "expected": expected_runs(cell, cv.get(cell.key, cv.get(cell.suite, {}))), "done": done})
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\nruns: {plan.run_count} (single {plan.count('single')}, multi {plan.count('multi')}, "
          f"steps {plan.count('steps')}; "
          f"python {plan.count(lang='python')}, rust {plan.count(lang='rust')}) in {len(plan.cells)} configs")
    _print_search_runs(plan)
    eta = estimate_seconds(loaded.profile, plan)
    if not plan.adaptive:
        print(f"ETA: ~{eta / 60:.1f} min from the profile's speed hints (the progress bar refines it)")
        return
    from bench.config.plan import Plan, RunItem

    expected = [RunItem(r_cell, k) for r_cell, r in zip(plan.cells, rows) for k in range(1, r["expected"] + 1)]
    most = [RunItem(cell, k) for cell in plan.cells for k in range(1, cell.max_runs + 1)]
    exp_s = estimate_seconds(loaded.profile, Plan(plan.cells, expected))
    most_s = estimate_seconds(loaded.profile, Plan(plan.cells, most))
    budget = loaded.profile.sampling.budget_s
    print(f"adaptive: {plan.run_count} runs at the minimum (~{eta / 60:.1f} min), {len(expected)} expected "
          f"(~{exp_s / 60:.1f} min), {len(most)} at most (~{most_s / 60:.1f} min)"
          + (f"; the time budget stops extra runs at {budget / 60:.1f} min"
             + (" (not a capacity search's: it runs until each point's verdict is decided)"
                if any(c.search for c in plan.cells) else "") if budget else ""))
    print(f"  expected runs from the noise per config: {cv.get('source')}; times from the profile's speed hints")


def _search_runs(plan) -> dict | None:
    """The capacity search's runs (None without a search): per search (model, language, settings) the
    most probe points it can run times each point's most runs (`worst`), against stepping every agent
    count (`linear`); its fewest (`least`: N = 1 fails at its first stop); the plan's runs outside it."""
    from bench.study.capacity_search import worst_case_probes

    searches: dict[tuple, list] = {}
    for cell in plan.cells:
        if cell.search is not None:
            searches.setdefault((cell.model.name, cell.lang, cell.settings_tag), []).append(cell)
    if not searches:
        return None
    return {"searches": len(searches), "bounds": sorted({c[0].search.max_agents for c in searches.values()}),
            "worst": sum(worst_case_probes(c[0].search.max_agents) * max(x.max_runs for x in c)
                         for c in searches.values()),
            "linear": sum(x.max_runs for c in searches.values() for x in c),
            "least": sum(min(x.runs for x in c) for c in searches.values()),
            "other_runs": sum(1 for i in plan.items if i.cell.search is None),
            "other_configs": sum(1 for c in plan.cells if c.search is None)}


def _search_text(runs: dict) -> str:
    return (f"{runs['searches']} search(es) over 1..{'/'.join(map(str, runs['bounds']))} agents, at most "
            f"{runs['worst']} runs in the worst case (worst-case probe points × max runs per point)")


def _print_search_runs(plan) -> None:
    """The capacity search's worst case against stepping every agent count (_search_runs)."""
    runs = _search_runs(plan)
    if runs:
        print(f"capacity search: {_search_text(runs)}; stepping every agent count would take up to {runs['linear']}")


def _bench_header(plan, root) -> str:
    """The line `bench` starts with: the plan's runs (an adaptive plan's: its minimum), and a capacity
    search counted as `plan` counts it (its worst case), not as every agent count's runs."""
    least = " at the minimum" if plan.adaptive else ""
    runs = _search_runs(plan)
    if runs is None:
        return f"bench: {plan.run_count} runs{least} in {len(plan.cells)} configs → {root}"
    others = (f"{runs['other_runs']} runs{least} in {runs['other_configs']} configs, plus "
              if runs["other_configs"] else "")
    return f"bench: {others}the capacity search: {_search_text(runs)}, at least {runs['least']} → {root}"


def _noise_hints(profile, store) -> dict:
    """Per config (and per suite) the CV % of each precision metric: measured where the study
    already has runs, else the profile's `eta.cv_pct` hints."""
    from bench.core import stats

    out: dict = {"source": "the profile's eta.cv_pct hints"}
    for suite in ("single", "multi", "steps"):
        out[suite] = dict(profile.eta.cv_pct)
    measured = 0
    for run_dir in {r.cell_key: r for r in store.iter_runs()}.keys() if store.root.is_dir() else ():
        docs = [r.doc.metrics.model_dump() for r in store.iter_runs(run_dir)]
        cvs = {k: stats.describe([d.get(k) for d in docs if isinstance(d.get(k), (int, float))]).get("cv_pct")
               for k in docs[0] if isinstance(docs[0].get(k), (int, float))} if len(docs) > 1 else {}
        if cvs:
            out[run_dir] = {k: v for k, v in cvs.items() if v is not None}
            measured += 1
    if measured:
        out["source"] = f"measured in {measured} config(s) of the stored study, hints elsewhere"
    return out


@task(name="build-rust")
@_friendly
def build_rust(c):
    """Build the Rust agents: the Docker image where an engine is usable, else the native binary."""
    from bench.clients import rust
    from bench.host.machine import docker_engine

    engine, _ = docker_engine()
    if engine is not None:
        c.run(f"docker build -f docker/Dockerfile.rust-agents -t {rust.IMAGE} rust-agents", pty=False)
        print(f"build-rust: image {rust.IMAGE}")
    else:
        path = rust.build_native()
        print(f"build-rust: no Docker engine; native binary {path}")


@task(name="bench-clients", help={"profile": PROFILE_HELP, "requests": "requests per client and protocol",
                                  "tokens": "tokens per request (unpaced)", "pace": "paced rate for the skew check"})
@_friendly
def bench_clients(c, profile=LINE_PROFILE, requests=5, tokens=20000, pace=20000):
    """Measure the clients' own overhead (tok/s, CPU µs/token, skew) and harness vs the engine's own rate."""
    from bench.core.store import CLIENT_OVERHEAD_NAME, Store, atomic_write_json
    from bench.runtimes import create_runtime
    from bench.study import overhead

    loaded = _load(profile)
    store = Store(loaded.profile.study)
    result = overhead.measure(loaded, create_runtime(loaded.profile), store.root.parent, requests_n=int(requests),
                              num_predict=int(tokens), pace_tps=float(pace))
    atomic_write_json(store.root / CLIENT_OVERHEAD_NAME, result)
    _print_overhead(result)
    print(f"bench-clients: {store.root / CLIENT_OVERHEAD_NAME}")


def _print_overhead(result: dict) -> None:
    import pandas as pd

    cols = ["client", "api", "tokens_per_s", "cpu_us_per_token", "paced_tps", "paced_client_tps", "skew_pct"]
    print(pd.DataFrame(result["client_floors"])[cols].to_markdown(index=False, floatfmt=",.2f"))
    if result["harness_vs_engine"]:
        print(pd.DataFrame(result["harness_vs_engine"]).to_markdown(index=False, floatfmt=".3f"))
    else:
        print(f"harness vs engine: not measured ({result.get('harness_vs_engine_missing')})")


@task(help={"fast": "skip the tests that need an engine, Docker or Ray (markers llama, ollama, docker, fleet)"})
def test(c, fast=False):
    """Run the test suite: pytest (real Ollama, llama-server, Docker and Ray fleet tests included) and cargo test."""
    marker = ' -m "not llama and not ollama and not docker and not fleet"' if fast else ""
    c.run(f"{sys.executable} -m pytest -q{marker}", pty=False)
    if os.path.isdir("rust-agents"):
        c.run("cd rust-agents && cargo test --release --locked -q", pty=False)


@task(help={"profile": PROFILE_HELP, "shard": "K/H: the study holds only that shard's runs (`invoke bench --shard`)"})
@_friendly
def validate(c, profile=LINE_PROFILE, shard=None):
    """Check a study: schema of every metrics.json, run counts per config, summaries; lists outlier flags."""
    from bench.config.plan import Shard
    from bench.report.validate import validate_study

    result = validate_study(_load(profile), shard=Shard.parse(shard) if shard else None)
    print(result.render())
    result.raise_for_problems()


@task(positional=["study_a", "study_b"], iterable=["also"],
      help={"study_a": "the reference study: a name under the results root or a path to a study folder",
            "study_b": "the study compared with it (name or path)",
            "also": "a further study to compare (repeat the flag for more)",
            "allow_mismatch": "compare even when a model digest or a setting differs (the report lists them)",
            "out": "the comparison folder's name under the results root (default compare-<UTC time>)"})
@_friendly
def compare(c, study_a, study_b, also=None, allow_mismatch=False, out=None):
    """Compare studies across hosts: matched configs, differences with bootstrap CIs, η² of the host."""
    from bench.report.compare import compare as run_comparison

    result = run_comparison([study_a, study_b, *(also or [])], allow_mismatch=allow_mismatch, out=out)
    print(f"compare: {result.matched} matched config(s), {len(result.only_in)} in one study only"
          + (f", {len(result.mismatches)} accepted mismatch(es)" if result.mismatches else ""))
    print(f"  {result.markdown} (and the CSV tables beside it)")


@task(help={"manifest": "path to a study's manifest.json",
            "allow_mismatch": "rerun even when a model digest or the runtime differs from the manifest",
            "no_progress": "hide the progress bar"})
@_friendly
def reproduce(c, manifest, allow_mismatch=False, no_progress=False):
    """Rerun a study from its manifest into a new study folder and compare old vs new."""
    from bench.host import locks
    from bench.reproduce import new_study_name
    from bench.reproduce import reproduce as run_reproduction

    old_study, ports = locks.manifest_targets(Path(manifest))
    study = new_study_name(old_study) if old_study else None
    with locks.holding("reproduce", study, ports):
        result = run_reproduction(Path(manifest), allow_mismatch=allow_mismatch, progress=not no_progress,
                                  study=study)
    print(f"reproduce: {result.study_root}")
    print(f"  {result.within} of {result.compared} config/metric means lie within the original 95 % CI")
    print(f"  comparison: {result.markdown} (and {result.json.name})")


@task(help={"profile": PROFILE_HELP,
            "ray_address": "the Ray cluster (HEAD:PORT); default: a local single-node Ray, started and stopped here",
            "hosts": "all (default), label=value (a node label), or a comma list of host or resource names",
            "allow_mismatch": "run hosts whose harness commit or model identities differ (the report lists them)",
            "out": "the fleet folder's name under the results root: fleet-<out> (default fleet-<study>)",
            "runs": "runs per config (overrides the profile)", "no_progress": "hide the per-host progress bars",
            "shard": "one study's runs spread over identical hosts (GPU model, driver, engine version), every config "
                     "on every host, merged into one study with the host per run; needs fixed runs (--runs N)"})
@_friendly
def fleet(c, profile=LINE_PROFILE, ray_address=None, hosts="all", allow_mismatch=False, out=None, runs=None,
          no_progress=False, shard=False):
    """Run the profile's study on every selected host of a Ray cluster, one study per host, merged by host
    (bench/fleet/); a rerun of the same command runs only the runs the head does not hold."""
    from bench.fleet.driver import run_fleet, summary_line

    result = run_fleet(profile, ray_address=ray_address, hosts=hosts, allow_mismatch=allow_mismatch, out=out,
                       runs=int(runs) if runs else None, progress=not no_progress, shard=shard)
    for name, host in result.hosts.items():
        print(summary_line(name, host))
    print(f"fleet: {result.fleet_dir / 'fleet.json'} in {result.wall_s:.0f} s")
    if result.report:
        print(f"fleet: {result.report}")
    if not result.ok:
        raise Exit(f"fleet: {sum(h['status'] != 'ok' for h in result.hosts.values())} host(s) failed; run the same "
                   f"command again to finish their missing runs", code=1)
