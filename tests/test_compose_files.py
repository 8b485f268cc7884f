"""`docker compose config` of the product compose.yaml (the GPU file) and of the CPU override
compose.cpu.yaml on top of it: what Compose itself resolves, not our reading of the YAML."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from docker_env import REPO, compose_cli

SERVICES = {"ollama-a": "11434", "ollama-b": "11435"}


def config(*files: str, **env: str) -> dict:
    compose_cli()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TR116_PORT_", "TR116_BIND_HOST", "OLLAMA_IMAGE", "GPU_DEVICE"))}
    args = [a for f in files for a in ("-f", f)]
    proc = subprocess.run(["docker", "compose", *args, "config", "--format", "json"], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


@pytest.fixture(scope="module")
def product():
    return config("compose.yaml")


@pytest.fixture(scope="module")
def cpu():
    return config("compose.yaml", "compose.cpu.yaml")


def test_product_file_reserves_the_gpu_with_a_pinned_image(product):
    assert set(product) == set(SERVICES)
    for svc in product.values():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        # the tag says which version, the digest which bytes: a re-pushed tag is never pulled
        assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", svc["image"]), svc["image"]
        assert "pull_policy" not in svc


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.cpu.yaml")], ids=["product", "cpu"])
def test_both_files_listen_on_loopback_only_share_the_volume_and_check_health(files):
    services = config(*files)
    for name, port in SERVICES.items():
        svc = services[name]
        # The host's network, the server on its loopback: no container address, no published port
        # (on a bridge the unauthenticated API answers on the container's address too).
        assert svc["network_mode"] == "host" and "ports" not in svc and "networks" not in svc
        assert svc["environment"]["OLLAMA_HOST"] == f"127.0.0.1:{port}"
        assert svc["healthcheck"]["test"] == ["CMD", "ollama", "list"]
        assert svc["environment"]["OLLAMA_NOPRUNE"] == "1"
        assert svc["environment"]["OLLAMA_NUM_PARALLEL"] == "1"
        (volume,) = svc["volumes"]
        assert (volume["source"], volume["target"]) == ("ollama-models", "/root/.ollama")


def test_cpu_override_uses_the_local_image_without_gpu(cpu):
    for svc in cpu.values():
        assert re.fullmatch(r"tr116-ollama:cpu-\d+\.\d+\.\d+", svc["image"]), svc["image"]
        assert svc["pull_policy"] == "never"
        assert "deploy" not in svc
        assert svc["healthcheck"]["interval"] == "5s"


def test_ports_and_local_version_come_from_the_environment():
    services = config("compose.yaml", "compose.cpu.yaml", TR116_PORT_A="23456", TR116_PORT_B="23457",
                      TR116_OLLAMA_VERSION="9.9.9")
    assert [services[s]["environment"]["OLLAMA_HOST"] for s in SERVICES] == ["127.0.0.1:23456", "127.0.0.1:23457"]
    assert {svc["image"] for svc in services.values()} == {"tr116-ollama:cpu-9.9.9"}
    product = config("compose.yaml", OLLAMA_IMAGE="ollama/ollama:9.9.9@sha256:" + "0" * 64)
    assert {svc["image"] for svc in product.values()} == {"ollama/ollama:9.9.9@sha256:" + "0" * 64}
