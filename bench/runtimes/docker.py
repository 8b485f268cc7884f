"""The docker runtime: two Ollama containers from compose.yaml (ports 11434/11435).

`up` starts them with `docker compose up --wait` (the compose file gates on each container's
`ollama list` health check), builds the Rust agent image, and makes the profile's models
available through the first instance (both mount one model volume). Model switches, unloads and
placement are the Ollama endpoints' (ollama.py). The lifecycle goes through the Compose CLI: the
compose file is the product's interface, and the SDK has no Compose; the SDK inspects.
"""

from __future__ import annotations

import json
import subprocess
from typing import Callable

from bench import rust
from bench.errors import BenchError
from bench.host import docker_engine
from bench.paths import REPO_ROOT
from bench.profile import Profile
from bench.runtimes.base import Endpoint
from bench.runtimes.ollama import OllamaEndpoints

CommandRunner = Callable[[list[str]], subprocess.CompletedProcess]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


class DockerRuntime(OllamaEndpoints):
    kind = "docker"

    def __init__(self, profile: Profile, run: CommandRunner = _run):
        spec = profile.runtime
        super().__init__(profile, [Endpoint(e.name, f"http://{spec.host}:{e.port}", e.api) for e in spec.endpoints])
        self.compose_files = [(REPO_ROOT / f).resolve() for f in [spec.compose_file, *spec.compose_overrides]]
        self._run = run

    def _compose(self, *args: str) -> subprocess.CompletedProcess:
        for f in self.compose_files:
            if not f.is_file():
                raise BenchError(f"compose file not found: {f}")
        files = [a for f in self.compose_files for a in ("-f", str(f))]
        proc = self._run(["docker", "compose", *files, *args])
        if proc.returncode != 0:
            raise BenchError(f"`docker compose {' '.join(args)}` failed (exit {proc.returncode}):\n"
                             f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def up(self) -> None:
        self._compose("up", "--detach", "--wait", "--wait-timeout", str(int(self.profile.runtime.startup_timeout_s)))
        build = self._run(["docker", "build", "-f", "docker/Dockerfile.rust-agents", "-t", rust.IMAGE,
                           "rust-agents"])
        if build.returncode != 0:
            # The Python suites still run; the runner records the Rust suites as skipped with this reason.
            print(f"up: the Rust agent image did not build:\n{build.stderr.strip()[-1000:]}")
        self.ensure_models()

    def down(self) -> None:
        self._compose("down", "--remove-orphans")

    def is_running(self) -> bool:
        ps = self._run(["docker", "compose", *[a for f in self.compose_files for a in ("-f", str(f))],
                        "ps", "--quiet"])
        return ps.returncode == 0 and bool(ps.stdout.strip())

    def parallel_slots(self) -> int | None:
        return self.profile.runtime.num_parallel

    def describe(self) -> dict:
        info = {"kind": self.kind, "engine": self.engine, "endpoints": [e.__dict__ for e in self._endpoints],
                "ollama_version": self.versions(), "compose_files": [str(f) for f in self.compose_files]}
        files = [a for f in self.compose_files for a in ("-f", str(f))]
        ps = self._run(["docker", "compose", *files, "ps", "--format", "json"])
        containers = []
        if ps.returncode == 0 and ps.stdout.strip():
            text = ps.stdout.strip()
            rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
            engine, _ = docker_engine()
            for row in rows:
                entry = {"service": row.get("Service"), "image": row.get("Image"), "ports": row.get("Publishers")}
                if engine is not None:
                    try:
                        c = engine.containers.get(row.get("ID", ""))
                        entry.update(image_id=c.image.id, image_digests=c.image.attrs.get("RepoDigests"),
                                     env=[e for e in c.attrs["Config"].get("Env", []) if e.startswith("OLLAMA_")],
                                     memory_limit=c.attrs["HostConfig"].get("Memory"))
                    except Exception as exc:  # inspection is best effort: the study never fails on it
                        entry["inspect_error"] = f"{type(exc).__name__}: {exc}"
                containers.append(entry)
        info["containers"] = containers
        return info
