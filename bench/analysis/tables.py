"""Analysis: every stored record as tidy pandas tables, exported to results/<study>/tables/.

- requests.csv: one row per counted LLM call;
- runs.csv: one row per run (the run-level metrics of metrics.json, flattened), with the
  spec's outlier flags (`outlier_<metric>`, `outlier`) and, for a run the fallback ladder
  downgraded, what ran instead (`ran_as`; '' for a run that ran as asked) and why, its goodput
  against the profile's SLO and `validity_flag` (the reconciliation gate's reason; '' when it passes);
- configs.csv: one row per config (cell) and what ran (`ran_as`): n and mean/median/std/CI of
  the key metrics. Downgraded runs are never pooled with runs of the config as asked, and the
  comparisons across models or languages only pair runs that ran alike;
- derived tables, each computed here from runs/configs by a stated method: normalized.csv
  (% of the baseline model), winners.csv (the winner rule: sequential.compare on drift-adjusted values), lang_deltas.csv (Rust −
  Python), variance.csv (η² shares), outliers.csv, frontier.csv (power), thermal.csv (GPU
  state across the study), cost.csv (pricing), goodput.csv (per config, with its interval).
Every number in the report comes from these tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.analysis import engine_tables, findings, goodput, instrument_tables, probe_tables, tails, validity
from bench.analysis.prefill import verify_prefill
from bench.config import ladder
from bench.config.manifest_plans import planned_cells, profile_from_manifest
from bench.config.plan import Cell
from bench.config.profile import Profile
from bench.core import metrics, stats
from bench.core.drift import HostDrift, host_exponent, unix_time
from bench.core.errors import BenchError
from bench.core.manifest import as_manifest
from bench.core.sequential import Interval, LookPlan, compare, interval, widen
from bench.core.store import (
    CLIENT_OVERHEAD_NAME,
    COLDSTART,
    FLEET_HOSTS,
    MANIFEST_NAME,
    PROBES,
    SAMPLING,
    SANITY,
    TIMELINE,
    Store,
    StoredRun,
    atomic_write_json,
    atomic_write_text,
)
from bench.host import fingerprint
from bench.study.outliers import outlier_flags, placement_issues

# A run-level quantity derived here for the cost and power views (tokens_per_j and mean_power_w
# come from the run's `power` block, defined in bench/core/metrics.py):
#   served_tps = output tokens / time the user waited: single Σ N_out / (latency_ms / 10³),
#                multi Σ N_out(together phase) / wall_s. What a deployment delivers per second.
DERIVED_DEFINITIONS = {
    "served_tps": "single: Σ N_out / (latency_ms / 10³); multi: Σ N_out of the together phase / wall_s",
}
# The topology control (bench/config/plan.py): the dual-instance scenario it is set against.
TOPOLOGY_PAIR = ("chimera_homo", "one_instance_two_slots")
STATS = ("mean", "median", "std", "cv_pct", "p50", "p95", "ci95_low", "ci95_high")


@dataclass
class Results:
    """Everything `invoke report` shows, computed once from the stored runs (analysis.build):
    the frames, the derived tables and the findings. Summaries, plots, validate and the report
    only read it."""

    requests: pd.DataFrame
    runs: pd.DataFrame
    configs: pd.DataFrame
    derived: dict[str, pd.DataFrame] = field(default_factory=dict)
    # runs whose placement differed from their config (bench/config/placement.py): out of every table above
    misplaced: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the instrument's own logs (bench/study/instrument.py): drift probes and the runner's timeline
    probes: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    # the rule-made conclusions (bench/analysis/findings.py), exported as tables/findings.json
    findings: dict = field(default_factory=dict)
    # per config folder, the config its first run was asked to run (metrics.json requested_config)
    asked: dict[str, dict] = field(default_factory=dict)
    # the per-study model probes (bench/study/probes.py): coldstart.jsonl and sanity.json
    coldstart: list[dict] = field(default_factory=list)
    sanity: dict | None = None
    # runs with a counted call whose prompt the engine reused (bench/analysis/prefill.py): kept, listed, out
    # of every headline table like the misplaced ones
    voided: pd.DataFrame = field(default_factory=pd.DataFrame)
    # runs over a reconciliation bound (bench/analysis/validity.py): kept, listed with the reason,
    # out of every headline table like the misplaced and voided ones (empty when none is)
    invalid: pd.DataFrame = field(default_factory=pd.DataFrame)
    # failures.jsonl: a failed run attempt's calls count as missing the SLO (bench/analysis/goodput.py)
    failures: list[dict] = field(default_factory=list)
    # the host drift series (bench/core/drift.py); None without a probe
    drift: HostDrift | None = None
    # per sampled config, the engine's own queue and slots beside the client's unaccounted TTFT
    # (bench/analysis/engine_tables.py), tabulated in the same pass over the stored runs
    engine: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the plan's configs (for their looks, targets and stop reasons) and an adaptive study's stops
    cells: list[Cell] = field(default_factory=list)
    stops: dict[str, dict] = field(default_factory=dict)

    def cell_runs(self, cell_key: str) -> pd.DataFrame:
        """Every stored run of one config folder, placed, misplaced, voided or invalid, in run order."""
        frames = [f[f["cell"] == cell_key] for f in (self.runs, self.misplaced, self.voided, self.invalid)
                  if not f.empty]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames).sort_values("run")


# where a table row was made, in every runs.csv and configs.csv row (study_provenance)
PROVENANCE_COLUMNS = ("host_id", "harness_commit")
FLEET_HOST = "fleet_host"  # runs.csv: the fleet host that ran the run (a study merged from shards only)


def study_provenance(store: Store) -> dict:
    """The study's host id (its manifest's fingerprint, bench/host/fingerprint.py: derived from the host
    entries for a study made before the fingerprint was recorded) and harness commit (the
    manifest's git commit), so a runs.csv or configs.csv row stays meaningful outside its folder.
    None without a manifest."""
    manifest = store.read_json(MANIFEST_NAME)
    if not manifest:
        return dict.fromkeys(PROVENANCE_COLUMNS)
    manifest = as_manifest(manifest)
    return {"host_id": fingerprint.of_manifest(manifest).host_id, "harness_commit": manifest.harness.commit}


def run_hosts(store: Store) -> dict[str, str] | None:
    """Run folder → the host that ran it, for a study merged from a fleet's shards (FLEET_HOSTS);
    None for a study of one host (its runs.csv has no `fleet_host` column)."""
    doc = store.read_json(FLEET_HOSTS)
    if doc is None:
        return None
    if not isinstance(doc.get("runs"), dict):
        raise BenchError(f"{store.root / FLEET_HOSTS}: no 'runs' mapping of run folder to host")
    return {str(k): str(v) for k, v in doc["runs"].items()}


def run_row(run: StoredRun, provenance: dict | None = None) -> dict:
    """One runs.csv row: the run's identity, where it was made (`provenance`: study_provenance),
    its config as ran, and its metrics flattened (agents' metrics as <agent>_<key>, power as
    power_<key>, the client cost block)."""
    doc = run.doc
    cfg = doc.config
    row = {"cell": run.cell_key, **(provenance or dict.fromkeys(PROVENANCE_COLUMNS)),
           "suite": doc.suite, "lang": doc.lang,
           "model": doc.model.name, "baseline": doc.model.baseline,
           "scenario": cfg.scenario, "config": run.config_tag,
           # what runs of different models (and languages) are compared on
           "case": cfg.scenario or run.config_tag,
           "gpu_layers": cfg.gpu_layers, "ctx": cfg.ctx,  # as ran: `config` is the effective one
           "ran_as": ladder.downgrade(_plain(doc.requested_config), _plain(doc.effective_config)),
           "downgrade_why": _downgrade_why(doc.ladder or []),
           "temperature": cfg.temperature, "run": doc.run_index, "cold_load": doc.cold_load,
           "started_at": doc.started_at, "finished_at": doc.finished_at,
           # the run's middle on the probes' clock (Unix s): where the drift model reads the host
           "t_mid": (unix_time(doc.started_at) + unix_time(doc.finished_at)) / 2,
           # where the run ran differs from its config: kept, listed, out of the headline tables
           "placement_issues": placement_issues(doc)}
    if doc.server_settings is not None:  # studies made before the settings were recorded have none
        row["topology"] = doc.server_settings.topology
        row["server_settings"] = settings_label(doc.server_settings)
    for k, v in doc.metrics.model_dump().items():
        if k == "agents":
            for agent, a in v.items():
                row.update({f"{agent}_{ak}": av for ak, av in a.items()})
        else:
            row[k] = v
    # Power data (numbers only where NVML sampled a GPU): flattened as power_<key>, the GPU state
    # at the start and end as power_gpu_start_<key>, lists joined with ";".
    row.update(_flat_power(doc.power or {}))
    # The client's cost and the host's load during the run (bench/study/instrument.py).
    client = doc.client_cost.model_dump() if doc.client_cost else {}
    for k in ("client_cpu_s", "client_cpu_share", "host_busy_pct", "host_cores"):
        row[k] = client.get(k)
    row["tokens_out"] = sum(r.output_tokens for r in doc.requests)
    if doc.suite == "single":
        lat = doc.metrics.latency_ms
        row["served_tps"] = row["tokens_out"] / (lat / 1000) if lat else None
    else:
        together = sum(r.output_tokens for r in doc.requests if r.phase == "together")
        row["served_tps"] = together / doc.metrics.wall_s if doc.metrics.wall_s else None
    row["tokens_per_j"] = row.get("power_tokens_per_j")
    row["tokens_per_j_net"] = row.get("power_tokens_per_j_net")
    return row


def settings_label(block) -> str:
    """'np2 fa0 kv f16 · 2 threads' per used instance (joined with ' | ' when they differ)."""
    labels = [f"np{i.num_parallel} fa{int(i.flash_attention)} kv {i.kv_cache_type}"
              + (f" · {i.threads} threads" if i.threads else "") for i in block.instances.values()]
    return " | ".join(dict.fromkeys(labels))


def _plain(cfg) -> dict | None:
    return cfg.model_dump(exclude_unset=True) if cfg is not None else None


def request_rows(run: StoredRun, base: dict) -> list[dict]:
    """requests.csv rows of one run: each counted call with the reconciliation columns."""
    rows = []
    for rec in run.doc.requests:
        r = rec.to_json()
        itl = r["itl_ms"] or {}
        rows.append({**base, **{k: v for k, v in r.items() if k not in ("output_text", "itl_ms")},
                     "itl_ms_mean": itl.get("mean"), "itl_ms_p95": itl.get("p95"),
                     "ttft_unaccounted_ms": metrics.ttft_unaccounted_ms(rec.ttft_ms, rec.load_ms, rec.prompt_eval_ms),
                     "decode_overstatement_pct": metrics.decode_overstatement_pct(rec.decode_tps_server,
                                                                                  rec.decode_tps_client),
                     "stopped_early": rec.done_reason == "stop" and rec.output_tokens < run.doc.config.num_predict})
    return rows


def _downgrade_why(steps) -> str:
    """The first rung that did not run, as the run's ladder recorded it ('' without a ladder)."""
    first = next((st for st in steps if st.outcome != "ran"), None)
    if first is None:
        return ""
    where = f"{first.model} gpu_layers {first.gpu_layers} ctx {first.ctx}"
    return f"{first.error_kind} at {where}" + (f" ({first.error})" if first.outcome == "skipped" else "")


def _flat_power(block: dict, prefix: str = "power_") -> dict:
    out = {}
    for k, v in block.items():
        if isinstance(v, dict):
            out.update(_flat_power(v, f"{prefix}{k}_"))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = ";".join(map(str, v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _flag_outliers(runs: pd.DataFrame, mad_k: float) -> pd.DataFrame:
    runs = runs.copy()
    # an outlier_<metric> column for every metric the rule applies to in any suite
    flag_columns = list(dict.fromkeys(f"outlier_{m}" for _, m in metrics.role_pairs(metrics.OUTLIER)))
    for col in flag_columns:
        runs[col] = False
    for _, g in runs.groupby("cell", sort=False):
        suite = g["suite"].iloc[0]
        ordered = g.sort_values("run")
        # each run's metrics by name, nulls as None: the rule's input (bench/study/outliers.py)
        values = ordered.reindex(columns=list(metrics.outlier_metrics(suite))).astype(object)
        rows = values.where(values.notna(), None).to_dict(orient="records")
        for metric, flags in outlier_flags(rows, suite, mad_k).items():
            runs.loc[ordered.index, f"outlier_{metric}"] = flags
    runs["outlier"] = runs[flag_columns].any(axis=1)
    return runs


def cell_flags(results: Results, cell_key: str) -> dict[int, list[str]]:
    """run_index → the metrics on which that run is flagged (empty list: not flagged), as the
    analysis flagged them, for the valid runs of one config folder; a misplaced run is listed,
    never flagged (bench.study.outliers.cell_flags reads the same from the stored documents)."""
    rows = results.cell_runs(cell_key)
    out: dict[int, list[str]] = {}
    for _, r in rows.iterrows():
        out[int(r["run"])] = [m for m in metrics.outlier_metrics(r["suite"])
                              if f"outlier_{m}" in r and not pd.isna(r[f"outlier_{m}"]) and r[f"outlier_{m}"]]
    return out


def load_tables(store: Store, mad_k: float = 2.0, *, looks: dict[str, LookPlan] | None = None,
                drift: HostDrift | None = None, slo=None) -> Results:
    """The tidy frames of every valid stored run (the store's order), outliers flagged. Runs whose
    placement differed from their config, runs with a counted call whose prompt the engine
    reused (bench/analysis/prefill.py), and runs over a reconciliation bound
    (bench/analysis/validity.py) are kept apart. With an `slo` (the profile's) each run gets its
    goodput columns (bench/analysis/goodput.py). Each key metric gets its drift-adjusted twin
    `<metric>_adj` (bench/core/drift.py; the raw value without probes), and each config the repeated
    interval of its looks (`looks`: cell key → LookPlan; the ordinary t-interval for a config the
    plan does not name)."""
    req_rows, run_rows, asked, sampled = [], [], {}, []
    provenance = study_provenance(store)
    ran_on = run_hosts(store)
    for run in store.iter_runs():
        asked.setdefault(run.cell_key, _plain(run.doc.requested_config or run.doc.config))
        if run.doc.engine is not None:
            sampled.append(run)
        row = run_row(run, provenance if ran_on is None else {**provenance, FLEET_HOST: ran_on.get(str(run.rel_dir))})
        run_rows.append(row)
        req_rows += request_rows(run, {k: row[k] for k in BASE_COLUMNS})
    runs = pd.DataFrame(run_rows)
    requests = verify_prefill(pd.DataFrame(req_rows)) if req_rows else pd.DataFrame(req_rows)
    probes, events = store.read_jsonl(PROBES), store.read_jsonl(TIMELINE)
    stored_beside = {"coldstart": store.read_jsonl(COLDSTART), "sanity": store.read_json(SANITY),
                     "engine": engine_tables.engine_table(sampled, requests)}
    if runs.empty:
        return Results(requests, runs, pd.DataFrame(), probes=probes, events=events, asked=asked, drift=drift,
                       **stored_beside)
    runs = _adjust_for_drift(_count_voided(runs, requests), drift)
    runs = goodput.add_run_goodput(runs, requests, slo)  # slo None: no goodput columns
    runs = validity.add_validity_flags(runs, requests, validity.load_validity())
    misplaced = runs[runs["placement_issues"] != ""]
    voided = runs[(runs["placement_issues"] == "") & (runs["voided_requests"] > 0)]
    clean = (runs["placement_issues"] == "") & (runs["voided_requests"] == 0)
    invalid = runs[clean & (runs["validity_flag"] != "")]
    runs = _flag_outliers(runs[clean & (runs["validity_flag"] == "")].reset_index(drop=True), mad_k)
    config_rows = [config_row(g, (looks or {}).get(g["cell"].iloc[0]), drift)
                   for _, g in runs.groupby(["cell", "ran_as"], sort=True)]
    return Results(requests, runs, pd.DataFrame(config_rows), misplaced=misplaced.reset_index(drop=True),
                   voided=voided.reset_index(drop=True), probes=probes, events=events, asked=asked, drift=drift,
                   invalid=invalid.reset_index(drop=True) if not invalid.empty else pd.DataFrame(),
                   **stored_beside)


def config_row(g: pd.DataFrame, look: LookPlan | None, drift: HostDrift | None) -> dict:
    """One configs.csv row: the config's identity, n, and per key metric its statistics
    (stats.describe), its repeated interval (bench/core/sequential.py: `_ci95_low/_high` and
    `_rel_half_width`, valid at every look the study may have stopped at) and its drift-adjusted
    mean with the same interval widened by the drift reference's own error (`_adj_mean`,
    `_adj_ci95_low/_high`)."""
    first = g.iloc[0]
    suite = first["suite"]
    row = {k: first[k] for k in ("cell", *PROVENANCE_COLUMNS, "suite", "lang", "model", "baseline", "scenario",
                                 "config", "case", "ran_as", "gpu_layers", "ctx", "temperature")}
    row["n"] = len(g)
    extra = metrics.with_role(metrics.CONFIG_STAT, suite)  # only where the runs have a value
    for metric in [*metrics.key_metrics(suite), *extra]:
        if metric not in g:
            continue
        d = stats.describe([None if pd.isna(v) else v for v in g[metric]])
        if d["n"] == 0 and metric in extra:
            continue
        for stat in STATS:
            row[f"{metric}_{stat}"] = d.get(stat)
        iv = metric_interval(g, metric, look)
        row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"] = (iv.low, iv.high) if iv else (None, None)
        if metric not in metrics.key_metrics(suite):
            continue
        row[f"{metric}_rel_half_width"] = iv.rel_half_width if iv else None
        adj = metric_interval(g, f"{metric}_adj", look)
        if adj is not None and drift is not None and drift.reference_rel_half_width is not None \
                and host_exponent(metrics.unit_of(suite, metric)) != 0:
            adj = widen(adj, drift.reference_rel_half_width)
        row[f"{metric}_adj_mean"] = adj.mean if adj else None
        row[f"{metric}_adj_ci95_low"], row[f"{metric}_adj_ci95_high"] = (adj.low, adj.high) if adj else (None, None)
    if suite == "multi":
        row["contention_runs"] = int(g["contention"].sum())
        row["legacy_contention_runs"] = int(g["legacy_contention"].sum())
    row["cold_runs"] = int(g["cold_load"].sum())
    if "power_throttled" in g:
        row["throttled_runs"] = int((g["power_throttled"] == True).sum())  # noqa: E712 (nulls count as no)
    row["outlier_runs"] = int(g["outlier"].sum())
    return row


def metric_interval(g: pd.DataFrame, column: str, look: LookPlan | None) -> Interval | None:
    """The repeated interval of one column over a config's runs (its looks; the ordinary
    t-interval at the runs there are when the plan names none)."""
    values = _values(g, column)
    if len(values) < 2:
        return None
    return interval(values, look or LookPlan(len(values), len(values)))


def _count_voided(runs: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """voided_requests per run: its counted calls whose prompt the engine reused (prefill_reused)."""
    runs = runs.copy()
    if requests.empty or "prefill_reused" not in requests:
        runs["voided_requests"] = 0
        return runs
    reused = requests[requests["prefill_reused"] == True]  # noqa: E712 (None: not reported)
    counts = reused.groupby(["cell", "run"]).size()
    runs["voided_requests"] = [int(counts.get((c, r), 0)) for c, r in zip(runs["cell"], runs["run"])]
    return runs


def _adjust_for_drift(runs: pd.DataFrame, drift: HostDrift | None) -> pd.DataFrame:
    """`drift_factor` h(t) at each run's middle and `<metric>_adj` = x · h(t)^(−e) for every key
    metric of its suite (bench/core/drift.py; e from the metric's unit). Without probes the adjusted
    value is the raw one and the factor is null."""
    added = {"drift_factor": [drift.factor(t) if drift else None for t in runs["t_mid"]]}
    for metric in dict.fromkeys(m for _, m in metrics.role_pairs(metrics.KEY)):
        if metric not in runs:
            continue
        out = []
        for suite, value, t in zip(runs["suite"], runs[metric], runs["t_mid"]):
            unit = metrics.unit_of(suite, metric) if metric in metrics.key_metrics(suite) else None
            if drift is None or unit is None or pd.isna(value):
                out.append(value)
            else:
                out.append(drift.adjust(float(value), t, host_exponent(unit)))
        added[f"{metric}_adj"] = out
    # one concat, not a column at a time (pandas warns of a fragmented frame)
    return pd.concat([runs, pd.DataFrame(added, index=runs.index)], axis=1)


# the run identity columns each requests.csv row repeats
BASE_COLUMNS = ("cell", "suite", "lang", "model", "baseline", "scenario", "config", "case", "gpu_layers", "ctx",
                "ran_as", "downgrade_why", "temperature", "run", "cold_load", "started_at", "placement_issues")


# ---- derived tables ----------------------------------------------------------------------------


def _values(df: pd.DataFrame, metric: str) -> list[float]:
    return [float(v) for v in df[metric] if pd.notna(v)] if metric in df else []


def normalized(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each model's mean as % of the baseline model's mean in the same suite, language and case
    (config or scenario): 100 × mean_model / mean_baseline."""
    rows = []
    if runs.empty or baseline not in set(runs["model"]):
        return pd.DataFrame(rows)
    for suite, metric in metrics.role_pairs(metrics.NORMALIZED):
        sub = runs[runs["suite"] == suite]
        if sub.empty or metric not in sub:
            continue
        for (lang, case), g in sub.groupby(["lang", "case"], sort=True):
            # the baseline as asked; where every baseline run was downgraded, what it ran
            base_runs = g[g["model"] == baseline]
            if (base_runs["ran_as"] == "").any():
                base_runs = base_runs[base_runs["ran_as"] == ""]
            base = base_runs[metric].mean()
            if pd.isna(base) or base == 0:
                continue
            means = g.groupby(["model", "ran_as"])[metric].mean()
            for (model, ran_as), v in means.items():
                rows.append({"suite": suite, "lang": lang, "case": case, "metric": metric, "model": model,
                             "ran_as": ran_as, "mean": v, "baseline_mean": base, "pct_of_baseline": v / base * 100})
    return pd.DataFrame(rows)


def compare_configs(a: pd.DataFrame, b: pd.DataFrame, metric: str, looks: dict[str, LookPlan] | None = None,
                    ) -> dict:
    """The comparison rule (sequential.compare) between two configs' runs on a metric, drift-adjusted
    (`<metric>_adj`) and raw: mean(a) − mean(b) with √(half_a² + half_b²), each half-width the
    config's repeated interval over its looks. The adjusted verdict decides (`winner`: "a", "b"
    or None); the raw one is kept beside it (`*_raw`) to show what the adjustment changed."""
    higher = not metrics.lower_is_better(metric)

    def look(g: pd.DataFrame) -> LookPlan | None:
        return (looks or {}).get(g["cell"].iloc[0]) if "cell" in g and not g.empty else None

    out = {}
    for suffix, column in (("", f"{metric}_adj" if f"{metric}_adj" in a else metric), ("_raw", metric)):
        cmp = compare(*(metric_interval(g, column, look(g)) for g in (a, b)), higher_is_better=higher)
        out.update({f"{k}{suffix}": v for k, v in cmp.items()})
        out[f"mean_a{suffix}"] = float(pd.Series(_values(a, column)).mean()) if _values(a, column) else None
        out[f"mean_b{suffix}"] = float(pd.Series(_values(b, column)).mean()) if _values(b, column) else None
    return out


def winners(runs: pd.DataFrame, looks: dict[str, LookPlan] | None = None) -> pd.DataFrame:
    """The winner rule per bench (suite × language) and case: rank the models by their
    drift-adjusted mean of the headline metric (decode_tps single, speedup multi and steps; higher
    is better); the leader is named the winner only when the comparison rule's interval of
    mean(leader) − mean(runner-up) excludes 0 (compare_configs), and only when every run of the
    case ran alike (no model on another rung of the fallback ladder). `verdict_raw` is the same rule
    on the unadjusted values."""
    rows = []
    for suite, lang in (bench.split("-") for bench in metrics.BENCHES):
        sub = runs[(runs["suite"] == suite) & (runs["lang"] == lang)] if not runs.empty else runs
        if sub.empty:
            continue
        metric = metrics.headline(suite)
        column = f"{metric}_adj" if f"{metric}_adj" in sub else metric
        for case, g in sub.groupby("case", sort=True):
            means = g.groupby("model")[column].mean().dropna().sort_values(ascending=False)
            row = {"bench": f"{suite}-{lang}", "suite": suite, "lang": lang, "case": case, "metric": metric,
                   "models": len(means), "leader": means.index[0] if len(means) else None,
                   "leader_mean": means.iloc[0] if len(means) else None,
                   "runner_up": None, "runner_up_mean": None, "n_leader": None, "n_runner_up": None,
                   "diff": None, "ci_low": None, "ci_high": None, "winner": None,
                   # what every run of the case ran, when the ladder downgraded them all alike
                   "ran_as": g["ran_as"].iloc[0] if g["ran_as"].nunique() == 1 else "",
                   "diff_raw": None, "ci_low_raw": None, "ci_high_raw": None, "verdict_raw": None}
            if len(means) < 2:
                row["verdict"] = row["verdict_raw"] = "one model measured"
                rows.append(row)
                continue
            lead, second = means.index[0], means.index[1]
            if g["ran_as"].nunique() > 1:  # a downgraded model ran another config: not like for like
                ran = sorted({f"{m} ran {r}" for m, r in zip(g["model"], g["ran_as"]) if r})
                row.update(runner_up=second, runner_up_mean=means.iloc[1],
                           verdict=f"not compared: {'; '.join(ran)} (fallback ladder)")
                row["verdict_raw"] = row["verdict"]
                rows.append(row)
                continue
            cmp = compare_configs(g[g["model"] == lead], g[g["model"] == second], metric, looks)
            row.update(runner_up=second, runner_up_mean=means.iloc[1], n_leader=cmp["n_a"],
                       n_runner_up=cmp["n_b"], diff=cmp["diff"], ci_low=cmp["ci_low"], ci_high=cmp["ci_high"],
                       diff_raw=cmp["diff_raw"], ci_low_raw=cmp["ci_low_raw"], ci_high_raw=cmp["ci_high_raw"])
            for suffix in ("", "_raw"):
                if cmp[f"diff{suffix}"] is None:
                    row[f"verdict{suffix}"] = "too few runs (< 2 per model)"
                elif cmp[f"winner{suffix}"] is not None:
                    better = lead if cmp[f"winner{suffix}"] == "a" else second
                    row[f"verdict{suffix}"] = better
                    if not suffix:
                        row["winner"] = better
                else:
                    row[f"verdict{suffix}"] = "no significant difference"
            rows.append(row)
    return pd.DataFrame(rows)


def lang_deltas(runs: pd.DataFrame, looks: dict[str, LookPlan] | None = None) -> pd.DataFrame:
    """Rust − Python per suite, model and case, drift-adjusted, with the comparison rule's
    interval of the difference of means (compare_configs); `significant` when it excludes 0;
    the raw delta and verdict beside it."""
    rows = []
    if runs.empty or runs["lang"].nunique() < 2:
        return pd.DataFrame(rows)
    # only runs that ran alike are paired: a downgraded config is its own group
    groups = sorted(runs.groupby(["suite", "model", "case", "ran_as"], sort=True),
                    key=lambda kv: kv[0][0] != "single")
    for (suite, model, case, ran_as), g in groups:
        py, rs = g[g["lang"] == "python"], g[g["lang"] == "rust"]
        if py.empty or rs.empty:
            continue
        for metric in metrics.with_role(metrics.LANG_DELTA, suite):
            if not _values(rs, metric) or not _values(py, metric):
                continue
            cmp = compare_configs(rs, py, metric, looks)
            py_mean, rs_mean = cmp["mean_b"], cmp["mean_a"]
            rows.append({"suite": suite, "model": model, "case": case, "ran_as": ran_as, "metric": metric,
                         "python_mean": py_mean, "rust_mean": rs_mean, "n_python": cmp["n_b"], "n_rust": cmp["n_a"],
                         "delta": cmp["diff"] if cmp["diff"] is not None else rs_mean - py_mean,
                         "delta_pct": ((rs_mean - py_mean) / py_mean * 100) if py_mean else None,
                         "ci_low": cmp["ci_low"], "ci_high": cmp["ci_high"],
                         "significant": cmp["winner"] is not None,
                         "python_mean_raw": cmp["mean_b_raw"], "rust_mean_raw": cmp["mean_a_raw"],
                         "delta_raw": cmp["diff_raw"], "ci_low_raw": cmp["ci_low_raw"],
                         "ci_high_raw": cmp["ci_high_raw"], "significant_raw": cmp["winner_raw"] is not None})
    return pd.DataFrame(rows)


def placebo(runs: pd.DataFrame, profile: Profile, looks: dict[str, LookPlan] | None = None) -> pd.DataFrame:
    """The A/A check: each placebo model (profile `placebo_of`: the same weights under another name,
    measured in a block of its own) against its original, per suite, language and case, on every
    key metric, with the comparison rule, drift-adjusted and raw. Every row should read 'no
    difference'; a difference means the design or the adjustment invents effects."""
    rows = []
    for m in (m for m in profile.models if m.placebo_of) if not runs.empty else ():
        for (suite, lang, case), g in runs[runs["model"].isin([m.name, m.placebo_of])].groupby(
                ["suite", "lang", "case"], sort=True):
            a, b = g[g["model"] == m.name], g[g["model"] == m.placebo_of]
            if a.empty or b.empty:
                continue
            for metric in metrics.key_metrics(suite):
                if not _values(a, metric) or not _values(b, metric):
                    continue
                cmp = compare_configs(a, b, metric, looks)
                rows.append({"placebo": m.name, "original": m.placebo_of, "suite": suite, "lang": lang, "case": case,
                             "metric": metric, "placebo_mean": cmp["mean_a"], "original_mean": cmp["mean_b"],
                             "n_placebo": cmp["n_a"], "n_original": cmp["n_b"], "diff": cmp["diff"],
                             "ci_low": cmp["ci_low"], "ci_high": cmp["ci_high"],
                             "verdict": "no difference" if cmp["winner"] is None else "DIFFERENT",
                             "diff_raw": cmp["diff_raw"], "ci_low_raw": cmp["ci_low_raw"],
                             "ci_high_raw": cmp["ci_high_raw"],
                             "verdict_raw": "no difference" if cmp["winner_raw"] is None else "DIFFERENT"})
    return pd.DataFrame(rows)


def eta_squared_table(runs: pd.DataFrame, specs, factors: dict[str, str], within: str) -> pd.DataFrame:
    """η² (stats.eta_squared) of each factor alone (label → runs column) per (suite, metric) of
    `specs`; the last factor groups by everything that varied, so 1 − its η² is the run-to-run
    share, the `within` row. The factors are not orthogonal in an unbalanced study, so the shares
    need not sum to 1. Shared by the study's variance table and `invoke compare`'s."""
    rows = []
    whole = list(factors.values())[-1]
    for suite, metric in specs:
        sub = runs[runs["suite"] == suite] if not runs.empty else runs
        if sub.empty or metric not in sub:
            continue
        sub = sub[sub[metric].notna()]
        for label, col in factors.items():
            r = stats.eta_squared(sub[metric].tolist(), sub[col].tolist())
            rows.append({"suite": suite, "metric": metric, "factor": label, "levels": r["k"], "n": r["n"],
                         "eta_sq": r["eta_sq"], "p_value": r["p_value"]})
        share = stats.eta_squared(sub[metric].tolist(), sub[whole].tolist())["eta_sq"]
        rows.append({"suite": suite, "metric": metric, "factor": within,
                     "levels": None, "n": len(sub), "eta_sq": None if share is None else 1 - share, "p_value": None})
    return pd.DataFrame(rows)


def variance_shares(runs: pd.DataFrame) -> pd.DataFrame:
    """η² of model, language, case (and the server settings, where they varied; the fleet host, in a
    study merged from a fleet's shards) per variance metric; `config (all factors)` groups by the
    whole cell, and by cell and host where the host is a factor (eta_squared_table)."""
    factors = {"model": "model", "language": "lang", "case": "case"}
    if "server_settings" in runs and runs["server_settings"].notna().any():
        factors["server settings"] = "server_settings"
    if FLEET_HOST in runs and runs[FLEET_HOST].notna().any():
        factors["host"] = FLEET_HOST
        runs = runs.assign(cell_host=runs["cell"] + " @ " + runs[FLEET_HOST].astype(str))
        factors["config × host (all factors)"] = "cell_host"
    else:
        factors["config (all factors)"] = "cell"
    return eta_squared_table(runs, metrics.role_pairs(metrics.VARIANCE), factors, "run-to-run (within config)")


def host_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Per config and variance metric, the mean of each fleet host's runs and its difference from the
    config's mean over every host (%): where the host's blocking effect shows, config by config."""
    rows: list[dict] = []
    for suite, metric in metrics.role_pairs(metrics.VARIANCE):
        sub = runs[(runs["suite"] == suite) & runs[FLEET_HOST].notna()] if metric in runs else runs.iloc[0:0]
        sub = sub[sub[metric].notna()] if not sub.empty else sub
        for cell, g in sub.groupby("cell", sort=True):
            overall = g[metric].mean()
            for host, h in g.groupby(FLEET_HOST, sort=True):
                rows.append({"cell": cell, "suite": suite, "metric": metric, "fleet_host": host, "n": len(h),
                             "mean": h[metric].mean(), "config_mean": overall,
                             "vs_config_pct": (h[metric].mean() / overall - 1) * 100 if overall else None})
    return pd.DataFrame(rows)


def outlier_list(runs: pd.DataFrame) -> pd.DataFrame:
    """Every flagged run with the flagged metrics, its value and its config's median."""
    rows = []
    if runs.empty:
        return pd.DataFrame(rows)
    for _, r in runs[runs["outlier"]].iterrows():
        cfg = runs[runs["cell"] == r["cell"]]
        for metric in metrics.outlier_metrics(r["suite"]):
            if r[f"outlier_{metric}"]:
                rows.append({"cell": r["cell"], "run": int(r["run"]), "metric": metric, "value": r[metric],
                             "config_median": cfg[metric].median(), "n": len(cfg)})
    return pd.DataFrame(rows)


def frontier(configs: pd.DataFrame) -> pd.DataFrame:
    """Power/throughput per config where power data exists; `pareto` marks the configs that no
    other config of the same suite beats on both served tok/s and tokens/J (a multi run's rate
    is two agents' together, so the suites are never compared with each other)."""
    if configs.empty or "tokens_per_j_mean" not in configs:
        return pd.DataFrame()
    df = configs[configs["tokens_per_j_mean"].notna() & configs["served_tps_mean"].notna()]
    df = df[["cell", "suite", "lang", "model", "case", "served_tps_mean", "tokens_per_j_mean"]
            + [c for c in ("tokens_per_j_net_mean", "power_mean_power_w_mean", "power_idle_power_w_mean")
               if c in df]].copy()

    def dominated(r, g) -> bool:
        x, y = g["served_tps_mean"], g["tokens_per_j_mean"]
        return bool(((x >= r["served_tps_mean"]) & (y >= r["tokens_per_j_mean"])
                     & ((x > r["served_tps_mean"]) | (y > r["tokens_per_j_mean"]))).any())

    df["pareto"] = [not dominated(r, df[df["suite"] == r["suite"]]) for _, r in df.iterrows()]
    return df


def thermal_trend(runs: pd.DataFrame, groups: int = 10) -> pd.DataFrame:
    """The GPU's state across the study: runs in the order they started, cut into at most
    `groups` consecutive blocks; per block the mean start and end temperature, the hottest
    sample, the median SM clock at the run ends, the power limit and the throttled runs."""
    if runs.empty or "power_gpu_start_temp_c" not in runs or runs["power_gpu_start_temp_c"].isna().all():
        return pd.DataFrame()
    ordered = runs.sort_values("started_at").reset_index(drop=True)
    ordered["order"] = range(1, len(ordered) + 1)
    ordered["block"] = [i * min(groups, len(ordered)) // len(ordered) for i in range(len(ordered))]
    rows = []
    for _, g in ordered.groupby("block", sort=True):
        throttled = g[g["power_throttled"] == True] if "power_throttled" in g else g.iloc[0:0]  # noqa: E712
        rows.append({"runs": f"{g['order'].iloc[0]}–{g['order'].iloc[-1]}", "n": len(g),
                     "from": g["started_at"].iloc[0], "to": g["started_at"].iloc[-1],
                     "start_temp_c_mean": g["power_gpu_start_temp_c"].mean(),
                     "end_temp_c_mean": g["power_gpu_end_temp_c"].mean(),
                     "max_temp_c": g["power_max_temp_c"].max(),
                     "end_sm_clock_mhz_median": g["power_gpu_end_sm_clock_mhz"].median(),
                     "power_limit_w": g["power_gpu_end_power_limit_w"].median(),
                     "throttled_runs": len(throttled),
                     "throttled": "; ".join(f"{r['cell']} run {r['run']} ({r['power_throttle_reasons']})"
                                            for _, r in throttled.iterrows())})
    return pd.DataFrame(rows)


def cost(configs: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Tokens per dollar per config: GPU-hour price → served_tps × 3600 / gpu_hour_usd;
    electricity price → tokens_per_j × 3.6·10⁶ J/kWh / electricity_usd_per_kwh."""
    p = profile.pricing
    if configs.empty or (p.gpu_hour_usd is None and p.electricity_usd_per_kwh is None):
        return pd.DataFrame()
    rows = []
    for _, r in configs.iterrows():
        row = {"cell": r["cell"], "suite": r["suite"], "lang": r["lang"], "model": r["model"], "case": r["case"],
               "served_tps_mean": r.get("served_tps_mean")}
        if p.gpu_hour_usd is not None and pd.notna(r.get("served_tps_mean")):
            row["tokens_per_usd_gpu_hour"] = r["served_tps_mean"] * 3600 / p.gpu_hour_usd
        tpj = r.get("tokens_per_j_mean")
        if p.electricity_usd_per_kwh is not None and tpj is not None and pd.notna(tpj):
            row["tokens_per_usd_electricity"] = tpj * 3.6e6 / p.electricity_usd_per_kwh
        rows.append(row)
    return pd.DataFrame(rows)


def reconciliation(requests: pd.DataFrame) -> pd.DataFrame:
    """Client against engine, per engine API and model: median and p95 of ttft_unaccounted_ms and
    decode_overstatement_pct over the counted requests, and how many calls stopped before
    num_predict (Ollama has no ignore_eos)."""
    if requests.empty:
        return pd.DataFrame()
    rows = []
    for (api, model), g in requests.groupby(["api", "model"], sort=True):
        row = {"api": api, "model": model, "requests": len(g), "stopped_early": int(g["stopped_early"].sum())}
        for col in ("ttft_unaccounted_ms", "decode_overstatement_pct"):
            vals = g[col].dropna()
            row[f"{col}_median"] = float(vals.median()) if len(vals) else None
            row[f"{col}_p95"] = float(vals.quantile(0.95)) if len(vals) else None
        rows.append(row)
    return pd.DataFrame(rows)


def overhead(events: list[dict]) -> pd.DataFrame:
    """Where the bench's time went (instrument_tables.study_overhead), with the ratio in `.attrs`, and
    the ratio counted the way studies did before the union of request spans."""
    ratio, rows = instrument_tables.study_overhead(events)
    df = pd.DataFrame(rows)
    df.attrs["study_overhead_ratio"] = ratio
    df.attrs["summed_overhead_ratio"] = instrument_tables.study_summed_overhead_ratio(events)
    return df


def sampling(configs: pd.DataFrame, cells: list[Cell], stops: dict[str, dict]) -> pd.DataFrame:
    """How many runs each config got and why it stopped: per config and precision metric (the
    suite's headline for a fixed config), n, the repeated interval's relative half-width against
    the target, and the stop reason (an adaptive study's sampling.jsonl; 'fixed runs' otherwise)."""
    rows = []
    if configs.empty:
        return pd.DataFrame(rows)
    by_key = {c.key: c for c in cells}
    for _, r in configs[configs["ran_as"] == ""].iterrows():
        cell = by_key.get(r["cell"])
        precision = cell.precision if cell else None
        for metric in (precision.metrics if precision else [metrics.headline(r["suite"])]):
            rel = r.get(f"{metric}_rel_half_width")
            target = precision.rel_half_width if precision else None
            stop = stops.get(r["cell"], {})
            rows.append({"cell": r["cell"], "suite": r["suite"], "lang": r["lang"], "model": r["model"],
                         "case": r["case"], "metric": metric, "n": r["n"],
                         "min_runs": precision.min_runs if precision else (cell.runs if cell else None),
                         "max_runs": precision.max_runs if precision else (cell.runs if cell else None),
                         "mean": r.get(f"{metric}_mean"), "ci95_low": r.get(f"{metric}_ci95_low"),
                         "ci95_high": r.get(f"{metric}_ci95_high"), "rel_half_width": rel, "target": target,
                         "within_target": None if target is None or rel is None or pd.isna(rel) else bool(rel <= target),
                         "stop_reason": stop.get("reason") or ("fixed runs" if not precision else "not recorded")})
    return pd.DataFrame(rows)


def prefill_summary(requests: pd.DataFrame) -> pd.DataFrame:
    """Per engine API and model: counted calls, how many the prefill check could judge and by
    which rule, how many were voided (the engine reused a cached prompt), and the cold prefill
    rate (median of the reference)."""
    if requests.empty or "prefill_reused" not in requests:
        return pd.DataFrame()
    rows = []
    for (api, model), g in requests.groupby(["api", "model"], sort=True):
        rows.append({"api": api, "model": model, "requests": len(g),
                     "judged": int(g["prefill_reused"].notna().sum()),
                     "voided": int((g["prefill_reused"] == True).sum()),  # noqa: E712
                     "rules": "; ".join(f"{k}: {v}" for k, v in g["prefill_rule"].value_counts().items()),
                     "cold_prefill_tps_median": g["prefill_reference_tps"].median(),
                     "max_reused_share": g["prefill_reused_share"].max()})
    return pd.DataFrame(rows)


def harness_engine(probes: list[dict]) -> pd.DataFrame:
    """The harness against the engine's own rate at each drift probe: the streamed calls' client
    decode rate and the plain calls' engine rate, a few seconds apart at the same prompt,
    options and threads (metrics.harness_to_engine)."""
    rows = [{"probe": p["label"], "at": p.get("at"), "harness_decode_tps": p.get("harness_decode_tps"),
             "engine_decode_tps": p.get("engine_decode_tps"), "harness_to_engine": p.get("harness_to_engine")}
            for p in probes if p.get("harness_to_engine") is not None]
    return pd.DataFrame(rows)


def client_cost(runs: pd.DataFrame) -> pd.DataFrame:
    """Per suite, model and case: each language's mean client_cpu_share (cores) and the host's
    mean busy share during its runs, so a Python/Rust delta can be read beside what the clients
    cost on this host."""
    if runs.empty or "client_cpu_share" not in runs:
        return pd.DataFrame()
    rows = []
    for (suite, model, case), g in runs.groupby(["suite", "model", "case"], sort=True):
        row = {"suite": suite, "model": model, "case": case}
        for lang, lg in g.groupby("lang"):
            row[f"{lang}_client_cpu_share"] = lg["client_cpu_share"].mean()
            row[f"{lang}_host_busy_pct"] = lg["host_busy_pct"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def derive(tables: Results, profile: Profile) -> dict[str, pd.DataFrame]:
    runs, configs = tables.runs, tables.configs
    looks = {c.key: c.looks(profile.outliers.max_extra_runs) for c in tables.cells}
    tables.derived = {
        "normalized": normalized(runs, profile.baseline.name),
        "winners": winners(runs, looks),
        "lang_deltas": lang_deltas(runs, looks),
        "placebo": placebo(runs, profile, looks),
        "sampling": sampling(configs, tables.cells, tables.stops),
        "tails": tails.tail_table(tables.requests[tables.requests["prefill_reused"] != True])  # noqa: E712
        if not tables.requests.empty else pd.DataFrame(),
        "prefill": prefill_summary(tables.requests),
        "harness_engine": harness_engine(tables.probes),
        "variance": variance_shares(runs),
        "outliers": outlier_list(runs),
        "frontier": frontier(configs),
        "thermal": thermal_trend(runs),
        "cost": cost(configs, profile),
        "reconciliation": reconciliation(tables.requests),
        "drift": pd.DataFrame(instrument_tables.drift_rows(tables.probes, profile.instrument.drift_threshold_pct)),
        "overhead": overhead(tables.events),
        "client_cost": client_cost(runs),
        "topology": topology(runs, looks),
        "steps": steps(runs, looks),
        "goodput": goodput.goodput_table(runs, tables.requests, profile.slo, tables.failures),
        "engine": tables.engine,
        **probe_tables.derived_tables(tables.coldstart, tables.sanity),
    }
    if FLEET_HOST in runs:  # a study merged from a fleet's shards: the host of each run is a factor
        tables.derived["host_means"] = host_means(runs)
    return tables.derived


def topology(runs: pd.DataFrame, looks: dict[str, LookPlan] | None = None) -> pd.DataFrame:
    """Two instances against one instance with two slots (the topology control), per model,
    language and server settings: each scenario's drift-adjusted mean of the together-phase wall
    time, the speedup and the served rate, and the comparison rule's interval of mean(two
    instances) − mean(one instance) (compare_configs); `better` names the topology it favours, or
    'no difference'."""
    rows: list[dict] = []
    if runs.empty or "scenario" not in runs:
        return pd.DataFrame(rows)
    two, one = TOPOLOGY_PAIR
    sub = runs[(runs["suite"] == "multi") & runs["scenario"].isin(TOPOLOGY_PAIR) & (runs["ran_as"] == "")]
    if sub.empty or set(sub["scenario"]) != set(TOPOLOGY_PAIR):
        return pd.DataFrame(rows)
    # the control's own instance has two slots and both instances' threads: its settings label
    # differs from the pair's, so the pair is matched on the settings of the dual scenario's runs
    for (model, lang), g in sub.groupby(["model", "lang"], sort=True):
        a, b = g[g["scenario"] == two], g[g["scenario"] == one]
        if a.empty or b.empty:
            continue
        # wall time first: the topology verdict (findings.topology_verdicts) reads it
        for metric in sorted(metrics.with_role(metrics.TOPOLOGY, "multi"), key=lambda m: m != "wall_s"):
            cmp = compare_configs(a, b, metric, looks)
            better = {"a": "two instances", "b": "one instance, two slots"}.get(cmp["winner"], "no difference")
            rows.append({"model": model, "lang": lang, "metric": metric,
                         "two_instances_mean": cmp["mean_a"], "one_instance_mean": cmp["mean_b"],
                         "n_two": cmp["n_a"], "n_one": cmp["n_b"], "diff": cmp["diff"],
                         "ci_low": cmp["ci_low"], "ci_high": cmp["ci_high"], "better": better,
                         "settings_two": "; ".join(sorted(set(a.get("server_settings", pd.Series(dtype=str))
                                                               .dropna()))),
                         "settings_one": "; ".join(sorted(set(b.get("server_settings", pd.Series(dtype=str))
                                                               .dropna())))})
    return pd.DataFrame(rows)


def steps(runs: pd.DataFrame, looks: dict[str, LookPlan] | None = None) -> pd.DataFrame:
    """The agent-count steps per model and server settings: for each N, the mean speedup (with
    its repeated 95 % interval, bench/core/sequential.py), efficiency, per-agent decode rate, tps ratio and TTFT inflation against
    one agent alone in the same runs (over all agents, and of each run's worst agent)."""
    rows: list[dict] = []
    if runs.empty:
        return pd.DataFrame(rows)
    sub = runs[(runs["suite"] == "steps") & (runs["ran_as"] == "")]
    if sub.empty:
        return pd.DataFrame(rows)
    keys = ["model", "lang", "server_settings"] if "server_settings" in sub else ["model", "lang"]
    # the worst agent of each run: one agent that waits for a slot is diluted in the mean of N
    sub = sub.assign(ttft_inflation_worst=sub.filter(regex=r"^agent\d+_ttft_inflation$").max(axis=1),
                     tps_ratio_worst=sub.filter(regex=r"^agent\d+_tps_ratio$").min(axis=1))
    for key, g in sub.groupby(keys + ["n_agents"], sort=True, dropna=False):
        iv = metric_interval(g, "speedup", (looks or {}).get(g["cell"].iloc[0]))
        rows.append({**dict(zip(keys + ["n_agents"], key)), "n": len(_values(g, "speedup")),
                     "speedup_mean": g["speedup"].mean(), "speedup_ci95_low": iv.low if iv else None,
                     "speedup_ci95_high": iv.high if iv else None,
                     "efficiency_pct_mean": g["efficiency_pct"].mean(),
                     "decode_tps_together_mean": g["decode_tps_together"].mean(),
                     "decode_tps_alone_mean": g["decode_tps_alone"].mean(),
                     "tps_ratio_mean": g["tps_ratio"].mean(), "ttft_inflation_mean": g["ttft_inflation"].mean(),
                     "tps_ratio_worst": g["tps_ratio_worst"].mean(),
                     "ttft_inflation_worst": g["ttft_inflation_worst"].mean(),
                     "contention_runs": int(g["contention"].sum())})
    return pd.DataFrame(rows)


def study_cells(store: Store, profile: Profile) -> tuple[list[Cell], Profile]:
    """The configs the study planned and the profile it ran with: from its manifest's plans (with
    each bench call's overrides), else the profile's full plan."""
    manifest = store.read_json(MANIFEST_NAME)
    try:
        ran_with = profile_from_manifest(manifest) if manifest else profile
        return planned_cells(manifest, ran_with), ran_with
    except BenchError:
        return planned_cells(None, profile), profile


def build(store: Store, profile: Profile, cells: list[Cell] | None = None) -> Results:
    """The one analysis of a study: frames, derived tables and findings, each computed once.
    `cells`: the plan's configs (default: the study's, study_cells)."""
    ran_with = profile
    if cells is None:
        cells, ran_with = study_cells(store, profile)
    looks = {c.key: c.looks(ran_with.outliers.max_extra_runs) for c in cells}
    points = instrument_tables.probe_points(store.read_jsonl(PROBES))
    results = load_tables(store, profile.outliers.mad_k, looks=looks, drift=HostDrift(points) if points else None,
                          slo=profile.slo)
    results.failures = store.failures()
    results.cells = cells
    results.stops = {e["cell"]: e for e in store.read_jsonl(SAMPLING)}  # the last decision per config wins
    if results.runs.empty:
        return results
    derive(results, profile)
    th = profile.multi.contention
    results.findings = findings.build(results, results.failures, store.read_json(CLIENT_OVERHEAD_NAME),
                                      (th.min_tps_ratio, th.max_ttft_inflation))
    return results


def export_tables(store: Store, results: Results) -> dict[str, Path]:
    """tables/<name>.csv for every frame."""
    out = {}
    frames = {"requests": results.requests, "runs": results.runs, "configs": results.configs,
              "misplaced_runs": results.misplaced, "voided_runs": results.voided,
              "invalid_runs": results.invalid, **results.derived}
    for name, df in frames.items():
        path = store.root / "tables" / f"{name}.csv"
        atomic_write_text(path, df.to_csv(index=False))
        out[name] = path
    return out


def export_findings(store: Store, results: Results) -> Path | None:
    """tables/findings.json: the rule-made conclusions (None when there are none)."""
    if not results.findings:
        return None
    path = store.root / "tables" / "findings.json"
    atomic_write_json(path, results.findings)
    return path
