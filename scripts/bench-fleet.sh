#!/usr/bin/env bash
# The fleet's figures for issue 21's closing note, on a real two-host Ray cluster in network namespaces
# (tests/fleet_cluster.py; needs root and the fleet extra) and the fleet tests' tiny profile (SmolLM2,
# single suite, python, 2 runs of 8 tokens; tests/test_fleet.py fleet_profile):
#   1. `invoke fleet` on hosts a and b at once: its wall time;
#   2. the same two studies one after the other (`--hosts a`, then `--hosts b`, fresh fleet folders);
#   3. the bytes shipped to the head per run (fleet.json), and the rerun time when the head holds
#      every run (a rerun that has nothing left to run: the fixed cost of up/report/down per host).
# Prints one line per figure. Usage: scripts/bench-fleet.sh [RUNS]  (runs per config, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python - "${1:-2}" <<'PY'
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, "tests")
from fleet_cluster import fleet_cluster  # noqa: E402
from test_fleet import fleet_profile  # noqa: E402

runs = sys.argv[1]
work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
results = work / "results"
profile = fleet_profile(work)


def fleet(address: str, out: str, *more: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "invoke", "fleet", "--profile", str(profile), "--ray-address", address,
                           "--no-progress", "--out", out, "--runs", runs, *more],
                          env={**os.environ, "BENCH_RESULTS": str(results)}, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"fleet {out} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, json.loads((results / f"fleet-{out}" / "fleet.json").read_text())


with fleet_cluster(["a", "b"]) as cluster:
    print(f"cluster: head {cluster.address}, hosts a {cluster.hosts['a'].ip}, b {cluster.hosts['b'].ip} "
          f"(up in {cluster.startup_s:.1f} s)")
    both, doc = fleet(cluster.address, "both")
    one_a, _ = fleet(cluster.address, "only-a", "--hosts", "a")
    one_b, _ = fleet(cluster.address, "only-b", "--hosts", "b")
    rerun, _ = fleet(cluster.address, "both")
per_run = [h["bytes_per_run"] for h in doc["hosts"].values()]
shipped = sum(h["bytes_shipped"] for h in doc["hosts"].values())
walls = ", ".join(f"{n} {h['wall_s']:.1f} s" for n, h in doc["hosts"].items())
print(f"fleet, 2 hosts at once: {both:.1f} s wall (hosts {walls})")
print(f"the same two studies one after the other: {one_a + one_b:.1f} s ({one_a:.1f} + {one_b:.1f})")
print(f"bytes shipped per run: {sum(per_run) / len(per_run):.0f} (tar.gz of the run folder); "
      f"{shipped} bytes in all, study files included")
print(f"rerun with every run held by the head (nothing to run): {rerun:.1f} s")
PY
