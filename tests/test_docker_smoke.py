"""The docker-smoke profile end to end, against the real Docker engine (.ci/run starts it): two
real Ollama containers from compose.yaml + compose.cpu.yaml, driven through the real `invoke`
entry point on free ports, in a Compose project of their own (never a user's study).

- The cycle: `invoke up` (images, compose up --wait, models created through the first container
  over HTTP), `bench` (single and multi, Python and Rust, both models: the unload between models
  on both containers), `report`, `validate`, `down` (no container, no network; the model volume
  stays), then `clean` (the volume goes).
- The memory-limited failure: tests/fixtures/compose.memory.yaml limits the second container, and
  a lone `invoke bench` (which brings the containers up and down itself) records the load failure
  in failures.jsonl, with the containers' logs and their cgroup oom_kill counters as evidence.

Sized for 2 cores: 8 runs of 8 tokens for the cycle, one model for the failures.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from bench.config.ladder import Skip
from bench.core.errors import LOAD, kind_class
from bench.core.store import schema_errors

from conftest import REPO, invoke, smoke_variant
from docker_env import compose_cli, docker_client

pytestmark = [pytest.mark.docker, pytest.mark.ollama]  # the local Ollama image and the GGUF models
LABEL = "com.docker.compose.project"


@pytest.fixture(scope="module")
def engine():
    client = docker_client()
    compose_cli()
    return client


@pytest.fixture()
def project(engine):
    """A Compose project name of the test's own; whatever is left of it is removed on every exit."""
    name = f"tr116-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["docker", "compose", "--project-name", name, "-f", "compose.yaml", "-f", "compose.cpu.yaml",
                    "down", "--volumes", "--remove-orphans"], cwd=REPO, capture_output=True, timeout=120)
    assert not engine.containers.list(all=True, filters={"label": f"{LABEL}={name}"})
    assert not engine.volumes.list(filters={"label": f"{LABEL}={name}"})


def _variant(tmp_path: Path, project: str, mutate=None, name: str = "profile.yaml") -> Path:
    def shape(d):
        d["runtime"]["compose_project"] = project
        d["runtime"]["startup_timeout_s"] = 120
        if mutate:
            mutate(d)
    return smoke_variant(tmp_path, shape, name=name, base="docker-smoke")


def _ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _nothing_running(engine, project: str) -> None:
    assert not engine.containers.list(all=True, filters={"label": f"{LABEL}={project}"})
    assert not engine.networks.list(filters={"label": f"{LABEL}={project}"})


def test_docker_smoke_cycle(engine, project, tmp_path, results_dir):
    def matrix(d):
        d["single"].update(langs=["python", "rust"])
        d["multi"].update(enabled=True, langs=["python", "rust"], scenarios=["chimera_homo"], runs=1)

    path = str(_variant(tmp_path, project, matrix))
    profile = yaml.safe_load(Path(path).read_text())
    ports = [e["port"] for e in profile["runtime"]["endpoints"]]
    try:
        out = _ok(invoke("up", "--profile", path, results=results_dir), "up")
        assert "compose up --wait: ollama-a and ollama-b healthy" in out
        assert "gemma3-270m created" in out and "smollm2-135m created" in out  # a fresh volume
        # the second container lists what was created through the first (one shared volume)
        for port in ports:
            names = {m["name"] for m in requests.get(f"http://127.0.0.1:{port}/api/tags", timeout=10).json()["models"]}
            assert {"gemma3-270m:latest", "smollm2-135m:latest"} <= names
        out = _ok(invoke("bench", "--profile", path, "--no-progress", results=results_dir, timeout=600), "bench")
        assert "8 runs done, 0 already there, 0 failed run(s)" in out and "0 skipped" in out, out
        _ok(invoke("report", "--profile", path, results=results_dir), "report")
        _ok(invoke("validate", "--profile", path, results=results_dir), "validate")
    finally:
        down = invoke("down", "--profile", path, results=results_dir)
    _ok(down, "down")
    _nothing_running(engine, project)
    assert engine.volumes.get(f"{project}_ollama-models")  # down keeps the models

    study = results_dir / "test"
    manifest = json.loads((study / "manifest.json").read_text())
    assert len(manifest["run_order"]) == 8
    for rel in manifest["run_order"]:
        doc = json.loads((study / rel / "metrics.json").read_text())
        assert schema_errors(doc) == [], rel
        assert doc["placement"]["issues"] == [], (rel, doc["placement"])
    assert manifest["rust"]["agent"].startswith("docker image"), manifest["rust"]  # the built image
    runtime = manifest["runtime"]
    assert runtime["kind"] == "docker" and runtime["compose_project"] == project
    assert runtime["threads_per_server"] == 1
    containers = {c["service"]: c for c in runtime["containers"]}
    assert set(containers) == {"ollama-a", "ollama-b"}
    for (service, c), port in zip(sorted(containers.items()), ports):
        assert c["image"].startswith("tr116-ollama:cpu-") and c["image_id"].startswith("sha256:")
        assert len(c["image_inputs"]) == 64  # build-images.sh's content label
        # the host's network, the server on its loopback at the profile's port: nothing published
        assert c["network_mode"] == "host" and not c["published_ports"], c
        assert f"OLLAMA_HOST=127.0.0.1:{port}" in c["env"], c
        assert "OLLAMA_CONTEXT_LENGTH=1024" in c["env"] and "OLLAMA_NOPRUNE=1" in c["env"]
    # the native runtime's settings record, read from the containers (tests/test_model_identity.py)
    assert runtime["settings"] == {"OLLAMA_CONTEXT_LENGTH": "1024", "OLLAMA_FLASH_ATTENTION": "0",
                                   "OLLAMA_KEEP_ALIVE": "30m", "OLLAMA_KV_CACHE_TYPE": "f16",
                                   "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_NOPRUNE": "1",
                                   "OLLAMA_NUM_PARALLEL": "1"}, runtime.get("settings")
    # Between the two models each container unloaded the previous one, and /api/ps then listed
    # nothing else (the runtime raises otherwise).
    unloads = runtime["unloads"]
    assert {u["endpoint"] for u in unloads} == {"collector", "insight"}, unloads
    for u in unloads:
        assert u["next_model"] not in u["unloaded"] and all(n in (u["next_model"], f"{u['next_model']}:latest")
                                                        for n in u["ps_after"]), u

    out = _ok(invoke("clean", "--profile", path, results=results_dir), "clean")
    assert f"{project}_ollama-models" in out
    assert not engine.volumes.list(filters={"label": f"{LABEL}={project}"})


def test_memory_limited_containers_fail_for_real(engine, project, tmp_path, results_dir):
    """A real load failure through the runtime path (ladder, evidence, error gate); the mid-stream
    shape is tested on one container and replayed (see tests/fixtures/compose.memory.yaml)."""
    def one_model(d):
        d["models"] = d["models"][:1]  # Gemma 3 270M: the sizes in compose.memory.yaml are its own

    plain = str(_variant(tmp_path, project, one_model, name="plain.yaml"))

    def limited(d):
        one_model(d)
        d["runtime"]["compose_overrides"] = ["compose.cpu.yaml", "tests/fixtures/compose.memory.yaml"]
        d["multi"].update(enabled=True, langs=["python"], scenarios=["chimera_homo"], runs=1,
                          chimera={"gpu_layers": 0, "ctx": 1024, "temperature": 1.0})

    memory = str(_variant(tmp_path, project, limited, name="memory.yaml"))
    # The model comes onto the volume through an unlimited container (see compose.memory.yaml).
    _ok(invoke("up", "--profile", plain, results=results_dir), "up")
    _ok(invoke("down", "--profile", plain, results=results_dir), "down")

    proc = invoke("bench", "--profile", memory, "--suites", "multi", "--no-progress", results=results_dir,
                  timeout=600)
    out = proc.stdout + proc.stderr
    # the error gate: a required model's runs are missing after the ladder and the retry pass
    assert proc.returncode == 1 and "missing" in out and "Traceback" not in out, out
    _nothing_running(engine, project)  # a lone bench stops what it started

    failures = [json.loads(line) for line in (results_dir / "test" / "failures.jsonl").read_text().splitlines()]
    # ollama-b, 400 MiB: HTTP 500 while loading, in the warmup of the multi cell
    load = failures[0]
    assert load["suite"] == "multi", failures
    assert load["error"].endswith("HTTP 500: llama runner process has terminated: signal: killed"), load
    # a load failure: the ladder tried the smaller context, then skipped the config
    assert all(kind_class(f["error_kind"]) == LOAD for f in failures), failures
    assert load["fallback"].startswith("next rung") and failures[-1]["fallback"] == Skip.CONFIG, failures
    ev = load["evidence"]["containers"]["ollama-b"]
    assert ev["oom_kill"] >= 1 and ev["memory_limit"] == 400 * 2**20, ev
    log = results_dir / "test" / ev["log"]
    assert log.is_file() and '"/api/chat"' in log.read_text() and ev["log_tail"]
    assert "signal: killed" in log.read_text()
