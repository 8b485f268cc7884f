"""`invoke reproduce --manifest PATH`: rerun a study from its manifest and compare the results.

0. Treat the manifest as data, never as code: before anything starts, every runtime field that
   names something to run or read must be what the bundle itself would use (the compose files
   its built-in profiles name, model files under the bundle's cache or the packaged ones, servers
   on loopback); what will run is printed and anything else is refused with one line.
1. Rebuild the plan from the manifest: its resolved profile (under a new study name,
   `<study>-repro-<UTC timestamp>`, written to results/<new>/profile.yaml) and the plan
   overrides of each recorded `bench` call.
2. Refuse, before anything runs, when a model's or a fallback tag's identity differs from the
   manifest's (file sha256 on the local runtime, the Ollama digest otherwise), and, once the
   servers are up, when the runtime differs (llama.cpp binary sha256, Ollama version, image
   digests), unless `allow_mismatch`.
3. Rerun with the normal machinery (bench.study.runner.run_matrix), write the new study's manifest
   and report, then reproduction.{md,json}: per config and metric, old vs new mean and whether
   the new mean lies inside the old 95 % CI.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from bench.analysis.tables import build, load_tables
from bench.config.manifest_plans import profile_from_manifest
from bench.config.plan import build_plan
from bench.config.profile import LoadedProfile, Profile, builtin_profiles, load_profile
from bench.core import metrics
from bench.core.errors import BenchError
from bench.core.manifest import Manifest, ModelIdentity, Reproduces, RuntimeDescription, load_manifest, runtime_identity
from bench.core.md_table import md_table
from bench.core.paths import REPO_ROOT, cache_dir
from bench.core.store import Store, atomic_write_json, atomic_write_text
from bench.host.assets import EMBEDDED_MODELS
from bench.report.markdown import write_report
from bench.runtimes import create_runtime
from bench.study import manifest_writer as mf
from bench.study.runner import run_matrix

COMPARISON_NAME = "reproduction"


@dataclass
class Reproduction:
    study_root: Path
    markdown: Path
    json: Path
    within: int
    compared: int
    mismatches: list[str]


def new_study_name(study: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{study}-repro-{stamp}"


def _builtin_runtime_values() -> tuple[set[str], dict[str, set[str]]]:
    """What the built-in profiles name: their compose files, and the model files per model name."""
    compose, files = set(), {}
    for path in builtin_profiles().values():
        profile = load_profile(path).profile
        compose.update([profile.runtime.compose_file, *profile.runtime.compose_overrides])
        for m in profile.models:
            if m.file:
                files.setdefault(m.name, set()).add(m.file)
    return compose, files


def _is_within(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder.resolve())


def _packaged_model_paths() -> set[Path]:
    """Where the packaged GGUF models are (the ones the bundle installs)."""
    out = set()
    for spec in EMBEDDED_MODELS.values():
        try:
            out.add(spec.locate().resolve())
        except (ModuleNotFoundError, OSError, ValueError):
            continue  # not installed here: a file naming it is refused like any other
    return out


def vet_runtime(profile: Profile) -> list[str]:
    """Check, before anything starts, that a manifest's profile runs only what the bundle itself
    would: compose files its built-in profiles name (from the repo), model files under the bundle's
    cache or the packaged ones (or the file a built-in profile gives that model), servers on
    loopback. Returns the lines that say what will run; raises BenchError on anything else."""
    spec = profile.runtime
    allowed_compose, builtin_files = _builtin_runtime_values()
    lines = [f"runtime: {spec.kind} on {spec.host}"]
    if spec.expose:
        raise BenchError("refusing to reproduce: the manifest's runtime sets expose: true (servers reachable from "
                         "the network); reproduce runs loopback servers only")
    if spec.kind == "docker":
        for name in [spec.compose_file, *spec.compose_overrides]:
            if name not in allowed_compose or not _is_within((REPO_ROOT / name).resolve(), REPO_ROOT):
                raise BenchError(f"refusing to reproduce: the manifest names the compose file {name!r}; reproduce "
                                 f"runs only the bundle's own ({', '.join(sorted(allowed_compose))})")
        lines.append(f"compose: {', '.join([spec.compose_file, *spec.compose_overrides])} "
                     f"(project {spec.compose_project}) from {REPO_ROOT}")
    for e in spec.endpoints:
        lines.append(f"endpoint {e.name}: {e.url or f'port {e.port}'} ({e.api} API)")
    cache, packaged = cache_dir().resolve(), None
    for m in profile.models:
        weights = profile.weights_of(m)
        if weights.file is None:
            packaged_file = weights.source == "gguf" or spec.kind == "local"
            lines.append(f"model {m.name}: " + (f"the packaged file of {weights.name}" if packaged_file else
                                                "pulled by name") + " (its identity is checked against the manifest's)")
            continue
        resolved = Path(weights.file).expanduser().resolve()  # symlinks followed: a link out is refused
        if weights.file not in builtin_files.get(weights.name, set()) and not _is_within(resolved, cache):
            packaged = _packaged_model_paths() if packaged is None else packaged
            if resolved not in packaged:
                raise BenchError(f"refusing to reproduce: model {m.name} names the file {weights.file!r}, outside "
                                 f"the bundle's model cache {cache}; copy it there and edit the manifest, or run "
                                 f"it with `invoke bench --profile`")
        lines.append(f"model {m.name}: file {resolved} (its sha256 is checked against the manifest's)")
    for tag in [t for m in profile.models for t in profile.fallback_for(m).tags]:
        lines.append(f"fallback tag {tag}: pulled by name on first use (its identity is checked against the "
                     f"manifest's)")
    return lines


def model_mismatches(manifest: Manifest, runtime, profile) -> list[str]:
    """Models and fallback tags whose identity now differs from the manifest's (or cannot be
    established): a fallback tag is pulled by name on first use, so it is checked like a model.
    What identifies a model: the first identity key (MODEL_IDENTITY_KEYS) the manifest recorded."""
    recorded = {m.name: m for m in manifest.models}
    recorded_fallbacks = {m.name: m for m in manifest.fallback_models}
    out = []
    checks = [(model, recorded.get(model.name), "model") for model in profile.models]
    checks += [(tag, recorded_fallbacks.get(tag.name), "fallback tag") for tag in mf.fallback_models(profile)]
    for model, old, what in checks:
        if old is None:
            out.append(f"{what} {model.name}: not in the manifest")
            continue
        key, recorded_value = next(iter(old.identity().items()), (None, None))
        if key is None:
            out.append(f"{what} {model.name}: the manifest has no identity for it ({old.error or 'not recorded'})")
            continue
        try:
            now = ModelIdentity.model_validate(runtime.model_identity(model))
        except Exception as exc:  # an unreadable or missing model is a mismatch, with the reason
            out.append(f"{what} {model.name}: cannot establish its identity now ({type(exc).__name__}: {exc})")
            continue
        if getattr(now, key) != recorded_value:
            out.append(f"{what} {model.name}: {key} was {recorded_value}, is now "
                       f"{getattr(now, key) or now.error or 'unknown'}")
    return out


def runtime_mismatches(old: RuntimeDescription, new: RuntimeDescription) -> list[str]:
    """What of the runtime's build (runtime_identity: binaries, versions, images) changed."""
    a, b = runtime_identity(old).build, runtime_identity(new).build
    return [f"runtime {k}: was {a[k]}, is now {b.get(k)}" for k in a if a[k] != b.get(k)]


def comparison(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Old vs new per config (cell, and what ran: a downgraded config is compared only with the
    same downgrade) and key metric, from the two studies' configs tables."""
    rows = []
    if old.empty:
        return pd.DataFrame(rows)
    new_by_cell = new.set_index(["cell", "ran_as"]) if not new.empty else new
    for _, o in old.iterrows():
        key = (o["cell"], o["ran_as"])
        n = new_by_cell.loc[key] if key in new_by_cell.index else None
        for metric in metrics.key_metrics(o["suite"]):
            om, lo, hi = o.get(f"{metric}_mean"), o.get(f"{metric}_ci95_low"), o.get(f"{metric}_ci95_high")
            if pd.isna(om):
                continue
            nm = None if n is None else n.get(f"{metric}_mean")
            nm = None if nm is None or pd.isna(nm) else float(nm)
            has_ci = not (pd.isna(lo) or pd.isna(hi))
            rows.append({"cell": o["cell"], "ran_as": o["ran_as"], "metric": metric, "old_n": int(o["n"]),
                         "old_mean": float(om), "old_ci95_low": float(lo) if has_ci else None,
                         "old_ci95_high": float(hi) if has_ci else None,
                         "new_n": int(n["n"]) if n is not None else 0, "new_mean": nm,
                         "new_ci95_low": _num(n, f"{metric}_ci95_low"), "new_ci95_high": _num(n, f"{metric}_ci95_high"),
                         "delta_pct": (nm - om) / om * 100 if nm is not None and om else None,
                         "within_old_ci": (lo <= nm <= hi) if nm is not None and has_ci else None})
    return pd.DataFrame(rows)


def _num(row, key):
    if row is None:
        return None
    v = row.get(key)
    return None if v is None or pd.isna(v) else float(v)


def host_verdict(old_probes: list[dict], new_probes: list[dict], threshold_pct: float) -> dict:
    """Probes first: the same reference call set at the start of both studies. A first probe that
    moved beyond the threshold says the host (or engine) changed, and the metric comparison below
    is read with that in mind; a steady probe puts any difference on the harness or the configs."""
    old = [p for p in old_probes if p.get("decode_tps") is not None]
    new = [p for p in new_probes if p.get("decode_tps") is not None]
    if not old or not new:
        return {"verdict": "no probes in one of the studies: host and harness cannot be told apart",
                "drift_pct": None}
    drift = metrics.drift_pct(new[0]["decode_tps"], old[0]["decode_tps"])
    changed = abs(drift) > threshold_pct
    return {"drift_pct": drift, "old_probe_tps": old[0]["decode_tps"], "new_probe_tps": new[0]["decode_tps"],
            "verdict": (f"the host changed: the reference probe's decode rate moved {drift:+.1f} % "
                        f"(threshold ±{threshold_pct:g} %); differences below may be the host's")
            if changed else
            (f"the host held: the reference probe moved {drift:+.1f} % (within ±{threshold_pct:g} %); "
             f"differences below are the harness's or the configs'")}


def _render(cmp: pd.DataFrame, old_study: str, new_study: str, manifest_path: Path, mismatches: list[str],
            host: dict) -> str:
    def f(v):
        return "–" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:.4g}"

    judged = cmp[cmp["within_old_ci"].notna()] if not cmp.empty else cmp
    within = int(judged["within_old_ci"].astype(bool).sum()) if not judged.empty else 0
    lines = [f"# Reproduction of `{old_study}`", "",
             f"New study `{new_study}`, rebuilt from `{manifest_path}`. For every config and key metric: the old "
             "mean with its 95 % CI (t-based, from the old runs), the new mean, and whether the new mean lies inside "
             "the old CI.", "",
             f"**{within} of {len(judged)}** config/metric pairs with an old CI reproduce within it"
             + (f"; {len(cmp) - len(judged)} pair(s) had no old CI (fewer than 2 runs) or no new runs." if
                len(cmp) != len(judged) else "."), ""]
    lines += [f"**Host first:** {host['verdict']}.", ""]
    if mismatches:
        lines += ["Identity mismatches accepted with `--allow-mismatch`:", ""] + [f"- {m}" for m in mismatches] + [""]
    table = [{"config": r["cell"] + (f" (ran {r['ran_as']})" if r["ran_as"] else ""), "metric": r["metric"],
              "old mean [95% CI]":
              f"{f(r['old_mean'])} [{f(r['old_ci95_low'])}, {f(r['old_ci95_high'])}]", "old n": r["old_n"],
              "new mean [95% CI]": f"{f(r['new_mean'])} [{f(r['new_ci95_low'])}, {f(r['new_ci95_high'])}]",
              "new n": r["new_n"], "Δ %": f(r["delta_pct"]),
              "within old CI": {True: "yes", False: "**no**"}.get(r["within_old_ci"], "–")}
             for _, r in cmp.iterrows()]
    lines += [md_table(table) or "No configs to compare.", ""]
    return "\n".join(lines)


def _write_profile(manifest: Manifest, study: str, folder: Path) -> LoadedProfile:
    data = dict(manifest.profile.resolved, study=study)
    path = folder / "profile.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return load_profile(path, reason=f"reproduces study '{manifest.study}' from its manifest")


def reproduce(manifest_path: Path, *, allow_mismatch: bool = False, progress: bool = True,
              study: str | None = None) -> Reproduction:
    manifest_path = Path(manifest_path).resolve()
    manifest = load_manifest(manifest_path)
    old_profile = profile_from_manifest(manifest)
    will_run = vet_runtime(old_profile)  # before any runtime exists: the manifest is data
    print(f"reproduce {manifest_path} will run:\n" + "\n".join(f"  {line}" for line in will_run), flush=True)
    new_study = study or new_study_name(old_profile.study)
    store = Store(new_study)
    if store.root.exists():
        raise BenchError(f"{store.root} already exists: choose another study name")
    runtime = create_runtime(old_profile)
    mismatches = model_mismatches(manifest, runtime, old_profile)
    if mismatches and not allow_mismatch:
        raise BenchError("refusing to reproduce: the models differ from the manifest's:\n"
                         + "\n".join(f"  - {m}" for m in mismatches)
                         + "\npass --allow-mismatch to rerun anyway (the comparison will list the differences)")
    loaded = _write_profile(manifest, new_study, store.root)
    runtime = create_runtime(loaded.profile)
    try:
        runtime.up()
        rt_mismatches = runtime_mismatches(manifest.runtime, RuntimeDescription.model_validate(runtime.describe()))
        if rt_mismatches and not allow_mismatch:
            raise BenchError("refusing to reproduce: the runtime differs from the manifest's:\n"
                             + "\n".join(f"  - {m}" for m in rt_mismatches)
                             + "\npass --allow-mismatch to rerun anyway")
        mismatches += rt_mismatches
        reproduces = Reproduces(study=manifest.study, manifest=str(manifest_path),
                                harness_commit=manifest.harness.commit, accepted_mismatches=mismatches)
        # Each recorded `bench` call is replayed with its own overrides, in the original order.
        for inv in manifest.invocations:
            overrides = inv.plan_overrides.kwargs()
            plan = build_plan(loaded.profile, **overrides)
            started = mf.utc_now()
            outcome = run_matrix(loaded, plan, runtime, store, progress=progress)
            mf.write_manifest(loaded, plan, runtime, store, started_at=started, overrides=overrides,
                              learned_limits=outcome.learned_limits, reproduces=reproduces)
    finally:
        runtime.down()
    new_tables = build(store, loaded.profile)
    write_report(loaded, store, results=new_tables)
    old_root = manifest_path.parent
    old_tables = load_tables(Store(old_root.name, old_root.parent), old_profile.outliers.mad_k)
    cmp = comparison(old_tables.configs, new_tables.configs)
    host = host_verdict(old_tables.probes, new_tables.probes, loaded.profile.instrument.drift_threshold_pct)
    md_path, json_path = store.root / f"{COMPARISON_NAME}.md", store.root / f"{COMPARISON_NAME}.json"
    atomic_write_text(md_path, _render(cmp, manifest.study, new_study, manifest_path, mismatches, host))
    judged = cmp[cmp["within_old_ci"].notna()] if not cmp.empty else cmp
    within = int(judged["within_old_ci"].astype(bool).sum()) if not judged.empty else 0
    atomic_write_json(json_path, {"old_study": manifest.study, "new_study": new_study,
                                  "manifest": str(manifest_path), "accepted_mismatches": mismatches, "host": host,
                                  "within_old_ci": within, "judged": len(judged),
                                  "rows": cmp.astype(object).where(pd.notna(cmp), None).to_dict(orient="records")})
    return Reproduction(store.root, md_path, json_path, within, len(judged), mismatches)
