"""Runtimes: where a study's two inference servers come from (see `base.Runtime`).

- `local` (llamacpp.py): two llama-server processes, OpenAI-compatible API;
- `ollama` (ollama.py): two native `ollama serve` processes, Ollama's API;
- `docker` (docker.py): two Ollama containers from compose.yaml;
- `external` (external.py): servers someone else runs.
"""

from __future__ import annotations

from bench.config.profile import Profile
from bench.runtimes.base import Endpoint, Runtime
from bench.runtimes.docker import DockerRuntime, local_images
from bench.runtimes.external import ExternalRuntime
from bench.runtimes.llamacpp import LocalRuntime
from bench.runtimes.ollama import OllamaRuntime

__all__ = ["Endpoint", "Runtime", "create_runtime", "DockerRuntime", "ExternalRuntime", "LocalRuntime",
           "OllamaRuntime"]

RUNTIMES = {"local": LocalRuntime, "ollama": OllamaRuntime, "docker": DockerRuntime, "external": ExternalRuntime}


def create_runtime(profile: Profile) -> Runtime:
    return RUNTIMES[profile.runtime.kind](profile)


def engines_for(profile: Profile) -> list[str]:
    """The engines scripts/setup.sh must build for a profile. The docker runtime needs the locally
    built Ollama only for its CPU override image; on a GPU host the image comes from a registry."""
    spec = profile.runtime
    return {"local": ["llamacpp"], "ollama": ["ollama"], "external": [],
            "docker": ["ollama"] if local_images(spec) else []}[spec.kind]
