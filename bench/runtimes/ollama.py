"""Ollama runtimes: what every pair of Ollama endpoints shares (`OllamaEndpoints`), and the native
runtime (kind `ollama`): two `ollama serve` processes on 127.0.0.1, by default on the spec's
ports 11434 (collector) and 11435 (insight).

Ollama loads a model on the first request that names it, with the request's options (num_ctx,
num_gpu, num_thread), so a switch only has to free the previous model on both instances; the
load itself happens in the warmup, which is never counted.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

from bench.config.profile import ModelSpec, Profile, ServerConfig, ServerSettings
from bench.core.errors import BenchError, RequestError
from bench.core.paths import cache_dir, results_root
from bench.host import assets
from bench.runtimes.base import Endpoint
from bench.runtimes.ollama_api import OllamaAPI, tag_matches
from bench.runtimes.process import ManagedProcess

log = logging.getLogger("bench")

# Ollama logs how many layers it offloaded at each load (absent on builds without a GPU backend).
OFFLOAD_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def settings_env(settings: ServerSettings) -> dict[str, str]:
    """The Ollama environment of one instance's engine settings."""
    return {"OLLAMA_NUM_PARALLEL": str(settings.num_parallel),
            "OLLAMA_FLASH_ATTENTION": "1" if settings.flash_attention else "0",
            "OLLAMA_KV_CACHE_TYPE": settings.kv_cache_type}


# Where a server listens: the endpoints record it; it is no setting of how the server runs.
LISTEN_SETTING = "OLLAMA_HOST"


def recorded_settings(envs: dict[str, dict[str, str]]) -> dict[str, str | dict[str, str | None]]:
    """The manifest's `settings` of an Ollama runtime, built one way for every runtime from the
    environment each instance runs with (a native server's, a container's): every OLLAMA_*
    variable but the listen address, its value where the instances agree, else per instance
    (None: unset there). An empty value is Ollama's default, as unset is."""
    keys = sorted({k for env in envs.values() for k, v in env.items()
                   if k.startswith("OLLAMA_") and k != LISTEN_SETTING and v != ""})
    out: dict[str, str | dict[str, str | None]] = {}
    for key in keys:
        values = {name: env.get(key) or None for name, env in envs.items()}
        out[key] = next(iter(values.values())) if len(set(values.values())) == 1 else values
    return out


def chat_template(name: str) -> str:
    path = assets.CHAT_TEMPLATES_DIR / f"{name}.gotmpl"
    if not path.is_file():
        known = sorted(p.stem for p in assets.CHAT_TEMPLATES_DIR.glob("*.gotmpl"))
        raise BenchError(f"unknown chat template '{name}'; available: {', '.join(known)}")
    return path.read_text()


def ensure_model(api: OllamaAPI, model: ModelSpec) -> str:
    """Make `model` available on the instance behind `api`: pull it from the registry, or create
    it from its GGUF file. Returns what was done: 'present', 'pulled', 'kept' or 'created'."""
    if model.source == "pull":
        if api.tag(model.name):
            return "present"
        api.pull(model.name)
        return "pulled"
    path = assets.model_file(model.name, model.file)
    sha = assets.file_sha256(path)
    template = chat_template(model.template) if model.template else None
    parameters = {"stop": list(model.stop)} if model.stop else None
    if api.tag(model.name):
        show = api.show(model.name)
        same_blob = f"sha256-{sha}" in (show.get("modelfile") or "")
        same_template = template is None or show.get("template") == template
        same_stop = all(f'"{s}"' in (show.get("parameters") or "") for s in model.stop)
        if same_blob and same_template and same_stop:
            return "kept"  # identical inputs give an identical manifest digest: nothing to do
    if not api.has_blob(sha):
        api.push_blob(path, sha)
    api.create(model.name, path, sha, template, parameters)
    return "created"


class OllamaEndpoints:
    """Two Ollama endpoints: model switches with unloads, placement from /api/ps, identities."""

    kind = "ollama-endpoints"
    engine = "ollama"
    # How long an unloaded model may stay in /api/ps; longer is a slow server (a transient timeout)
    unload_wait_s = 30.0

    def __init__(self, profile: Profile, endpoints: list[Endpoint]):
        self.profile = profile
        self._endpoints = endpoints
        self.apis = {ep.name: OllamaAPI(ep.url) for ep in endpoints}
        self._current: str | None = None
        self.model_actions: dict[str, str] = {}
        self.unloads: list[dict] = []  # what free_others unloaded, and /api/ps right after
        self.threads = profile.runtime.threads
        # the engine settings each instance runs with now (apply_settings changes them)
        self.instance_settings = {ep.name: profile.runtime.pinned_settings for ep in endpoints}

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @property
    def first_api(self) -> OllamaAPI:
        return self.apis[self._endpoints[0].name]

    def ensure_models(self) -> None:
        """Create or pull every model through the first instance (one writer to the shared model
        store), then check that the other instance lists each of them."""
        for model in sorted(self.profile.models, key=lambda m: m.placebo_of is not None):  # originals first
            if model.placebo_of is None:
                self.model_actions[model.name] = ensure_model(self.first_api, model)
                continue
            # a placebo is the original under another name: the same manifest, the same digest
            self.first_api.copy(model.placebo_of, model.name)
            self.model_actions[model.name] = f"copied from {model.placebo_of}"
        for name, api in self.apis.items():
            missing = [m.name for m in self.profile.models if api.tag(m.name) is None]
            if missing:
                raise BenchError(f"Ollama endpoint {name} ({api.url}) does not list {missing}: both instances "
                                 f"must share one model store (OLLAMA_MODELS / the model volume)")

    def _check_known(self, model: ModelSpec) -> None:
        for name, api in self.apis.items():
            if api.tag(model.name) is None:
                listed = [t.get("name") for t in api.tags()]
                raise BenchError(f"unknown model '{model.name}' on {api.url}; available models: "
                                 f"{', '.join(listed) or '(none)'}")

    def free_others(self, keep: str | None) -> None:
        """Unload every model but `keep` on both instances and check /api/ps: two models must never
        compete for one GPU's memory."""
        for name, api in self.apis.items():
            unloaded = []
            for m in api.ps():
                if keep is None or not tag_matches(m.get("name", ""), keep):
                    api.unload(m["name"], wait_s=self.unload_wait_s)  # until /api/ps no longer lists it
                    unloaded.append(m["name"])
            if unloaded:
                listed = [m.get("name") for m in api.ps()]
                self.unloads.append({"endpoint": name, "next_model": keep, "unloaded": unloaded, "ps_after": listed})
                log.info("%s: unloaded %s (keep_alive 0); /api/ps now lists %s", name, ", ".join(unloaded),
                         listed or "nothing")

    def free(self) -> None:
        self.free_others(keep=None)
        self._current = None

    def apply_settings(self, settings: dict[str, ServerSettings]) -> bool:
        """Servers run by someone else keep their settings: only the pinned ones are accepted."""
        changed = {n: s for n, s in settings.items() if s != self.instance_settings.get(n)}
        if changed:
            raise BenchError(f"the {self.kind} runtime cannot change engine settings (asked: "
                             + "; ".join(f"{n}: {s.model_dump()}" for n, s in changed.items())
                             + "): its servers are run by someone else; sweep settings with the ollama or docker "
                               "runtime, or remove settings_sweep and the one_instance_two_slots scenario")
        return False

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        fallback_tags = {t for m in self.profile.models for t in self.profile.fallback_for(m).tags}
        if model.name in fallback_tags:  # a fallback tag of a profile model: pulled on first use
            self.model_actions[model.name] = ensure_model(self.first_api, model)
        self._check_known(model)
        changed = self._current != model.name
        if changed:
            self.free_others(keep=model.name)
        self._current = model.name
        return changed

    def offloaded_layers(self, endpoint: str) -> dict | None:
        """Layers on the GPU at the latest load, from the server log where we have it."""
        return None

    def placement(self, model: ModelSpec) -> dict:
        out = {}
        for name, api in self.apis.items():
            try:
                entry = api.loaded(model.name)
            except RequestError as exc:
                out[name] = {"loaded": False, "error": str(exc)}
                continue
            if entry is None:
                out[name] = {"loaded": False}
                continue
            size, vram = entry.get("size"), entry.get("size_vram", 0)  # older versions omit a zero
            out[name] = {"loaded": True, "size_bytes": size, "size_vram_bytes": vram,
                         "gpu_share": (vram / size) if size else None,
                         "context_length": entry.get("context_length"),
                         "parallel": self.instance_settings[name].num_parallel,
                         "offload": self.offloaded_layers(name)}
        return out

    def failure_evidence(self) -> dict:
        return {}  # servers run by someone else: their logs are not ours to read

    def is_running(self) -> bool:
        return True

    def versions(self) -> dict:
        out = {}
        for name, api in self.apis.items():
            try:
                out[name] = api.version()
            except RequestError:
                out[name] = None
        return out

    def model_identity(self, model: ModelSpec) -> dict:
        ident = self.first_api.identity(model.name)
        ident["source"] = model.source
        ident["created"] = self.model_actions.get(model.name)
        ident["placebo_of"] = model.placebo_of
        if model.source == "gguf" or self.profile.weights_of(model).source == "gguf":
            f = assets.gguf_identity(self.profile.weights_of(model))
            ident.update(file=f["file"], file_sha256=f["file_sha256"], file_size_bytes=f["size_bytes"],
                         package=f["package"], stands_in_for=f["stands_in_for"])
        ident["chat_template"] = (f"profile: {model.template}" if model.template
                                  else "none: prompts are sent raw" if ident.get("template") == "{{ .Prompt }}"
                                  else "from the model")
        return ident


def inherited_ollama_settings_blanked() -> dict[str, str]:
    """The caller's OLLAMA_* variables, each set to "" (Ollama's default): a server of ours must not
    inherit them (the server process gets the caller's environment). OLLAMA_ORIGINS would let web
    pages' scripts call the unauthenticated API, OLLAMA_HOST would move it off loopback, and others
    (OLLAMA_SCHED_SPREAD, OLLAMA_LLM_LIBRARY, ...) change results without being recorded."""
    return {k: "" for k in os.environ if k.startswith("OLLAMA_")}


class OllamaServer(ManagedProcess):
    """One `ollama serve` process."""

    def __init__(self, binary: Path, host: str, port: int, env: dict[str, str], state_dir: Path,
                 log_dir: Path, startup_timeout_s: float):
        super().__init__("ollama", host, port, state_dir, startup_timeout_s, log_dir=log_dir)
        self.binary = binary
        self.env = {**inherited_ollama_settings_blanked(), **env, "OLLAMA_HOST": f"{host}:{port}"}
        self.api = OllamaAPI(self.url, timeout_s=5)

    def healthy(self) -> bool:
        try:
            self.api.version()
            return True
        except RequestError:
            return False

    def ensure(self) -> bool:
        """Run with exactly our binary and settings; True when it had to (re)start."""
        args = [str(self.binary), "serve"]
        current = self.state()
        if current and current.args == args and current.env == self.env and self.healthy():
            return False
        self.stop()
        self.start(args, self.env, self.healthy)
        return True

    def cpu_features(self) -> str | None:
        """The CPU feature list of the latest `msg=system` log line (logged at startup)."""
        lines = [line for line in self.log_text().splitlines() if "msg=system" in line]
        return lines[-1] if lines else None


class OllamaRuntime(OllamaEndpoints):
    """Two native `ollama serve` processes sharing one model store in the cache."""

    kind = "ollama"

    def __init__(self, profile: Profile, state_dir: Path | None = None, log_dir: Path | None = None,
                 models_dir: Path | None = None):
        spec = profile.runtime
        super().__init__(profile, [Endpoint(e.name, f"http://{spec.host}:{e.port}", "ollama")
                                   for e in spec.endpoints])
        self.binary = assets.ollama_binary()
        self.threads = spec.threads or max(1, (os.cpu_count() or 2) // len(spec.endpoints))
        self.models_dir = models_dir or cache_dir() / "ollama" / "models"
        # Settings that change results are pinned, never left to version defaults:
        self.settings = {
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_NOPRUNE": "1",  # each server deletes unreferenced blobs at start otherwise
            "OLLAMA_MAX_LOADED_MODELS": "1",
            "OLLAMA_KEEP_ALIVE": spec.keep_alive,
            "OLLAMA_CONTEXT_LENGTH": str(spec.server_defaults.ctx),  # what requests without num_ctx get
            **settings_env(spec.pinned_settings),  # slots, flash attention, KV cache: per instance below
        }
        state_dir = state_dir or results_root() / ".runtime"
        log_dir = log_dir or results_root() / profile.study / "logs"
        self.servers = {e.name: OllamaServer(self.binary, spec.host, e.port, self.settings, state_dir, log_dir,
                                             spec.startup_timeout_s) for e in spec.endpoints}

    def up(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        for server in self.servers.values():
            server.ensure()
        self.ensure_models()
        for server in self.servers.values():
            self._check_simd(server)

    def _check_simd(self, server: OllamaServer) -> None:
        """Without AVX2 the CPU backend falls back to scalar code: numbers would be meaningless.
        The runner logs its CPU features when it loads a model, so load the baseline once."""
        if server.cpu_features() is None:
            server.api.load(self.profile.baseline.name, keep_alive=self.profile.runtime.keep_alive)
            server.api.unload(self.profile.baseline.name)  # no request option may depend on this load
        line = server.cpu_features()
        if line is None or "AVX2=1" not in line:
            self.down()
            seen = (line or "no msg=system line").strip()[:300]
            raise BenchError(f"Ollama on port {server.port} runs without AVX2 (log: {seen}); "
                             f"rebuild it with scripts/build-ollama.sh on a CPU with AVX2")

    def apply_settings(self, settings: dict[str, ServerSettings]) -> bool:
        """A native instance takes its settings from its environment: one whose settings change
        is restarted (its model is loaded again by the next request)."""
        restarted = False
        for name, wanted in settings.items():
            server = self.servers[name]
            env = {**server.env, **settings_env(wanted)}
            self.instance_settings[name] = wanted
            if env != server.env:
                server.env = env
                restarted |= server.ensure()
        if restarted:
            self._current = None
        return restarted

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        restarted = False
        for server in self.servers.values():
            restarted |= server.ensure()  # a server that died (or was never up) comes back
        if restarted:
            self._current = None
            self.ensure_models()  # `bench` without `up`: the store may lack a model
        return super().switch(model, servers) or restarted

    def down(self) -> None:
        for server in self.servers.values():
            server.stop()

    def is_running(self) -> bool:
        return any(s.state() for s in self.servers.values())

    def failure_evidence(self) -> dict:
        return {"server_log_tail": {name: s.log_tail(20) for name, s in self.servers.items()}}

    def offloaded_layers(self, endpoint: str) -> dict | None:
        found = OFFLOAD_RE.findall(self.servers[endpoint].log_text())
        if not found:
            return None
        on_gpu, total = found[-1]
        return {"gpu_layers": int(on_gpu), "total_layers": int(total)}

    def describe(self) -> dict:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, timeout=30)
        servers = {}
        for name, server in self.servers.items():
            st = server.state()
            servers[name] = {"port": server.port, "running": st is not None, "log": str(server.log_file),
                             "cpu_features": server.cpu_features()}
        return {"kind": self.kind, "engine": self.engine, "threads_per_server": self.threads,
                "ollama_version": self.versions(),
                "ollama": {"binary": str(self.binary), "binary_sha256": assets.file_sha256(self.binary),
                           "version_output": (out.stdout + out.stderr).strip().splitlines()[-1:]},
                "settings": recorded_settings({name: server.env for name, server in self.servers.items()}),
                "instance_settings": {n: st.model_dump() for n, st in self.instance_settings.items()},
                "endpoints": [e.__dict__ for e in self._endpoints], "servers": servers}
