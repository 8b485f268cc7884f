"""The host agent: a Ray actor pinned to one host, which surveys it and runs the bundle there.

Its environment is the host's (the Ray worker node's): TR116_ROOT is the bundle checkout the host
runs (default: this one), TR116_HOST_WORKDIR its work folder (results under <workdir>/results),
BENCH_CACHE its model store. `run` starts the bundle's own path as a subprocess in TR116_ROOT,
`invoke up bench report down`, and while it runs ships every run folder whose metrics.json exists
to the head's ResultSink, then the study-level files; the subprocess dies with the agent (its
parent-death signal) and servers it left are stopped with `invoke down`.
"""

from __future__ import annotations

import ctypes
import json
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray

from bench.config.profile import Profile, load_profile
from bench.core.manifest import GpuDevice, Host
from bench.core.paths import REPO_ROOT, cache_dir
from bench.core.store import TIMELINE
from bench.fleet.transfer import finished_runs, pack, unpack
from bench.host import assets, fingerprint, gpu
from bench.study.manifest_writer import host_info

POLL_S = 0.5
STOP_WAIT_S = 60
PR_SET_PDEATHSIG = 1
LOG_TAIL_CHARS = 4000
PROFILE_FILE = "fleet-profile.yaml"
LOG_FILE = "fleet-run.log"


def ollama_store() -> Path:
    return cache_dir() / "ollama" / "models"  # the native runtime's model store (bench/runtimes/ollama.py)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def engine_version(profile: Profile) -> str | None:
    """The engine's version without starting it: the binary's own answer (native runtimes only)."""
    try:
        if profile.runtime.kind == "ollama":
            text = subprocess.run([str(assets.ollama_binary()), "--version"], capture_output=True, text=True,
                                  timeout=30).stdout + ""
            return text.strip().rsplit(" ", 1)[-1] or None
        if profile.runtime.kind == "local":
            return assets.llama_server_version(assets.llama_server_binary())
    except Exception:  # best effort: an engine that cannot say is recorded as unknown
        return None
    return None


def pulled_digest(name: str, models_dir: Path) -> str | None:
    """The digest Ollama reports for a pulled model (/api/tags): the sha256 of its manifest file in the
    model store, read without a server. None where this host has not pulled it yet."""
    repo, _, tag = name.partition(":")
    parts = repo.split("/")
    prefix = {1: ["registry.ollama.ai", "library"], 2: ["registry.ollama.ai"]}.get(len(parts), [])
    path = models_dir.joinpath("manifests", *prefix, *parts, tag or "latest")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def model_identities(profile: Profile) -> dict[str, dict[str, str]]:
    """Each model's identity as the fleet compares it before anything runs: a GGUF-created model by
    its file's sha256 (the same file gives the same model in every host's store, whatever digest each
    store gives it), a pulled one by its registry name and, where this host's native Ollama store holds
    it already, the digest the registry gave it."""
    out = {}
    for m in profile.models:
        weights = profile.weights_of(m)
        if weights.source == "gguf":
            out[m.name] = {"file_sha256": assets.gguf_identity(weights)["file_sha256"]}
            continue
        digest = pulled_digest(weights.name, ollama_store()) if profile.runtime.kind == "ollama" else None
        out[m.name] = {"pull": weights.name, **({"digest": digest} if digest else {})}
    return out


def host_fingerprint(profile: Profile, commit: str | None) -> dict:
    """The host's fingerprint block (bench/host/fingerprint.py), from the machine itself."""
    gpus = gpu.describe_gpus()
    devices = gpus if isinstance(gpus, str) else [GpuDevice(**g) for g in gpus]
    fp = fingerprint.build(Host(**host_info()), devices, profile.runtime.kind, engine_version(profile), commit)
    return fp.model_dump()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the agent's process dies (a killed actor, a dead host),
    so the bundle's own Ctrl-C cleanup runs and no study outlives its agent."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def current_config(study_root: Path) -> str | None:
    """The config the bundle is on: the cell of the timeline's last event that names one."""
    path = study_root / TIMELINE
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            cell = json.loads(line).get("cell")
        except (ValueError, AttributeError):  # the first line read may be cut; the last may be half written
            continue
        if isinstance(cell, str) and cell != "pinned":
            return cell
    return None


class HostAgent:
    def __init__(self, host: str, ip: str, sink, progress):
        self.host, self.ip, self.sink, self.progress = host, ip, sink, progress
        self.root = Path(os.environ.get("TR116_ROOT") or REPO_ROOT)
        default = Path(tempfile.gettempdir()) / "tr116-fleet" / host
        self.workdir = Path(os.environ.get("TR116_HOST_WORKDIR") or default)
        self.results = self.workdir / "results"
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.finished = threading.Event()
        self.finished.set()  # no run yet: nothing to wait for

    def survey(self, profile_text: str) -> dict:
        """Who this host is and what it would run: node, fingerprint, harness commit, model identities."""
        profile = self._profile(profile_text).profile
        commit = _git(self.root, "rev-parse", "HEAD")
        return {"host": self.host, "node_id": ray.get_runtime_context().get_node_id(),
                "node_ip": self.ip, "root": str(self.root), "workdir": str(self.workdir),
                "harness_commit": commit, "fingerprint": host_fingerprint(profile, commit),
                "models": model_identities(profile)}

    def seed(self, study: str, data: bytes | None) -> int:
        """Make the host's study folder hold exactly the runs the head holds (none: empty), so the
        bundle's resume reruns only what the head lacks."""
        study_root = self.results / study
        if study_root.exists():
            stale = self.workdir / f".stale-{time.time_ns()}"
            os.rename(study_root, stale)  # one step: the study is never half cleared
            shutil.rmtree(stale, ignore_errors=True)
        return len(unpack(data, study_root)) if data else 0

    def run(self, profile_text: str, study: str, runs: int | None, shard: str | None = None) -> dict:
        """The bundle's own path on this host; every finished run is shipped as it appears. `shard`
        ('K/H'): only this host's share of every config's runs, and no report (the head reports on
        the merged study)."""
        self.finished.clear()
        try:
            return self._run(self._profile(profile_text).path, self.results / study, runs, shard)
        finally:
            self.finished.set()

    def _run(self, path: Path, study_root: Path, runs: int | None, shard: str | None = None) -> dict:
        shipped = finished_runs(study_root)  # seeded runs: the head has them already
        args = ["up", "bench", "--no-progress", *(["--runs", str(runs)] if runs else []),
                *(["--shard", shard] if shard else ["report"]), "down"]
        t0 = time.time()
        rc = self._bundle(args, path, study_root, shipped)
        if rc != 0:  # failed or stopped: `up` started servers that the broken chain never stopped
            self._bundle(["down"], path, study_root, shipped)
        self._ship_runs(study_root, study_root.name, shipped)
        data = pack(study_root, ["."], skip_dirs=set(shipped))
        ray.get(self.sink.put_study_files.remote(self.host, study_root.name, data))
        return {"host": self.host, "rc": rc, "wall_s": time.time() - t0, "stopped": self.stopping,
                "log_tail": self._log_tail()}

    def stop(self) -> None:
        """Ctrl-C for the bundle on this host (its own cleanup runs), then wait until `run` has stopped
        the servers and shipped what is left: only then may the driver kill this actor."""
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.finished.wait(timeout=STOP_WAIT_S)

    def _profile(self, profile_text: str):
        path = self.workdir / PROFILE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile_text)
        return load_profile(path, "the fleet's profile")

    def _bundle(self, args: list[str], profile: Path, study_root: Path, shipped: dict[str, int]) -> int:
        venv = self.root / ".venv" / "bin" / "python"
        python = str(venv) if venv.is_file() else sys.executable
        env = {**os.environ, "BENCH_RESULTS": str(self.results), "PYTHONUNBUFFERED": "1"}
        if os.environ.get("TR116_HOST_WORKDIR"):
            # a host with a work folder of its own gets a temporary folder of its own, and so its own port
            # locks (bench/host/locks.py): hosts that share this machine's /tmp (network namespaces) do not
            # share their ports. Without one (a local Ray), the machine's port locks stay in force.
            env["TMPDIR"] = str(self.workdir / "tmp")
            (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        with open(self.workdir / LOG_FILE, "a") as log:
            proc = self.proc = subprocess.Popen(
                [python, "-m", "invoke", *args, "--profile", str(profile)], cwd=self.root, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent)
            while proc.poll() is None:
                self._ship_runs(study_root, study_root.name, shipped)
                time.sleep(POLL_S)
        return proc.returncode

    def _ship_runs(self, study_root: Path, study: str, shipped: dict[str, int]) -> None:
        """Ship every run folder whose metrics.json is new or rewritten since it was last shipped."""
        now = finished_runs(study_root)
        for rel, mtime in now.items():
            if shipped.get(rel) == mtime:
                continue
            ray.get(self.sink.put_run.remote(self.host, study, rel, pack(study_root, [rel])))
            shipped[rel] = mtime
        self.progress.update.remote(self.host, len(now), current_config(study_root))

    def _log_tail(self) -> str:
        try:
            return (self.workdir / LOG_FILE).read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""
