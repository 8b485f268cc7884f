"""The same model is the same model on every host (issue 21, point 2).

A model Ollama created from a GGUF file gets another digest in each model store: the docker smoke
study (tests/test_docker_smoke.py, Ollama 0.17.4 in containers) recorded gemma3-270m as
`06ee05a7f978…` and smollm2-135m as `6cd1b1211b25…`, the stored native study (the fixture, the same
Ollama version, the same two files) `cbe2f8ce47f0…` and `eafe44428a73…`. So such a model is matched
by its file's sha256 and the template and parameters it was created with, a pulled model by its
registry digest: in `compare` and in the plan fingerprint. And every Ollama runtime records the
same settings, so a native and a container study differ only where they really do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core.errors import BenchError
from bench.core.manifest import RuntimeDescription, load_manifest, runtime_identity
from bench.core.store import Store
from bench.report.compare import compare
from bench.runtimes import DockerRuntime, create_runtime
from bench.runtimes.ollama import OllamaRuntime
from bench.runtimes.ollama_api import OllamaAPI
from bench.study import plan_identity
from bench.study.runner import run_matrix

from conftest import smoke_variant
from ollama_server import FakeOllama
from test_compare import FIXTURE, copy_study

# What the docker smoke study recorded (its manifest's models[].digest): the fixture's two files
# created in a container's model store.
CONTAINER_DIGESTS = {
    "gemma3-270m": "sha256:06ee05a7f9780deb6908f0bd30f43b2dd285d89e63cecd4774e652d146481022",
    "smollm2-135m": "sha256:6cd1b1211b259e3efd467e296aa5bfb24ade828e555772533ec2e2d3bdf05e66",
}
# What `docker inspect` read from that study's ollama-a container (its manifest's containers[].env).
CONTAINER_ENV = ["OLLAMA_CONTEXT_LENGTH=1024", "OLLAMA_FLASH_ATTENTION=0", "OLLAMA_HOST=127.0.0.1:43501",
                 "OLLAMA_KEEP_ALIVE=30m", "OLLAMA_KV_CACHE_TYPE=f16", "OLLAMA_MAX_LOADED_MODELS=1",
                 "OLLAMA_NOPRUNE=1", "OLLAMA_NUM_PARALLEL=1"]


def in_a_container_store(m: dict) -> None:
    for entry in m["models"]:
        entry["digest"] = CONTAINER_DIGESTS[entry["name"]]


# ---- compare -------------------------------------------------------------------------------------

def test_the_same_files_in_another_model_store_compare_without_allow_mismatch(tmp_path, results_dir):
    a = copy_study(tmp_path, "native")
    b = copy_study(tmp_path, "container", manifest=in_a_container_store)
    result = compare([str(a), str(b)], out="same-files")
    assert result.mismatches == [] and result.only_in == [] and result.matched == 16


def test_another_file_is_refused_with_the_difference_whatever_its_digest(tmp_path, results_dir):
    a = copy_study(tmp_path, "native")

    def other_file(m):
        in_a_container_store(m)
        m["models"][1]["file_sha256"] = "f" * 64

    b = copy_study(tmp_path, "container", manifest=other_file)
    with pytest.raises(BenchError) as err:
        compare([str(a), str(b)])
    lines = [line for line in str(err.value).splitlines() if line.startswith("  - model")]
    assert lines == ["  - model smollm2-135m: file_sha256 `b179c9523d0e` in native vs `ffffffffffff` in container"]


def test_another_template_is_refused_as_the_ollama_digest_would_have(tmp_path, results_dir):
    """What the Ollama digest covered beside the weights (the template, the stop parameters) is
    still compared: the same file with another chat template sends other prompts."""
    a = copy_study(tmp_path, "native")

    def other_template(m):
        in_a_container_store(m)
        m["models"][0]["template"] += "\n"

    b = copy_study(tmp_path, "container", manifest=other_template)
    with pytest.raises(BenchError) as err:
        compare([str(a), str(b)])
    (line,) = [line for line in str(err.value).splitlines() if line.startswith("  - model")]
    assert line.startswith("  - model gemma3-270m: template_sha256 `") and "parameters" not in line


def test_a_pulled_model_is_matched_by_its_registry_digest(tmp_path, results_dir):
    def pulled(m, digest=None):
        entry = m["models"][0]
        for key in ("file", "file_sha256", "file_size_bytes", "package", "stands_in_for", "gguf"):
            entry.pop(key, None)
        entry.update(source="pull", digest=digest or entry["digest"])

    a = copy_study(tmp_path, "hostA", manifest=pulled)
    same = copy_study(tmp_path, "hostB", manifest=pulled)
    assert compare([str(a), str(same)], out="pulled").mismatches == []
    other = copy_study(tmp_path, "hostC", manifest=lambda m: pulled(m, "sha256:" + "0" * 64))
    with pytest.raises(BenchError, match=r"model gemma3-270m: digest `cbe2f8ce47f0` in hostA vs "
                                         r"`000000000000` in hostC"):
        compare([str(a), str(other)])


# ---- the plan fingerprint ------------------------------------------------------------------------

def _plan(model_entry: dict) -> dict:
    """A run's plan fingerprint for the fixture's workload, runtime and commit, with this model."""
    spec = types.SimpleNamespace(name=model_entry["name"])
    return plan_identity.fingerprint({"seed": 1}, plan_identity.model_part(model_entry, spec),
                                     {"kind": "ollama"}, "c1")


def test_the_plan_of_a_file_model_does_not_change_with_its_ollama_digest():
    native = json.loads((FIXTURE / "manifest.json").read_text())["models"]
    container = json.loads((FIXTURE / "manifest.json").read_text())
    in_a_container_store(container)
    for here, there in zip(native, container["models"]):
        assert plan_identity.mismatch(_plan(here), _plan(there)) is None, here["name"]
        for key, value in (("file_sha256", "f" * 64), ("template", "{{ .Prompt }}"), ("parameters", "")):
            assert plan_identity.mismatch(_plan(here), _plan({**there, key: value})) == \
                "another plan (model changed)", (here["name"], key)
    pulled = {"name": "gemma3:latest", "digest": native[0]["digest"]}
    assert plan_identity.mismatch(_plan(pulled), _plan({**pulled, "digest": "sha256:" + "0" * 64})) == \
        "another plan (model changed)"


def test_a_study_resumed_on_a_rebuilt_model_store_pools_its_runs(tmp_path, results_dir, monkeypatch):
    """The first `bench` stores its runs; the store is rebuilt (the same file and template, another
    digest); the second `bench` resumes every run instead of setting them aside."""
    models = ["smollm2-135m"]  # one list for both: one model store
    with FakeOllama(token_s=0.002, models=models) as a, FakeOllama(token_s=0.002, models=models) as b:
        def on_the_test_servers(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "collector", "url": a.url, "api": "ollama"},
                                                              {"name": "insight", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "smollm2-135m", "source": "gguf", "baseline": True}]
            d["single"].update(gpu_layers=[80], runs=2)
            d["workload"].update(ignore_eos=False)

        loaded = load_profile(smoke_variant(tmp_path, on_the_test_servers))

        def bench():
            return run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), Store("test"),
                              progress=False)

        first = bench()
        assert first.done == 2 and not first.ignored
        recorded = {r.rel_dir: r.doc.plan_fingerprint.sha256 for r in Store("test").iter_runs()}
        tag = OllamaAPI.tag

        def rebuilt_store(self, model):
            found = tag(self, model)
            return found and {**found, "digest": CONTAINER_DIGESTS["smollm2-135m"].removeprefix("sha256:")}

        monkeypatch.setattr(OllamaAPI, "tag", rebuilt_store)
        second = bench()
        assert second.resumed == 2 and second.done == 0 and not second.ignored
        assert {r.rel_dir: r.doc.plan_fingerprint.sha256 for r in Store("test").iter_runs()} == recorded


# ---- the runtime's settings ------------------------------------------------------------------------

def _runtimes(tmp_path):
    """The docker smoke profile (free ports, a project of its own) and the native runtime of it."""
    def own_project(d):
        d["runtime"]["compose_project"] = "tr116-model-identity-test"

    profile = load_profile(smoke_variant(tmp_path, own_project, base="docker-smoke")).profile
    native = OllamaRuntime(profile, state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                           models_dir=tmp_path / "models")
    return native, profile


def _settings(described: dict) -> dict[str, str]:
    return runtime_identity(RuntimeDescription.model_validate(described)).settings


def _docker_ps(cmd, env=None):
    """`docker compose ps` listing both containers; every other compose call succeeds."""
    if cmd[-3:] == ["ps", "--format", "json"]:
        rows = [{"ID": f"c-{svc}", "Service": svc, "Image": "tr116-ollama:cpu-0.17.4"}
                for svc in ("ollama-a", "ollama-b")]
        return subprocess.CompletedProcess(cmd, 0, "\n".join(json.dumps(r) for r in rows), "")
    return subprocess.CompletedProcess(cmd, 0, "", "")


class InspectedContainers:
    """The docker SDK answering `docker inspect` with the docker smoke study's container environment."""

    class containers:  # noqa: N801 - mirrors the SDK's attribute
        @staticmethod
        def get(container_id):
            image = types.SimpleNamespace(id="sha256:4517c5a1bd5d", tags=[], labels={}, attrs={"RepoDigests": []})
            return types.SimpleNamespace(name=container_id, image=image, attrs={
                "Config": {"Env": [*CONTAINER_ENV, "PATH=/usr/bin"]}, "HostConfig": {"NetworkMode": "host"},
                "NetworkSettings": {"Ports": {}}})


def test_the_docker_runtime_records_the_native_settings_from_the_containers(tmp_path, results_dir, monkeypatch):
    native, profile = _runtimes(tmp_path)
    monkeypatch.setattr("bench.runtimes.docker.docker_engine", lambda: (InspectedContainers(), ""))
    docker = DockerRuntime(profile, run=_docker_ps).describe()
    assert docker["settings"]["OLLAMA_NUM_PARALLEL"] == "1" and "OLLAMA_HOST" not in docker["settings"]
    assert docker["instance_settings"] == native.describe()["instance_settings"]
    native_settings, docker_settings = _settings(native.describe()), _settings(docker)
    assert set(docker_settings) == set(native_settings)
    differ = {k: (native_settings[k], docker_settings[k]) for k in native_settings
              if native_settings[k] != docker_settings[k]}
    assert differ == {"kind": ("ollama", "docker")}


def test_a_native_and_a_container_study_of_the_same_files_differ_only_in_the_runtime_kind(
        tmp_path, results_dir, monkeypatch):
    """The stored native study against the same study as the docker runtime records it now (its
    containers' environment as the docker smoke study's were, its models in the container's
    store): the settings agree key by key; the runtime kind is what differs, and is listed."""
    _, profile = _runtimes(tmp_path)  # the docker smoke profile: the fixture's ctx, keep_alive, slots, threads
    monkeypatch.setattr("bench.runtimes.docker.docker_engine", lambda: (InspectedContainers(), ""))
    described = json.loads(json.dumps(DockerRuntime(profile, run=_docker_ps).describe()))

    def in_containers(m):
        in_a_container_store(m)
        m["runtime"] = described

    a = copy_study(tmp_path, "native")
    b = copy_study(tmp_path, "container", manifest=in_containers)
    with pytest.raises(BenchError) as err:
        compare([str(a), str(b)])
    listed = [line for line in str(err.value).splitlines() if line.startswith("  - ")]
    assert listed == ["  - runtime `kind`: native=ollama, container=docker"]
    assert compare([str(a), str(b)], allow_mismatch=True, out="native-vs-container").matched == 16


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI: `docker compose config` reads the files")
def test_without_a_running_container_the_settings_come_from_the_compose_files(tmp_path, results_dir, monkeypatch):
    """No container to inspect (none up, or no engine): `docker compose config` (no daemon needed)
    resolves each service's environment from compose.yaml, the CPU override and the generated
    settings override; with one instance swept to two slots, that setting is recorded per instance."""
    native, profile = _runtimes(tmp_path)
    monkeypatch.setattr("bench.runtimes.docker.docker_engine", lambda: (None, "no engine here"))
    docker = DockerRuntime(profile)
    described = docker.describe()
    assert described["containers"] == []
    native_settings, docker_settings = _settings(native.describe()), _settings(described)
    assert {k for k in {*native_settings, *docker_settings} if native_settings.get(k) != docker_settings.get(k)} \
        == {"kind"}

    two_slots = profile.runtime.pinned_settings.model_copy(update={"num_parallel": 2})
    docker.instance_settings["insight"] = two_slots
    assert docker.describe()["settings"]["OLLAMA_NUM_PARALLEL"] == {"collector": "1", "insight": "2"}


def test_a_native_study_made_now_records_the_settings_the_stored_one_did(tmp_path):
    """The stored study (schema 1, written by the native runtime before the settings were built
    from the servers' environment) and a native runtime now, on a profile with its settings: the
    same settings, key by key and value by value, so the two still compare."""
    native, _ = _runtimes(tmp_path)  # the docker smoke profile: the stored study's ctx, keep_alive, slots, threads
    assert _settings(native.describe()) == runtime_identity(load_manifest(FIXTURE / "manifest.json")).settings
