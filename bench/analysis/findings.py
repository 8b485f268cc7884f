"""Findings: the conclusions the report states, each made by a stated rule over the analysis
tables (bench/analysis/tables.py) — the central question's answer per suite and metric, the
recommendations, the downgrades the fallback ladder needed. analysis.build() computes them once;
they are exported as tables/findings.json and rendered by bench/report/markdown.py.
"""

from __future__ import annotations

import pandas as pd

from bench.config.ladder import Skip
from bench.core import fmt, metrics
from bench.study.capacity_search import CapacitySearch, worst_case_probes

# Rule thresholds of the recommendations and the central answer, stated in the report.
CV_LIMIT_PCT = 10.0
CONTENTION_SHARE = 0.5
SIGNIFICANCE = 0.05
# An agent-count step "scales" while its parallel efficiency stays at or above this.
SCALE_EFFICIENCY_PCT = 75.0
# The central section answers the multi-agent suite's questions first: the study's question is
# about agents side by side.
CENTRAL_SUITE_ORDER = ("multi", "single", "steps")


def central_questions() -> tuple[tuple[str, str], ...]:
    """The questions the central section answers, (suite, metric): the registry's central-question
    metrics (bench/core/metrics.py)."""
    return tuple((suite, metric) for suite in CENTRAL_SUITE_ORDER for metric in metrics.with_role(metrics.CENTRAL, suite))


def _suite(configs: pd.DataFrame, suite: str) -> pd.DataFrame:
    return configs if configs.empty else configs[configs["suite"] == suite]


def client_cpu_explains(runs: pd.DataFrame, suite: str, metric: str) -> str | None:
    """The client-CPU rule for a language effect: on a host with fewer cores than servers +
    clients (2 servers; 1 client single, 2 multi), a language whose client used more CPU and whose
    metric is worse is explained by that CPU, not by its concurrency model. Returns why, or None."""
    sub = runs[runs["suite"] == suite] if not runs.empty else runs
    if sub.empty or "client_cpu_share" not in sub or sub["lang"].nunique() < 2 or sub["host_cores"].isna().all():
        return None
    cores = int(sub["host_cores"].dropna().iloc[0])
    needed = 2 + (1 if suite == "single" else 2)
    if cores >= needed:
        return None
    by_lang = sub.groupby("lang").agg(cpu=("client_cpu_share", "mean"), value=(metric, "mean"))
    costly, light = by_lang["cpu"].idxmax(), by_lang["cpu"].idxmin()
    worse = (by_lang.loc[costly, "value"] > by_lang.loc[light, "value"]) == metrics.lower_is_better(metric)
    if costly == light or not worse:
        return None
    extra = by_lang.loc[costly, "cpu"] - by_lang.loc[light, "cpu"]
    return (f"{costly}'s client used {extra:.2f} more cores than {light}'s on a {cores}-core host that needs "
            f"{needed} (2 servers + {needed - 2} client(s)), and its {metric} is the worse one")


def client_floors(data: dict | None) -> dict[tuple[str, str], dict]:
    """(client, api) → its floor row from client_overhead.json (`invoke bench-clients`)."""
    return {(r["client"], r["api"]): r for r in (data or {}).get("client_floors", [])
            if r.get("client") and r.get("api")}


def downgrade_rows(runs: pd.DataFrame, failures: list[dict]) -> list[dict]:
    """The spec's "config downgrades required": per model, each config the fallback ladder changed,
    what was asked, what ran and why; a config that no rung loaded ran nothing."""
    rows = []
    down = runs[runs["ran_as"] != ""] if "ran_as" in runs else runs.iloc[0:0]
    for (model, cell, ran_as), g in down.groupby(["model", "cell", "ran_as"], sort=True):
        rows.append({"model": model, "config (asked)": cell, "ran": ran_as, "runs": len(g),
                     "why": g.sort_values("run")["downgrade_why"].iloc[0]})
    for f in failures:
        if f.get("fallback") in (Skip.CONFIG, Skip.OPTIONAL_MODEL):
            tried = [x for x in failures if x.get("cell") == f["cell"] and x.get("attempted_config")]
            last = f.get("attempted_config") or {}
            rows.append({"model": f["model"], "config (asked)": f["cell"], "ran": "nothing: no rung loaded",
                         "runs": 0, "why": f"{f['error_kind']} on {len(tried)} rung(s), the last "
                                           f"{last.get('model')} gpu_layers {last.get('gpu_layers')} ctx "
                                           f"{last.get('ctx')}: {str(f.get('error', '')).splitlines()[0][:160]}"})
    return sorted(rows, key=lambda r: (r["model"], r["config (asked)"]))


def central_answer(var: pd.DataFrame, suite: str, metric: str, runs: pd.DataFrame | None = None) -> dict | None:
    """The stated rule: a factor 'shifts' the metric when it has the largest η² among model,
    language and case and its one-way ANOVA p < 0.05; otherwise run-to-run noise dominates. A
    language effect that client CPU explains on a host short of cores says so instead
    (analysis.client_cpu_explains)."""
    sub = var[(var["suite"] == suite) & (var["metric"] == metric)] if not var.empty else var
    if sub.empty:
        return None
    factors = sub[sub["factor"].isin(["model", "language", "case", "server settings"]) & sub["eta_sq"].notna()]
    noise = sub[sub["factor"] == "run-to-run (within config)"]["eta_sq"].iloc[0]
    model = sub[sub["factor"] == "model"]["eta_sq"].iloc[0]
    if factors.empty:
        return {"verdict": "no factor varied", "detail": "only one model, language and case were measured"}
    top = factors.sort_values("eta_sq", ascending=False).iloc[0]
    significant = not fmt.missing(top["p_value"]) and top["p_value"] < SIGNIFICANCE
    label = {"case": {"single": "config", "steps": "agent count"}.get(suite, "scenario")}.get(top["factor"], top["factor"])
    if significant and top["factor"] == "model":
        verdict = "model choice dominates"
    elif significant and top["factor"] == "language" and runs is not None \
            and (why := client_cpu_explains(runs, suite, metric)):
        return {"verdict": "client CPU, not the language, explains the difference",
                "detail": f"largest share: language η² = {top['eta_sq']:.2f} (p = {fmt.num(top['p_value'])}), but {why}"}
    elif significant:
        verdict = f"architecture dominates ({label})"
    else:
        verdict = "no factor is significant: run-to-run variation dominates"
    detail = f"largest share: {label} η² = {top['eta_sq']:.2f} (p = {fmt.num(top['p_value'])}); "
    if top["factor"] != "model":
        detail += f"model η² = {fmt.num(model, 2)}; "
    detail += f"run-to-run (within config) = {fmt.num(noise, 2)}"
    return {"verdict": verdict, "detail": detail}


def recommendations(results, downgrades: list[dict], floors: dict[tuple[str, str], dict]) -> list[dict]:
    """Each recommendation is the output of a stated rule over the tables; none is free text."""
    recs: list[dict] = []
    win = results.derived["winners"]
    for bench in metrics.BENCHES:
        sub = win[win["bench"] == bench] if not win.empty else win
        if sub.empty:
            continue
        named = set(sub["winner"].dropna())
        metric = sub.iloc[0]["metric"]
        if len(named) == 1 and sub["winner"].notna().all():
            model = next(iter(named))
            recs.append({"rule": f"R1: a model that wins every {metrics.bench_label(bench)} case on {metric} is recommended "
                                 "for it", "finding": f"use **{model}** for {metrics.bench_label(bench)} work: it wins all "
                                                      f"{len(sub)} case(s) ({', '.join(sub['case'])})"})
        else:
            wins = "; ".join(f"{r['case']}: {r['verdict']}" for _, r in sub.iterrows())
            recs.append({"rule": f"R1: no model is recommended for {metrics.bench_label(bench)} unless it wins every case",
                         "finding": f"no single model: {wins}"})
    configs = results.configs
    for _, r in _suite(configs, "multi").iterrows():
        if r["n"] and r["contention_runs"] / r["n"] >= CONTENTION_SHARE:
            recs.append({"rule": f"R2: a multi config with contention in ≥ {CONTENTION_SHARE:.0%} of its runs needs "
                                 "separate resources per instance",
                         "finding": f"{r['cell']}: contention in {int(r['contention_runs'])}/{r['n']} runs "
                                    f"(tps ratio C/I {fmt.num(r.get('collector_tps_ratio_mean'))}/"
                                    f"{fmt.num(r.get('insight_tps_ratio_mean'))}, speedup {fmt.num(r['speedup_mean'])}×)"})
    samp = results.derived.get("sampling", pd.DataFrame())
    adaptive = set(samp[samp["target"].notna()]["cell"]) if not samp.empty else set()
    for _, r in samp[samp["within_target"] == False].iterrows() if not samp.empty else ():  # noqa: E712
        recs.append({"rule": "R3: a config that stopped before its precision target is quoted with its interval, "
                             "never its mean alone",
                     "finding": f"{r['cell']}: {r['metric']} ±{fmt.pct(r['rel_half_width'] * 100)} (target "
                                f"±{fmt.pct(r['target'] * 100)}) after {r['n']} runs ({r['stop_reason']})"})
    for _, r in configs.iterrows():
        metric = metrics.headline(r["suite"])
        cv = r.get(f"{metric}_cv_pct")
        if r["cell"] not in adaptive and not fmt.missing(cv) and cv > CV_LIMIT_PCT:
            recs.append({"rule": f"R3: a config whose {metric} CV exceeds {CV_LIMIT_PCT:.0f} % needs more runs "
                                 "before its mean is quoted",
                         "finding": f"{r['cell']}: CV {cv:.1f} % over {r['n']} runs"})
    deltas = results.derived["lang_deltas"]
    for _, r in (deltas[deltas["significant"]] if not deltas.empty else deltas).iterrows():
        faster = "Rust" if (r["delta"] > 0) == (not metrics.lower_is_better(r["metric"])) else "Python"
        recs.append({"rule": "R4: a significant Python/Rust difference favours that client for the case",
                     "finding": f"{r['suite']}/{r['model']}/{r['case']}: {faster} better on {r['metric']} "
                                f"(Δ {fmt.signed(r['delta'])}, {fmt.pct(r['delta_pct'])})"
                                + ("" if floors else "; client floor not measured")})
    for d in downgrades:
        recs.append({"rule": "R5: a config that needed the fallback ladder does not fit this host as asked",
                     "finding": f"{d['config (asked)']}: ran {d['ran']} ({d['why']})"})
    outl = results.derived["outliers"]
    if not outl.empty:
        recs.append({"rule": "R6: flagged runs stay in the data; configs with flags are quoted with their median too",
                     "finding": f"{outl['cell'].nunique()} config(s) with {len(outl)} flag(s); see section 14"})
    return recs


def limit_cause(step: pd.Series, min_tps_ratio: float, max_ttft_inflation: float) -> str:
    """The cause at an agent-count step (a row of the steps table), from the contention signals of
    its runs' worst agent, and what would move it: TTFT inflated beyond max_ttft_inflation while the
    decode rate holds (tps ratio ≥ min_tps_ratio) is a wait for a slot; a decode rate below
    min_tps_ratio is shared compute."""
    n, ti, tr = int(step["n_agents"]), step["ttft_inflation_worst"], step["tps_ratio_worst"]
    if not fmt.missing(ti) and ti > max_ttft_inflation and (fmt.missing(tr) or tr >= min_tps_ratio):
        return (f"at {n} an agent waits for a slot (its TTFT ×{fmt.num(ti, 2)} while its decode rate holds at "
                f"{fmt.num(tr, 2)} of alone): raise OLLAMA_NUM_PARALLEL or add an instance")
    if not fmt.missing(tr) and tr < min_tps_ratio:
        return (f"at {n} the agents share compute (the slowest decodes at {fmt.num(tr, 2)} of alone, TTFT "
                f"×{fmt.num(ti, 2)}): more slots will not help; add compute, or run fewer agents")
    return (f"at {n} efficiency falls to {fmt.pct(step['efficiency_pct_mean'], 0)} without one clear cause "
            f"(TTFT ×{fmt.num(ti, 2)}, decode {fmt.num(tr, 2)})")


def capacity(steps: pd.DataFrame, min_tps_ratio: float, max_ttft_inflation: float) -> list[dict]:
    """The stated rule, per model and server settings: the steps scale up to the largest N whose
    mean efficiency (speedup / N) stays ≥ SCALE_EFFICIENCY_PCT at every step up to it; at the
    first step that does not, the cause is named from the contention signals of bench/core/metrics.py,
    of each run's worst agent (as the contention flag takes any agent): its TTFT inflated beyond
    max_ttft_inflation while its decode rate holds (tps ratio ≥ min_tps_ratio) is waiting for a
    slot; a decode rate below min_tps_ratio is shared compute."""
    out: list[dict] = []
    if steps.empty:
        return out
    keys = [k for k in ("model", "lang", "server_settings") if k in steps]
    for key, g in steps.groupby(keys, sort=True, dropna=False):
        g = g.sort_values("n_agents")
        where = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        scaled, first_bad = 0, None
        for _, r in g.iterrows():
            if fmt.missing(r["efficiency_pct_mean"]) or r["efficiency_pct_mean"] < SCALE_EFFICIENCY_PCT:
                first_bad = r
                break
            scaled = int(r["n_agents"])
        label = f"{where['model']}" + (f" ({where['server_settings']})" if not fmt.missing(where.get("server_settings"))
                                       else "")
        if first_bad is None:
            text = (f"{label}: scales to {scaled} agents, every step measured (efficiency ≥ "
                    f"{SCALE_EFFICIENCY_PCT:.0f} % up to {scaled})")
        else:
            n = int(first_bad["n_agents"])
            text = (f"{label}: scales to {scaled} agent{'s' if scaled != 1 else ''}" if scaled
                    else f"{label}: does not scale") + f"; {limit_cause(first_bad, min_tps_ratio, max_ttft_inflation)}"
            text += f" (efficiency {fmt.pct(first_bad['efficiency_pct_mean'], 0)} at {n})"
        out.append({**{k: (None if fmt.missing(v) else v) for k, v in where.items()}, "scales_to": scaled,
                    "finding": text})
    return out


def _search_probes(cells, stops: dict[str, dict]) -> tuple[CapacitySearch, dict[int, str], dict | None] | None:
    """One search's probes replayed, in the order it asked for them, from the points the runner logged
    (sampling.jsonl `search`); with the config key of each agent count and the level of the intervals
    its verdicts read. None: no point was logged."""
    by_n = {len(c.agents): c.key for c in cells}
    logged = {n: stops[key]["search"] for n, key in by_n.items() if (stops.get(key) or {}).get("search")}
    if not logged:
        return None
    search = CapacitySearch(cells[0].search.max_agents, next(iter(logged.values()))["target"])
    while (n := search.next_n()) in logged:
        p = logged[n]
        search.observe(n, p["goodput"], p["low"], p["high"])
    return search, by_n, _verdict_level(logged)


def _verdict_level(logged: dict[int, dict]) -> dict | None:
    """The level of the intervals a search's verdicts read (the runner logs it with each point: every
    point of a search shares its suite's runs, so one level): {confidence, looks, overall_confidence};
    None in a log written before the runner logged it."""
    entry = next((p for p in logged.values() if p.get("confidence") is not None), None)
    if entry is None:
        return None
    return {k: entry.get(k) for k in ("confidence", "looks", "overall_confidence")}


def verdict_interval_label(level: dict | None) -> str:
    """How the report names the interval a search's verdict read: not the goodput table's plain
    interval at the SLO's confidence, but each look's, Bonferroni-split over the looks a point can take."""
    if level is None:
        return "verdict interval (its level was not logged)"
    text = f"verdict interval at {100 * level['confidence']:.4g} %"
    if (level.get("looks") or 1) > 1 and level.get("overall_confidence") is not None:
        text += f" ({100 * level['overall_confidence']:.4g} % Bonferroni-split over {level['looks']} looks)"
    return text


def _search_line(search: CapacitySearch, where: dict, steps: pd.DataFrame, contention: tuple[float, float],
                 level: dict | None = None) -> str:
    """'capacity N agents at <settings>, goodput [CI] (its level) ≥ target; the cause at N + 1; the probe points'."""
    label = f"{where['model']} ({where['lang']}; {where['server_settings'] or 'pinned settings'})"
    if not search.done:
        return f"{label}: the capacity search did not finish (N = {search.next_n()} not probed yet)"
    res = search.result()
    points = ", ".join(str(p.n) for p in res.probes)
    if res.capacity:
        iv = res.interval
        text = (f"{label}: capacity {res.capacity} agent{'s' if res.capacity != 1 else ''}, goodput "
                f"{fmt.pct(iv.goodput * 100)} [{fmt.pct(iv.low * 100)}, {fmt.pct(iv.high * 100)}] "
                f"({verdict_interval_label(level)}) ≥ target {fmt.pct(res.target * 100, 0)}")
    else:
        text = f"{label}: capacity 0: one agent alone is not shown to meet the SLO"
    bad = res.first_failing
    if bad is None:
        return text + f"; every count up to the search's bound {res.max_agents} meets it (probed {points})"
    miss = f"goodput {fmt.pct(bad.goodput * 100)} [{fmt.pct(bad.low * 100)}, {fmt.pct(bad.high * 100)}]" \
        if bad.goodput is not None else "no run completed"
    step = steps[(steps["model"] == where["model"]) & (steps["lang"] == where["lang"]) & (steps["n_agents"] == bad.n)
                 & (steps["server_settings"] == where["server_settings"])] if not steps.empty else steps
    if bad.n == 1:
        why = "a faster model or more compute would move it, or a looser SLO"
    elif step.empty:
        why = f"no steps row at {bad.n} to name the cause"
    else:
        why = limit_cause(step.iloc[0], *contention)
    return text + f"; {bad.n} {bad.verdict} ({miss}); {why} (probed {points})"


def search_capacity(results, contention: tuple[float, float]) -> list[dict]:
    """The capacity search's finding, per model, language and server settings (one search each,
    bench/study/capacity_search.py): the largest agent count whose goodput interval's lower bound
    reaches the SLO's target, its interval, the first count that is not shown to (capacity + 1), the
    cause there by the agent-count rule (limit_cause, from the steps table), and the probe points;
    `contention`: (min_tps_ratio, max_ttft_inflation). The points are the ones the search ran: its
    intervals as logged, so the answer is the one that chose them."""
    out: list[dict] = []
    groups: dict[tuple, list] = {}
    for c in results.cells:
        if c.suite == "steps" and c.search is not None:
            groups.setdefault((c.model.name, c.lang, c.settings_tag), []).append(c)
    runs, steps = results.runs, results.derived.get("steps", pd.DataFrame())
    for (model, lang, _), cells in sorted(groups.items()):
        replay = _search_probes(cells, results.stops)
        if replay is None:
            continue
        search, by_n, level = replay
        probed = runs[runs["cell"].isin([by_n[p.n] for p in search.probes])] if not runs.empty else runs
        labels = probed["server_settings"].dropna() if "server_settings" in probed else pd.Series(dtype=str)
        where = {"model": model, "lang": lang, "server_settings": labels.iloc[0] if len(labels) else None}
        res = search.result() if search.done else None
        # the runs each point ran, as the runner logged them (the validity gate may keep some out of the tables)
        ran = {p.n: int(results.stops[by_n[p.n]]["n"]) for p in search.probes}
        out.append({**where, "done": search.done, "capacity": res.capacity if res else None,
                    "max_agents": search.max_agents, "target": search.target,
                    # the level of every interval below: the verdict's, not the goodput table's plain one
                    "verdict_level": level, "interval_label": verdict_interval_label(level),
                    "interval": _probe_json(res.interval) if res and res.interval else None,
                    "first_failing": _probe_json(res.first_failing) if res and res.first_failing else None,
                    "probes": [{**_probe_json(p), "runs": ran[p.n]} for p in search.probes],
                    "runs": sum(ran.values()), "worst_case_probes": worst_case_probes(search.max_agents),
                    # the linear steps to the same answer: every count from 1 to the first failing one
                    "linear_points": min(res.capacity + 1, search.max_agents) if res else None,
                    "finding": _search_line(search, where, steps, contention, level)})
    return out


def _stepped(steps: pd.DataFrame, searched: list[dict]) -> pd.DataFrame:
    """The steps of the linear rule: without the agent counts a search probed (not consecutive, so the
    linear rule's "every step measured" would not hold; the search's finding speaks for them)."""
    keys = {(s["model"], s["lang"], s["server_settings"]) for s in searched}
    if steps.empty or not keys or "server_settings" not in steps:
        return steps
    return steps[[k not in keys for k in zip(steps["model"], steps["lang"], steps["server_settings"])]]


def _probe_json(p) -> dict:
    return {"n": p.n, "goodput": p.goodput, "low": p.low, "high": p.high, "verdict": p.verdict}


def topology_verdicts(topo: pd.DataFrame) -> list[dict]:
    """One line per model and language from the topology table's wall time: which topology
    finishes the same pair of agent runs sooner, by how much, with the comparison rule's 95 % interval."""
    out: list[dict] = []
    if topo.empty:
        return out
    for _, r in topo[topo["metric"] == "wall_s"].iterrows():
        if r["better"] == "no difference":
            verdict = (f"no difference: the CI of two instances − one instance [{fmt.signed(r['ci_low'])}, "
                       f"{fmt.signed(r['ci_high'])}] s contains 0")
        else:
            faster = abs(r["diff"])
            verdict = (f"{r['better']} finish the pair {fmt.num(faster)} s sooner ({fmt.num(r['two_instances_mean'])} vs "
                       f"{fmt.num(r['one_instance_mean'])} s; two − one [{fmt.signed(r['ci_low'])}, "
                       f"{fmt.signed(r['ci_high'])}] s)")
        out.append({"model": r["model"], "lang": r["lang"], "verdict": verdict})
    return out


def build(results, failures: list[dict], client_overhead: dict | None,
          contention: tuple[float, float] = (0.85, 2.0)) -> dict:
    """Every finding of a study, as plain data (JSON-ready). `contention`: the profile's
    (min_tps_ratio, max_ttft_inflation)."""
    ran = pd.concat([results.runs, results.misplaced]) if not results.misplaced.empty else results.runs
    downgrades = downgrade_rows(ran, failures)
    floors = client_floors(client_overhead)
    win = results.derived["winners"]
    searched = search_capacity(results, contention)
    return {
        "rules": {"cv_limit_pct": CV_LIMIT_PCT, "contention_share": CONTENTION_SHARE, "significance": SIGNIFICANCE,
                  "scale_efficiency_pct": SCALE_EFFICIENCY_PCT},
        "central_answers": {f"{suite}:{metric}": central_answer(results.derived["variance"], suite, metric,
                                                                runs=results.runs)
                            for suite, metric in central_questions()},
        "winners": [] if win.empty else
        [{k: (None if fmt.missing(r[k]) else r[k]) for k in ("bench", "case", "metric", "winner", "verdict", "diff",
                                                               "ci_low", "ci_high", "ran_as")}
         for r in win.to_dict(orient="records")],
        "downgrades": downgrades,
        "recommendations": recommendations(results, downgrades, floors),
        "topology": topology_verdicts(results.derived.get("topology", pd.DataFrame())),
        "capacity": capacity(_stepped(results.derived.get("steps", pd.DataFrame()), searched), *contention),
        "capacity_search": searched,
        "drift_changed": drift_changed(results.derived),
        "placebo": placebo_verdicts(results.derived.get("placebo", pd.DataFrame())),
        "precision": precision_summary(results.derived.get("sampling", pd.DataFrame())),
    }


def drift_changed(derived: dict) -> list[dict]:
    """The verdicts the drift adjustment changed: winners and Python/Rust differences whose raw
    comparison and adjusted comparison disagree (the adjusted one is the study's verdict)."""
    out = []
    win = derived.get("winners", pd.DataFrame())
    for _, r in win[win["verdict"] != win["verdict_raw"]].iterrows() if not win.empty else ():
        out.append({"what": f"winner {r['bench']} / {r['case']} ({r['metric']})", "raw": r["verdict_raw"],
                    "adjusted": r["verdict"]})
    deltas = derived.get("lang_deltas", pd.DataFrame())
    for _, r in deltas[deltas["significant"] != deltas["significant_raw"]].iterrows() if not deltas.empty else ():
        verdict = lambda sig, d: (f"significant (Δ {fmt.signed(d)})" if sig else "no significant difference")  # noqa: E731
        out.append({"what": f"Rust − Python {r['suite']}/{r['model']}/{r['case']} ({r['metric']})",
                    "raw": verdict(r["significant_raw"], r["delta_raw"]),
                    "adjusted": verdict(r["significant"], r["delta"])})
    return out


def placebo_verdicts(aa: pd.DataFrame) -> list[dict]:
    """The A/A check in one line per placebo: how many comparisons came out 'no difference',
    drift-adjusted and raw (every one should, adjusted)."""
    out = []
    for name, g in aa.groupby("placebo", sort=True) if not aa.empty else ():
        same = int((g["verdict"] == "no difference").sum())
        same_raw = int((g["verdict_raw"] == "no difference").sum())
        out.append({"placebo": name, "original": g["original"].iloc[0], "comparisons": len(g),
                    "no_difference": same, "no_difference_raw": same_raw,
                    "verdict": ("passed: no comparison finds a difference" if same == len(g)
                                else f"FAILED: {len(g) - same} of {len(g)} comparisons find a difference")})
    return out


def precision_summary(samp: pd.DataFrame) -> dict:
    """Runs per config, the stop reasons, and the widest headline interval (relative half-width)."""
    if samp.empty:
        return {}
    widest = samp.loc[samp["rel_half_width"].astype(float).idxmax()] if samp["rel_half_width"].notna().any() else None
    per_cell = samp.drop_duplicates("cell")
    return {"configs": int(len(per_cell)), "runs": int(per_cell["n"].sum()),
            "runs_per_config": {str(k): int(v) for k, v in per_cell["n"].value_counts().sort_index().items()},
            "stop_reasons": {str(k): int(v) for k, v in per_cell["stop_reason"].value_counts().items()},
            "not_within_target": int((samp["within_target"] == False).sum()),  # noqa: E712
            "widest": None if widest is None else {
                "cell": widest["cell"], "metric": widest["metric"], "n": int(widest["n"]),
                "rel_half_width": float(widest["rel_half_width"]), "target": None if fmt.missing(widest["target"])
                else float(widest["target"]), "stop_reason": widest["stop_reason"]}}
