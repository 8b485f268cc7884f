"""Shared fixtures. Tests marked `llama` run real inference on the embedded llama-server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # tests/ollama_server.py

from bench.config.profile import builtin_profiles, load_profile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_available() -> tuple[bool, str]:
    try:
        from bench.host.assets import llama_server_binary, model_file

        llama_server_binary()
        model_file("gemma3-270m")
        model_file("smollm2-135m")
    except Exception as exc:  # not set up: say why the real-inference tests are skipped
        return False, str(exc)
    return True, ""


def ollama_available() -> tuple[bool, str]:
    from bench.host.assets import model_file

    binary = Path(os.environ.get("OLLAMA_BIN", Path(sys.prefix) / "bin" / "ollama"))
    if not binary.is_file():
        return False, f"no Ollama binary at {binary} (scripts/build-ollama.sh)"
    try:
        model_file("gemma3-270m")
        model_file("smollm2-135m")
    except Exception as exc:
        return False, str(exc)
    return True, ""


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI"):
        return  # in CI a missing engine must fail, not skip
    for marker, (ok, why) in (("llama", llama_available()), ("ollama", ollama_available())):
        if ok:
            continue
        skip = pytest.mark.skip(reason=f"{marker} engine not set up: {why}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def smoke_variant(tmp_path: Path, mutate=None, name: str = "profile.yaml", base: str = "smoke-llamacpp") -> Path:
    """A smoke profile (llama.cpp by default, or `base`) on free ports, shrunk for tests, then
    `mutate(data)`."""
    data = yaml.safe_load(builtin_profiles()[base].read_text())
    data["study"] = "test"
    data["runtime"]["endpoints"][0]["port"] = free_port()
    data["runtime"]["endpoints"][1]["port"] = free_port()
    data["single"].update(langs=["python"], ctx=[512], runs=1)
    data["multi"].update(langs=["python"], runs=1, enabled=False)
    data["workload"].update(num_predict=8, randomize_order=False)
    data["outliers"]["max_extra_runs"] = 0  # run counts stay exact; reruns have tests of their own
    data["instrument"] = {"floors": False}  # 20 s of loopback streaming; tests/test_instrument.py measures them
    # calls on every model before the matrix; tests/test_probes.py turns them on
    data["instrument"].update(cold_start=False, sanity=False)
    data.pop("steps", None)  # the agent-count steps and settings sweeps have tests of their own
    data.pop("settings_sweep", None)
    if "one_instance_two_slots" in data["multi"]["scenarios"] and len(data["multi"]["scenarios"]) > 1:
        data["multi"]["scenarios"].remove("one_instance_two_slots")
    if mutate:
        mutate(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def results_dir(tmp_path, monkeypatch) -> Path:
    out = tmp_path / "results"
    monkeypatch.setenv("BENCH_RESULTS", str(out))
    return out


@pytest.fixture(scope="session")
def llama_runtime(tmp_path_factory):
    """Two real llama-server processes (LocalRuntime), shared by the session's llama tests."""
    from bench.runtimes import LocalRuntime

    tmp = tmp_path_factory.mktemp("llama")
    profile = load_profile(smoke_variant(tmp)).profile
    runtime = LocalRuntime(profile, state_dir=tmp / "state")
    runtime.up()
    yield runtime
    runtime.down()


@pytest.fixture(scope="session")
def ollama_runtime(tmp_path_factory):
    """Two real `ollama serve` processes (OllamaRuntime) with both models created over HTTP, shared
    by the session's Ollama tests. The model store is the bundle's cache, as in a real study."""
    from bench.runtimes import OllamaRuntime

    tmp = tmp_path_factory.mktemp("ollama")
    profile = load_profile(smoke_variant(tmp, base="smoke")).profile
    runtime = OllamaRuntime(profile, state_dir=tmp / "state", log_dir=tmp / "logs")
    try:
        runtime.up()
        yield runtime
    finally:
        runtime.down()


def invoke(*args: str, results: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_RESULTS": str(results)}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
