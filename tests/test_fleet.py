"""The fleet (bench/fleet/, `invoke fleet`) on a real Ray cluster of two hosts in network namespaces
(tests/fleet_cluster.py), each running its own two `ollama serve` on its own 127.0.0.1:11434/11435 with
SmolLM2: two host studies merged by host; a host killed mid-study keeps what it finished and a rerun
runs only the missing runs; a host on another harness commit is refused with the difference."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, invoke, smoke_variant
from fleet_cluster import fleet_cluster, fleet_hosts, fleet_unavailable, netns_pids  # noqa: F401 (the session fixture)

if not os.environ.get("CI"):  # in CI a missing fleet extra fails, as a missing engine does
    pytest.importorskip("ray", reason="the fleet extra is not installed (scripts/setup.sh --fleet)")
from bench.fleet.agent import pulled_digest  # noqa: E402
from bench.fleet.driver import differences  # noqa: E402
from bench.fleet.transfer import finished_runs, pack, unpack  # noqa: E402

pytestmark = pytest.mark.fleet
STUDY = "fleet"
CONFIG = "single/python/smollm2-135m/gpu0_ctx512_temp08"


def fleet_profile(tmp_path: Path) -> Path:
    """The tiniest study: SmolLM2 only, the single suite in Python, 2 runs of 8 tokens, no floors, cold
    start, sanity or drift probes; the engines on each host's own 127.0.0.1:11434/11435."""

    def tiny(d):
        d["study"] = STUDY
        d["models"] = [{"name": "smollm2-135m", "baseline": True, "source": "gguf"}]
        d["single"].update(runs=2, precision=None)
        d["multi"]["precision"] = None
        d["runtime"]["endpoints"][0]["port"], d["runtime"]["endpoints"][1]["port"] = 11434, 11435
        d["instrument"]["drift_probes"] = False

    return smoke_variant(tmp_path, tiny, name="fleet-profile.yaml", base="smoke")


def fleet(profile: Path, address: str, results: Path, *more: str) -> subprocess.CompletedProcess:
    return invoke("fleet", "--profile", str(profile), "--ray-address", address, "--no-progress", *more,
                  results=results, timeout=600)


def fleet_doc(results: Path, out: str) -> dict:
    return json.loads((results / f"fleet-{out}" / "fleet.json").read_text())


def run_files(study: Path) -> dict[str, str]:
    """Every file of every run folder of a study → its sha256."""
    return {str(p.relative_to(study)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(study.glob(f"{CONFIG}/run_*/*")) if p.is_file()}


def test_two_hosts_give_two_host_studies_and_a_comparison_by_host(fleet_hosts, tmp_path):
    results = tmp_path / "results"
    t0 = time.monotonic()
    proc = fleet(fleet_profile(tmp_path), fleet_hosts.address, results, "--out", "two")
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = fleet_doc(results, "two")
    assert sorted(doc["hosts"]) == ["a", "b"]
    for name, host in doc["hosts"].items():
        assert (host["status"], host["runs_done"], host["runs_planned"], host["missing_runs"]) == ("ok", 2, 2, [])
        assert host["runs_shipped"] == 2 and host["bytes_per_run"] > 0
        assert host["survey"]["node_ip"] == fleet_hosts.hosts[name].ip  # it ran on its own node
        study = results / "fleet-two" / "hosts" / name / STUDY
        assert (study / "manifest.json").is_file() and len(run_files(study)) == 2
        # the store digest reader (pulled models' identity at the survey) gives Ollama's own digest
        recorded = json.loads((study / "manifest.json").read_text())["models"][0]
        store = fleet_hosts.hosts[name].workdir / "cache" / "ollama" / "models"
        assert pulled_digest(recorded["name"], store) == recorded["digest"]
    variance = pd.read_csv(results / "fleet-two" / "variance.csv")
    host = variance[variance["factor"] == "host"]  # η² of the host beside study, model, config, language
    assert not host.empty and set(host["levels"]) == {2} and host["eta_sq"].notna().all()
    report = (results / "fleet-two" / "fleet.md").read_text()
    assert "## Comparison by host" in report and "## Host fingerprints" in report
    assert "a: ok, 2/2 runs" in proc.stdout and "b: ok, 2/2 runs" in proc.stdout
    per_run = [h["bytes_per_run"] for h in doc["hosts"].values()]
    walls = ", ".join(f"{n} {h['wall_s']:.1f} s" for n, h in doc["hosts"].items())
    print(f"\nfleet of 2 hosts: {wall:.1f} s wall (driver {doc['wall_s']:.1f} s; host walls {walls}); "
          f"{sum(per_run) / len(per_run):.0f} bytes shipped per run")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"the fleet ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} not there after {timeout} s"
        time.sleep(0.1)


def test_a_killed_host_keeps_its_finished_runs_and_a_rerun_runs_only_the_missing_ones(fleet_hosts, tmp_path):
    results, profile = tmp_path / "results", fleet_profile(tmp_path)
    args = [sys.executable, "-m", "invoke", "fleet", "--profile", str(profile), "--ray-address", fleet_hosts.address,
            "--no-progress", "--out", "kill", "--runs", "3"]
    env = {**os.environ, "BENCH_RESULTS": str(results)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b_study = results / "fleet-kill" / "hosts" / "b" / STUDY
    try:
        wait_for(b_study / CONFIG / "run_1" / "metrics.json", proc)  # shipped to the head: b's first run
        fleet_hosts.kill_host("b")  # raylet, workers, bundle and both engines: kill -9
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 1, out[-3000:]
        doc = fleet_doc(results, "kill")
        a, b = doc["hosts"]["a"], doc["hosts"]["b"]
        why = out[-3000:]
        assert (a["status"], a["runs_done"], a["missing_runs"]) == ("ok", 3, []), why
        assert b["status"] == "failed" and "died" in b["error"], why
        kept = run_files(b_study)
        assert b["runs_done"] == len(kept) >= 1 and b["missing_runs"]  # what it finished is kept
        assert b["runs_done"] + len(b["missing_runs"]) == 3
        assert f"b: failed, {b['runs_done']}/3 runs" in out
    finally:
        fleet_hosts.restart_host("b")
    t0 = time.monotonic()
    again = fleet(profile, fleet_hosts.address, results, "--out", "kill", "--runs", "3")
    rerun_s = time.monotonic() - t0
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    doc2 = fleet_doc(results, "kill")
    a2, b2 = doc2["hosts"]["a"], doc2["hosts"]["b"]
    assert (a2["runs_seeded"], a2["runs_shipped"], a2["runs_done"]) == (3, 0, 3)  # a ran nothing again
    assert (b2["runs_seeded"], b2["runs_shipped"]) == (b["runs_done"], len(b["missing_runs"]))
    assert (b2["status"], b2["runs_done"], b2["missing_runs"]) == ("ok", 3, [])
    after = run_files(b_study)
    assert {k: after[k] for k in kept} == kept  # the runs kept from before are the same files
    print(f"\nkill test: b kept {b['runs_done']} of 3 runs, missing {len(b['missing_runs'])}; "
          f"rerun {rerun_s:.1f} s (b ran {b2['runs_shipped']} run(s), a none)")


def bundle_processes(netns: str) -> list[str]:
    """The bundle's processes in a host's namespace (an `invoke` task or an engine), not Ray's own."""
    out = []
    for pid in netns_pids(netns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "invoke" in cmd or "ollama" in cmd:
            out.append(f"{pid} {cmd[:120]}")
    return out


def test_ctrl_c_stops_every_host_s_bundle_and_engines(fleet_hosts, tmp_path):
    results = tmp_path / "results"
    args = [sys.executable, "-m", "invoke", "fleet", "--profile", str(fleet_profile(tmp_path)), "--ray-address",
            fleet_hosts.address, "--no-progress", "--out", "ctrlc", "--runs", "6"]
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "BENCH_RESULTS": str(results)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(results / "fleet-ctrlc" / "hosts" / "a" / STUDY / CONFIG / "run_1" / "metrics.json", proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    left = {name: bundle_processes(host.netns) for name, host in fleet_hosts.hosts.items()}
    assert left == {"a": [], "b": []}, left  # servers stopped by the bundle's own `down`, agents gone


def test_a_host_on_another_harness_commit_is_refused_with_the_difference(tmp_path):
    why = fleet_unavailable()
    if why:
        pytest.skip(f"fleet test cluster: {why}")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=fleet test", "-c", "user.email=fleet@test",
                    "commit", "-q", "--allow-empty", "-m", "one more commit"], check=True)
    theirs = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    ours = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = tmp_path / "results"
    with fleet_cluster(["a", "b"], roots={"b": clone}) as cluster:
        proc = fleet(fleet_profile(tmp_path), cluster.address, results, "--out", "refused")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    # a's commit is the checkout's HEAD when the fleet surveyed it (others may commit meanwhile)
    said = re.search(r"harness commit (\w+) on b vs (\w+) on a", proc.stderr)
    assert said and said[1] == theirs and said[2] != theirs, proc.stderr[-3000:]
    assert subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", ours, said[2]]).returncode == 0
    assert "--allow-mismatch" in proc.stderr
    assert not (results / "fleet-refused" / "hosts").exists()  # refused before anything ran


def test_a_differing_model_file_is_a_difference_and_the_same_file_is_not():
    def survey(host, sha):
        return {"host": host, "harness_commit": "c0ffee", "models": {"smollm2-135m": {"file_sha256": sha}}}

    assert differences(survey("a", "1" * 64), survey("b", "1" * 64)) == []
    assert differences(survey("a", "1" * 64), survey("b", "2" * 64)) == [
        f"model smollm2-135m: file_sha256 {'2' * 64} on b vs {'1' * 64} on a"]


def test_a_pulled_model_s_digest_counts_where_both_hosts_have_pulled_it():
    def survey(host, **digest):
        return {"host": host, "harness_commit": "c0ffee", "models": {"m": {"pull": "llama3.1:8b", **digest}}}

    assert differences(survey("a", digest="d1"), survey("b")) == []  # b pulls it when it runs: compare checks
    assert differences(survey("a", digest="d1"), survey("b", digest="d2")) == ["model m: digest d2 on b vs d1 on a"]


def test_a_run_folder_travels_whole_and_lands_metrics_last(tmp_path):
    src = tmp_path / "src"
    run = src / CONFIG / "run_1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"ok": true}')
    (run / "extra.txt").write_text("x" * 1000)
    (src / ".superseded" / CONFIG / "run_9").mkdir(parents=True)
    (src / ".superseded" / CONFIG / "run_9" / "metrics.json").write_text("{}")
    assert list(finished_runs(src)) == [f"{CONFIG}/run_1"]  # a dot folder is no part of the study
    written = unpack(pack(src, [f"{CONFIG}/run_1"]), tmp_path / "dest")
    assert written == [f"{CONFIG}/run_1/extra.txt", f"{CONFIG}/run_1/metrics.json"]
    assert (tmp_path / "dest" / CONFIG / "run_1" / "extra.txt").read_text() == "x" * 1000
    assert not list((tmp_path / "dest").glob(".incoming-*"))
