"""What the container tests need from the host: a Docker engine, the Compose v2 CLI and the local
images. Where one is missing a test is skipped with the reason, except in CI (CI=true), where
.ci/run starts the engine (scripts/docker-host.sh up), so a missing one is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOW = "start one with `bash scripts/docker-host.sh up`"


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the container tests, but: {reason}")
    pytest.skip(reason)


def docker_client():
    """A connected docker SDK client, or skip (fail in CI) with the reason."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # any failure means: no usable engine here
        unavailable(f"no Docker engine answers ({type(exc).__name__}); {HOW}")
    return client


def compose_cli() -> None:
    proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"no Docker Compose v2 CLI plugin; {HOW} (it installs the plugin)")


def ollama_binary() -> str:
    return os.environ.get("OLLAMA_BIN", str(Path(sys.prefix) / "bin" / "ollama"))


def build_images(what: str) -> subprocess.CompletedProcess:
    """scripts/build-images.sh WHAT (cached by content: fast when nothing changed)."""
    env = {**os.environ, "OLLAMA_BIN": ollama_binary()}
    proc = subprocess.run(["bash", "scripts/build-images.sh", what], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc
