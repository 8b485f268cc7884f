"""Ollama's management API, as every Ollama-backed runtime uses it (native, containers, external).

Facts it relies on (checked against a real Ollama 0.17, see shared/reference/ollama-local.md):
- `/api/tags` and `/api/ps` carry each model's `digest` (sha256 of its manifest); `/api/show` has
  none, but has the modelfile, template, parameters, details and model_info.
- Models come from a registry (`/api/pull`) or from a GGUF file without one: upload the blob
  (`POST /api/blobs/sha256:<hex>`), then `POST /api/create` naming it under `files`.
- `keep_alive: 0` on `/api/generate` unloads a model (`done_reason: "unload"`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from tqdm import tqdm

from bench.errors import RequestError, classify


def tag_matches(listed: str, name: str) -> bool:
    """'gemma3:latest' is listed for a model created or pulled as 'gemma3'."""
    return listed == name or listed == f"{name}:latest"


class OllamaAPI:
    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            resp = requests.request(method, self.url + path, timeout=kwargs.pop("timeout", self.timeout_s), **kwargs)
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot reach the server ({method} {path}: "
                                             f"{exc.__class__.__name__}); is it running?", self.url) from None
        if resp.status_code >= 400:
            try:
                msg = str(resp.json().get("error", resp.text))
            except ValueError:
                msg = resp.text[:300] or resp.reason
            kind = classify(msg, default="not_found" if resp.status_code == 404 else "http")
            raise RequestError(kind, f"{method} {path}: HTTP {resp.status_code}: {msg}", self.url)
        return resp

    # ---- facts ---------------------------------------------------------------------------

    def version(self) -> str:
        return self._request("GET", "/api/version").json().get("version", "")

    def tags(self) -> list[dict]:
        return self._request("GET", "/api/tags").json().get("models") or []

    def ps(self) -> list[dict]:
        return self._request("GET", "/api/ps").json().get("models") or []

    def show(self, model: str) -> dict:
        return self._request("POST", "/api/show", json={"model": model}).json()

    def tag(self, model: str) -> dict | None:
        """The /api/tags entry of a model (name, digest, size, details), or None."""
        return next((t for t in self.tags() if tag_matches(t.get("name", ""), model)), None)

    def loaded(self, model: str) -> dict | None:
        return next((m for m in self.ps() if tag_matches(m.get("name", ""), model)), None)

    # ---- models --------------------------------------------------------------------------

    def has_blob(self, sha256: str) -> bool:
        try:
            return requests.head(f"{self.url}/api/blobs/sha256:{sha256}", timeout=self.timeout_s).status_code == 200
        except requests.RequestException as exc:
            raise RequestError("connection", f"HEAD /api/blobs: {exc}", self.url) from None

    def push_blob(self, path: Path, sha256: str) -> None:
        with path.open("rb") as body:
            self._request("POST", f"/api/blobs/sha256:{sha256}", data=body, timeout=600)

    def create(self, model: str, gguf: Path, sha256: str, template: str | None = None,
               parameters: dict | None = None) -> None:
        """Create `model` from an uploaded GGUF blob (with a template where the file has none)."""
        body: dict = {"model": model, "files": {gguf.name: f"sha256:{sha256}"}, "stream": False}
        if template is not None:
            body["template"] = template
        if parameters:
            body["parameters"] = parameters
        status = self._request("POST", "/api/create", json=body, timeout=600).json().get("status")
        if status != "success":
            raise RequestError("http", f"create {model}: unexpected status {status!r}", self.url)

    def pull(self, model: str) -> None:
        """Pull from the registry, streaming progress."""
        try:
            resp = requests.post(self.url + "/api/pull", json={"model": model, "stream": True}, stream=True,
                                 timeout=(10, 3600))
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot pull {model}: {exc}", self.url) from None
        with resp, tqdm(desc=f"pull {model}", unit="B", unit_scale=True, leave=False) as bar:
            if resp.status_code != 200:
                raise RequestError(classify(resp.text), f"pull {model}: HTTP {resp.status_code}: {resp.text}", self.url)
            for line in resp.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if "error" in event:
                    raise RequestError(classify(event["error"], "not_found"), f"pull {model}: {event['error']}",
                                       self.url)
                if event.get("total"):
                    bar.total = event["total"]
                    bar.n = event.get("completed", 0)
                    bar.refresh()

    def copy(self, source: str, destination: str) -> None:
        """Another name for a model: the same manifest, so the same digest and blobs (/api/copy)."""
        self._request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        """Remove a model's manifest from the store (its blobs stay while another model uses them)."""
        self._request("DELETE", "/api/delete", json={"model": model})

    def load(self, model: str, keep_alive: str | int) -> None:
        """Load a model without generating (a generate call with no prompt)."""
        self._request("POST", "/api/generate", json={"model": model, "keep_alive": keep_alive}, timeout=300)

    def unload(self, model: str, wait_s: float = 30.0) -> None:
        """Free the model's memory (a no-op when it is not loaded). The answer comes before the
        scheduler has let go of the runner, so wait until /api/ps no longer lists the model."""
        self._request("POST", "/api/generate", json={"model": model, "keep_alive": 0}, timeout=120)
        deadline = time.monotonic() + wait_s
        while self.loaded(model) is not None:
            if time.monotonic() > deadline:
                raise RequestError("oom", f"{model} still loaded {wait_s:.0f} s after unload", self.url)
            time.sleep(0.05)

    def identity(self, model: str) -> dict:
        """The spec's pre-flight facts for the manifest: digest and size from /api/tags, and from
        /api/show the modelfile, quantization, parameter size, family, context length and layers."""
        tag = self.tag(model) or {}
        show = self.show(model)
        details = show.get("details") or {}
        info = show.get("model_info") or {}

        def arch_key(suffix: str):
            return next((v for k, v in info.items() if k.endswith(suffix)), None)

        return {"name": model, "digest": tag.get("digest"), "size_bytes": tag.get("size"),
                "family": details.get("family"), "parameter_size": details.get("parameter_size"),
                "quantization_level": details.get("quantization_level"), "format": details.get("format"),
                "context_length": arch_key(".context_length"), "block_count": arch_key(".block_count"),
                "capabilities": show.get("capabilities"), "parameters": show.get("parameters"),
                "template": show.get("template"), "modelfile": show.get("modelfile")}
