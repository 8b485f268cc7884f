"""Runtimes: where the two inference servers come from.

One interface for all of them: `up`, `down`, `endpoints`, `switch` to a (model, server configs)
pair, and `describe` for the manifest.
- `local`: two llama-server processes on the profile's ports, owned by PID. Their state lives in a
  small JSON file per port, so `invoke up`, `invoke bench` and `invoke down` can be separate
  processes.
- `external`: servers someone else runs (Ollama or OpenAI-compatible); no lifecycle.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

from bench import assets
from bench.clients import StreamingClient
from bench.errors import BenchError, RequestError, classify
from bench.paths import results_root
from bench.profile import ModelSpec, Profile, ServerConfig


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    api: str


@dataclass
class SwitchResult:
    """What a switch did to each endpoint: True when its server (re)started or reloaded."""

    restarted: dict[str, bool]


class Runtime(Protocol):
    kind: str

    def up(self) -> None: ...

    def down(self) -> None: ...

    def endpoints(self) -> list[Endpoint]: ...

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> SwitchResult: ...

    def describe(self) -> dict: ...


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and ") Z " not in stat.read_text()


# ---------------------------------------------------------------------------------------------
# local: two llama-server processes
# ---------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    pid: int
    port: int
    args: list[str]
    model: str
    model_file: str
    log: str
    started_at: float

    def alive(self) -> bool:
        return _pid_alive(self.pid)


class LlamaServer:
    """One llama-server process on one port."""

    def __init__(self, host: str, port: int, threads: int, state_dir: Path, startup_timeout_s: float):
        self.host, self.port, self.threads = host, port, threads
        self.state_file = state_dir / f"llama-server-{port}.json"
        self.log_file = state_dir / f"llama-server-{port}.log"
        self.startup_timeout_s = startup_timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def state(self) -> ServerState | None:
        if not self.state_file.is_file():
            return None
        st = ServerState(**json.loads(self.state_file.read_text()))
        if not st.alive():
            self.state_file.unlink(missing_ok=True)
            return None
        return st

    def command(self, model: str, model_file: Path, config: ServerConfig) -> list[str]:
        # -np 1: one slot with the whole context (current builds default to 4 slots sharing it);
        # threads explicit so two servers on one machine don't oversubscribe the cores.
        return [str(assets.llama_server_binary()), "-m", str(model_file), "--alias", model,
                "--host", self.host, "--port", str(self.port),
                "-c", str(config.ctx), "-ngl", str(config.gpu_layers), "-np", "1",
                "-t", str(self.threads), "-tb", str(self.threads), "--no-webui"]

    def ensure(self, model: str, model_file: Path, config: ServerConfig) -> bool:
        """Run the server with exactly these flags; True when it had to (re)start."""
        args = self.command(model, model_file, config)
        current = self.state()
        if current and current.args == args and self._healthy():
            return False
        self.stop()
        if not port_is_free(self.host, self.port):
            raise BenchError(f"port {self.port} on {self.host} is already in use by another process; "
                             f"stop it or set other ports under runtime.endpoints in the profile")
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own group: killed as one, never orphaned
        log.close()
        st = ServerState(proc.pid, self.port, args, model, str(model_file), str(self.log_file), time.time())
        self.state_file.write_text(json.dumps(st.__dict__))
        self._wait_healthy(proc)
        return True

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _wait_healthy(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self._log_tail()
                self.state_file.unlink(missing_ok=True)
                kind = classify(tail, default="crash")
                raise RequestError(kind, f"llama-server on port {self.port} exited with code "
                                         f"{proc.returncode} while starting:\n{tail}", self.url)
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RequestError("loading", f"llama-server on port {self.port} not healthy after "
                                      f"{self.startup_timeout_s} s:\n{self._log_tail()}", self.url)

    def _log_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        st = self.state()
        if st is None:
            return
        try:
            os.killpg(st.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while st.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if st.alive():
            os.killpg(st.pid, signal.SIGKILL)
            while st.alive():
                time.sleep(0.05)
        self.state_file.unlink(missing_ok=True)


class LocalRuntime:
    """The embedded CPU runtime: two llama-server processes on 127.0.0.1 (by default)."""

    kind = "local"

    def __init__(self, profile: Profile, state_dir: Path | None = None):
        self.profile = profile
        spec = profile.runtime
        n = len(spec.endpoints)
        threads = spec.threads or max(1, (os.cpu_count() or 2) // n)
        state_dir = state_dir or results_root() / ".runtime"
        self.specs = spec.endpoints
        self.servers = {e.name: LlamaServer(spec.host, e.port, threads, state_dir, spec.startup_timeout_s)
                        for e in spec.endpoints}
        self.threads = threads

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(e.name, self.servers[e.name].url, "openai") for e in self.specs]

    def _file_for(self, model: ModelSpec) -> Path:
        return assets.model_file(model.name, model.file)

    def up(self) -> None:
        """Start both servers on the baseline model with the server defaults."""
        base = self.profile.baseline
        self.switch(base, {e.name: self.profile.runtime.server_defaults for e in self.specs})

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> SwitchResult:
        path = self._file_for(model)
        restarted = {}
        for name, server in self.servers.items():
            cfg = servers.get(name) or self.profile.runtime.server_defaults
            restarted[name] = server.ensure(model.name, path, cfg)
        return SwitchResult(restarted)

    def down(self) -> None:
        for server in self.servers.values():
            server.stop()

    def running(self) -> dict[str, ServerState | None]:
        return {name: s.state() for name, s in self.servers.items()}

    def describe(self) -> dict:
        binary = assets.llama_server_binary()
        info: dict = {"kind": self.kind, "threads_per_server": self.threads,
                      "llama_server": {"binary": str(binary), "version": assets.llama_server_version(binary),
                                       "binary_sha256": assets.file_sha256(binary)},
                      "endpoints": [e.__dict__ for e in self.endpoints()], "servers": {}}
        for name, server in self.servers.items():
            st = server.state()
            entry: dict = {"port": server.port, "running": st is not None}
            if st:
                entry.update(args=st.args[1:], model=st.model)
                try:
                    props = requests.get(server.url + "/props", timeout=5).json()
                    entry["build_info"] = props.get("build_info")
                    entry["total_slots"] = props.get("total_slots")
                    models = requests.get(server.url + "/v1/models", timeout=5).json()
                    entry["model_meta"] = (models.get("data") or [{}])[0].get("meta")
                except (requests.RequestException, ValueError):
                    entry["build_info"] = None
            info["servers"][name] = entry
        return info

    def model_identity(self, model: ModelSpec) -> dict:
        path = self._file_for(model)
        spec = assets.EMBEDDED_MODELS.get(model.name)
        return {"name": model.name, "file": str(path), "file_sha256": assets.file_sha256(path),
                "size_bytes": path.stat().st_size, "package": spec.package if spec else None,
                "stands_in_for": spec.stands_in_for if spec else None}


# ---------------------------------------------------------------------------------------------
# external: servers run by someone else
# ---------------------------------------------------------------------------------------------


class ExternalRuntime:
    """Servers at user-given URLs. Ollama servers get their models unloaded between models."""

    kind = "external"

    def __init__(self, profile: Profile):
        self.profile = profile
        self._endpoints = [Endpoint(e.name, e.url.rstrip("/"), e.api) for e in profile.runtime.endpoints]
        self._current_model: str | None = None

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def _client(self, ep: Endpoint) -> StreamingClient:
        return StreamingClient(ep.url, ep.api, timeout_s=30)

    def up(self) -> None:
        for ep in self._endpoints:
            self._client(ep).list_models()  # raises a clear connection error when unreachable

    def down(self) -> None:
        if self._current_model:
            self._unload(self._current_model)

    def _unload(self, model: str) -> None:
        for ep in self._endpoints:
            if ep.api == "ollama":
                try:
                    requests.post(ep.url + "/api/generate", json={"model": model, "keep_alive": 0}, timeout=60)
                except requests.RequestException:
                    pass

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> SwitchResult:
        for ep in self._endpoints:
            names = self._client(ep).list_models()
            if model.name not in names and f"{model.name}:latest" not in names:
                raise BenchError(f"unknown model '{model.name}' on {ep.url}; available models: "
                                 f"{', '.join(names) or '(none)'}")
        changed = self._current_model != model.name
        if changed and self._current_model:
            self._unload(self._current_model)  # teardown between models: free the VRAM first
        self._current_model = model.name
        return SwitchResult({ep.name: changed for ep in self._endpoints})

    def describe(self) -> dict:
        info: dict = {"kind": self.kind, "endpoints": [e.__dict__ for e in self._endpoints]}
        for ep in self._endpoints:
            if ep.api == "ollama":
                try:
                    info.setdefault("ollama_version", {})[ep.name] = requests.get(
                        ep.url + "/api/version", timeout=5).json().get("version")
                except (requests.RequestException, ValueError):
                    info.setdefault("ollama_version", {})[ep.name] = None
        return info

    def model_identity(self, model: ModelSpec) -> dict:
        ep = self._endpoints[0]
        if ep.api != "ollama":
            return {"name": model.name}
        try:
            show = requests.post(ep.url + "/api/show", json={"model": model.name}, timeout=30).json()
            tags = requests.get(ep.url + "/api/tags", timeout=10).json().get("models", [])
        except (requests.RequestException, ValueError) as exc:
            return {"name": model.name, "error": str(exc)}
        tag = next((t for t in tags if t["name"] in (model.name, f"{model.name}:latest")), {})
        details = show.get("details", {})
        return {"name": model.name, "digest": tag.get("digest"), "size_bytes": tag.get("size"),
                "family": details.get("family"), "parameter_size": details.get("parameter_size"),
                "quantization_level": details.get("quantization_level"),
                "context_length": next((v for k, v in (show.get("model_info") or {}).items()
                                        if k.endswith(".context_length")), None)}


def create_runtime(profile: Profile) -> Runtime:
    kind = profile.runtime.kind
    if kind == "local":
        return LocalRuntime(profile)
    if kind == "external":
        return ExternalRuntime(profile)
    from bench.docker_runtime import DockerRuntime  # only hosts with Docker need its imports

    return DockerRuntime(profile)
