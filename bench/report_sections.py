"""The report's sections (report stage): each builds the context one part of report.md.j2 shows,
from the analysis (bench.analysis.Results) and what the study stored, never from the study's
measuring modules. Tables go through bench/md_table.py."""

from __future__ import annotations

import pandas as pd

from bench import fmt
from bench.md_table import md_table
from bench.profile import Profile
from bench.protocol import IDLE_SETTLE_S
from bench.sanity_set import RULE, load_sanity


def _short(text: str | None, n: int = 60) -> str:
    if text is None:
        return "–"
    one = " ".join(text.split()).replace("|", "\\|")
    return one if len(one) <= n else one[: n - 1] + "…"


# ---- the model probes (bench/probes.py measures, bench/probe_tables.py tabulates) ------------------


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


# ---- power (bench/power.py samples; bench/analysis.py tabulates the thermal, frontier and cost views) ---


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
