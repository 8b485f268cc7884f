"""The docker runtime: two GPU Ollama containers from compose.yaml (ports 11434/11435).

`up` starts them with `docker compose up --wait` (the compose file gates on each container's
`ollama list` health check), builds the Rust agent image, and pulls the profile's models through
the first instance (both mount the same model volume). Between models the previous model is
unloaded from both instances (`keep_alive: 0`) and `/api/ps` is checked, so two copies of two
models never compete for one GPU's memory. Everything over HTTP is the external runtime's code.
"""

from __future__ import annotations

import json
import subprocess
from typing import Callable

import requests
from tqdm import tqdm

from bench.errors import BenchError, RequestError, classify
from bench.paths import REPO_ROOT
from bench.profile import ModelSpec, Profile, ServerConfig
from bench.runtime import ExternalRuntime, Endpoint, SwitchResult

CommandRunner = Callable[[list[str]], subprocess.CompletedProcess]


def docker_engine():
    """A connected Docker client and "", or None and why no engine is usable here."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:  # any failure means: no usable engine
        return None, f"no usable Docker engine ({type(exc).__name__})"
    return client, ""


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


class DockerRuntime(ExternalRuntime):
    kind = "docker"

    def __init__(self, profile: Profile, run: CommandRunner = _run):
        self.profile = profile
        self._endpoints = [Endpoint(e.name, f"http://{profile.runtime.host}:{e.port}", e.api)
                           for e in profile.runtime.endpoints]
        self._current_model = None
        self.compose_file = (REPO_ROOT / profile.runtime.compose_file).resolve()
        self._run = run

    def _compose(self, *args: str) -> subprocess.CompletedProcess:
        if not self.compose_file.is_file():
            raise BenchError(f"compose file not found: {self.compose_file}")
        proc = self._run(["docker", "compose", "-f", str(self.compose_file), *args])
        if proc.returncode != 0:
            raise BenchError(f"`docker compose {' '.join(args)}` failed (exit {proc.returncode}):\n"
                             f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def up(self) -> None:
        self._compose("up", "--detach", "--wait", "--wait-timeout", str(int(self.profile.runtime.startup_timeout_s)))
        from bench import rust

        build = self._run(["docker", "build", "-f", "docker/Dockerfile.rust-agents", "-t", rust.IMAGE,
                           "rust-agents"])
        if build.returncode != 0:
            # The Python suites still run; the runner records the Rust suites as skipped with this reason.
            print(f"up: the Rust agent image did not build:\n{build.stderr.strip()[-1000:]}")
        for model in self.profile.models:
            self.pull(model.name)

    def down(self) -> None:
        self._compose("down", "--remove-orphans")

    def pull(self, model: str) -> None:
        """Pull through the first instance, streaming progress; both instances share the volume."""
        ep = self._endpoints[0]
        try:
            resp = requests.post(ep.url + "/api/pull", json={"model": model, "stream": True}, stream=True,
                                 timeout=(10, 3600))
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot pull {model}: {exc}", ep.url) from None
        with resp, tqdm(desc=f"pull {model}", unit="B", unit_scale=True, leave=False) as bar:
            if resp.status_code != 200:
                raise RequestError(classify(resp.text), f"pull {model}: HTTP {resp.status_code}: {resp.text}", ep.url)
            for line in resp.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if "error" in event:
                    raise RequestError(classify(event["error"], "not_found"), f"pull {model}: {event['error']}",
                                       ep.url)
                if event.get("total"):
                    bar.total = event["total"]
                    bar.n = event.get("completed", 0)
                    bar.refresh()

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> SwitchResult:
        result = super().switch(model, servers)
        if any(result.restarted.values()):
            self._check_unloaded(keep=model.name)
        return result

    def _check_unloaded(self, keep: str) -> None:
        """After an unload, no other model may still hold memory on either instance."""
        for ep in self._endpoints:
            try:
                loaded = requests.get(ep.url + "/api/ps", timeout=10).json().get("models", [])
            except (requests.RequestException, ValueError):
                continue
            stale = [m["name"] for m in loaded if m["name"] not in (keep, f"{keep}:latest")]
            if stale:
                raise RequestError("oom", f"models still loaded after unload on {ep.url}: {stale}", ep.url)

    def describe(self) -> dict:
        info = super().describe()
        info["kind"] = self.kind
        info["compose_file"] = str(self.compose_file)
        ps = self._run(["docker", "compose", "-f", str(self.compose_file), "ps", "--format", "json"])
        containers = []
        if ps.returncode == 0 and ps.stdout.strip():
            text = ps.stdout.strip()
            rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
            for row in rows:
                image_id = self._run(["docker", "inspect", "--format", "{{.Image}}", row.get("ID", "")])
                containers.append({"service": row.get("Service"), "image": row.get("Image"),
                                   "image_id": image_id.stdout.strip() or None, "ports": row.get("Publishers")})
        info["containers"] = containers
        info["loaded_models"] = {}
        for ep in self._endpoints:
            try:
                info["loaded_models"][ep.name] = requests.get(ep.url + "/api/ps", timeout=5).json().get("models")
            except (requests.RequestException, ValueError):
                info["loaded_models"][ep.name] = None
        return info
