"""The llama.cpp runtime (kind `local`): two llama-server processes on the profile's ports,
serving GGUF files through the OpenAI-compatible API. A model or setting change restarts a
server with new flags (llama-server loads one model at launch).

The servers refuse calls without the study's API key (HTTP 401): `up` makes a random key, kept in
a file only its user can read (the state dir's keys/, mode 0700, the file 0600), and each server
reads it with --api-key-file, so the key is in no command line, state file or manifest. The
clients find it by URL (bench.clients.streaming.register_api_key) and send it as a bearer token."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import requests

from bench.clients.streaming import loopback_session, register_api_key
from bench.config.profile import ModelSpec, Profile, ServerConfig, ServerSettings
from bench.core.paths import results_root
from bench.core.store import atomic_write_text
from bench.host import assets
from bench.runtimes.base import Endpoint
from bench.runtimes.process import ManagedProcess


class LlamaServer(ManagedProcess):
    """One llama-server process on one port."""

    def __init__(self, host: str, port: int, threads: int, state_dir: Path, startup_timeout_s: float,
                 key_file: Path):
        super().__init__("llama-server", host, port, state_dir, startup_timeout_s)
        self.threads = threads
        self.key_file = key_file
        self.http = loopback_session(self.url)  # no proxy between us and our own server

    def command(self, model: str, model_file: Path, config: ServerConfig, settings: ServerSettings) -> list[str]:
        # -np: the slots (current builds default to 4 sharing the context), and -c is per slot here
        # as OLLAMA_CONTEXT_LENGTH is; flash attention and the KV cache type explicit (the build's
        # default is 'auto'); threads explicit so two servers don't oversubscribe the cores.
        # --metrics and --slots: the engine sampler's queue and slot evidence (bench/study/engine_sampler.py).
        return [str(assets.llama_server_binary()), "-m", str(model_file), "--alias", model,
                "--host", self.host, "--port", str(self.port),
                "-c", str(config.ctx * settings.num_parallel), "-ngl", str(config.gpu_layers),
                "-np", str(settings.num_parallel), "-fa", "on" if settings.flash_attention else "off",
                "-ctk", settings.kv_cache_type, "-ctv", settings.kv_cache_type,
                "-t", str(self.threads), "-tb", str(self.threads), "--no-webui",
                "--metrics", "--slots", "--api-key-file", str(self.key_file)]

    def healthy(self) -> bool:
        try:  # /health needs no key
            return self.http.get(self.url + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def get_json(self, path: str, api_key: str | None):
        """GET one of the server's own JSON pages (/props, /v1/models) with the key."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return self.http.get(self.url + path, headers=headers, timeout=5).json()

    def ensure(self, model: str, model_file: Path, config: ServerConfig, settings: ServerSettings) -> bool:
        """Run the server with exactly these flags; True when it had to (re)start."""
        args = self.command(model, model_file, config, settings)
        current = self.state()
        if current and current.args == args and self.healthy():
            return False
        self.stop()
        self.start(args, {}, self.healthy, model=model, model_file=str(model_file))
        return True


class LocalRuntime:
    """Two llama-server processes on 127.0.0.1 (by default)."""

    kind = "local"
    engine = "llama.cpp"

    def __init__(self, profile: Profile, state_dir: Path | None = None):
        self.profile = profile
        spec = profile.runtime
        self.threads = spec.threads or max(1, (os.cpu_count() or 2) // len(spec.endpoints))
        state_dir = state_dir or results_root() / ".runtime"
        self.specs = spec.endpoints
        # one key per port set: another study on other ports has its own
        self.key_file = state_dir / "keys" / f"llama-server-{'-'.join(str(e.port) for e in spec.endpoints)}.key"
        self.servers = {e.name: LlamaServer(spec.host, e.port, self.threads, state_dir, spec.startup_timeout_s,
                                            self.key_file)
                        for e in spec.endpoints}
        self.instance_settings = {e.name: spec.pinned_settings for e in spec.endpoints}

    def api_key(self, new: bool = False) -> str:
        """The servers' API key: the key file's, made (or with `new`, replaced) when there is none.
        The keys folder is 0700 and the file 0600, so no other user can read it at any moment."""
        if not new and self.key_file.is_file():
            key = self.key_file.read_text().strip()
            if key:
                return key
        key = secrets.token_urlsafe(32)
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_file.parent, 0o700)
        atomic_write_text(self.key_file, key + "\n")
        os.chmod(self.key_file, 0o600)
        return key

    def endpoints(self) -> list[Endpoint]:
        key = self.api_key()
        out = []
        for e in self.specs:
            url = self.servers[e.name].url
            register_api_key(url, key)  # the clients for this URL send it
            out.append(Endpoint(e.name, url, "openai"))
        return out

    def _file_for(self, model: ModelSpec) -> Path:
        weights = self.profile.weights_of(model)  # a placebo: the file of the model it copies
        return assets.model_file(weights.name, weights.file)

    def up(self) -> None:
        """Start both servers on the baseline model with the server defaults, with a new API key
        unless they run already (they read the key at launch: theirs stays)."""
        if not self.is_running():
            self.api_key(new=True)
        defaults = self.profile.runtime.server_defaults
        self.switch(self.profile.baseline, {e.name: defaults for e in self.specs})

    def switch(self, model: ModelSpec, servers: dict[str, ServerConfig]) -> bool:
        path = self._file_for(model)
        self.endpoints()  # the key file exists before a server reads it, and the clients know the key
        changed = False
        for name, server in self.servers.items():
            cfg = servers.get(name) or self.profile.runtime.server_defaults
            changed |= server.ensure(model.name, path, cfg, self.instance_settings[name])
        return changed

    def apply_settings(self, settings: dict[str, ServerSettings]) -> bool:
        """llama-server takes its settings as launch flags: the next switch restarts the servers
        whose flags change."""
        changed = any(st != self.instance_settings.get(n) for n, st in settings.items())
        self.instance_settings.update(settings)
        return changed

    def down(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.key_file.unlink(missing_ok=True)  # the study is over: its key with it
        for server in self.servers.values():
            register_api_key(server.url, None)

    def free(self) -> None:
        # llama-server loads at launch: the next switch starts it with the rung's flags (and the same key)
        for server in self.servers.values():
            server.stop()

    def is_running(self) -> bool:
        return any(s.state() for s in self.servers.values())

    def placement(self, model: ModelSpec) -> dict:
        """The flags each server was launched with (llama-server has no runtime placement API
        beyond them): context, GPU layers and slots, plus the slot's context from /props."""
        out = {}
        for name, server in self.servers.items():
            st = server.state()
            if st is None:
                out[name] = {"running": False}
                continue
            flags = dict(zip(st.args[1::2], st.args[2::2]))
            entry = {"running": True, "model": st.model, "ctx": int(flags.get("-c", 0)) or None,
                     "gpu_layers": int(flags.get("-ngl", 0)), "parallel": int(flags.get("-np", 1))}
            try:
                props = server.get_json("/props", self.api_key())
                entry["slot_ctx"] = (props.get("default_generation_settings") or {}).get("n_ctx")
            except (requests.RequestException, ValueError):
                entry["slot_ctx"] = None
            out[name] = entry
        return out

    def describe(self) -> dict:
        binary = assets.llama_server_binary()
        info: dict = {"kind": self.kind, "engine": self.engine, "threads_per_server": self.threads,
                      "llama_server": {"binary": str(binary), "version": assets.llama_server_version(binary),
                                       "binary_sha256": assets.file_sha256(binary)},
                      "endpoints": [e.__dict__ for e in self.endpoints()], "servers": {}}  # no key
        for name, server in self.servers.items():
            st = server.state()
            entry: dict = {"port": server.port, "running": st is not None}
            if st:
                entry.update(args=st.args[1:], model=st.model)
                try:
                    props = server.get_json("/props", self.api_key())
                    entry["build_info"] = props.get("build_info")
                    entry["total_slots"] = props.get("total_slots")
                    models = server.get_json("/v1/models", self.api_key())
                    entry["model_meta"] = (models.get("data") or [{}])[0].get("meta")
                except (requests.RequestException, ValueError):
                    entry["build_info"] = None
            info["servers"][name] = entry
        return info

    def model_identity(self, model: ModelSpec) -> dict:
        return {**assets.gguf_identity(self.profile.weights_of(model)), "name": model.name,
                "placebo_of": model.placebo_of}

    def failure_evidence(self) -> dict:
        return {"server_log_tail": {name: s.log_tail(20) for name, s in self.servers.items()}}
