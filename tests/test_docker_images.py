"""The local images, built for real without a registry (scripts/build-images.sh): cached by
content, and runnable: the Ollama image serves and passes its health check command, the Rust
agent image is a real `docker build` of docker/Dockerfile.rust-agents (target `prebuilt`)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from bench.clients import rust

from docker_env import REPO, build_images, docker_client, ollama_binary

pytestmark = pytest.mark.docker
BASE = "tr116-debian-base:bookworm"


@pytest.fixture(scope="module")
def engine():
    client = docker_client()
    build_images("all")
    return client


def _ldd_in(engine, image: str, binary: str) -> str:
    return engine.containers.run(image, entrypoint=["ldd", binary], remove=True, user="0").decode()


def test_second_build_keeps_every_image(engine):
    out = build_images("all").stdout
    for image in (BASE, "tr116-ollama:cpu-", rust.IMAGE):
        assert f"build-images: {image}" in out
    assert out.count("is up to date") == 3 and "built in" not in out, out
    for image in engine.images.list(filters={"label": "org.tr116.inputs"}):
        assert len(image.labels["org.tr116.inputs"]) == 64


def test_ollama_image_serves_and_answers_its_health_check(engine):
    from ollama_memory import ollama_image

    image = ollama_image()
    assert "not found" not in _ldd_in(engine, image, "/usr/bin/ollama")
    container = engine.containers.run(image, detach=True, labels={"org.tr116.test": "images"})
    try:
        for _ in range(100):
            check = container.exec_run(["ollama", "list"])
            if check.exit_code == 0:
                break
            time.sleep(0.1)
        assert check.exit_code == 0 and check.output.decode().startswith("NAME"), check.output
        assert engine.images.get(image).attrs["Config"]["Env"].count("OLLAMA_HOST=0.0.0.0:11434") == 1
    finally:
        container.remove(force=True)


def test_rust_agent_image_builds_from_the_prebuilt_binary(engine, tmp_path):
    """`docker build --target prebuilt` on the rust-agents/ context, as docker/README.md says."""
    if not rust.NATIVE_BINARY.is_file():
        pytest.fail(f"{rust.NATIVE_BINARY} is missing (scripts/setup.sh builds it)")
    tag = f"tr116-rust-agents:test-{os.getpid()}"
    proc = subprocess.run(["docker", "build", "-f", "docker/Dockerfile.rust-agents", "--target", "prebuilt",
                           "--build-arg", f"RUNTIME_IMAGE={BASE}", "-t", tag, "rust-agents"], cwd=REPO,
                          env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "not found" not in _ldd_in(engine, tag, "/usr/local/bin/tr116-agent")
        run = subprocess.run(["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "Usage: tr116-agent" in run.stdout, run.stderr
        config = engine.images.get(tag).attrs["Config"]
        assert config["User"] == "10001:10001" and config["Entrypoint"] == ["tr116-agent"]
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
