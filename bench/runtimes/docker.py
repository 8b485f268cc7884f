"""The docker runtime: two Ollama containers from compose.yaml, services `ollama-a` (the first
endpoint, collector) and `ollama-b` (the second, insight), sharing one model volume.

- `up`: the images first. With compose.cpu.yaml (a host without a GPU or a registry: the
  docker-smoke profile, CI) `scripts/build-images.sh` builds the local Ollama and Rust agent images;
  it is cached by content, so when nothing changed it only compares labels (under a second), and
  when setup rebuilt a binary the containers never run the stale one. On a GPU host the Ollama
  image comes from the registry and the Rust agent image is built from source (`docker build`).
  Then `docker compose up --wait` (the compose file gates each container on its `ollama list`
  health check), and the profile's models through the first instance over HTTP (blob upload and
  `/api/create`, or `/api/pull`; ollama.py), checked on the second.
- Model switches, unloads (`keep_alive: 0`, then /api/ps) and placement are the Ollama
  endpoints' (ollama.py). A switch finds the containers gone (a lone `bench`, or a `down` between
  load attempts) and brings them up again.
- `down`: `docker compose down` removes the containers and the network and keeps the model volume;
  `clean` (invoke clean) removes the volume too, and the local images when asked.

Lifecycle through the Compose CLI, inspection through the docker SDK: the compose file is the
product's interface (a user runs the same `docker compose` by hand, and `--wait` gates on its
health checks), and the SDK has no Compose; the SDK is what reads containers and images without
parsing CLI text: image IDs, digests and labels, the environment that changes results, ports,
memory limits, logs and the cgroup `oom_kill` counter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

import yaml

from bench.clients import rust
from bench.config.profile import ModelSpec, Profile, RuntimeSpec, ServerConfig, ServerSettings
from bench.core.errors import BenchError
from bench.core.paths import REPO_ROOT, results_root
from bench.host.machine import docker_engine, port_is_free, port_owner
from bench.runtimes.base import Endpoint
from bench.runtimes.ollama import OllamaEndpoints, recorded_settings, settings_env

log = logging.getLogger("bench")

CommandRunner = Callable[..., subprocess.CompletedProcess]
SERVICES = ("ollama-a", "ollama-b")  # compose.yaml's services, in endpoint order
CPU_OVERRIDE = "compose.cpu.yaml"
LOG_TAIL_LINES = 20  # in failures.jsonl
LOG_COPY_LINES = 20000  # copied to results/<study>/logs/: a long study's request lines stay bounded
# Container environment that changes results: the server's settings and the Go runtime's.
RESULT_ENV_PREFIXES = ("OLLAMA_", "GO", "CUDA_", "NVIDIA_")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def local_images(spec: RuntimeSpec) -> bool:
    """Whether the profile runs the locally built images (the CPU override) instead of the registry's."""
    return any(Path(f).name == CPU_OVERRIDE for f in spec.compose_overrides)


def cgroup_oom_kills(container) -> int | None:
    """The container's cgroup `oom_kill` counter: the number of its processes the kernel killed for
    memory (cgroup v1 memory.oom_control, v2 memory.events), read inside it and, where that fails,
    from the host's cgroup tree. `docker inspect`'s OOMKilled stays false when only a child (the
    Ollama runner) died, so this counter is the sign. None when neither is readable."""
    inside = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")
    for path in inside:
        try:
            res = container.exec_run(["cat", path])
        except Exception:  # a stopped container, or an image without cat: try the host side
            break
        if res.exit_code == 0:
            return _oom_kill_field(res.output.decode())
    cid = container.id
    host = (f"/sys/fs/cgroup/memory/docker/{cid}/memory.oom_control",
            f"/sys/fs/cgroup/memory/system.slice/docker-{cid}.scope/memory.oom_control",
            f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.events",
            f"/sys/fs/cgroup/docker/{cid}/memory.events")
    for path in host:
        try:
            return _oom_kill_field(Path(path).read_text())
        except OSError:
            continue
    return None


def _oom_kill_field(text: str) -> int | None:
    fields = dict(line.split(None, 1) for line in text.splitlines() if line.strip())
    value = fields.get("oom_kill")
    return int(value) if value is not None else None


class DockerRuntime(OllamaEndpoints):
    kind = "docker"

    def __init__(self, profile: Profile, run: CommandRunner = _run):
        spec = profile.runtime
        super().__init__(profile, [Endpoint(e.name, f"http://{spec.host}:{e.port}", e.api) for e in spec.endpoints])
        self.compose_files = [(REPO_ROOT / f).resolve() for f in [spec.compose_file, *spec.compose_overrides]]
        self.project = spec.compose_project
        self.local_images = local_images(spec)
        self.services = dict(zip(SERVICES, self._endpoints))
        # What compose.yaml reads from the environment, from the profile, so both agree. Threads
        # are no container setting: the runner sends num_thread (self.threads) with every request.
        self.compose_env = {
            # host networking: each server listens on the profile's host only (loopback by default)
            "TR116_BIND_HOST": spec.host,
            "TR116_PORT_A": str(spec.endpoints[0].port), "TR116_PORT_B": str(spec.endpoints[1].port),
            "TR116_CONTEXT_LENGTH": str(spec.server_defaults.ctx), "TR116_KEEP_ALIVE": spec.keep_alive,
            "TR116_NUM_PARALLEL": str(spec.num_parallel),
        }
        self._run = run
        self._up = False
        self._log_seq = 0
        # Each service's engine settings (slots, flash attention, KV cache) come from a generated
        # compose override, layered last, so one instance can differ from the other.
        self.settings_file = results_root() / ".runtime" / f"compose.{self.project}.settings.yaml"

    # ---- lifecycle ---------------------------------------------------------------------

    def _write_settings_override(self) -> None:
        doc = {"services": {svc: {"environment": settings_env(self.instance_settings[ep.name])}
                            for svc, ep in self.services.items()}}
        self.settings_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text("# generated by bench/runtimes/docker.py: each instance's engine settings\n"
                                      + yaml.safe_dump(doc, sort_keys=True))

    def _compose_args(self, *args: str) -> list[str]:
        self._write_settings_override()
        files = [a for f in [*self.compose_files, self.settings_file] for a in ("-f", str(f))]
        return ["docker", "compose", "--project-name", self.project, *files, *args]

    def _compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        for f in self.compose_files:
            if not f.is_file():
                raise BenchError(f"compose file not found: {f}")
        proc = self._run(self._compose_args(*args), env={**os.environ, **self.compose_env})
        if check and proc.returncode != 0:
            raise BenchError(f"`docker compose {' '.join(args)}` failed (exit {proc.returncode}):\n"
                             f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def _build_images(self) -> None:
        """The images `up` needs (see the module docstring). Without the Rust agent image the
        Python suites still run; the runner records the Rust suites as skipped with the reason."""
        if self.local_images:
            steps = [("ollama", ["bash", "scripts/build-images.sh", "ollama"], True),
                     ("rust", ["bash", "scripts/build-images.sh", "rust"], False)]
        else:
            steps = [("rust", ["docker", "build", "-f", "docker/Dockerfile.rust-agents", "-t", rust.IMAGE,
                               "rust-agents"], False)]
        for what, cmd, required in steps:
            t0 = time.perf_counter()
            proc = self._run(cmd)
            out = (proc.stderr or proc.stdout or "").strip()[-1500:]
            if proc.returncode == 0:
                log.info("images: %s ready in %.1f s", what, time.perf_counter() - t0)
            elif required:
                raise BenchError(f"the {what} image did not build (`{' '.join(cmd)}`):\n{out}")
            else:
                print(f"up: the {what} image did not build:\n{out}")

    def _check_ports(self) -> None:
        host = self.profile.runtime.host
        taken = [f"{host}:{e.port} ({svc}) is taken by {port_owner(e.port) or 'another process'}"
                 for svc, e in zip(SERVICES, self.profile.runtime.endpoints) if not port_is_free(host, e.port)]
        if taken:
            raise BenchError(f"cannot start the containers: {'; '.join(taken)}. Stop it, or give the profile "
                             f"other ports")

    def up(self) -> None:
        info = self._run(["docker", "info", "--format", "{{.ServerVersion}}"])
        if info.returncode != 0:
            raise BenchError(f"no Docker engine answers ({(info.stderr or info.stdout).strip()[-300:]}); start one "
                             f"(where there is none: bash scripts/docker-host.sh up)")
        if not self.is_running():
            self._check_ports()
        self._build_images()
        t0 = time.perf_counter()
        self._compose("up", "--detach", "--wait", "--wait-timeout", str(int(self.profile.runtime.startup_timeout_s)))
        log.info("compose up --wait: %s healthy in %.1f s", " and ".join(SERVICES), time.perf_counter() - t0)
        self._up, self._current = True, None
        t0 = time.perf_counter()
        self.ensure_models()
        log.info("models through %s: %s in %.1f s", self._endpoints[0].url,
                 ", ".join(f"{k} {v}" for k, v in self.model_actions.items()), time.perf_counter() - t0)

    def down(self) -> None:
        self._compose("down", "--remove-orphans")  # containers and network; the model volume stays
        self._up, self._current = False, None

    def clean(self, images: bool = False) -> list[str]:
        """Remove the project's model volume (and with `images` the local images). Refuses while
        its containers run: a study may be using them; `down` first."""
        if self.is_running():
            raise BenchError(f"the {self.project} containers are running: `invoke down` first, then clean")
        done = []
        self._compose("down", "--volumes", "--remove-orphans")
        done.append(f"volume {self.project}_ollama-models")
        if images:
            proc = self._run(["bash", "scripts/build-images.sh", "remove"])
            if proc.returncode != 0:
                raise BenchError(f"removing the images failed:\n{(proc.stderr or proc.stdout).strip()[-1000:]}")
            done.append("images " + (proc.stdout.strip().removeprefix("build-images: removed: ") or "(none)"))
        return done

    def is_running(self) -> bool:
        ps = self._run(self._compose_args("ps", "--status", "running", "--quiet"),
                       env={**os.environ, **self.compose_env})
        return ps.returncode == 0 and bool(ps.stdout.strip())

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        restarted = False
        if not self._up:
            if self.is_running():
                self._up = True
            else:  # a lone `bench`, or the runner's `down` between two load attempts
                self.up()
                restarted = True
        return super().switch(model, servers) or restarted

    def apply_settings(self, settings: dict[str, ServerSettings]) -> bool:
        """Recreate the containers whose settings change (`compose up` sees their new environment
        in the override and recreates only those); the model volume stays."""
        changed = {n: st for n, st in settings.items() if st != self.instance_settings.get(n)}
        if not changed:
            return False
        self.instance_settings.update(changed)
        if not (self._up or self.is_running()):
            return False  # the next `up` starts them with these settings
        self._compose("up", "--detach", "--wait", "--wait-timeout", str(int(self.profile.runtime.startup_timeout_s)))
        self._up, self._current = True, None
        log.info("recreated with new settings: %s", "; ".join(f"{n}: {st.model_dump()}" for n, st in changed.items()))
        return True

    # ---- inspection (docker SDK) -------------------------------------------------------

    def _containers(self):
        """The project's containers (running or not) by service, or ({}, why) without an engine."""
        engine, why = docker_engine()
        if engine is None:
            return {}, why
        found = engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})
        return {c.labels.get("com.docker.compose.service", c.name): c for c in found}, ""

    def failure_evidence(self) -> dict:
        """Right after a failed load or run: each container's log, copied into
        results/<study>/logs/<service>-<time>.log, its tail, its cgroup oom_kill counter, and
        what Docker says of its state."""
        containers, why = self._containers()
        if not containers:
            return {"error": why or f"no containers of project {self.project}"}
        study_dir = results_root() / self.profile.study
        log_dir = study_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{self._log_seq}"
        out = {}
        for service, c in sorted(containers.items()):
            entry: dict = {"container": c.name, "endpoint": getattr(self.services.get(service), "name", None)}
            try:
                c.reload()
                state = c.attrs.get("State", {})
                entry.update(status=state.get("Status"), oom_killed=state.get("OOMKilled"),
                             restart_count=c.attrs.get("RestartCount"),
                             memory_limit=c.attrs.get("HostConfig", {}).get("Memory") or None)
                text = c.logs(tail=LOG_COPY_LINES).decode(errors="replace")
                path = log_dir / f"{service}-{stamp}.log"
                path.write_text(text)
                entry["log"] = str(path.relative_to(study_dir))
                entry["log_tail"] = text.splitlines()[-LOG_TAIL_LINES:]
                entry["oom_kill"] = cgroup_oom_kills(c)
            except Exception as exc:  # evidence is best effort: the failure itself is what is logged
                entry["error"] = f"{type(exc).__name__}: {exc}"
            out[service] = entry
        return {"containers": out}

    def describe(self) -> dict:
        info = {"kind": self.kind, "engine": self.engine, "endpoints": [e.__dict__ for e in self._endpoints],
                "threads_per_server": self.threads, "ollama_version": self.versions(),
                "compose_project": self.project, "compose_files": [str(f) for f in self.compose_files],
                "compose_env": self.compose_env}
        ps = self._compose("ps", "--format", "json", check=False)
        containers = []
        if ps.returncode == 0 and ps.stdout.strip():
            text = ps.stdout.strip()
            rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
            engine, _ = docker_engine()
            for row in rows:
                entry = {"service": row.get("Service"), "endpoint": getattr(self.services.get(row.get("Service")),
                                                                             "name", None),
                         "image": row.get("Image"), "ports": row.get("Publishers")}
                if engine is not None:
                    entry.update(self._inspect(engine, row.get("ID", "")))
                containers.append(entry)
        info["containers"] = containers
        info["settings"] = recorded_settings(self._server_environments(containers))  # as the native runtime's
        info["instance_settings"] = {n: st.model_dump() for n, st in self.instance_settings.items()}
        info["unloads"] = self.unloads  # between models, on both instances; /api/ps right after each
        return info

    def _server_environments(self, containers: list[dict]) -> dict[str, dict[str, str]]:
        """Each endpoint's server environment: its container's, as `docker inspect` read it, or,
        where no container could be read (none running, no engine to ask), the environment
        `docker compose config` resolves for its service from the same files and override."""
        inspected = {c["endpoint"]: dict(e.split("=", 1) for e in c["env"] if "=" in e)
                     for c in containers if c.get("endpoint") and c.get("env") is not None}
        if inspected:
            return inspected
        proc = self._compose("config", "--format", "json", check=False)
        try:
            services = json.loads(proc.stdout)["services"] if proc.returncode == 0 else {}
        except (ValueError, KeyError, TypeError):
            services = {}
        return {ep.name: {k: "" if v is None else str(v) for k, v in (services[svc].get("environment") or {}).items()}
                for svc, ep in self.services.items() if svc in services}

    @staticmethod
    def _inspect(engine, container_id: str) -> dict:
        """Best effort: the study never fails on inspection."""
        try:
            c = engine.containers.get(container_id)
            image, host = c.image, c.attrs.get("HostConfig", {})
            bound = c.attrs.get("NetworkSettings", {}).get("Ports") or {}
            return {
                "container": c.name, "image_id": image.id,
                # RepoDigests: the registry digest of a pulled image; a locally built image has none,
                # its ID is its content digest and org.tr116.inputs the hash of what it was made from.
                "image_digests": image.attrs.get("RepoDigests"), "image_tags": image.tags,
                "image_inputs": (image.labels or {}).get("org.tr116.inputs"),
                "env": sorted(e for e in c.attrs["Config"].get("Env", []) if e.startswith(RESULT_ENV_PREFIXES)),
                "network_mode": host.get("NetworkMode"),
                "published_ports": {k: [f"{b['HostIp']}:{b['HostPort']}" for b in v or []] for k, v in bound.items()},
                "memory_limit": host.get("Memory"), "memory_swap_limit": host.get("MemorySwap"),
                "nano_cpus": host.get("NanoCpus"), "cpuset_cpus": host.get("CpusetCpus"),
                "device_requests": host.get("DeviceRequests"),
            }
        except Exception as exc:
            return {"inspect_error": f"{type(exc).__name__}: {exc}"}


def stop_agent_containers(study_root: Path) -> list[str]:
    """Remove the Rust agent containers still running a job of this study, and name them.

    Killing `docker run` (what a subprocess timeout or Ctrl-C does to the agent's client) leaves
    its container running: the client does not forward SIGKILL. A container belongs to the study
    when its command names a job under the study's folder, so another study's agents are left be."""
    engine, _ = docker_engine()
    if engine is None:
        return []
    roots = tuple({str(study_root) + os.sep, str(study_root.resolve()) + os.sep})
    stopped = []
    try:
        for c in engine.containers.list(filters={"ancestor": rust.IMAGE}):
            if any(str(arg).startswith(roots) for arg in c.attrs.get("Args") or []):
                c.remove(force=True)
                stopped.append(c.name)
    except Exception as exc:  # best effort on the way out: the interruption is what is reported
        log.warning("could not stop the Rust agent containers: %s: %s", type(exc).__name__, exc)
    return stopped
