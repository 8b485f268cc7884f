"""A native `ollama serve` of ours takes nothing from the caller's OLLAMA_* environment: not
OLLAMA_ORIGINS (which lets any web page's scripts call the unauthenticated API from a browser on
this host) and not OLLAMA_HOST (which would move it off loopback). Against the real binary."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from bench.config.profile import load_profile
from bench.runtimes import OllamaRuntime

from conftest import free_port, smoke_variant

pytestmark = pytest.mark.ollama
FOREIGN_ORIGIN = "http://attacker.example"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_native_server_ignores_the_callers_origins_and_host(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_ORIGINS", "*")
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:1")
    monkeypatch.setenv("OLLAMA_SCHED_SPREAD", "1")
    port = free_port()
    path = smoke_variant(tmp_path, base="smoke", mutate=lambda d: d["runtime"]["endpoints"][0].update(port=port))
    rt = OllamaRuntime(load_profile(path).profile, state_dir=tmp_path / "s", log_dir=tmp_path / "l")
    server = rt.servers["collector"]
    try:
        server.ensure()
        env = _environ(server.state().pid)
        assert env["OLLAMA_HOST"] == f"127.0.0.1:{port}"
        assert env.get("OLLAMA_ORIGINS", "") == "" and env.get("OLLAMA_SCHED_SPREAD", "") == ""
        # A browser page from another origin is refused; the harness (no Origin header) is served.
        foreign = requests.get(f"http://127.0.0.1:{port}/api/version", headers={"Origin": FOREIGN_ORIGIN}, timeout=5)
        assert foreign.status_code == 403
        assert "access-control-allow-origin" not in {k.lower() for k in foreign.headers}
        assert requests.get(f"http://127.0.0.1:{port}/api/version", timeout=5).json()["version"]
    finally:
        rt.down()
