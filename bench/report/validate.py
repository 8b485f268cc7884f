"""`invoke validate`: is a study complete and well-formed? Exits non-zero with the list of problems.

Checks, in order:
- every metrics.json parses, validates against the JSON Schema, and sits in the folder its
  contents name (suite, language, model, run index, study);
- every config of the plan has its runs. The plan is rebuilt from the manifest's resolved profile
  and the plan overrides of each recorded `bench` call (the profile's full plan without a
  manifest). A missing run is a problem unless failures.jsonl records a deliberate skip of its
  model or suite (an optional model no rung of the fallback ladder loaded, a skipped Rust suite):
  those are warnings. A config of a required model that no rung loaded is a problem. A config of a
  capacity search that the search never asked for (sampling.jsonl: not probed by the search) was
  planned so the plan stays fixed, and deliberately not run: its runs are skipped, not missing;
- runs beyond the plan are outlier reruns, at most profile.outliers.max_extra_runs per config;
- every config with runs has a non-empty summary.json and summary.md that count the same runs;
- the outlier flags (|x − median| > k × MAD) are listed, never treated as problems.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.analysis.probe_tables import coldstart_table
from bench.analysis.tables import Results, cell_flags, load_tables
from bench.config.ladder import Skip
from bench.config.manifest_plans import planned_cells, profile_from_manifest
from bench.config.plan import NOT_PROBED, Cell, Shard
from bench.config.profile import LoadedProfile, Profile
from bench.core import metrics
from bench.core.errors import BenchError
from bench.core.manifest import load_manifest
from bench.core.store import COLDSTART, MANIFEST_NAME, SAMPLING, SANITY, TIMELINE, Store

# Fallbacks that skip a model or a suite on purpose (bench.study.runner): its runs are accounted for.
DELIBERATE_SKIPS = (Skip.OPTIONAL_MODEL, Skip.RUST_SUITE)


@dataclass
class Validation:
    study_root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    metrics_files: int = 0
    configs: int = 0
    runs_planned: int = 0
    runs_missing: int = 0  # absent and not accounted for by a deliberate skip
    runs_skipped: int = 0  # absent, accounted for

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def incomplete(self) -> str | None:
        """The report's and `invoke bench`'s one-line verdict when planned runs are missing."""
        if not self.runs_missing:
            return None
        return f"incomplete: {self.runs_missing} of {self.runs_planned} planned runs missing"

    def render(self) -> str:
        lines = [f"validate: {self.study_root}: {self.metrics_files} metrics.json file(s), {self.configs} planned "
                 f"config(s), {self.runs_planned} planned run(s): {self.runs_missing} missing, "
                 f"{self.runs_skipped} skipped on purpose"]
        for title, items in (("outlier flags (kept, listed for review)", self.flags), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  - {i}" for i in items]
        lines.append(f"{len(self.problems)} problem(s)" if self.problems else "OK: no problems")
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise BenchError(f"study {self.study_root} failed validation with {len(self.problems)} problem(s):\n"
                             + "\n".join(f"  - {p}" for p in self.problems))


def _check_metrics_files(store: Store, v: Validation) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Parse and schema-check every metrics.json; returns the valid and the invalid run indices
    per cell key (an invalid file is reported here, not again as a missing run)."""
    valid: dict[str, set[int]] = {}
    invalid: dict[str, set[int]] = {}
    for run in store.iter_runs(valid_only=False):
        v.metrics_files += 1
        rel = run.rel_dir / run.path.name
        bad = invalid.setdefault(run.cell_key, set())
        if run.doc is None:
            what = run.problems[0] if run.problems[0].startswith("not valid JSON") else \
                "does not match the schema: " + "; ".join(run.problems[:3]) + \
                (f" (+{len(run.problems) - 3} more)" if len(run.problems) > 3 else "")
            v.problems.append(f"{rel}: {what}")
            bad.add(run.folder_index)
            continue
        doc = run.doc
        expected = {**run.folder_names, "study": store.root.name}
        found = {"suite": doc.suite, "lang": doc.lang, "model slug": doc.model.slug,
                 "run": f"run_{doc.run_index}", "study": doc.study}
        wrong = [f"{k} is {found[k]!r}, the path says {expected[k]!r}" for k in expected if found[k] != expected[k]]
        if wrong:
            v.problems.append(f"{rel}: misplaced record: " + "; ".join(wrong))
            bad.add(run.folder_index)
            continue
        valid.setdefault(run.cell_key, set()).add(doc.run_index)
    return valid, {k: i for k, i in invalid.items() if i}


def _skip_reason(cell: Cell, failures: list[dict]) -> str | None:
    for f in failures:
        same_cell = f.get("cell") == cell.key
        same_model = f.get("model") == cell.model.name and f.get("fallback") == Skip.OPTIONAL_MODEL
        if (same_cell or same_model) and f.get("fallback") in DELIBERATE_SKIPS:
            return f"{f.get('fallback')} ({f.get('error_kind')}: {str(f.get('error', '')).splitlines()[0][:120]})"
    return None


def _expected(cell: Cell, shard: Shard | None) -> list[int]:
    """The run indices a fixed config's study must hold: all of them, or its shard's."""
    return [k for k in range(1, cell.runs + 1) if shard is None or shard.holds(k)]


def _check_counts(cells: list[Cell], valid: dict[str, set[int]], invalid: dict[str, set[int]],
                  failures: list[dict], profile: Profile, v: Validation, not_probed: set[str] = frozenset(),
                  shard: Shard | None = None) -> None:
    # the last failure of each run; a config no rung loaded accounts for its runs never tried
    failed_runs = {(f.get("cell"), f.get("run_index")): f for f in failures if f.get("run_index") is not None}
    no_rung = {f.get("cell"): f for f in failures if f.get("fallback") == Skip.CONFIG}
    for cell in cells:
        v.runs_planned += len(_expected(cell, shard)) if cell.precision is None else cell.runs
        have = valid.get(cell.key, set())
        if cell.search is not None and cell.key in not_probed and not have:
            v.runs_skipped += cell.runs  # the capacity search did not need this agent count
            continue
        if cell.precision is not None:
            _check_adaptive(cell, have, failures, v)
            continue
        missing = [k for k in _expected(cell, shard) if k not in have and k not in invalid.get(cell.key, ())]
        v.runs_missing += sum(1 for k in invalid.get(cell.key, ()) if k is not None and k <= cell.runs)
        if missing:
            reason = _skip_reason(cell, failures)
            if reason:
                v.runs_skipped += len(missing)
                v.warnings.append(f"{cell.key}: {len(missing)} of {cell.runs} runs absent, accounted for: {reason}")
            else:
                v.runs_missing += len(missing)
                for k in missing:
                    failure = failed_runs.get((cell.key, k)) or no_rung.get(cell.key)
                    why = ""
                    if failure and failure.get("fallback") == Skip.CONFIG:
                        why = (f"; no rung of the fallback ladder loaded its config ({failure.get('error_kind')}), "
                               f"see failures.jsonl")
                    elif failure:
                        why = f"; it failed ({failure.get('error_kind')}): rerun `invoke bench` to retry it"
                    v.problems.append(f"missing run: {cell.rel_dir / f'run_{k}' / 'metrics.json'} (the config "
                                      f"expects {cell.runs} runs, {len(have)} valid found){why}")
        # Runs past the plan are outlier reruns (bench.study.outliers); a rerun can itself clear the flag
        # that caused it, so only the budget is checked.
        extra = sorted(k for k in have if k > cell.runs)
        if len(extra) > profile.outliers.max_extra_runs:
            v.problems.append(f"{cell.key}: {len(extra)} runs beyond the plan's {cell.runs} ({extra}); outlier "
                              f"reruns allow at most {profile.outliers.max_extra_runs}")
    planned = {c.key for c in cells}
    for key in sorted(set(valid) - planned):
        v.warnings.append(f"{key}: {len(valid[key])} run(s) of a config that is not in the plan")


def _check_adaptive(cell: Cell, have: set[int], failures: list[dict], v: Validation) -> None:
    """An adaptive config (bench/study/scheduler.py): at least min_runs valid runs, at most max_runs; its
    run indices may skip the ones failed attempts used up."""
    short = max(0, cell.runs - len(have))
    if short:
        reason = _skip_reason(cell, failures)
        if reason:
            v.runs_skipped += short
            v.warnings.append(f"{cell.key}: {short} of its {cell.runs} minimum runs absent, accounted for: {reason}")
        else:
            v.runs_missing += short
            v.problems.append(f"{cell.key}: {len(have)} valid run(s), the config needs at least {cell.runs} "
                              f"(precision.min_runs): rerun `invoke bench` to complete it")
    if len(have) > cell.max_runs:
        v.problems.append(f"{cell.key}: {len(have)} runs, more than precision.max_runs {cell.max_runs}")


def _check_summaries(store: Store, cells: list[Cell], valid: dict[str, set[int]], incomplete: set[str],
                     v: Validation) -> None:
    for cell in cells:
        n = len(valid.get(cell.key, ()))
        if n == 0:
            continue
        folder = store.path(cell.rel_dir)
        md, js = folder / "summary.md", folder / "summary.json"
        if not md.is_file() or not md.read_text().strip():
            v.problems.append(f"{cell.rel_dir / 'summary.md'}: missing or empty (run `invoke report`)")
        if not js.is_file():
            v.problems.append(f"{cell.rel_dir / 'summary.json'}: missing (run `invoke report`)")
            continue
        try:
            summary = json.loads(js.read_text())
        except ValueError as exc:
            v.problems.append(f"{cell.rel_dir / 'summary.json'}: not valid JSON ({exc})")
            continue
        empty = [k for k in metrics.key_metrics(cell.suite) if not summary.get("metrics", {}).get(k, {}).get("n")]
        # A summary that disagrees because a run is missing or broken repeats that problem: skip it.
        if summary.get("runs_found") != n and cell.key not in incomplete:
            v.problems.append(f"{cell.rel_dir / 'summary.json'}: counts {summary.get('runs_found')} runs, the folder "
                              f"holds {n} valid ones (stale: run `invoke report`)")
        elif len(empty) == len(metrics.key_metrics(cell.suite)) \
                and len(summary.get("misplaced_runs", [])) < summary.get("runs_found", 0):
            # (every run misplaced: none is pooled, and the report lists them as misplaced)
            v.problems.append(f"{cell.rel_dir / 'summary.json'}: no metric has a value")


def probe_warnings(store: Store, profile: Profile) -> list[str]:
    """`invoke validate`'s warnings: a study the runner ran without these measurements (or with a
    failed one), and junk answers. Never problems: the runs stand without them."""
    if not store.read_jsonl(TIMELINE):
        return []  # the runner never ran here: nothing was expected of it
    out = []
    if profile.instrument.cold_start:
        entries = store.read_jsonl(COLDSTART)
        if not entries:
            out.append(f"no {COLDSTART}: the cold-start probe did not run (instrument.cold_start); `invoke bench` "
                       f"measures what is missing")
        for _, r in coldstart_table(entries).iterrows():
            if r["error"]:
                out.append(f"cold start of {r['model']} on {r['endpoint']} failed: {r['error']}")
    if profile.instrument.sanity:
        doc = store.read_json(SANITY)
        if doc is None:
            out.append(f"no {SANITY}: the answer sanity probe did not run (instrument.sanity); `invoke bench` "
                       f"measures what is missing")
        for m in (doc or {}).get("models", {}).values():
            if m["verdict"] in ("junk", "failed"):
                out.append(f"answer sanity of {m['model']}: {m['verdict']} ({m['right']} of {m['asked']} right)")
    return out


def validate_study(loaded: LoadedProfile, store: Store | None = None, results: Results | None = None,
                   shard: Shard | None = None) -> Validation:
    """Every check of the module docstring; `results`: the study's analysis when the caller has
    it already (the report), so the outlier flags are not computed twice; `shard`: the study holds
    only that shard's runs of each config (`invoke bench --shard`, bench/config/plan.py)."""
    store = store or Store(loaded.profile.study)
    v = Validation(store.root)
    if not store.root.is_dir():
        v.problems.append(f"no study folder {store.root}: run `invoke bench` first")
        return v
    manifest_path = store.root / MANIFEST_NAME
    manifest = None
    profile = loaded.profile
    if manifest_path.is_file():
        try:
            manifest = load_manifest(manifest_path)
            profile = profile_from_manifest(manifest)
        except BenchError as exc:
            v.problems.append(str(exc))
    else:
        v.warnings.append(f"no {MANIFEST_NAME} (written at the end of `invoke bench`): expecting the profile's "
                          f"full plan")
    if manifest and manifest.profile.sha256 not in (None, loaded.sha256):
        v.warnings.append(f"the profile file {loaded.path} changed since the study ran; the manifest's resolved "
                          f"profile is used")
    try:
        failures = store.failures()
    except ValueError as exc:
        v.problems.append(f"failures.jsonl has a line that is not JSON ({exc})")
        failures = []
    cells = planned_cells(manifest, profile)
    v.configs = len(cells)
    valid, invalid = _check_metrics_files(store, v)
    # the last stop decision per config wins (a resumed study logs its block again)
    stops = {e["cell"]: e for e in store.read_jsonl(SAMPLING)}
    not_probed = {k for k, e in stops.items() if e.get("reason") == NOT_PROBED}
    _check_counts(cells, valid, invalid, failures, profile, v, not_probed, shard)
    incomplete = set(invalid) | {c.key for c in cells if c.key not in not_probed and (
        len(valid.get(c.key, ())) < c.runs if c.precision
        else any(k not in valid.get(c.key, ()) for k in _expected(c, shard)))}
    _check_summaries(store, cells, valid, incomplete, v)
    v.warnings += probe_warnings(store, profile)
    results = results if results is not None else load_tables(store, profile.outliers.mad_k)
    for cell in cells:
        for run, flagged in sorted(cell_flags(results, cell.key).items()):
            if flagged:
                v.flags.append(f"{cell.key} run_{run}: {', '.join(flagged)}")
    return v
