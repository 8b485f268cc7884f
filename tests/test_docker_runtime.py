"""The docker runtime's logic with the outermost calls replaced: the `docker` CLI by a recorder,
and the two Ollama containers by two protocol-faithful test servers on their ports."""

from __future__ import annotations

import subprocess
import types

import pytest
import requests
import yaml

from bench.config.profile import ServerSettings, builtin_profiles, load_profile
from bench.core.errors import BenchError
from bench.core.paths import REPO_ROOT
from bench.runtimes import DockerRuntime

from ollama_server import FakeOllama


class RecordedDocker:
    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.envs: list[dict | None] = []
        self.fail_on = fail_on

    def __call__(self, cmd, env=None):
        self.calls.append(cmd)
        self.envs.append(env)
        if self.fail_on and self.fail_on in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "Error response from daemon: could not select device "
                                                            "driver \"nvidia\" with capabilities: [[gpu]]")
        if cmd[-2:] == ["running", "--quiet"]:  # `compose ps`: the test servers stand in for the containers
            return subprocess.CompletedProcess(cmd, 0, "c1\nc2\n", "")
        if cmd[-3:] == ["ps", "--format", "json"]:
            return subprocess.CompletedProcess(cmd, 0, '{"ID":"c1","Service":"ollama-a","Image":"ollama/ollama:0.12.6",'
                                                       '"Publishers":[{"PublishedPort":11434}]}\n', "")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture()
def tr116_on_test_servers():
    store = ["gemma3:latest"]  # one list for both: the containers share one model volume
    with FakeOllama(models=store) as a, FakeOllama(models=store) as b:
        base = load_profile(builtin_profiles()["tr116"]).profile
        rt = base.runtime.model_copy(update={"endpoints": [
            base.runtime.endpoints[0].model_copy(update={"port": int(a.url.rsplit(":", 1)[1])}),
            base.runtime.endpoints[1].model_copy(update={"port": int(b.url.rsplit(":", 1)[1])})]})
        yield base.model_copy(update={"runtime": rt}), a, b


def test_up_starts_compose_builds_image_and_pulls_models(tr116_on_test_servers):
    profile, a, b = tr116_on_test_servers
    docker = RecordedDocker()
    runtime = DockerRuntime(profile, run=docker)
    runtime.up()
    build, up = (i for i, c in enumerate(docker.calls) if c[1] == "build" or "up" in c)
    assert build < up, "the images come first"
    assert docker.calls[build][:2] == ["docker", "build"] and "docker/Dockerfile.rust-agents" in docker.calls[build]
    cmd = docker.calls[up]
    assert cmd[:4] == ["docker", "compose", "--project-name", "tr116"] and "--wait" in cmd
    # compose.yaml, then the generated override of each instance's engine settings (pinned: 1 slot)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "-f"] == [str(REPO_ROOT / "compose.yaml"),
                                                                     str(runtime.settings_file)]
    override = yaml.safe_load(runtime.settings_file.read_text())
    assert {svc: body["environment"]["OLLAMA_NUM_PARALLEL"] for svc, body in override["services"].items()} == \
        {"ollama-a": "1", "ollama-b": "1"}
    env = docker.envs[up]
    assert (env["TR116_PORT_A"], env["TR116_PORT_B"]) == (a.url.rsplit(":", 1)[1], b.url.rsplit(":", 1)[1])
    assert env["TR116_CONTEXT_LENGTH"] == "4096" and env["TR116_NUM_PARALLEL"] == "1"
    assert env["TR116_BIND_HOST"] == profile.runtime.host == "127.0.0.1"  # the servers listen there only
    pulls = [r["model"] for r in a.requests if r["path"] == "/api/pull"]
    # pulled once, through the first instance; the model already in the volume is not pulled again
    assert pulls == [m.name for m in profile.models if m.name != "gemma3:latest"]
    assert {f"{m.name}:latest" if ":" not in m.name else m.name for m in profile.models} <= set(b.models)
    assert not [r for r in b.requests if r["path"] == "/api/pull"]
    runtime.down()
    assert docker.calls[-1][-2:] == ["down", "--remove-orphans"]


def test_switch_unloads_the_previous_model_on_both_instances(tr116_on_test_servers):
    profile, a, b = tr116_on_test_servers
    a.models.append("qwen2.5:7b")
    runtime = DockerRuntime(profile, run=RecordedDocker())
    gemma = next(m for m in profile.models if m.name == "gemma3:latest")
    qwen = next(m for m in profile.models if m.name == "qwen2.5:7b")
    assert runtime.switch(gemma, {}) is True
    assert runtime.switch(gemma, {}) is False
    for srv in (a, b):  # the agents' calls load the model on both instances
        requests.post(srv.url + "/api/generate", json={"model": "gemma3:latest", "prompt": "x", "stream": False,
                                                        "options": {"num_predict": 2}}, timeout=30)
    runtime.switch(qwen, {})
    for srv in (a, b):
        unloads = [r for r in srv.requests if r["path"] == "/api/generate" and r.get("keep_alive") == 0]
        assert [u["model"] for u in unloads] == ["gemma3:latest"]


def test_unknown_model_lists_what_the_server_has(tr116_on_test_servers):
    profile, _, _ = tr116_on_test_servers
    runtime = DockerRuntime(profile, run=RecordedDocker())
    missing = next(m for m in profile.models if m.name == "llama3.1:8b-instruct-q4_0")
    with pytest.raises(BenchError, match="available models: gemma3:latest"):
        runtime.switch(missing, {})


def test_compose_failure_is_a_clear_error(tr116_on_test_servers):
    profile, _, _ = tr116_on_test_servers
    runtime = DockerRuntime(profile, run=RecordedDocker(fail_on="up"))
    with pytest.raises(BenchError, match='could not select device driver "nvidia"'):
        runtime.up()


class RecordedEngine:
    """The docker SDK's container inspection, answering with a recorded container."""

    class containers:  # noqa: N801 - mirrors the SDK's attribute
        @staticmethod
        def get(container_id):
            assert container_id == "c1"
            image = types.SimpleNamespace(id="sha256:feedbeef", tags=["ollama/ollama:0.12.6"], labels={},
                                          attrs={"RepoDigests": ["ollama/ollama@sha256:0123"]})
            return types.SimpleNamespace(name="tr116-ollama-a-1", image=image, attrs={
                "Config": {"Env": ["OLLAMA_NUM_PARALLEL=1", "PATH=/usr/bin", "GOGC=off"]},
                "HostConfig": {"Memory": 0, "DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["0"]}]},
                "NetworkSettings": {"Ports": {"11434/tcp": [{"HostIp": "127.0.0.1", "HostPort": "11434"}]}}})


def test_describe_records_images_and_versions(tr116_on_test_servers, monkeypatch):
    profile, _, _ = tr116_on_test_servers
    monkeypatch.setattr("bench.runtimes.docker.docker_engine", lambda: (RecordedEngine(), ""))
    info = DockerRuntime(profile, run=RecordedDocker()).describe()
    assert info["kind"] == "docker"
    c = info["containers"][0]
    assert c["image_id"] == "sha256:feedbeef" and c["image_digests"] == ["ollama/ollama@sha256:0123"]
    assert c["env"] == ["GOGC=off", "OLLAMA_NUM_PARALLEL=1"]  # what changes results, not PATH
    assert c["published_ports"] == {"11434/tcp": ["127.0.0.1:11434"]} and c["endpoint"] == "collector"
    assert c["device_requests"][0]["Driver"] == "nvidia"
    assert info["ollama_version"] == {"collector": "0.12.6", "insight": "0.12.6"}
    # the settings record the native runtime writes too, from the container's environment
    assert info["settings"] == {"OLLAMA_NUM_PARALLEL": "1"}
    assert set(info["instance_settings"]) == {"collector", "insight"}


class StoppedDocker(RecordedDocker):
    """No container runs until `compose up`; `compose down` removes them again."""

    def __init__(self):
        super().__init__()
        self.running = False

    def __call__(self, cmd, env=None):
        if "up" in cmd:
            self.running = True
        if "down" in cmd:
            self.running = False
        if cmd[-2:] == ["running", "--quiet"] and not self.running:
            self.calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return super().__call__(cmd, env)


def test_switch_brings_the_containers_up_when_they_are_gone(tr116_on_test_servers, monkeypatch):
    """A lone `bench`, or the runner's `down` between two load attempts: the next switch starts them."""
    profile, _, _ = tr116_on_test_servers
    monkeypatch.setattr("bench.runtimes.docker.port_is_free", lambda host, port: True)  # the test servers hold them
    docker = StoppedDocker()
    runtime = DockerRuntime(profile, run=docker)
    gemma = next(m for m in profile.models if m.name == "gemma3:latest")
    assert runtime.switch(gemma, {}) is True
    assert sum("up" in c for c in docker.calls) == 1
    assert runtime.switch(gemma, {}) is False  # up and serving: nothing to do
    runtime.down()
    assert runtime.switch(gemma, {}) is True
    assert sum("up" in c for c in docker.calls) == 2


def test_clean_refuses_while_the_containers_run(tr116_on_test_servers):
    profile, _, _ = tr116_on_test_servers
    docker = RecordedDocker()
    with pytest.raises(BenchError, match="`invoke down` first"):
        DockerRuntime(profile, run=docker).clean()
    assert not [c for c in docker.calls if "down" in c]


def test_apply_settings_recreates_only_through_the_override(tr116_on_test_servers):
    """The topology control's instance gets two slots: the override says so for ollama-a only,
    and `compose up` runs again (it recreates the containers whose environment changed)."""
    profile, _, _ = tr116_on_test_servers
    docker = RecordedDocker()
    runtime = DockerRuntime(profile, run=docker)
    runtime.up()
    ups = sum("up" in c for c in docker.calls)
    pinned = profile.runtime.pinned_settings
    names = [e.name for e in profile.runtime.endpoints]
    assert runtime.apply_settings({n: pinned for n in names}) is False  # nothing changes: no compose call
    assert sum("up" in c for c in docker.calls) == ups
    two = pinned.model_copy(update={"num_parallel": 2})
    assert runtime.apply_settings({names[0]: two, names[1]: pinned}) is True
    assert sum("up" in c for c in docker.calls) == ups + 1 and "--wait" in docker.calls[-1]
    env = {svc: body["environment"] for svc, body in yaml.safe_load(runtime.settings_file.read_text())["services"].items()}
    assert env["ollama-a"] == {"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_FLASH_ATTENTION": "0", "OLLAMA_KV_CACHE_TYPE": "f16"}
    assert env["ollama-b"]["OLLAMA_NUM_PARALLEL"] == "1"
    assert runtime.placement(next(iter(profile.models)))  # placement reports each instance's own slots
    fa = ServerSettings(num_parallel=1, flash_attention=True, kv_cache_type="q8_0")
    runtime.apply_settings({n: fa for n in names})
    env = yaml.safe_load(runtime.settings_file.read_text())["services"]["ollama-b"]["environment"]
    assert env == {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_KV_CACHE_TYPE": "q8_0"}
