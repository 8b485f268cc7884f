#!/usr/bin/env bash
# Benchmark of the whole job: `invoke up bench report down` for a profile (default: smoke), timed,
# then the figures that say what the study cost and how far to trust it, read from what it wrote:
# wall time per task, runs per config and why each stopped, the widest headline interval, the drift
# seen and the verdicts the adjustment changed, the A/A placebo, voided requests, the tails that n
# allowed, and the study overhead counted both ways.
#
#   bash scripts/bench-default-study.sh [PROFILE]      # results under $BENCH_RESULTS or results/
#
# It measures; it asserts nothing (the tests check correctness).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-smoke}
INVOKE=.venv/bin/invoke
trap '$INVOKE down --profile "$PROFILE" >/dev/null 2>&1 || true' EXIT

line=""
start=$(date +%s%N)
for task in up bench report down; do
  t0=$(date +%s%N)
  args=(--profile "$PROFILE")
  [ "$task" = bench ] && args+=(--no-progress)
  "$INVOKE" "$task" "${args[@]}"
  line+="$task $(( ($(date +%s%N) - t0) / 1000000 )) ms, "
done
total=$(( ($(date +%s%N) - start) / 1000000 ))
echo "timing: ${line}total ${total} ms ($(awk "BEGIN {printf \"%.1f\", $total / 60000}") min)"

.venv/bin/python - "$PROFILE" <<'EOF'
import json
import sys

import pandas as pd

from bench.analysis import instrument_tables as instrument
from bench.config.profile import resolve_profile
from bench.core.store import Store

loaded = resolve_profile(sys.argv[1])
store = Store(loaded.profile.study)
found = json.loads((store.root / "tables" / "findings.json").read_text())
tables = {name: pd.read_csv(store.root / "tables" / f"{name}.csv") for name in
          ("sampling", "drift", "prefill", "tails", "overhead")
          if (store.root / "tables" / f"{name}.csv").stat().st_size > 1}
prec = found.get("precision") or {}
print(f"runs: {prec.get('runs')} in {prec.get('configs')} configs; runs per config {prec.get('runs_per_config')}; "
      f"stopped: {prec.get('stop_reasons')}")
w = prec.get("widest")
if w:
    print(f"widest headline interval: {w['cell']} {w['metric']} ±{w['rel_half_width'] * 100:.1f} % after {w['n']} runs "
          f"({w['stop_reason']}; target {'±%.0f %%' % (w['target'] * 100) if w['target'] else 'none'}); "
          f"{prec.get('not_within_target')} interval(s) not within target")
if "drift" in tables:
    d = tables["drift"]
    print(f"drift: {len(d)} probes, decode rate vs the first {d['drift_pct'].min():+.1f} % to {d['drift_pct'].max():+.1f} %, "
          f"h(t) {d['h'].min():.3f}–{d['h'].max():.3f}")
print(f"verdicts the drift adjustment changed: {len(found.get('drift_changed', []))}")
for c in found.get("drift_changed", []):
    print(f"  {c['what']}: raw {c['raw']} → adjusted {c['adjusted']}")
for p in found.get("placebo", []):
    print(f"A/A placebo {p['placebo']} vs {p['original']}: {p['verdict']} ({p['no_difference']} of {p['comparisons']} "
          f"adjusted, {p['no_difference_raw']} raw)")
if "prefill" in tables:
    pf = tables["prefill"]
    print(f"prefill check: {int(pf['judged'].sum())} of {int(pf['requests'].sum())} calls judged, "
          f"{int(pf['voided'].sum())} voided")
if "tails" in tables:
    t = tables["tails"]
    print("tails: " + "; ".join(f"{q} {t[f'{q}_status'].value_counts().to_dict()}" for q in ("p50", "p95", "p99")))
for c in found.get("capacity_search", []):
    runs = ", ".join(f"{p['n']}: {p.get('runs')}" for p in c.get("probes", []))
    print(f"capacity search: {c['finding']}; {c['runs']} runs (per count: {runs}), "
          f"at most {c['worst_case_probes']} counts probed")
events = store.read_jsonl("timeline.jsonl")
ratio, _ = instrument.study_overhead(events)
print(f"study overhead: {ratio:.2f}× the union of each run's request spans; "
      f"{instrument.study_summed_overhead_ratio(events):.2f}× counted the older, summed way")
EOF
