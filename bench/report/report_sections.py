"""The report's sections (report stage): each context builder takes the study's outputs
(bench/report/outputs.py StudyOutputs: the analysis and what the study stored) and returns the names one
part of report.md.j2 shows; the table renderers below them turn the analysis's frames into
markdown (bench/core/md_table.py). Nothing here reads the study's measuring modules. A table that
shows a run metric names it by the registry's label (bench/core/metrics.py key_metrics)."""

from __future__ import annotations

import inspect

import pandas as pd

from bench.analysis import findings, tails, validity
from bench.analysis.tables import DERIVED_DEFINITIONS
from bench.config.ladder import Skip
from bench.config.profile import Profile
from bench.config.sanity_set import RULE, load_sanity
from bench.core import drift, fmt, metrics, protocol, sequential, stats
from bench.core.errors import LOAD, kind_class
from bench.core.manifest import Manifest, ModelIdentity
from bench.core.md_table import md_table
from bench.core.protocol import IDLE_SETTLE_S
from bench.report.outputs import StudyOutputs


def _short(text: str | None, n: int = 60) -> str:
    if text is None:
        return "–"
    one = " ".join(text.split()).replace("|", "\\|")
    return one if len(one) <= n else one[: n - 1] + "…"


# ---- the model probes (bench/study/probes.py measures, bench/analysis/probe_tables.py tabulates) ------------------


def sanity_flags(sanity: dict | None) -> list[str]:
    """The lines under the report's title: every judged model whose answers are junk, or that could
    not be asked, with what to check."""
    out = []
    for m in (sanity or {}).get("models", {}).values():
        if m["verdict"] == "junk":
            out.append(f"**Answer sanity: {m['model']} answered {m['right']} of {m['asked']} trivial questions "
                       f"right** (at least {sanity['min_correct']} expected; `sanity.json`): its numbers may measure a "
                       f"broken setup. Check its chat template (does the user's message reach the model? the "
                       f"profile's `template`, `ollama show --template`) and its quantisation (a damaged or too "
                       f"aggressive quant); see \"Cold start and answer sanity\".")
        elif m["verdict"] == "failed":
            err = next(a["error"] for a in m["answers"] if a["error"])
            out.append(f"**Answer sanity: {m['model']} could not be asked** ({_short(err, 160)}); its answers were "
                       f"not checked.")
    return out


def model_probes(results, profile: Profile) -> dict:
    """What the report's probe partials show (_probes.md.j2, _probes_flags.md.j2)."""
    cs = results.derived.get("coldstart", pd.DataFrame())
    doc = results.sanity or {}
    models = list(doc.get("models", {}).values())
    return {
        "on": {"cold_start": profile.instrument.cold_start, "sanity": profile.instrument.sanity},
        "flags": sanity_flags(doc),
        "coldstart": md_table([{"model": r["model"], "instance": f"{r['endpoint']} ({r['api']})",
                                "load ms (engine)": fmt.num(r["load_ms"]),
                                "cold TTFT / e2e ms": f"{fmt.num(r['cold_ttft_ms'])} / {fmt.num(r['cold_e2e_ms'])}",
                                "warm TTFT / e2e ms": f"{fmt.num(r['warm_ttft_ms'])} / {fmt.num(r['warm_e2e_ms'])}",
                                "cold − warm TTFT / e2e ms": f"{fmt.num(r['ttft_penalty_ms'])} / "
                                                             f"{fmt.num(r['e2e_penalty_ms'])}",
                                "failed": _short(r["error"], 120) if r["error"] else ""}
                               for _, r in cs.iterrows()]),
        "sanity_models": md_table([{"model": m["model"], "kind": m["kind"], "why": m["kind_why"],
                                    "right": (f"{m['right']} of {m['asked']}" if m["judged"]
                                              else f"({m['right']} of {m['asked']})"),
                                    "verdict": m["verdict"]} for m in models]),
        "sanity_answers": md_table([{"model": m["model"], "question": a["id"],
                                     "asked": _short(a["messages"][-1]["content"]),
                                     "expected / wrong": a["expect"] + (f" / {', '.join(a['wrong'])}" if a["wrong"]
                                                                        else ""),
                                     "answer": (_short(a["response"]) if a["error"] is None
                                                else f"error: {_short(a['error'])}"),
                                     "right": "–" if a["right"] is None else ("yes" if a["right"] else "no")}
                                    for m in models for a in m["answers"]]),
        "sanity_rule": doc.get("rule", RULE), "min_correct": doc.get("min_correct") or load_sanity()[0].min_correct,
    }


# ---- results tables ------------------------------------------------------------------------------


def _mean_ci(row: pd.Series, metric: str) -> str:
    """mean [low, high] of a configs.csv metric (`decode_tps`, or its adjusted twin `decode_tps_adj`)."""
    mean, lo, hi = row.get(f"{metric}_mean"), row.get(f"{metric}_ci95_low"), row.get(f"{metric}_ci95_high")
    if fmt.missing(mean):
        return "–"
    if fmt.missing(lo):
        return fmt.num(mean)
    return f"{fmt.num(mean)} [{fmt.num(lo)}, {fmt.num(hi)}]"


def _as_ran(r: pd.Series, col: str) -> str:
    """A config or scenario label that says when the fallback ladder made its runs run another config."""
    return f"{r[col]} (ran {r['ran_as']})" if r.get("ran_as") else str(r[col])


def _suite(configs: pd.DataFrame, suite: str, lang: str | None = None) -> pd.DataFrame:
    if configs.empty:
        return configs
    df = configs[configs["suite"] == suite]
    return df[df["lang"] == lang] if lang else df


def _tail(tab: pd.DataFrame, cell: str, ran_as: str, metric: str, q: str) -> str:
    """A config's request-level quantile from the tails table: estimate [low, high], '≤ x', or
    'n too small (n)' (bench/analysis/tails.py), never the slowest of a handful of runs."""
    if tab.empty:
        return "–"
    rows = tab[(tab["cell"] == cell) & (tab["metric"] == metric)
               & (tab["ran_as"].fillna("").astype(str) == (ran_as or ""))]
    if rows.empty:
        return "–"
    r = rows.iloc[0]
    status = r[f"{q}_status"]
    if status == tails.TOO_SMALL:
        return f"n too small ({int(r['n'])})"
    if status == tails.UPPER_ONLY:
        return f"≤ {fmt.num(r[f'{q}_high'])}"
    return f"{fmt.num(r[f'{q}_estimate'])} [{fmt.num(r[f'{q}_low'])}, {fmt.num(r[f'{q}_high'])}]"


def single_table(configs: pd.DataFrame, lang: str, tab: pd.DataFrame | None = None) -> str | None:
    """Per config: the headlines raw and drift-adjusted with their repeated intervals, and the
    request-level TTFT and e2e tails (pooled over the config's calls, bench/analysis/tails.py)."""
    df = _suite(configs, "single", lang)
    tab = tab if tab is not None else pd.DataFrame()
    label = metrics.key_metrics("single")
    return md_table([{"model": r["model"], "config": _as_ran(r, "config"), "n": r["n"],
                      f"{label['decode_tps']} [95% CI]": _mean_ci(r, "decode_tps"),
                      "drift-adjusted": _mean_ci(r, "decode_tps_adj"),
                      label["decode_tps_client"]: fmt.num(r["decode_tps_client_mean"]),
                      "CV %": fmt.num(r["decode_tps_cv_pct"], 2),
                      f"{label['ttft_ms']} [95% CI]": _mean_ci(r, "ttft_ms"),
                      "TTFT drift-adjusted": _mean_ci(r, "ttft_ms_adj"),
                      "TTFT p95 ms (requests)": _tail(tab, r["cell"], r["ran_as"], "ttft_ms", "p95"),
                      f"{label['latency_ms']} [95% CI]": _mean_ci(r, "latency_ms"),
                      "e2e p50 ms (requests)": _tail(tab, r["cell"], r["ran_as"], "e2e_ms", "p50"),
                      "cold runs": r["cold_runs"], "outlier runs": r["outlier_runs"]}
                     for _, r in df.sort_values(["model", "cell"]).iterrows()])


def multi_table(configs: pd.DataFrame, lang: str) -> str | None:
    df = _suite(configs, "multi", lang)
    label = metrics.key_metrics("multi")
    return md_table([{"model": r["model"], "scenario": _as_ran(r, "scenario"), "n": r["n"],
                      f"{label['speedup']} [95% CI]": _mean_ci(r, "speedup"),
                      f"{label['efficiency_pct']} [95% CI]": _mean_ci(r, "efficiency_pct"),
                      label["evenness_pct"]: fmt.num(r["evenness_pct_mean"]),
                      label["wall_s"]: fmt.num(r["wall_s_mean"]), label["seq_s"]: fmt.num(r["seq_s_mean"]),
                      "tps ratio C / I": f"{fmt.num(r.get('collector_tps_ratio_mean'))} / {fmt.num(r.get('insight_tps_ratio_mean'))}",
                      "TTFT inflation C / I": f"{fmt.num(r.get('collector_ttft_inflation_mean'))} / "
                                              f"{fmt.num(r.get('insight_ttft_inflation_mean'))}",
                      "contention runs": f"{int(r['contention_runs'])}/{r['n']}",
                      "legacy flag runs": f"{int(r['legacy_contention_runs'])}/{r['n']}",
                      "outlier runs": r["outlier_runs"]}
                     for _, r in df.sort_values(["model", "scenario"]).iterrows()])


def normalized_table(norm: pd.DataFrame, baseline: str) -> str | None:
    """Wide: one row per suite/language/case/metric, one column per model: mean (% of baseline),
    and what ran where the fallback ladder downgraded the model's runs."""
    if norm.empty:
        return None
    models = [baseline] + sorted(m for m in norm["model"].unique() if m != baseline)
    rows = []
    for (suite, lang, case, metric), g in norm.groupby(["suite", "lang", "case", "metric"], sort=False):
        row = {"suite": suite, "lang": lang, "config / scenario": case, "metric": metric}
        for m in models:
            cells = [f"{fmt.num(r['mean'])} ({r['pct_of_baseline']:.1f} %"
                     + (f", ran {r['ran_as']}" if r["ran_as"] else "") + ")" for _, r in g[g["model"] == m].iterrows()]
            row[m] = "; ".join(cells) or "–"
        rows.append(row)
    return md_table(rows)


def winner_matrix(win: pd.DataFrame) -> tuple[str | None, str | None]:
    """The matrix (cases × the four benches) and the detail table behind each cell."""
    if win.empty:
        return None, None
    cases = list(dict.fromkeys(win["case"]))
    benches = [b for b in metrics.BENCHES if b in set(win["bench"])]
    matrix = []
    for case in cases:
        row = {"config / scenario": case}
        for b in metrics.BENCHES:
            hit = win[(win["case"] == case) & (win["bench"] == b)]
            row[b] = (f"**{hit.iloc[0]['winner']}**" if not fmt.missing(hit.iloc[0]["winner"])
                      else hit.iloc[0]["verdict"]) if not hit.empty else "–"
            if not hit.empty and hit.iloc[0]["ran_as"]:
                row[b] += f" (all ran {hit.iloc[0]['ran_as']})"
        matrix.append(row)
    detail = [{"bench": r["bench"], "config / scenario": r["case"], "metric": r["metric"],
               "leader (mean)": f"{r['leader']} ({fmt.num(r['leader_mean'])})",
               "runner-up (mean)": f"{r['runner_up']} ({fmt.num(r['runner_up_mean'])})" if r["runner_up"] else "–",
               "n": f"{fmt.num(r['n_leader'])} / {fmt.num(r['n_runner_up'])}",
               "Δ adjusted mean [95% CI]": (f"{fmt.signed(r['diff'])} [{fmt.signed(r['ci_low'])}, {fmt.signed(r['ci_high'])}]"
                                             if not fmt.missing(r["diff"]) else "–"),
               "verdict": r["verdict"]}
              for _, r in win[win["bench"].isin(benches)].iterrows()]
    return md_table(matrix), md_table(detail)


# ---- Python vs Rust, the client floors, the instrument ------------------------------------------


def _cpu_us_per_token(floors: dict[tuple[str, str], dict], client: str, api: str | None) -> float | None:
    """The client's CPU cost per streamed token on the study's protocol (else its worst one)."""
    row = floors.get((client, api))
    if row is not None:
        return row.get("cpu_us_per_token")
    vals = [r["cpu_us_per_token"] for (c, _), r in floors.items() if c == client and r.get("cpu_us_per_token")]
    return max(vals) if vals else None


def lang_delta_table(deltas: pd.DataFrame, floors: dict[tuple[str, str], dict], api: str | None) -> str | None:
    """Rust − Python beside the client floor: at a decode rate r, a client spending c µs of CPU
    per token uses c·r/10⁶ of each second, the most of a rate difference it can explain."""
    if deltas.empty:
        return None
    rows = []
    for _, r in deltas.iterrows():
        row = {"suite": r["suite"], "model": r["model"], "config / scenario": r["case"], "metric": r["metric"],
               "Python": fmt.num(r["python_mean"]), "Rust": fmt.num(r["rust_mean"]),
               "Δ Rust − Python [95% CI]": (f"{fmt.signed(r['delta'])} [{fmt.signed(r['ci_low'])}, {fmt.signed(r['ci_high'])}]"
                                           if not fmt.missing(r["ci_low"]) else fmt.signed(r["delta"])),
               "Δ %": fmt.pct(r["delta_pct"]), "significant": "yes" if r["significant"] else "no",
               "client CPU share Py / Rust": "–", "beyond client floor": "–"}
        if r["metric"] in ("decode_tps", "decode_tps_client"):
            shares = {lang: _cpu_us_per_token(floors, lang, api) for lang in ("python", "rust")}
            share = {lang: (c * r[f"{lang}_mean"] / 1e4 if c is not None else None) for lang, c in shares.items()}
            row["client CPU share Py / Rust"] = f"{fmt.pct(share['python'], 2)} / {fmt.pct(share['rust'], 2)}"
            if share["python"] is None or share["rust"] is None:
                row["beyond client floor"] = "floor not measured"
            else:
                row["beyond client floor"] = ("yes" if r["significant"] and abs(r["delta_pct"])
                                              > max(share["python"], share["rust"]) else "no")
        rows.append(row)
    return md_table(rows)


def floors_table(floors: dict[tuple[str, str], dict]) -> str | None:
    return md_table([{"client": c, "protocol": a, "tokens/s (unpaced)": fmt.num(r.get("tokens_per_s")),
                      "CPU µs per token": fmt.num(r.get("cpu_us_per_token")),
                      "paced skew %": fmt.num(r.get("skew_pct"), 2)} for (c, a), r in sorted(floors.items())])


def engine_reference_table(data: dict | None) -> str | None:
    return md_table([{"model": r.get("model"), "engine": r.get("engine"), "reference": r.get("reference"),
                      "threads": r.get("threads"), "reference tok/s": fmt.num(r.get("reference_tps")),
                      "harness tok/s client / server": f"{fmt.num(r.get('harness_client_tps'))} / "
                                                      f"{fmt.num(r.get('harness_server_tps'))}",
                      "ratio client / server to reference": f"{fmt.num(r.get('ratio_client_to_reference'))} / "
                                                           f"{fmt.num(r.get('ratio_server_to_reference'))}"}
                     for r in (data or {}).get("harness_vs_engine", [])])


def _drift_flag(drift: pd.DataFrame, threshold_pct: float) -> str | None:
    """One line for every section that compares across the study's time, when the host drifted."""
    if drift.empty or not drift["flag"].any():
        return None
    worst = drift.loc[drift["drift_pct"].abs().idxmax()]
    return (f"**Host drift:** the reference probe's decode rate moved {fmt.pct(worst['drift_pct'])} "
            f"(probe '{worst['probe']}' against the first; threshold ±{threshold_pct:g} %). Every headline is shown "
            f"raw and adjusted to the host at its mean speed over the study, and the verdicts use the adjusted values "
            f"(section 8).")


# ---- VRAM, quantization, power (bench/study/power.py samples; bench/analysis/tables.py tabulates thermal, frontier, cost) ---


def power_facts(runs: pd.DataFrame) -> dict:
    """How the runs' power was measured, from their power blocks (sources, fields, rate, alignment)."""
    def distinct(col: str) -> list:
        return sorted({v for v in runs[col].dropna()}) if col in runs else []

    sampled = runs[runs["power_available"] == True] if "power_available" in runs else runs.iloc[0:0]  # noqa: E712
    slack = sampled.groupby("lang")["power_alignment_slack_s"].max() if not sampled.empty else pd.Series(dtype=float)
    throttled = sampled[sampled["power_throttled"] == True] if not sampled.empty else sampled  # noqa: E712
    return {"reasons": distinct("power_reason"), "sources": distinct("power_source"),
            "fields": distinct("power_power_field"), "intervals": distinct("power_interval_s"),
            "idle_s": distinct("power_idle_s"), "settle_s": IDLE_SETTLE_S, "n_sampled": len(sampled),
            "slack": {lang: fmt.num(v * 1000) for lang, v in slack.items()},
            "throttled": [f"{r['cell']} run {r['run']} ({r['power_throttle_reasons'] or 'reasons not read'})"
                          for _, r in throttled.iterrows()]}


def thermal_table(thermal: pd.DataFrame) -> str | None:
    return md_table([{"runs (in start order)": r["runs"], "from": r["from"],
                      "start °C (mean)": fmt.num(r["start_temp_c_mean"]), "end °C (mean)": fmt.num(r["end_temp_c_mean"]),
                      "max °C": fmt.num(r["max_temp_c"]), "SM MHz at end (median)": fmt.num(r["end_sm_clock_mhz_median"]),
                      "power limit W": fmt.num(r["power_limit_w"]), "throttled runs": r["throttled_runs"]}
                     for _, r in thermal.iterrows()])


def model_notes(manifest: Manifest | None, failures: list[dict], runs: pd.DataFrame) -> str | None:
    if manifest is None:
        return None
    servers = (manifest.runtime.servers or {}).values()
    meta_by_model = {s.model_extra.get("model"): s.model_extra["model_meta"] for s in servers
                     if s.model_extra.get("model_meta")}
    ps = {e.get("name"): e for entries in manifest.ollama_ps.values() if isinstance(entries, list) for e in entries}
    rows = []
    for m in manifest.models:
        gguf, meta, more = m.gguf or {}, meta_by_model.get(m.name) or {}, m.model_extra or {}
        loaded = ps.get(m.name) or ps.get(f"{m.name}:latest") or {}
        load = [f for f in failures if f.get("model") == m.name and kind_class(f.get("error_kind", "")) == LOAD]
        peak = (runs.loc[runs["model"] == m.name, "power_peak_vram_used_bytes"].max()
                if "power_peak_vram_used_bytes" in runs else None)
        rows.append({
            "model": m.name,
            "quantization": gguf.get("quantization") or more.get("quantization_level") or meta.get("ftype") or "–",
            "parameters": (gguf.get("size_label") or more.get("parameter_size")
                           or (f"{meta['n_params'] / 1e6:,.1f}M" if meta.get("n_params") else "–")),
            "family / architecture": more.get("family") or gguf.get("architecture") or "–",
            "file / model size": fmt.bytes_(more.get("size_bytes")),
            "context (trained)": fmt.num(gguf.get("context_length") or more.get("context_length")),
            "VRAM (size_vram)": (fmt.bytes_(loaded.get("size_vram")) if loaded else "not loaded at manifest time")
            if manifest.ollama_ps else "n/a (no /api/ps on this runtime)",
            "peak VRAM in runs (NVML, GPU total)": fmt.bytes_(peak),
            "load failures (attempts)": len(load),
            "identity": _identity(m),
        })
    return md_table(rows)


def _identity(m: ModelIdentity) -> str:
    """A model's identity as the manifest recorded it: Ollama digest, GGUF file hash, or both."""
    parts = []
    if m.digest:
        parts.append(f"Ollama digest `{m.digest[:19]}`")
    if m.file_sha256:
        parts.append(f"GGUF sha256 `{m.file_sha256[:16]}…`")
    return "; ".join(parts) or m.error or "not recorded"


def optional_skips(failures: list[dict]) -> list[str]:
    """Why each optional model is absent (the spec: "document failure and rationale")."""
    out = []
    for f in failures:
        if f.get("fallback") != Skip.OPTIONAL_MODEL or f.get("error_kind") == "skipped":
            continue
        tried = [x for x in failures if x.get("model") == f["model"] and x.get("attempted_config")]
        rungs = ", ".join(dict.fromkeys(f"{a['model']} gpu_layers {a['gpu_layers']} ctx {a['ctx']}"
                                        for a in (x["attempted_config"] for x in tried)))
        vram = f.get("observed_vram_used_bytes")
        out.append(f"**{f['model']}** (optional) was not measured: no rung of its fallback ladder loaded on this "
                   f"host ({len(tried)} attempt(s): {rungs}); the last error was `{f['error_kind']}`: "
                   f"{str(f.get('error', '')).splitlines()[0][:200]}"
                   + (f"; VRAM in use at that failure {fmt.bytes_(vram)} of {fmt.bytes_(f.get('observed_vram_total_bytes'))}"
                      if vram else "")
                   + ". Its runs are absent from every table; the comparisons are between the other models.")
    return out


def gpu_reason(manifest: Manifest | None) -> str | None:
    """Why there is no power data, when the manifest says there is no GPU."""
    if manifest is None:
        return "no manifest: GPU unknown"
    return f"no GPU: {manifest.gpu}" if isinstance(manifest.gpu, str) else None


# ---- methodology and precision ---------------------------------------------------------------------


def _doc(fn) -> str:
    """A function's docstring, unwrapped: the methodology quotes the code's own statement."""
    return " ".join(inspect.getdoc(fn).split())


def _first_line(fn) -> str:
    return inspect.getdoc(fn).split("\n\n")[0].replace("\n", " ")


def methodology_texts() -> dict[str, str]:
    """The statistics the report states, taken from the code that computes them."""
    return {"interval": _first_line(sequential.interval), "level": _first_line(sequential.nominal_level),
            "compare": _first_line(sequential.compare), "widen": _first_line(sequential.widen),
            "drift": " ".join(drift.__doc__.split("\n\n")[1].split()),
            "tails": _first_line(tails.quantile_interval), "calibration_draws": sequential.CALIBRATION_DRAWS,
            "calibration_seed": sequential.CALIBRATION_SEED}


def sampling_table(samp: pd.DataFrame) -> str | None:
    return md_table([{"config": r["cell"], "metric": r["metric"], "runs": r["n"],
                      "mean [95% CI]": f"{fmt.num(r['mean'])} [{fmt.num(r['ci95_low'])}, {fmt.num(r['ci95_high'])}]",
                      "± (rel.)": fmt.pct(r["rel_half_width"] * 100 if not fmt.missing(r["rel_half_width"]) else None),
                      "target": fmt.pct(r["target"] * 100) if not fmt.missing(r["target"]) else "–",
                      "within": {True: "yes", False: "**no**"}.get(r["within_target"], "–"),
                      "stopped": r["stop_reason"]} for _, r in samp.iterrows()]) if not samp.empty else None


def tails_table(tab: pd.DataFrame) -> str | None:
    """Per config and metric, p50/p95/p99 as estimate [low, high], or what n allows instead."""
    def cell(r, q):
        status, est, lo, hi = (r[f"{q}_{k}"] for k in ("status", "estimate", "low", "high"))
        if status == tails.TOO_SMALL:
            return "n too small"
        if status == tails.UPPER_ONLY:
            return f"≤ {fmt.num(hi)}"
        return f"{fmt.num(est)} [{fmt.num(lo)}, {fmt.num(hi)}]"

    return md_table([{"config": r["cell"] + (f" (ran {r['ran_as']})" if isinstance(r["ran_as"], str) and r["ran_as"] else ""),
                      "metric": r["metric"], "requests": r["n"], **{q: cell(r, q) for q in ("p50", "p95", "p99")}}
                     for _, r in tab.iterrows()]) if not tab.empty else None


def variance_table(var: pd.DataFrame) -> str | None:
    if var.empty:
        return None
    return md_table([{"suite": r["suite"], "metric": r["metric"], "factor": r["factor"],
                      "levels": fmt.num(r["levels"]), "n": r["n"],
                      "η² (share of variance)": "not varied" if fmt.missing(r["eta_sq"]) and r["levels"] == 1
                      else fmt.num(r["eta_sq"], 2),
                      "ANOVA p": fmt.num(r["p_value"], 2)} for _, r in var.iterrows()])


def _bench_command(profile: Profile, manifest: Manifest | None) -> str:
    ov = manifest.plan_overrides.kwargs() if manifest else {}
    flags = "".join(f" --{k} {','.join(v) if isinstance(v, list) else v}" for k, v in ov.items())
    return f"bench --profile {profile.study}{flags}"


# ---- the sections: each returns the names its part of report.md.j2 reads ------------------------------


def title_and_setup(out: StudyOutputs) -> dict:
    """The title block, the objective and the setup (sections 1–2), and the study's counts."""
    runs = out.results.runs
    return {
        # the template reads the typed manifest's JSON document ({} without one)
        "profile": out.profile, "manifest": out.manifest.to_json() if out.manifest else {},
        "incomplete": out.incomplete,
        "bench_command": _bench_command(out.profile, out.manifest),
        "n_runs": len(runs), "n_configs": len(out.results.configs), "n_requests": len(out.results.requests),
        "cold_runs": int(runs["cold_load"].sum()),
        "fmt": fmt.num, "bytes": fmt.bytes_,
        "params": {"cv_limit": findings.CV_LIMIT_PCT, "contention_share": findings.CONTENTION_SHARE,
                   "alpha": findings.SIGNIFICANCE, "scale_efficiency": f"{findings.SCALE_EFFICIENCY_PCT:.0f}"},
    }


def methodology(out: StudyOutputs) -> dict:
    """Section 3: the metric definitions from the registry and the statistics from their code."""
    return {
        "metric_levels": [("request", "Per request"), ("run", "Per agent run (single suite)"),
                          ("multi", "Multi-agent run"), ("steps", "Agent-count step"),
                          ("power", "Power (GPU hosts, NVML)"),
                          ("engine", "The engine's own queue (polled during multi-agent and agent-count runs)")],
        "definitions": metrics.definitions, "derived_definitions": DERIVED_DEFINITIONS,
        "outlier_metrics": {suite: metrics.outlier_metrics(suite) for suite in metrics.SUITES},
        "method": methodology_texts(),
        "probe_pairs": protocol.PROBE_PAIRS, "probe_tokens": protocol.PROBE_TOKENS,
    }


def results_tables(out: StudyOutputs) -> dict:
    """Sections 4–7: the single- and multi-agent tables per client, the normalized view, the winners."""
    configs, derived = out.results.configs, out.results.derived
    matrix, detail = winner_matrix(derived["winners"])
    return {
        "single_tables": {lang: single_table(configs, lang, derived.get("tails")) for lang in ("python", "rust")},
        "multi_tables": {lang: multi_table(configs, lang) for lang in ("python", "rust")},
        "normalized": normalized_table(derived["normalized"], out.profile.baseline.name),
        "winner_matrix": matrix, "winner_detail": detail,
    }


def python_vs_rust(out: StudyOutputs) -> dict:
    """Section 8: Rust − Python beside the client floors, the engine reference, the client's cost."""
    derived, floors = out.results.derived, findings.client_floors(out.client_overhead)
    return {
        "lang_deltas": lang_delta_table(derived["lang_deltas"], floors, out.profile.runtime.endpoints[0].api),
        "langs_measured": sorted(out.results.runs["lang"].unique()),
        "floors": floors_table(floors), "engine_reference": engine_reference_table(out.client_overhead),
        "overhead_measured_at": (out.client_overhead or {}).get("measured_at"),
        "client_cost": md_table([{"suite": r["suite"], "model": r["model"], "config / scenario": r["case"],
                                  "client CPU, cores Py / Rust": f"{fmt.num(r.get('python_client_cpu_share'), 2)} / "
                                                                 f"{fmt.num(r.get('rust_client_cpu_share'), 2)}",
                                  "host busy Py / Rust": f"{fmt.pct(r.get('python_host_busy_pct'))} / "
                                                         f"{fmt.pct(r.get('rust_host_busy_pct'))}"}
                                 for _, r in derived["client_cost"].iterrows()]),
    }


def instrument(out: StudyOutputs) -> dict:
    """The instrument: host drift, harness against engine, where the bench's time went, the
    engine's own accounting (reconciliation)."""
    derived, label = out.results.derived, metrics.key_metrics("single")
    overhead = derived["overhead"]
    return {
        "drift": md_table([{"probe": r["probe"], "at": r["at"], label["decode_tps"]: fmt.num(r["decode_tps"]),
                            "h(t)": fmt.num(r["h"], 3), label["decode_tps_client"]: fmt.num(r["decode_tps_client"]),
                            label["ttft_ms"]: fmt.num(r["ttft_ms"]), "drift vs first": fmt.pct(r["drift_pct"]),
                            "TTFT drift": fmt.pct(r["ttft_drift_pct"]), "flag": "DRIFT" if r["flag"] else ""}
                           for _, r in derived["drift"].iterrows()]),
        "drift_flag": _drift_flag(derived["drift"], out.profile.instrument.drift_threshold_pct),
        "drift_series": out.results.drift, "drift_changed": out.results.findings.get("drift_changed", []),
        "harness_engine": md_table([{"probe": r["probe"], "at": r["at"],
                                     "harness tok/s (client)": fmt.num(r["harness_decode_tps"]),
                                     "engine tok/s (plain call)": fmt.num(r["engine_decode_tps"]),
                                     "harness ÷ engine": fmt.num(r["harness_to_engine"], 3)}
                                    for _, r in derived.get("harness_engine", pd.DataFrame()).iterrows()]),
        "overhead_ratio": overhead.attrs.get("study_overhead_ratio"),
        "overhead_summed": overhead.attrs.get("summed_overhead_ratio"),
        "overhead": md_table([{"where the bench's time went": r["part"], "s": fmt.num(r["seconds"]),
                               "share": fmt.pct(r["share_pct"])} for _, r in overhead.iterrows()]),
        "reconciliation": md_table([{"engine API": r["api"], "model": r["model"], "requests": r["requests"],
                                     "stopped before num_predict": r["stopped_early"],
                                     "TTFT unaccounted, median (ms)": fmt.num(r["ttft_unaccounted_ms_median"]),
                                     "p95 (ms)": fmt.num(r["ttft_unaccounted_ms_p95"]),
                                     "decode overstatement, median": fmt.pct(r["decode_overstatement_pct_median"]),
                                     "p95": fmt.pct(r["decode_overstatement_pct_p95"])}
                                    for _, r in derived["reconciliation"].iterrows()]),
    }


def models_and_placement(out: StudyOutputs) -> dict:
    """Section 9: each model's quantization and VRAM, the downgrades, absent optional models,
    runs placed otherwise than their config, and the model probes."""
    return {
        "model_notes": model_notes(out.manifest, out.failures, out.results.runs),
        "downgrades": md_table(out.results.findings["downgrades"]),  # misplaced runs ran too: counted there
        "optional_skips": optional_skips(out.failures),
        "misplaced": md_table([{"config": r["cell"], "run": r["run"], "placement": r["placement_issues"]}
                               for _, r in out.results.misplaced.iterrows()]),
        "model_probes": model_probes(out.results, out.profile),
    }


# the frontier table's run metrics (configs.csv's <metric>_mean), named by the registry
FRONTIER_METRICS = ("served_tps", "tokens_per_j", "tokens_per_j_net", "power_mean_power_w", "power_idle_power_w")


def power_and_cost(out: StudyOutputs) -> dict:
    """Sections 10–11: the efficiency frontier, how power was measured, the thermal trend, cost."""
    runs, derived, label = out.results.runs, out.results.derived, metrics.label
    return {
        "gpu_reason": gpu_reason(out.manifest),
        "frontier": md_table([{"config": r["cell"], **{label(m): fmt.num(r.get(f"{m}_mean")) for m in FRONTIER_METRICS},
                               "on frontier": "yes" if r["pareto"] else "no"}
                              for _, r in derived["frontier"].iterrows()]),
        "power_in_runs": "power_tokens_per_j" in runs and bool(runs["power_tokens_per_j"].notna().any()),
        "power": power_facts(runs), "thermal": thermal_table(derived["thermal"]),
        "cost": md_table([{"config": r["cell"], label("served_tps"): fmt.num(r["served_tps_mean"]),
                           "tokens per $ (GPU-hour)": fmt.num(r.get("tokens_per_usd_gpu_hour")),
                           "tokens per $ (electricity)": fmt.num(r.get("tokens_per_usd_electricity"))}
                          for _, r in derived["cost"].iterrows()]),
    }


def central_question(out: StudyOutputs) -> dict:
    """Section 12: the variance shares, the topology comparison and the agent-count steps."""
    derived, found = out.results.derived, out.results.findings
    return {
        "variance": variance_table(derived["variance"]), "answers": found["central_answers"],
        "topology": md_table([{"model": r["model"], "client": r["lang"], "metric": r["metric"],
                               "two instances": fmt.num(r["two_instances_mean"]),
                               "one instance, 2 slots": fmt.num(r["one_instance_mean"]),
                               "n": f"{r['n_two']} / {r['n_one']}",
                               "diff [95% CI]": f"{fmt.signed(r['diff'])} [{fmt.signed(r['ci_low'])}, "
                                                f"{fmt.signed(r['ci_high'])}]", "better": r["better"]}
                              for _, r in derived["topology"].iterrows()]),
        "topology_verdicts": found["topology"], "steps": steps_table(derived["steps"]),
        "capacity": found["capacity"],
    }


def steps_table(steps: pd.DataFrame) -> str | None:
    label = metrics.key_metrics("steps")
    return md_table([{"model": r["model"], "settings": r.get("server_settings") or "–", "agents": int(r["n_agents"]),
                      "runs": r["n"], f"{label['speedup']} [95% CI]": f"{fmt.num(r['speedup_mean'])} "
                                                        f"[{fmt.num(r['speedup_ci95_low'])}, "
                                                        f"{fmt.num(r['speedup_ci95_high'])}]",
                      label["efficiency_pct"]: fmt.pct(r["efficiency_pct_mean"], 0),
                      "decode tok/s per agent (alone → together)": f"{fmt.num(r['decode_tps_alone_mean'])} → "
                                                                   f"{fmt.num(r['decode_tps_together_mean'])}",
                      "tps ratio (worst agent)": f"{fmt.num(r['tps_ratio_mean'], 2)} "
                                                 f"({fmt.num(r['tps_ratio_worst'], 2)})",
                      "TTFT × (worst agent)": f"{fmt.num(r['ttft_inflation_mean'], 2)} "
                                              f"({fmt.num(r['ttft_inflation_worst'], 2)})",
                      "contention runs": r["contention_runs"]}
                     for _, r in steps.iterrows()])


def failures_and_outliers(out: StudyOutputs) -> dict:
    """Sections 13–15: failures and fallbacks, the flagged runs, the extra runs, recommendations."""
    runs = out.results.runs
    return {
        "failures": out.failures,
        "outliers": md_table([{"config": r["cell"], "run": r["run"], "metric": r["metric"],
                               "value": fmt.num(r["value"]), "config median": fmt.num(r["config_median"]),
                               "deviation": fmt.pct((r["value"] - r["config_median"]) / r["config_median"] * 100
                                                    if r["config_median"] else None),
                               "runs in config": r["n"]} for _, r in out.results.derived["outliers"].iterrows()]),
        "extra_runs": int((runs["run"] > runs["cell"].map(out.planned_runs)).sum()),
        "recommendations": out.results.findings["recommendations"],
    }


def precision(out: StudyOutputs) -> dict:
    """Section 16: runs per config and why each stopped, the A/A placebo, tails, prefill."""
    derived, found = out.results.derived, out.results.findings
    return {
        "sampling": sampling_table(derived.get("sampling", pd.DataFrame())),
        "precision": found.get("precision") or {}, "adaptive": any(c.precision for c in out.results.cells),
        "placebo": md_table([{"placebo": r["placebo"], "original": r["original"], "bench": f"{r['suite']}-{r['lang']}",
                              "case": r["case"], "metric": r["metric"], "n": f"{r['n_placebo']} / {r['n_original']}",
                              "Δ adjusted [95% CI]": f"{fmt.signed(r['diff'])} [{fmt.signed(r['ci_low'])}, "
                                                     f"{fmt.signed(r['ci_high'])}]", "verdict": r["verdict"],
                              "Δ raw [95% CI]": f"{fmt.signed(r['diff_raw'])} [{fmt.signed(r['ci_low_raw'])}, "
                                                f"{fmt.signed(r['ci_high_raw'])}]", "raw verdict": r["verdict_raw"]}
                             for _, r in derived.get("placebo", pd.DataFrame()).iterrows()]),
        "placebo_verdicts": found.get("placebo", []),
        "tails": tails_table(derived.get("tails", pd.DataFrame())),
        "prefill": md_table([{"engine API": r["api"], "model": r["model"], "requests": r["requests"],
                              "judged": r["judged"], "voided": r["voided"], "rule": r["rules"],
                              "cold prefill tok/s (median)": fmt.num(r["cold_prefill_tps_median"]),
                              "largest reused share": fmt.pct(r["max_reused_share"] * 100
                                                              if not fmt.missing(r["max_reused_share"]) else None)}
                             for _, r in derived.get("prefill", pd.DataFrame()).iterrows()]),
        "voided": md_table([{"config": r["cell"], "run": r["run"], "voided calls": r["voided_requests"]}
                            for _, r in out.results.voided.iterrows()]),
    }


# every section, in the report's order; report.md.j2 reads the union of their names
SECTIONS = (title_and_setup, methodology, results_tables, python_vs_rust, instrument, models_and_placement,
            power_and_cost, central_question, failures_and_outliers, precision)


def capacity_search(out: StudyOutputs) -> dict:
    """The capacity section (_capacity.md.j2): each search's line and the goodput of the points it probed."""
    searches = (out.results.findings or {}).get("capacity_search") or []
    return {
        "capacity_search": searches, "slo": out.profile.slo,
        "capacity_points": md_table([{"model": s["model"], "client": s["lang"], "settings": s["server_settings"] or "–",
                                      "agents": p["n"], "order": i + 1, "runs": p["runs"],
                                      "goodput [verdict interval]": "–" if p["goodput"] is None else
                                      f"{fmt.pct(100 * p['goodput'])} [{fmt.pct(100 * p['low'])}, "
                                      f"{fmt.pct(100 * p['high'])}]", "verdict": p["verdict"],
                                      "interval": s.get("interval_label") or "–"}
                                     for s in searches for i, p in enumerate(s["probes"])]),
    }


SECTIONS += (capacity_search,)


# ---- goodput against the SLO and the reconciliation gate (bench/analysis/goodput.py, validity.py) ------------


def goodput_table(tab: pd.DataFrame, confidence: float | None) -> str | None:
    """Per config: goodput [interval at `confidence`, the SLO's], agent goodput, attainment per
    objective, what breaks first."""
    if tab.empty:
        return None

    def config(r) -> str:
        ran = f" (ran {r['ran_as']})" if isinstance(r["ran_as"], str) and r["ran_as"] else ""
        return r["cell"] + ran

    def interval(r) -> str:
        return f"{fmt.pct(r['goodput_pct'])} [{fmt.pct(r['goodput_ci_low'])}, {fmt.pct(r['goodput_ci_high'])}]"

    # the plain interval at the SLO's confidence: not the capacity search's verdict interval (Bonferroni-split)
    level = f"interval at {100 * confidence:.4g} %"
    return md_table([{"config": config(r), "runs": r["runs"] if not r["failed_attempts"] else
                      f"{r['runs']} ({r['failed_attempts']} failed)", "calls met": f"{r['calls_met']} of {r['calls']}",
                      f"{metrics.label('goodput_pct')} [{level}]": interval(r),
                      "design effect": fmt.num(r["design_effect"], 2),
                      metrics.label("agent_goodput_pct"): fmt.pct(r["agent_goodput_pct"]),
                      **{metrics.label(f"slo_{o}_pct"): fmt.pct(r[f"slo_{o}_pct"]) for o in metrics.SLO_OBJECTIVES},
                      "breaks first": r["breaks_first"] or "–"} for _, r in tab.iterrows()])


def goodput_and_validity(out: StudyOutputs) -> dict:
    """The goodput section (_goodput.md.j2): the SLO, the interval's method from its code, goodput per
    config, and the runs the reconciliation gate kept out with the reason and the bounds they broke."""
    invalid = out.results.invalid
    return {
        "goodput_slo": out.profile.slo,
        "goodput_method": _first_line(stats.goodput_interval),
        "goodput_table": goodput_table(out.results.derived.get("goodput", pd.DataFrame()),
                                       out.profile.slo.confidence if out.profile.slo else None),
        "validity_bounds": validity.load_validity().model_dump(),
        "validity_gated": validity.GATED_CALLS,
        "invalid_runs": md_table([{"config": r["cell"], "run": r["run"], "reason": r["validity_flag"]}
                                  for _, r in invalid.iterrows()]) if not invalid.empty else None,
    }


SECTIONS += (goodput_and_validity,)


# ---- the engine's own evidence (bench/study/engine_sampler.py samples, bench/analysis/engine_tables.py tabulates) --


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _engine_line(r: pd.Series) -> str:
    """Whether the config's engine queue shows deferred requests, beside the TTFT the engine did not count."""
    waited = (f"calls that shared the engine waited {fmt.num(r['ttft_unaccounted_ms_shared_median'])} ms before "
              f"the engine counted them (median; max {fmt.num(r['ttft_unaccounted_ms_shared_max'])} ms), against "
              f"{fmt.num(r['ttft_unaccounted_ms_alone_median'])} ms alone")
    if not r["queue_metric"]:
        return (f"**{r['cell']}** ({r['engine']}): no queue metric (Ollama exposes none); /api/ps listed "
                f"{r['models_loaded'] or 'no model'}; {waited}")
    if r["runs_with_deferred"]:
        return (f"**{r['cell']}**: the engine's queue held deferred requests in {r['runs_with_deferred']} of "
                f"{_runs(r['runs_sampled'])} (at most {fmt.num(r['deferred_max'])} waiting, "
                f"{fmt.num(r['deferred_s_mean'])} s per run on average): the slot wait is the engine's; {waited}")
    return (f"**{r['cell']}**: no request was deferred by the engine in {_runs(r['runs_sampled'])}: any wait is "
            f"not for a slot; {waited}")


def engine_evidence(out: StudyOutputs) -> dict:
    """The engine section (_engine.md.j2): per steps/multi config, the engine's queue and slots next to
    the client's unaccounted TTFT (tables of every sampled config in bench/analysis/engine_tables.py)."""
    tab, head = out.results.engine, metrics.heading
    shared = tab[tab["suite"].isin(("multi", "steps"))] if not tab.empty else tab
    return {
        "engine_lines": [_engine_line(r) for _, r in shared.iterrows()],
        "engine_table": md_table([{"config": r["cell"], "engine": r["engine"],
                                   # headings from the registry, where each is defined (bench/core/metrics.py)
                                   f"{head('runs_with_deferred')} / sampled":
                                       f"{r['runs_with_deferred'] if r['queue_metric'] else '–'} / "
                                       f"{r['runs_sampled']}",
                                   head("deferred_max"): fmt.num(r["deferred_max"]),
                                   head("deferred_s_mean"): fmt.num(r["deferred_s_mean"]),
                                   f"{head('slots_busy_max')} / total": f"{fmt.num(r['slots_busy_max'])} / "
                                                                        f"{fmt.num(r['slots_total'])}",
                                   head("kv_cache_usage_max"): fmt.num(r["kv_cache_usage_max"]),
                                   head("slot_ctx_fill"): fmt.num(r["slot_ctx_fill_max"]),
                                   "TTFT unaccounted, shared: median / max (ms)":
                                       f"{fmt.num(r['ttft_unaccounted_ms_shared_median'])} / "
                                       f"{fmt.num(r['ttft_unaccounted_ms_shared_max'])}",
                                   "alone: median (ms)": fmt.num(r["ttft_unaccounted_ms_alone_median"]),
                                   "samples / gaps": f"{r['samples']} / {r['gaps']}"}
                                  for _, r in shared.iterrows()]),
        "engine_intervals": sorted({fmt.num(v) for v in shared["interval_s"].dropna()}) if not shared.empty else [],
    }


SECTIONS += (engine_evidence,)
