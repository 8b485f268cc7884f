"""The instrument's tables (analysis stage) from what bench/study/instrument.py and the runner stored:
the drift probes' trend (tables/drift.csv) and the drift model's series, and where the bench's
time went (tables/overhead.csv) from timeline.jsonl."""

from __future__ import annotations

from bench.core import metrics
from bench.core.drift import HostDrift, ProbePoint, probe_point, unix_time


def probe_time(p: dict) -> float | None:
    """A probe's time in Unix seconds: its middle, or (older studies) when its line was written."""
    if p.get("t_s") is not None:
        return p["t_s"]
    return unix_time(p["at"]) if p.get("at") else None


def probe_points(probes: list[dict]) -> list[ProbePoint]:
    """The drift model's series from probes.jsonl: each probe's level from its calls' engine decode
    rates at its time (older probes: the streamed calls' rates, at the time the line was written)."""
    out = []
    for p in probes:
        rates = p.get("rates") or [r.get("decode_tps_server") for r in p.get("requests", [])]
        t_s = probe_time(p)
        point = probe_point(t_s, rates) if t_s is not None else None
        if point is not None:
            out.append(point)
    return out


def drift_rows(probes: list[dict], threshold_pct: float) -> list[dict]:
    """Each probe against the study's first: drift_pct of the engine's and the client's decode
    rate and of TTFT; `flag` when the decode rate moved beyond the threshold."""
    probes = [p for p in probes if p.get("decode_tps") is not None]  # a failed probe has none
    if not probes:
        return []
    first = probes[0]
    points = probe_points(probes)
    series = HostDrift(points) if points else None
    rows = []
    for p in probes:
        d = metrics.drift_pct(p["decode_tps"], first["decode_tps"])
        t_s = probe_time(p)
        rows.append({"probe": p["label"], "at": p.get("at"), "t_s": t_s,
                     # the drift model's h(t) at this probe (bench/core/drift.py: all its calls' engine rates)
                     "h": series.factor(t_s) if series is not None and t_s is not None else None,
                     "decode_tps": p["decode_tps"],
                     "decode_tps_client": p["decode_tps_client"], "ttft_ms": p["ttft_ms"], "drift_pct": d,
                     "ttft_drift_pct": metrics.drift_pct(p["ttft_ms"], first["ttft_ms"]),
                     "flag": d is not None and abs(d) > threshold_pct})
    return rows


MEASURED = "measured requests (union of each run's request spans)"


def overhead_rows(events: list[dict]) -> tuple[float | None, list[dict]]:
    """The study's overhead ratio and where the time went, from timeline.jsonl (each event has its
    start `t_s` on the runner's clock and its `duration_s`; a run event its `active_s`, `span_s`
    and `summed_s`, run_time_parts). Measured: Σ active_s. Inside runs the rest is split into the
    gaps between a run's requests (span − active) and what is outside them (process spawn,
    bookkeeping: duration − span); other event kinds by kind; what no event covers is 'other'.
    Wall time: first event start to last event end. A run event of an older study has only
    `measured_s` (the summed way): it stands for all three."""
    if not events:
        return None, []
    wall = max(e["t_s"] + e["duration_s"] for e in events) - min(e["t_s"] for e in events)
    by_kind: dict[str, float] = {}
    active = span = run_s = 0.0
    for e in events:
        if e["event"] == "run":
            run_s += e["duration_s"]
            a = e.get("active_s", e.get("measured_s")) or 0.0
            active += a
            span += e.get("span_s", a) or 0.0
        else:
            by_kind[e["event"]] = by_kind.get(e["event"], 0.0) + e["duration_s"]
    parts = [(MEASURED, active)]
    if run_s:
        parts.append(("inside runs, between requests (gaps between calls and phases)", span - active))
        parts.append(("inside runs, outside requests (process spawn, bookkeeping)", run_s - span))
    parts += sorted(by_kind.items(), key=lambda kv: -kv[1])
    parts.append(("other (between events)", wall - sum(e["duration_s"] for e in events)))
    rows = [{"part": name, "seconds": secs, "share_pct": secs / wall * 100 if wall else None} for name, secs in parts]
    return metrics.study_overhead_ratio(wall, active), rows


def study_overhead(events: list[dict]) -> tuple[float | None, list[dict]]:
    """overhead_rows() over a study that several `bench` calls filled: the time between two
    calls belongs to no call, so each call's wall time counts on its own."""
    calls: dict[str, list[dict]] = {}
    for e in events:
        calls.setdefault(e.get("invocation", ""), []).append(e)
    if not calls:
        return None, []
    totals: dict[str, float] = {}
    measured = wall = 0.0
    for group in calls.values():
        ratio, rows = overhead_rows(group)
        for r in rows:
            totals[r["part"]] = totals.get(r["part"], 0.0) + r["seconds"]
        measured += next(r["seconds"] for r in rows if r["part"] == MEASURED)
        wall += sum(r["seconds"] for r in rows)
    rows = [{"part": k, "seconds": v, "share_pct": v / wall * 100 if wall else None} for k, v in totals.items()]
    return metrics.study_overhead_ratio(wall, measured), rows


def study_summed_overhead_ratio(events: list[dict]) -> float | None:
    """The ratio counted the way studies did before the union of request spans: Σ summed_s
    (run_time_parts), so overlapping requests, and the steps' unmeasured sequential time, count
    twice. Each `bench` call's wall time counts on its own, as in study_overhead."""
    wall = summed = 0.0
    calls: dict[str, list[dict]] = {}
    for e in events:
        calls.setdefault(e.get("invocation", ""), []).append(e)
    for group in calls.values():
        wall += max(e["t_s"] + e["duration_s"] for e in group) - min(e["t_s"] for e in group)
        summed += sum(e.get("summed_s", e.get("measured_s")) or 0.0 for e in group if e["event"] == "run")
    return metrics.study_overhead_ratio(wall, summed) if summed else None
