"""A study nobody can corrupt, hang or hijack (issue 18, points 2-5): plan-checked resume, a Rust
run never counted half-written, one writer per study and port set, SIGTERM cleaned up like Ctrl-C,
and stale PID files that never signal someone else's process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bench.clients import rust
from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core.errors import BenchError
from bench.core.store import SUPERSEDED_DIR, SUPERSEDED_NAME, Store
from bench.host import locks
from bench.host.machine import port_is_free, process_identity
from bench.runtimes import create_runtime
from bench.runtimes.llamacpp import LocalRuntime
from bench.runtimes.process import ManagedProcess
from bench.study import interrupt, plan_identity
from bench.study.runner import run_matrix

from conftest import REPO, free_port, invoke, smoke_variant
from docker_env import build_images, docker_client
from ollama_server import FakeOllama


@pytest.fixture()
def two_servers():
    with FakeOllama(token_s=0.002) as a, FakeOllama(token_s=0.002) as b:
        yield a, b


def external_profile(tmp_path, a, b, *, num_predict=10, runs=2, langs=("python",)) -> Path:
    """A fixed study on two test servers: one model, one config, `runs` runs."""
    def mutate(d):
        d["runtime"] = {"kind": "external", "endpoints": [{"name": "collector", "url": a.url, "api": "ollama"},
                                                          {"name": "insight", "url": b.url, "api": "ollama"}]}
        d["models"] = [{"name": "gemma3:latest", "baseline": True}]
        d["single"].update(gpu_layers=[80], ctx=[512], langs=list(langs), runs=runs)
        d["workload"].update(num_predict=num_predict, ignore_eos=False)
    return smoke_variant(tmp_path, mutate, name=f"profile-{num_predict}-{'-'.join(langs)}.yaml")


def bench_once(path: Path):
    loaded = load_profile(path)
    return run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), Store("test"),
                      progress=False)


# ---- 2. resume counts only runs of this plan ---------------------------------------------------

def test_a_plan_change_between_two_benches_ignores_the_old_runs(tmp_path, two_servers, results_dir):
    a, b = two_servers
    first = bench_once(external_profile(tmp_path, a, b, num_predict=10))
    assert first.done == 2 and not first.ignored
    store = Store("test")
    old = {r.rel_dir: r.doc.plan_fingerprint for r in store.iter_runs()}
    assert len(old) == 2 and all(fp is not None for fp in old.values())

    # num_predict changes: the old runs are another plan's, moved aside, and both runs are redone
    second = bench_once(external_profile(tmp_path, a, b, num_predict=12))
    assert second.ignored == {"another plan (workload changed)": 2}
    assert second.resumed == 0 and second.done == 2
    runs = list(store.iter_runs())
    assert len(runs) == 2 and all(r.doc.config.num_predict == 12 for r in runs)  # readers see one plan
    moved = sorted(second.ignored_to.glob("*/*/*/*/run_*/metrics.json"))
    assert len(moved) == 2 and second.ignored_to.parent == store.root / SUPERSEDED_DIR
    why = json.loads((moved[0].parent / SUPERSEDED_NAME).read_text())
    assert why["reason"] == "another plan (workload changed)"
    assert why["stored"]["parts"]["model"] == why["expected"]["parts"]["model"]

    # the same plan again: nothing ignored, everything resumed
    third = bench_once(external_profile(tmp_path, a, b, num_predict=12))
    assert third.resumed == 2 and third.done == 0 and not third.ignored

    # a run without a fingerprint (an older harness) is never pooled either
    victim = runs[0].path
    doc = json.loads(victim.read_text())
    del doc["plan_fingerprint"]
    victim.write_text(json.dumps(doc))
    fourth = bench_once(external_profile(tmp_path, a, b, num_predict=12))
    assert fourth.ignored == {plan_identity.NO_FINGERPRINT: 1} and fourth.resumed == 1 and fourth.done == 1


def test_the_fingerprint_names_the_part_that_changed():
    base = plan_identity.fingerprint({"seed": 1}, {"digest": "d"}, {"kind": "ollama"}, "c1")
    assert plan_identity.mismatch(base, base) is None
    moved = plan_identity.fingerprint({"seed": 1}, {"digest": "e"}, {"kind": "ollama"}, "c2")
    assert plan_identity.mismatch(base, moved) == "another plan (model, harness_commit changed)"
    assert plan_identity.mismatch(None, base) == plan_identity.NO_FINGERPRINT


# ---- 3. a Rust run is never counted half-written -----------------------------------------------

@pytest.mark.skipif(not rust.NATIVE_BINARY.is_file(), reason="tr116-agent not built (invoke build-rust)")
def test_a_harness_killed_after_the_rust_agent_exits_leaves_a_run_that_resume_redoes(
        tmp_path, two_servers, results_dir, monkeypatch):
    a, b = two_servers
    monkeypatch.setenv("TR116_AGENT_BIN", str(rust.NATIVE_BINARY))
    kept = tmp_path / "agent-document.json"
    real_document = rust._agent_document

    def keep_a_copy(path):  # the agent's own file, as a kill right after the agent would leave it
        shutil.copy(path, kept)
        return real_document(path)

    monkeypatch.setattr(rust, "_agent_document", keep_a_copy)
    path = external_profile(tmp_path, a, b, runs=1, langs=("rust",))
    assert bench_once(path).done == 1
    store = Store("test")
    (run,) = list(store.iter_runs())
    assert run.doc.plan_fingerprint is not None and "plan_fingerprint" not in json.loads(kept.read_text())

    # killed between the agent's exit and the harness's write: the agent's file, no metrics.json
    run.path.unlink()
    shutil.copy(kept, run.path.with_name(rust.AGENT_OUT_NAME))
    again = bench_once(path)
    assert again.resumed == 0 and again.done == 1 and not again.ignored

    # an agent's bare document at metrics.json itself (what the agent wrote before) is not counted
    shutil.copy(kept, run.path)
    third = bench_once(path)
    assert third.ignored == {plan_identity.NO_FINGERPRINT: 1} and third.done == 1 and third.resumed == 0
    (redone,) = list(store.iter_runs())
    assert redone.doc.client_cost is not None and redone.doc.plan_fingerprint is not None


# ---- 4. one study, one writer ------------------------------------------------------------------

def test_locks_refuse_a_second_holder_and_name_the_first(results_dir):
    with locks.holding("bench", "s1", [50001, 50002]):
        with pytest.raises(BenchError, match=rf"study 's1' is in use by pid {os.getpid()} \(`.*`, since "):
            with locks.holding("bench", "s1", []):
                pass
        with pytest.raises(BenchError, match=r"port 50002 is in use by pid"):
            with locks.holding("down", "other", [50002]):
                pass
    with locks.holding("bench", "s1", [50001, 50002]):  # released: `up` then `bench` in sequence works
        pass
    # a holder that dies, however it dies, holds nothing
    code = ("import sys, time; sys.path.insert(0, %r); from bench.host import locks\n"
            "with locks.holding('bench', 's2', []):\n print('held', flush=True); time.sleep(60)" % str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "BENCH_RESULTS": str(results_dir)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(BenchError, match=rf"pid {proc.pid}"):
            with locks.holding("bench", "s2", []):
                pass
    finally:
        proc.kill()
        proc.wait()
    with locks.holding("bench", "s2", []):
        pass


def test_two_concurrent_benches_the_second_refuses(tmp_path, results_dir):
    with FakeOllama(token_s=0.05) as a, FakeOllama(token_s=0.05) as b:  # slow: the first bench lasts
        path = str(external_profile(tmp_path, a, b, num_predict=40, runs=3))
        env = {**os.environ, "BENCH_RESULTS": str(results_dir)}
        first = subprocess.Popen([sys.executable, "-m", "invoke", "bench", "--profile", path, "--no-progress"],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lock = locks.study_lock_path("test")
            deadline = time.monotonic() + 60
            while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.05)
            t0 = time.monotonic()
            second = invoke("bench", "--profile", path, "--no-progress", results=results_dir, timeout=60)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"study 'test' is in use by pid {first.pid}" in second.stderr
            assert "invoke bench" in second.stderr and time.monotonic() - t0 < 30  # at once, not after
            # nor may a `down` stop the servers under it
            down = invoke("down", "--profile", path, results=results_dir, timeout=60)
            assert down.returncode == 2 and f"is in use by pid {first.pid}" in down.stderr, down.stderr
            assert first.poll() is None  # the first still runs, undisturbed
        finally:
            first.send_signal(signal.SIGTERM)  # as CI's cancel would: cleaned up like Ctrl-C
            out, _ = first.communicate(timeout=60)
        assert first.returncode == 143, out
        assert "interrupted: finished runs are saved" in out


# ---- 5. signals --------------------------------------------------------------------------------

SLOW_CLEANUP = """
import sys, time
sys.path.insert(0, %r)
from bench.study import interrupt
with interrupt.graceful():
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        print("cleaning up", flush=True)
        time.sleep(60)
"""


def test_sigterm_runs_the_cleanup_and_a_second_signal_exits_at_once():
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLEANUP % str(REPO)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "cleaning up"  # the first: like Ctrl-C
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143 and time.monotonic() - t0 < 5
        assert "SIGTERM again: exiting now" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def _listening_pids(state_dir: Path) -> dict[int, int]:
    """pid → port of the servers whose state files the bench wrote."""
    out = {}
    for f in state_dir.glob("*.json"):
        try:
            st = json.loads(f.read_text())
        except ValueError:
            continue
        out[st["pid"]] = st["port"]
    return out


@pytest.mark.llama
def test_timeout_sigterm_on_bench_leaves_no_listening_port_and_no_child(tmp_path):
    results = tmp_path / "results"
    path = smoke_variant(tmp_path, lambda d: (d["models"].pop(1), d["single"].update(runs=3),
                                              d["workload"].update(num_predict=64)))
    ports = [e["port"] for e in yaml.safe_load(path.read_text())["runtime"]["endpoints"]]
    env = {**os.environ, "BENCH_RESULTS": str(results)}
    proc = subprocess.Popen(["timeout", "-s", "TERM", "600", sys.executable, "-m", "invoke", "bench",
                             "--profile", str(path), "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    state_dir = results / ".runtime"
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            seen.update(_listening_pids(state_dir))
            if seen and not any(port_is_free("127.0.0.1", p) for p in seen.values()):
                break  # a server is up and listening: the bench is under way
            time.sleep(0.1)
        assert seen and proc.poll() is None, "the bench never started a server"
        time.sleep(1.0)  # into the warmup or a run
        seen.update(_listening_pids(state_dir))
        proc.send_signal(signal.SIGTERM)  # to `timeout`, which passes it on as on its deadline
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 143, out
        for pid in seen:
            assert not Path(f"/proc/{pid}").exists() or ") Z " in Path(f"/proc/{pid}/stat").read_text(), \
                f"server pid {pid} survived"
        assert all(port_is_free("127.0.0.1", p) for p in ports), "a port is still listening"
        assert not list(state_dir.glob("*.json"))
        for proc_dir in Path("/proc").iterdir():  # nothing of this study runs on: no agent, no server
            try:
                cmd = (proc_dir / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(path).encode() not in cmd and str(results).encode() not in cmd, cmd
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in seen:  # before the fix the servers outlived the bench: do not leak them
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _agent_containers(client, root: Path) -> list:
    return [c for c in client.containers.list(filters={"ancestor": rust.IMAGE})
            if any(str(a).startswith(str(root)) for a in c.attrs.get("Args") or [])]


@pytest.mark.docker
def test_sigterm_during_a_containerized_rust_run_leaves_no_agent_container(tmp_path, results_dir, monkeypatch):
    """Killing `docker run` (what an interrupted subprocess gets) leaves its container running: the
    runner removes the study's agent containers on the way out."""
    client = docker_client()
    build_images("rust")  # cached by content
    monkeypatch.delenv("TR116_AGENT_BIN", raising=False)
    agent, why = rust.find_rust_agent(containerized=True)
    assert agent is not None and agent.prefix[0] == "docker", why
    monkeypatch.setattr(rust, "find_rust_agent", lambda containerized=True: (agent, ""))
    root = Store("test").root

    def signal_once_the_agent_runs():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _agent_containers(client, root):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    with FakeOllama(token_s=0.05) as a, FakeOllama(token_s=0.05) as b:  # a Rust run of several seconds
        loaded = load_profile(external_profile(tmp_path, a, b, num_predict=60, runs=1, langs=("rust",)))
        watcher = threading.Thread(target=signal_once_the_agent_runs, daemon=True)
        try:
            with interrupt.graceful(), pytest.raises(KeyboardInterrupt):
                watcher.start()
                run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), Store("test"),
                           progress=False)
            assert _agent_containers(client, root) == []
        finally:
            for c in _agent_containers(client, root):
                c.remove(force=True)


@pytest.mark.docker
def test_a_timed_out_containerized_rust_run_leaves_no_agent_container(tmp_path, results_dir, monkeypatch):
    client = docker_client()
    build_images("rust")
    monkeypatch.delenv("TR116_AGENT_BIN", raising=False)
    agent, why = rust.find_rust_agent(containerized=True)
    assert agent is not None and agent.prefix[0] == "docker", why
    monkeypatch.setattr(rust, "find_rust_agent", lambda containerized=True: (agent, ""))
    root = Store("test").root
    with FakeOllama(token_s=0.002) as a, FakeOllama(token_s=0.002) as b:
        real_run_job = rust.run_job

        def slow_run_past_its_deadline(*args, timeout_s):
            a.token_s = b.token_s = 0.1  # the warmups were quick; the agent's calls are not
            try:
                return real_run_job(*args, timeout_s=2.0)
            finally:
                a.token_s = b.token_s = 0.002

        monkeypatch.setattr(rust, "run_job", slow_run_past_its_deadline)
        loaded = load_profile(external_profile(tmp_path, a, b, num_predict=60, runs=1, langs=("rust",)))
        try:
            outcome = run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile),
                                 Store("test"), progress=False)
            assert outcome.failed >= 1 and outcome.done == 0
            assert _agent_containers(client, root) == []
        finally:
            for c in _agent_containers(client, root):
                c.remove(force=True)


@pytest.fixture()
def unrelated_sleeper():
    """Someone else's process in its own group, whose PID a stale state file may name."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_stale_state_file_never_signals_an_unrelated_process(tmp_path, unrelated_sleeper, results_dir):
    path = smoke_variant(tmp_path)
    loaded = load_profile(path)
    ports = [e.port for e in loaded.profile.runtime.endpoints]
    state_dir = results_dir / ".runtime"
    state_dir.mkdir(parents=True)
    # one written before identities were recorded, one whose PID was reused after our server died
    legacy = {"pid": unrelated_sleeper.pid, "port": ports[0], "args": ["llama-server"], "log": "x.log",
              "started_at": time.time()}
    reused = {**legacy, "port": ports[1],
              "identity": {**process_identity(unrelated_sleeper.pid), "start_ticks": 1}}
    (state_dir / f"llama-server-{ports[0]}.json").write_text(json.dumps(legacy))
    (state_dir / f"llama-server-{ports[1]}.json").write_text(json.dumps(reused))
    proc = invoke("down", "--profile", str(path), results=results_dir, timeout=60)
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.2)
    assert unrelated_sleeper.poll() is None  # alive: never signalled
    assert not list(state_dir.glob("*.json"))  # the stale files are gone
    # another boot's record of the same PID and start time is stale too
    runtime = LocalRuntime(loaded.profile, state_dir=state_dir)
    other_boot = {**legacy, "identity": {**process_identity(unrelated_sleeper.pid), "boot_id": "another-boot"}}
    (state_dir / f"llama-server-{ports[0]}.json").write_text(json.dumps(other_boot))
    runtime.down()
    assert unrelated_sleeper.poll() is None


def test_a_process_we_started_is_still_stopped(tmp_path):
    """The control: the identity check lets `stop` end our own process (and its group)."""
    proc = ManagedProcess("sleeper", "127.0.0.1", free_port(), tmp_path, startup_timeout_s=5)
    st = proc.start(["sleep", "60"], {}, healthy=lambda: True)
    stored = json.loads(proc.state_file.read_text())
    assert stored["identity"]["start_ticks"] and stored["identity"]["exe"].endswith("sleep")
    assert proc.state() is not None
    proc.stop()
    assert not st.alive() and not proc.state_file.exists()
