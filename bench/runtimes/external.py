"""The external runtime: servers at user-given URLs, run by someone else (no lifecycle).

Ollama endpoints get the full Ollama treatment (unloads between models, placement, digests);
OpenAI-compatible endpoints (llama-server, vLLM, LM Studio) have their model list checked and,
where the server has llama-server's /props, their slots and context read.

Engine settings (slots, flash attention, KV-cache type) are the server owner's: the harness can
neither set nor read them. A plan that keeps the profile's pinned settings runs, and every run's
placement and the manifest say the settings were asked, not controlled; a plan that asks for a
change (a settings sweep, the one-instance topology control) is refused before it starts.
"""

from __future__ import annotations

import requests

from bench.clients.streaming import StreamingClient
from bench.config.profile import ModelSpec, Profile, ServerConfig
from bench.core.errors import BenchError, RequestError
from bench.runtimes.base import Endpoint
from bench.runtimes.ollama import OllamaEndpoints

NOT_CONTROLLED = "asked, not controlled: the server is run by someone else; the harness cannot set or read these"


class ExternalRuntime(OllamaEndpoints):
    kind = "external"

    def __init__(self, profile: Profile):
        endpoints = [Endpoint(e.name, e.url.rstrip("/"), e.api) for e in profile.runtime.endpoints]
        super().__init__(profile, [ep for ep in endpoints if ep.api == "ollama"])
        self._all = endpoints
        self.engine = "ollama" if all(ep.api == "ollama" for ep in endpoints) else "openai-compatible"
        # what the plan may ask of every endpoint, whatever its API: the pinned settings, unchanged
        self.instance_settings = {ep.name: profile.runtime.pinned_settings for ep in endpoints}

    def endpoints(self) -> list[Endpoint]:
        return list(self._all)

    def _client(self, ep: Endpoint) -> StreamingClient:
        return StreamingClient(ep.url, ep.api, timeout_s=30)

    def up(self) -> None:
        for ep in self._all:
            self._client(ep).list_models()  # a clear error when unreachable

    def down(self) -> None:
        """Leave the servers running, but free the memory our last model holds."""
        if self._current:
            self.free()

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        for ep in self._all:
            if ep.api != "ollama":
                names = self._client(ep).list_models()
                if model.name not in names:
                    raise BenchError(f"unknown model '{model.name}' on {ep.url}; available models: "
                                     f"{', '.join(names) or '(none)'}")
        return super().switch(model, servers)

    def _openai_placement(self, ep: Endpoint, model: ModelSpec) -> dict:
        """What an OpenAI-compatible server says of itself: the model listed, and llama-server's
        slots and per-slot context from /props (null where the server has no /props)."""
        client = self._client(ep)  # its session carries the server's key, where it has one
        try:
            entry: dict = {"running": model.name in client.list_models()}
        except RequestError as exc:
            return {"running": False, "error": str(exc)}
        try:
            props = client.session.get(ep.url + "/props", timeout=5).json()
            entry.update(total_slots=props.get("total_slots"),
                         slot_ctx=(props.get("default_generation_settings") or {}).get("n_ctx"))
        except (requests.RequestException, ValueError, AttributeError):
            entry.update(total_slots=None, slot_ctx=None)
        return entry

    def placement(self, model: ModelSpec) -> dict:
        out = super().placement(model)
        for ep in self._all:
            entry = out[ep.name] if ep.api == "ollama" else self._openai_placement(ep, model)
            entry["engine_settings"] = {**self.instance_settings[ep.name].model_dump(), "controlled": False}
            out[ep.name] = entry
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "engine": self.engine, "endpoints": [e.__dict__ for e in self._all],
                "ollama_version": self.versions(),
                "engine_settings": {"status": NOT_CONTROLLED,
                                    "asked": {n: s.model_dump() for n, s in self.instance_settings.items()}}}

    def model_identity(self, model: ModelSpec) -> dict:
        if not self.apis:
            return {"name": model.name}
        return super().model_identity(model)
