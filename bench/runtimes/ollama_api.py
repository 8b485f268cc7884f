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

from bench.clients.streaming import READ_BYTES, Deadline, bounded_lines, error_body_message, loopback_session
from bench.core.errors import RequestError, classify, classify_http

# The longest a pull may take, all of it (a large model over a slow link takes hours; a registry
# or proxy that trickles progress lines forever must still end).
PULL_DEADLINE_S = 6 * 3600.0


def tag_matches(listed: str, name: str) -> bool:
    """'gemma3:latest' is listed for a model created or pulled as 'gemma3'."""
    return listed == name or listed == f"{name}:latest"


class OllamaAPI:
    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = loopback_session(self.url)  # no proxy from the environment to a local server

    def _request(self, method: str, path: str, **kwargs) -> "_Reply":
        try:
            resp = self.http.request(method, self.url + path, timeout=kwargs.pop("timeout", self.timeout_s), **kwargs)
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot reach the server ({method} {path}: "
                                             f"{exc.__class__.__name__}); is it running?", self.url) from None
        if resp.status_code >= 400:
            msg = error_body_message(resp.content) if resp.content.strip() else (resp.reason or "(empty body)")
            raise RequestError(classify_http(resp.status_code, msg), f"{method} {path}: HTTP {resp.status_code}: {msg}",
                               self.url)
        return _Reply(resp, f"{method} {path}", self.url)

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
            return self.http.head(f"{self.url}/api/blobs/sha256:{sha256}", timeout=self.timeout_s).status_code == 200
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

    def pull(self, model: str, deadline_s: float = PULL_DEADLINE_S) -> None:
        """Pull from the registry, streaming progress; all of it within `deadline_s`, each wait for
        bytes within an hour, no progress line over the clients' line limit."""
        deadline = Deadline(deadline_s)
        try:
            resp = self.http.post(self.url + "/api/pull", json={"model": model, "stream": True}, stream=True,
                                  timeout=(10, min(3600, deadline_s)))
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot pull {model}: {exc.__class__.__name__}", self.url) from None
        with resp, deadline.watch(resp), tqdm(desc=f"pull {model}", unit="B", unit_scale=True, leave=False) as bar:
            if resp.status_code != 200:
                msg = error_body_message(resp.content)
                raise RequestError(classify_http(resp.status_code, msg), f"pull {model}: HTTP {resp.status_code}: {msg}",
                                   self.url)
            try:
                self._pull_progress(model, bounded_lines(resp.iter_content(READ_BYTES), deadline.expired), bar)
            except (RequestError, requests.RequestException) as exc:
                if deadline.fired or deadline.expired():
                    raise RequestError("timeout", f"pull {model}: not done within {deadline_s:g} s", self.url) from None
                if isinstance(exc, RequestError):
                    raise
                raise RequestError("stream_cut", f"pull {model}: the progress stream broke: {exc.__class__.__name__}",
                                   self.url) from None

    def _pull_progress(self, model: str, lines, bar) -> None:
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                raise RequestError("malformed_stream", f"pull {model}: not a JSON progress line: {line[:120]!r}",
                                   self.url) from None
            if not isinstance(event, dict):
                raise RequestError("malformed_stream", f"pull {model}: not a progress object: {line[:120]!r}", self.url)
            if "error" in event:
                raise RequestError(classify(str(event["error"]), "not_found"), f"pull {model}: {event['error']}",
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
        scheduler has let go of the runner, so wait until /api/ps no longer lists the model. A
        model still listed after `wait_s` is a slow server, not a config that does not fit: a
        timeout (transient), never a load failure the fallback ladder would learn."""
        self._request("POST", "/api/generate", json={"model": model, "keep_alive": 0}, timeout=120)
        deadline = time.monotonic() + wait_s
        while self.loaded(model) is not None:
            if time.monotonic() > deadline:
                raise RequestError("timeout", f"{model} still listed by /api/ps {wait_s:g} s after its unload "
                                              f"(keep_alive 0)", self.url)
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


class _Reply:
    """A 2xx reply whose JSON is read with a one-line error: a proxy's or another program's page
    (HTML, text) on the port is an answer that is not the API, not a traceback."""

    def __init__(self, resp: requests.Response, what: str, url: str):
        self.resp, self.what, self.url = resp, what, url

    def json(self):
        try:
            return self.resp.json()
        except ValueError:
            raise RequestError("malformed_stream", f"{self.what}: HTTP {self.resp.status_code} but not JSON: "
                                                   f"{self.resp.content[:120]!r}", self.url) from None
