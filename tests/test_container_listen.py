"""The Ollama containers listen only where promised: the host's loopback, at the profile's ports.
Their API has no authentication; on a bridge network it also answered on the container's address
(and through it to any local user or container). Real containers from compose.yaml +
compose.cpu.yaml, in a Compose project of the test's own on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import pytest
import requests

from docker_env import REPO, build_images, compose_cli, docker_client

pytestmark = pytest.mark.docker
COMPOSE_FILES = ("-f", "compose.yaml", "-f", "compose.cpu.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _host_addresses() -> list[str]:
    """Every IPv4 address of this host but loopback: the LAN's and the bridges' (docker0's gateway
    is where a container reaches the host)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in addrs if not a.startswith("127.")]


@pytest.fixture(scope="module")
def containers():
    engine = docker_client()
    compose_cli()
    build_images("ollama")
    project = f"tr116-listen-{uuid.uuid4().hex[:8]}"
    ports = [_free_port(), _free_port()]
    env = {**os.environ, "TR116_PORT_A": str(ports[0]), "TR116_PORT_B": str(ports[1])}
    base = ["docker", "compose", "--project-name", project, *COMPOSE_FILES]
    try:
        up = subprocess.run([*base, "up", "--detach", "--wait", "--wait-timeout", "90"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        found = engine.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        assert len(found) == 2
        yield ports, found
    finally:
        subprocess.run([*base, "down", "--volumes", "--remove-orphans"], cwd=REPO, env=env, capture_output=True,
                       timeout=120)


def _get(url: str) -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False  # no proxy between the test and the address it probes
        return s.get(url, timeout=2)


def test_the_api_answers_on_the_host_loopback_at_the_profile_ports(containers):
    ports, _ = containers
    for port in ports:
        assert _get(f"http://127.0.0.1:{port}/api/version").json()["version"]


def test_the_api_does_not_answer_on_the_container_or_bridge_addresses(containers):
    ports, found = containers
    container_ips = [net.get("IPAddress") for c in found
                     for net in (c.attrs["NetworkSettings"].get("Networks") or {}).values() if net.get("IPAddress")]
    addresses = container_ips + _host_addresses()
    assert addresses, "no address besides loopback to probe"
    answered = []
    for addr in addresses:
        for port in {*ports, 11434}:  # the profile's ports, and Ollama's own inside a container
            try:
                _get(f"http://{addr}:{port}/api/version")
                answered.append(f"{addr}:{port}")
            except requests.ConnectionError:  # refused or unreachable: what we want
                pass
    assert not answered, f"the unauthenticated API answers beyond loopback: {answered}"
