"""`invoke compare STUDY_A STUDY_B [--also STUDY_C …]`: studies from different hosts side by side.

1. Load each study: a name under the results root or a path to a study folder; its manifest (the
   resolved profile, the model identities, the runtime, the host fingerprint: bench/host/fingerprint.py)
   and its analysis (bench/analysis.build), so every number is the one its own report shows.
2. Match configs across studies: the same suite, language, config tag (or scenario), ladder rung
   and model, where a model is the same when its identity is, whatever it is called: a GGUF file's
   sha256 (with the template and parameters Ollama created the model with), a pulled model's
   registry digest (ModelIdentity.match_identity). The Ollama digest of a model created from a file
   differs from one model store to the next, so it is not compared. The settings each run records
   (its config, the workload's hashes, the server slots and context it was placed on) and the
   runtime's own settings (the same keys for every runtime) must agree too. A differing identity or
   setting is refused with the list of differences, unless `allow_mismatch`, which compares anyway
   and lists them in the report. Configs only one study holds are listed.
3. Per matched config and key metric: each study's mean and 95 % interval (its configs table: the
   repeated interval of its own looks, bench/core/sequential.py), and the difference to the reference
   study (the first listed that holds the config) by the reports' comparison rule
   (sequential.compare: √ of the two half-widths squared), on raw values (each study's drift
   adjustment refers to its own host). Over the matched runs of all studies
   together: η² of host, study, model, config and language (stats.eta_squared).
4. Write results/compare-<UTC time>/ (or results/<out>/, never outside results/): comparison.md,
   comparison.csv, variance.csv, studies.csv; the other studies' text in the CSVs never runs as a
   spreadsheet formula (bench/core/csvsafe.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.analysis.tables import Results, build, eta_squared_table
from bench.config.manifest_plans import profile_from_manifest
from bench.core import fmt, metrics, sequential
from bench.core.csvsafe import csv_text
from bench.core.errors import BenchError
from bench.core.manifest import MODEL_IDENTITY_KEYS, Manifest, load_manifest, runtime_identity, setting_text
from bench.core.md_table import md_table
from bench.core.paths import results_root
from bench.core.sequential import Interval
from bench.core.store import (
    COMPARE_PREFIX,
    COMPARISON_REPORT,
    COMPARISON_STUDIES,
    COMPARISON_TABLE,
    COMPARISON_VARIANCE,
    MANIFEST_NAME,
    Store,
    atomic_write_text,
)
from bench.host import fingerprint
from bench.report import templating

TEMPLATE = "comparison.md.j2"
FINGERPRINT_FIELDS = fingerprint.FIELDS
FACTORS = {"host": "host", "study": "study", "model": "model_key", "config": "case", "language": "lang"}
ALL_FACTORS = "config × study (all factors)"
WITHIN = "run-to-run (within config × study)"


@dataclass
class Study:
    label: str
    root: Path
    manifest: Manifest
    fingerprint: fingerprint.StudyFingerprint
    results: Results
    identities: dict[str, dict[str, str]]  # model name → ModelIdentity.match_identity()
    settings: dict[tuple[str, str], dict[str, str]]  # (cell, ran_as) → setting → value
    runtime_settings: dict[str, str]  # runtime_identity(manifest).settings

    @property
    def host(self) -> str:
        return self.fingerprint.host_id or "unknown"

    def probe(self) -> tuple[float | None, float | None]:
        """The drift guard's reference probe (bench/study/instrument.py): the baseline's decode tok/s at
        the study's start, and the largest drift from it during the study (%): the host's state."""
        drift = self.results.derived.get("drift", pd.DataFrame())
        if drift.empty:
            return None, None
        return float(drift["decode_tps"].iloc[0]), float(drift["drift_pct"].abs().max())


@dataclass
class Matching:
    groups: dict[tuple, dict[str, pd.Series]]  # match key → study label → its configs row
    only_in: list[dict] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    folder: Path
    markdown: Path
    table: pd.DataFrame
    variance: pd.DataFrame
    matched: int
    only_in: list[dict]
    mismatches: list[str]


# ---- loading ---------------------------------------------------------------------------------


def resolve(spec: str) -> Path:
    """A study folder from a path, or from a study name under the results root."""
    path = Path(spec).expanduser()
    for candidate in (path, results_root() / spec):
        if candidate.is_dir():
            return candidate.resolve()
    raise BenchError(f"study {spec!r} not found: neither a folder nor a study under {results_root()}; pass a "
                     f"study name from the results root or the path to a study folder")


def run_settings(doc) -> dict[str, str]:
    """What a run records about how it ran, beside its metrics: its config as asked (the ladder's
    rung is the configs table's ran_as), the workload's hashes, and per server instance the
    parallel slots and context the model was placed with."""
    out = {}
    asked = (doc.requested_config or doc.config).model_dump(exclude_none=True)
    for key, value in asked.items():
        if key == "agents":
            for agent, opts in value.items():
                for k, v in (opts or {}).items():
                    out[f"config.agents.{agent}.{k}"] = setting_text(v)
        elif key != "model":
            out[f"config.{key}"] = setting_text(value)
    out["workload.prompts_sha256"] = doc.workload.prompts_sha256
    out["workload.dataset_sha256"] = doc.workload.dataset_sha256
    for endpoint, state in ((doc.placement.after_load if doc.placement else None) or {}).items():
        if isinstance(state, dict) and state.get("loaded"):
            for k in ("parallel", "context_length"):
                if state.get(k) is not None:
                    out[f"server.{endpoint}.{k}"] = setting_text(state[k])
    return out


def load(spec: str, label: str | None = None) -> Study:
    root = resolve(spec)
    if not (root / MANIFEST_NAME).is_file():
        raise BenchError(f"{root} has no {MANIFEST_NAME}: without it the models' digests and the host are unknown, "
                         f"so its configs cannot be matched (is it a study folder? `invoke bench` writes it)")
    manifest = load_manifest(root / MANIFEST_NAME)
    store = Store(root.name, root.parent)
    results = build(store, profile_from_manifest(manifest))
    if results.runs.empty:
        raise BenchError(f"no valid metrics.json under {root}: nothing to compare (`invoke validate` says why)")
    ran_as = {(r.cell, int(r.run)): r.ran_as for r in results.runs[["cell", "run", "ran_as"]].itertuples()}
    settings: dict[tuple[str, str], dict[str, set]] = {}
    for run in store.iter_runs():
        key = (run.cell_key, run.doc.run_index)
        if key not in ran_as:  # a misplaced run: in no table, so in no comparison
            continue
        merged = settings.setdefault((run.cell_key, ran_as[key]), {})
        for k, v in run_settings(run.doc).items():
            merged.setdefault(k, set()).add(v)
    return Study(label=label or root.name, root=root, manifest=manifest,
                 fingerprint=fingerprint.of_manifest(manifest), results=results,
                 identities={m.name: m.match_identity() for m in manifest.models if m.name},
                 settings={k: {s: " | ".join(sorted(vs)) for s, vs in v.items()} for k, v in settings.items()},
                 runtime_settings=runtime_identity(manifest).settings)


def _labels(roots: list[Path]) -> list[str]:
    """Each study's folder name; a name two studies share gets its parent folder's name too."""
    names = [r.name for r in roots]
    return [f"{r.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in roots]


# ---- matching --------------------------------------------------------------------------------


def _short(v: str) -> str:
    return v.removeprefix("sha256:")[:12]


def model_keys(studies: list[Study], allow_mismatch: bool) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Which models are the same across studies: a shared file sha256 or registry digest joins two
    names, and so does a shared name. Two joined models whose recorded identities differ (the file,
    the template or parameters it was created with, the digest) are a mismatch; without
    allow_mismatch they stay apart.
    Returns ((study, model name) → model key: the names it goes by, and the mismatches)."""
    nodes = [(s.label, name) for s in studies for name in s.identities]
    ident = {(s.label, name): s.identities[name] for s in studies for name in s.identities}
    parent = {n: n for n in nodes}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def conflicts(a, b) -> list[str]:
        ia, ib = ident[a], ident[b]
        shared = set(ia) & set(ib)
        if not shared:
            return [f"no common identity key ({a[0]} recorded {sorted(ia) or 'none'}, {b[0]} {sorted(ib) or 'none'})"]
        return [f"{k} `{_short(ia[k])}` in {a[0]} vs `{_short(ib[k])}` in {b[0]}" for k in
                ia if k in shared and ia[k] != ib[k]]

    def joining(n) -> tuple[str, str] | None:  # the file or the registry digest, never a template
        return next(((k, ident[n][k]) for k in MODEL_IDENTITY_KEYS if k in ident[n]), None)

    mismatches = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if a[0] == b[0]:
                continue
            same_value = joining(a) is not None and joining(a) == joining(b)
            if not (same_value or a[1] == b[1]):
                continue
            problems = conflicts(a, b)
            if problems:
                names = a[1] if a[1] == b[1] else f"{a[1]} ({a[0]}) / {b[1]} ({b[0]})"
                mismatches.append(f"model {names}: " + "; ".join(problems))
                if not allow_mismatch:
                    continue
            parent[find(a)] = find(b)
    components: dict = {}
    for n in nodes:
        components.setdefault(find(n), []).append(n)
    keys = {}
    for members in components.values():
        for m in members:
            keys[m] = " = ".join(sorted({m[1] for m in members}))
    return keys, mismatches


def _config_label(key: tuple) -> str:
    suite, lang, model, case, ran_as = key
    return f"{suite}/{lang}/{model}/{case}" + (f" (ran {ran_as})" if ran_as else "")


def match(studies: list[Study], allow_mismatch: bool = False) -> Matching:
    keys, mismatches = model_keys(studies, allow_mismatch)
    groups: dict[tuple, dict[str, pd.Series]] = {}
    cells: dict[tuple, dict[str, tuple[str, str]]] = {}
    for s in studies:
        for _, row in s.results.configs.iterrows():
            model = keys.get((s.label, row["model"]), row["model"])
            key = (row["suite"], row["lang"], model, row["case"], row["ran_as"])
            groups.setdefault(key, {})[s.label] = row
            cells.setdefault(key, {})[s.label] = (row["cell"], row["ran_as"])
    matching = Matching(groups={k: v for k, v in groups.items() if len(v) > 1})
    matching.only_in = [{"study": label, "config": _config_label(k)} for k in sorted(groups, key=_order)
                        if len(groups[k]) == 1 for label in groups[k]]
    # Settings: per matched config, each that differs, grouped so one difference reads once.
    by_study = {s.label: s for s in studies}
    differences: dict[tuple, list[str]] = {}
    for key in sorted(matching.groups, key=_order):
        held = cells[key]
        recorded = {label: by_study[label].settings.get(cell, {}) for label, cell in held.items()}
        for setting in sorted(set().union(*recorded.values())):
            values = tuple((label, r.get(setting, "not recorded")) for label, r in recorded.items())
            if len({v for _, v in values}) > 1:
                differences.setdefault((setting, values), []).append(_config_label(key))
    for (setting, values), configs in differences.items():
        shown = ", ".join(configs[:3]) + (f" and {len(configs) - 3} more" if len(configs) > 3 else "")
        mismatches.append(f"setting `{setting}`: " + ", ".join(f"{label}={v}" for label, v in values)
                          + f" ({len(configs)} config(s): {shown})")
    first = studies[0]
    for s in studies[1:]:
        for setting in sorted(set(first.runtime_settings) | set(s.runtime_settings)):
            a, b = first.runtime_settings.get(setting, "not recorded"), s.runtime_settings.get(setting, "not recorded")
            if a != b:
                mismatches.append(f"runtime `{setting}`: {first.label}={a}, {s.label}={b}")
    matching.mismatches = mismatches
    return matching


# ---- comparing ---------------------------------------------------------------------------------


def _order(key: tuple) -> tuple:
    """Single before multi (the report's order), then language, model, config."""
    return (metrics.SUITES.index(key[0]), *key[1:])


def _label(metric: str) -> str:
    return next((m.label for m in metrics.RUN_METRICS if m.column == metric), metric)


def _num(v) -> float | None:
    return None if fmt.missing(v) else float(v)


def _interval(row: pd.Series, metric: str) -> Interval | None:
    """A study's interval of a config's metric, as its configs table holds it."""
    mean, low, high = (_num(row.get(f"{metric}_{k}")) for k in ("mean", "ci95_low", "ci95_high"))
    return None if None in (mean, low, high) else Interval(int(row["n"]), mean, low, high, 0.95)


def comparison_table(studies: list[Study], matching: Matching) -> pd.DataFrame:
    """Long form: one row per matched config, key metric and study, with the difference to the
    reference study (the first listed holding the config): study − reference by the comparison rule."""
    order = [s.label for s in studies]
    by_label = {s.label: s for s in studies}
    rows = []
    for key in sorted(matching.groups, key=_order):
        held = matching.groups[key]
        labels = [label for label in order if label in held]
        ref = labels[0]
        suite = key[0]
        for metric in metrics.key_metrics(suite):
            ref_iv = _interval(held[ref], metric)
            for label in labels:
                r = held[label]
                if fmt.missing(r.get(f"{metric}_mean")):
                    continue
                row = {"config": _config_label(key), "suite": suite, "lang": key[1], "model": key[2], "case": key[3],
                       "ran_as": key[4], "metric": metric, "study": label, "host": by_label[label].host,
                       "reference": ref, "n": int(r["n"]), "mean": _num(r[f"{metric}_mean"]),
                       "ci95_low": _num(r.get(f"{metric}_ci95_low")), "ci95_high": _num(r.get(f"{metric}_ci95_high")),
                       "diff": None, "diff_ci_low": None, "diff_ci_high": None, "diff_pct": None,
                       "verdict": "reference"}
                if label != ref:
                    cmp = sequential.compare(_interval(r, metric), ref_iv,
                                             higher_is_better=not metrics.lower_is_better(metric))
                    ref_mean = _num(held[ref].get(f"{metric}_mean"))
                    row.update(diff=cmp["diff"], diff_ci_low=cmp["ci_low"], diff_ci_high=cmp["ci_high"],
                               diff_pct=(row["mean"] - ref_mean) / ref_mean * 100 if ref_mean else None,
                               verdict=("no interval (< 2 runs in a study)" if cmp["diff"] is None else
                                        "better" if cmp["winner"] == "a" else
                                        "worse" if cmp["winner"] == "b" else "no significant difference"))
                rows.append(row)
    return pd.DataFrame(rows)


def merged_runs(studies: list[Study], matching: Matching) -> pd.DataFrame:
    """The runs of every matched config, all studies together, labelled with study, host and the
    cross-study model key."""
    frames = []
    for s in studies:
        held = {(row["cell"], row["ran_as"]): key for key, g in matching.groups.items()
                for label, row in g.items() if label == s.label}
        runs = s.results.runs
        mask = [(c, r) in held for c, r in zip(runs["cell"], runs["ran_as"])]
        sub = runs[mask].copy()
        if sub.empty:
            continue
        sub["study"], sub["host"] = s.label, s.host
        sub["model_key"] = [held[(c, r)][2] for c, r in zip(sub["cell"], sub["ran_as"])]
        sub["match"] = [f"{s.label}|{_config_label(held[(c, r)])}" for c, r in zip(sub["cell"], sub["ran_as"])]
        frames.append(sub)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def variance(runs: pd.DataFrame) -> pd.DataFrame:
    """η² of each factor alone, per suite and key metric, over the matched runs of all studies:
    host beside study, model, config and language (the analysis' table, eta_squared_table).
    Grouping by config and study together leaves 1 − η² as run-to-run noise; a factor with one
    level did not vary and explains nothing."""
    specs = [(suite, metric) for suite in metrics.SUITES for metric in metrics.key_metrics(suite)]
    return eta_squared_table(runs, specs, {**FACTORS, ALL_FACTORS: "match"}, WITHIN)


def studies_table(studies: list[Study]) -> pd.DataFrame:
    rows = []
    for s in studies:
        fp = s.fingerprint
        dumped = fp.model_dump()
        values = {k: dumped[k] for k in FINGERPRINT_FIELDS}
        rows.append({"study": s.label, "folder": str(s.root), "host": s.host,
                     "fingerprint": "derived from the manifest" if fp.derived else "recorded",
                     "unknown": ";".join(fp.unknown),
                     **{k: setting_text(v) if isinstance(v, list) else v for k, v in values.items()},
                     "runs": len(s.results.runs), "configs": len(s.results.configs),
                     "probe_start_tps": s.probe()[0], "probe_max_drift_pct": s.probe()[1],
                     "started_at": s.manifest.started_at})
    return pd.DataFrame(rows)


def fingerprint_differences(studies: list[Study]) -> list[str]:
    out = []
    for k in FINGERPRINT_FIELDS:
        values = [(s.label, s.fingerprint.model_dump()[k]) for s in studies]
        if len({setting_text(v) for _, v in values}) > 1:
            shown = [fingerprint.gpu_text(s.fingerprint) if k == "gpus" else
                     fmt.bytes_(v) if k == "ram_bytes" else ("unknown" if v is None else v)
                     for s, (_, v) in zip(studies, values)]
            out.append(f"{k}: " + ", ".join(f"{label}={v}" for (label, _), v in zip(values, shown)))
    return out


# ---- rendering and the task ------------------------------------------------------------------


def _markdown_tables(table: pd.DataFrame, var: pd.DataFrame, order: list[str]) -> tuple[str | None, str | None]:
    if table.empty:
        wide = None
    else:
        rows = []
        for (config, metric), g in table.groupby(["config", "metric"], sort=False):
            row = {"config": config, "metric": _label(metric)}
            for label in order:
                hit = g[g["study"] == label]
                r = hit.iloc[0] if not hit.empty else None
                row[f"{label} mean [95% CI] (n)"] = "–" if r is None else fmt.mean_ci(r["mean"], r["ci95_low"],
                                                                                    r["ci95_high"], r["n"])
            for _, r in g[g["verdict"] != "reference"].iterrows():
                row[f"{r['study']} − {r['reference']} [95% CI]"] = (
                    fmt.signed(r["diff"]) if fmt.missing(r["diff_ci_low"]) else
                    f"{fmt.signed(r['diff'])} [{fmt.signed(r['diff_ci_low'])}, {fmt.signed(r['diff_ci_high'])}]")
                row[f"{r['study']} Δ %"] = fmt.pct(r["diff_pct"])
                row[f"{r['study']} verdict"] = r["verdict"]
            rows.append(row)
        wide = md_table(pd.DataFrame(rows).fillna("–"))
    if var.empty:
        shares = None
    else:
        rows = []
        for (suite, metric), g in var.groupby(["suite", "metric"], sort=False):
            row = {"suite": suite, "metric": _label(metric), "n": int(g["n"].max())}
            for _, r in g.iterrows():
                varied = not (fmt.missing(r["eta_sq"]) and r["levels"] == 1)
                p = "" if fmt.missing(r["p_value"]) else f" (p {fmt.num(r['p_value'], 2)})"
                row[f"η² {r['factor']}"] = (fmt.num(r["eta_sq"], 2) + p) if varied else "not varied"
            rows.append(row)
        shares = md_table(rows)
    return wide, shares


def render(studies: list[Study], matching: Matching, table: pd.DataFrame, var: pd.DataFrame,
           allow_mismatch: bool, generated_at: str) -> str:
    wide, shares = _markdown_tables(table, var, [s.label for s in studies])
    hosts = {s.host for s in studies}
    judged = table[table["verdict"] != "reference"] if not table.empty else table
    return templating.render(
        TEMPLATE, studies=[{"label": s.label, "root": str(s.root), "host": s.host, "line": fingerprint.one_line(s.fingerprint),
                  "derived": s.fingerprint.derived, "runs": len(s.results.runs),
                  "configs": len(s.results.configs), "probe": fmt.num(s.probe()[0]), "drift": fmt.pct(s.probe()[1]),
                  "started": s.manifest.started_at or "–"} for s in studies],
        one_host=len(hosts) == 1, fp_differences=fingerprint_differences(studies),
        mismatches=matching.mismatches, allow_mismatch=allow_mismatch, matched=len(matching.groups),
        table=wide, variance=shares, only_in=matching.only_in, generated_at=generated_at,
        differing=int(judged["verdict"].isin(["better", "worse"]).sum()) if not judged.empty else 0,
        judged=len(judged))


def output_folder(out: str) -> Path:
    """The comparison's folder: `out` is a folder name under the results root, never a path out of it."""
    root = results_root().resolve()
    parts = Path(out).parts
    folder = (root / out).resolve()
    if not out or Path(out).is_absolute() or ".." in parts or folder == root or not folder.is_relative_to(root):
        raise BenchError(f"--out {out!r}: give a folder name under the results root {root} (no absolute path, "
                         f"no '..')")
    return folder


def compare(specs: list[str], *, allow_mismatch: bool = False, out: str | None = None,
            now: dt.datetime | None = None) -> Comparison:
    if len(specs) < 2:
        raise BenchError("compare needs two or more studies: invoke compare STUDY_A STUDY_B [--also STUDY_C]")
    now = now or dt.datetime.now(dt.timezone.utc)
    folder = output_folder(out or f"{COMPARE_PREFIX}{now.strftime('%Y%m%d-%H%M%S')}")  # refused before any work
    roots = [resolve(s) for s in specs]
    twice = sorted({str(r) for r in roots if roots.count(r) > 1})
    if twice:
        raise BenchError(f"the same study is given twice: {', '.join(twice)}")
    studies = [load(str(root), label) for root, label in zip(roots, _labels(roots))]
    matching = match(studies, allow_mismatch)
    if matching.mismatches and not allow_mismatch:
        raise BenchError("refusing to compare: the studies differ in what was measured:\n"
                         + "\n".join(f"  - {m}" for m in matching.mismatches)
                         + "\npass --allow-mismatch to compare anyway (the report lists these differences)")
    table = comparison_table(studies, matching)
    var = variance(merged_runs(studies, matching))
    md = folder / COMPARISON_REPORT
    atomic_write_text(md, render(studies, matching, table, var, allow_mismatch,
                                 now.isoformat(timespec="seconds").replace("+00:00", "Z")))
    atomic_write_text(folder / COMPARISON_TABLE, csv_text(table))
    atomic_write_text(folder / COMPARISON_VARIANCE, csv_text(var))
    atomic_write_text(folder / COMPARISON_STUDIES, csv_text(studies_table(studies)))
    return Comparison(folder, md, table, var, len(matching.groups), matching.only_in, matching.mismatches)
