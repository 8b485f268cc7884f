"""The runtime interface: where a study's two inference servers come from.

Every runtime (llama-server processes, native Ollama processes, Ollama containers, servers run by
someone else) implements all of `Runtime`, so callers never probe for optional methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bench.clients.streaming import api_key_for
from bench.config.profile import ModelSpec, ServerConfig, ServerSettings


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    api: str

    @property
    def api_key(self) -> str | None:
        """The server's API key (llama-server's, per study), where its runtime set one. A property
        read from the process's key registry (bench.clients.streaming.register_api_key), not a field: an
        Endpoint's repr and __dict__, which the manifest records, never hold it."""
        return api_key_for(self.url)


class Runtime(Protocol):
    kind: str
    engine: str  # the inference engine behind the endpoints: "ollama" or "llama.cpp"
    threads: int | None  # CPU threads per server, where the bundle sets them

    def up(self) -> None:
        """Start the servers (a no-op for servers run by someone else)."""

    def down(self) -> None:
        """Stop what `up` started; nothing of ours is left running."""

    def free(self) -> None:
        """Free the memory the servers hold, before the fallback ladder's next rung: unload every
        model, or stop the servers so that the next `switch` starts them again."""

    def is_running(self) -> bool:
        """True when the servers are up already; `bench` stops only servers it had to start."""

    def endpoints(self) -> list[Endpoint]: ...

    def apply_settings(self, settings: dict[str, ServerSettings]) -> bool:
        """Run each instance with these engine settings (slots, flash attention, KV-cache type),
        restarting or recreating the ones that differ; True when any did. A runtime that cannot
        change them (servers run by someone else) refuses values other than the pinned ones."""

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        """Serve `model` with these load-time settings per endpoint; True when anything changed
        (a restart or a model switch), so the caller warms up again."""

    def placement(self, model: ModelSpec) -> dict:
        """Where `model` runs now on each endpoint, as the engine reports it (memory on the GPU,
        context, slots); read after a load and at the end of every run."""

    def describe(self) -> dict:
        """The runtime's identity for the manifest: versions, binaries or images, ports, threads."""

    def model_identity(self, model: ModelSpec) -> dict:
        """The model's identity for the manifest: digest or file hash, quantization, size."""

    def failure_evidence(self) -> dict:
        """What the servers said around a failure (log tails, kill counters), read right after it,
        for failures.jsonl."""
