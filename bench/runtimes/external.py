"""The external runtime: servers at user-given URLs, run by someone else (no lifecycle).

Ollama endpoints get the full Ollama treatment (unloads between models, placement, digests);
OpenAI-compatible endpoints only have their model list checked."""

from __future__ import annotations

from bench.clients import StreamingClient
from bench.errors import BenchError
from bench.profile import ModelSpec, Profile, ServerConfig
from bench.runtimes.base import Endpoint
from bench.runtimes.ollama import OllamaEndpoints


class ExternalRuntime(OllamaEndpoints):
    kind = "external"

    def __init__(self, profile: Profile):
        endpoints = [Endpoint(e.name, e.url.rstrip("/"), e.api) for e in profile.runtime.endpoints]
        super().__init__(profile, [ep for ep in endpoints if ep.api == "ollama"])
        self._all = endpoints
        self.engine = "ollama" if all(ep.api == "ollama" for ep in endpoints) else "openai-compatible"

    def endpoints(self) -> list[Endpoint]:
        return list(self._all)

    def up(self) -> None:
        for ep in self._all:
            StreamingClient(ep.url, ep.api, timeout_s=30).list_models()  # a clear error when unreachable

    def down(self) -> None:
        """Leave the servers running, but free the memory our last model holds."""
        if self._current:
            self.free()

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        for ep in self._all:
            if ep.api != "ollama":
                names = StreamingClient(ep.url, ep.api, timeout_s=30).list_models()
                if model.name not in names:
                    raise BenchError(f"unknown model '{model.name}' on {ep.url}; available models: "
                                     f"{', '.join(names) or '(none)'}")
        return super().switch(model, servers)

    def describe(self) -> dict:
        return {"kind": self.kind, "engine": self.engine, "endpoints": [e.__dict__ for e in self._all],
                "ollama_version": self.versions()}

    def model_identity(self, model: ModelSpec) -> dict:
        if not self.apis:
            return {"name": model.name}
        return super().model_identity(model)
