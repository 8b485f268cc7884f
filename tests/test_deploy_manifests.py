"""The fleet's deploy files (deploy/) say what the bundle relies on: the on-prem cluster YAML (Ray's
cluster launcher, local provider) and the KubeRay RayCluster. Each is loaded, run through Ray's own
reading of it (the launcher's config preparation and schema; the autoscaler's derivation of a
RayCluster's resources), and its `ray start` arguments are parsed by Ray's own command line."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
import tomllib

import pytest
import yaml

from conftest import REPO
from fleet_cluster import GCS_PORT, HOST_LABEL, HOST_RESOURCE

ray = pytest.importorskip("ray", reason="the fleet extra is not installed (scripts/setup.sh --fleet)")
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402
from ray.scripts.scripts import start as ray_start  # noqa: E402

CLUSTER = REPO / "deploy" / "ray-cluster.yaml"
KUBERAY = REPO / "deploy" / "kuberay-raycluster.yaml"
HOST_ENV = ("TR116_ROOT", "TR116_HOST_WORKDIR", "BENCH_CACHE")  # what the fleet's host agent reads


def ray_pin() -> str:
    fleet = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fleet"]
    (version,) = [req.split("==")[1] for req in fleet if req.startswith("ray==")]
    return version


def parse_ray_start(command: str) -> dict:
    """The parameters Ray's own `ray start` command line reads from a shell command that runs it
    (a flag it doesn't know fails here, as on the host)."""
    words = shlex.split(command.replace(";", " ; "))
    at = next(i for i, w in enumerate(words[:-1]) if w.endswith("/ray") and words[i + 1] == "start")
    args = words[at + 2:]
    return ray_start.make_context("ray start", args[:args.index(";")] if ";" in args else args).params


def compose_gpu_image() -> str:
    """compose.yaml's Ollama image (the default of ${OLLAMA_IMAGE:-...}), the bundle's GPU image."""
    text = yaml.safe_load((REPO / "compose.yaml").read_text())["x-ollama"]["image"]
    return re.fullmatch(r"\$\{OLLAMA_IMAGE:-(.+)\}", text).group(1)


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def kuberay() -> dict:
    return yaml.safe_load(KUBERAY.read_text())


def test_the_cluster_yaml_is_a_valid_local_provider_config_of_fixed_hosts(cluster):
    provider = cluster["provider"]
    assert provider["type"] == "local"
    ips = [ipaddress.ip_address(ip) for ip in [provider["head_ip"], *provider["worker_ips"]]]
    assert len(set(ips)) == len(ips) and len(provider["worker_ips"]) >= 2
    prepared = prepare_config(cluster)  # the launcher's own reading: defaults, node types, the schema
    validate_config(prepared)
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])  # every host stays
    assert cluster["auth"]["ssh_user"] and cluster["auth"]["ssh_private_key"]


def test_the_cluster_yaml_sets_up_the_synced_checkout_with_the_fleet_extra(cluster):
    assert cluster["file_mounts"]["~/tr116"] == "."  # this checkout, with .git: hosts report its commit
    assert ".git" not in cluster["rsync_exclude"] and ".venv" in cluster["rsync_exclude"]
    (setup,) = cluster["setup_commands"]
    assert setup.startswith("cd ~/tr116 && bash scripts/setup.sh --fleet")
    assert "--fleet) FLEET=1" in (REPO / "scripts" / "setup.sh").read_text()
    profile = shlex.split(setup)[shlex.split(setup).index("--profile") + 1]
    assert (REPO / "bench" / "data" / "profiles" / f"{profile}.yaml").is_file()
    commands = [setup, *cluster["head_start_ray_commands"], *cluster["worker_start_ray_commands"]]
    for command in commands:  # each is valid shell (bash -n parses without running)
        subprocess.run(["bash", "-n", "-c", command], check=True, timeout=10)
        if " start" in command:
            assert "~/tr116/.venv/bin/ray start" in command  # the bundle's pinned Ray, not another


def test_the_cluster_yaml_starts_hosts_as_the_fleet_finds_them(cluster):
    head = parse_ray_start(cluster["head_start_ray_commands"][-1])
    assert head["head"] and head["port"] == GCS_PORT
    assert HOST_RESOURCE not in json.loads(head["resources"] or "{}")  # the head is no host
    worker_command = cluster["worker_start_ray_commands"][-1]
    worker = parse_ray_start(worker_command)
    assert worker["address"] == f"$RAY_HEAD_IP:{GCS_PORT}"
    assert json.loads(worker["resources"]) == {HOST_RESOURCE: 1}
    assert worker["labels"].startswith(f"{HOST_LABEL}=")
    for name in HOST_ENV:
        assert re.search(rf"\b{name}=\S", worker_command), f"{name} is not set for the host"


def test_the_kuberay_cluster_has_gpu_hosts_ray_itself_reads_as_fleet_hosts(kuberay):
    assert (kuberay["apiVersion"], kuberay["kind"]) == ("ray.io/v1", "RayCluster")
    assert kuberay["spec"]["rayVersion"] == ray_pin()
    derived = _derive_autoscaling_config_from_ray_cr({**kuberay, "metadata": {**kuberay["metadata"],
                                                                              "namespace": "default"}})
    types = derived["available_node_types"]
    (group,) = kuberay["spec"]["workerGroupSpecs"]
    hosts = types[group["groupName"]]["resources"]
    assert hosts[HOST_RESOURCE] == 1 and hosts["GPU"] == 1  # Ray sees one GPU and the host resource
    assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] >= 2
    assert HOST_RESOURCE not in types["headgroup"]["resources"]
    ray_container = group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first
    assert ray_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    head = kuberay["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["port"] == str(GCS_PORT)
    assert {"containerPort": GCS_PORT, "name": "gcs-server"} in head["template"]["spec"]["containers"][0]["ports"]
    for spec in (head, group):  # KubeRay passes each as --key=value to `ray start`, through a shell
        params = shlex.split(" ".join(f"--{key}={value}" for key, value in spec["rayStartParams"].items()))
        parsed = ray_start.make_context("ray start", params).params
    assert json.loads(parsed["resources"]) == {HOST_RESOURCE: 1}


def test_the_kuberay_hosts_run_the_bundle_with_the_engines_of_its_gpu_image(kuberay):
    (group,) = kuberay["spec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    ray_container = pod["containers"][0]
    for container in (ray_container, kuberay["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]):
        assert container["image"] == f"rayproject/ray:{ray_pin()}-py311"
        assert "bash scripts/setup.sh --fleet" in container["args"][0]
        assert "$KUBERAY_GEN_RAY_START_CMD" in container["args"][0]
    env = {item["name"]: item.get("value") for item in ray_container["env"]}
    assert all(env.get(name) for name in HOST_ENV)
    (engines,) = pod["initContainers"]
    assert engines["image"] == compose_gpu_image()  # the image compose.yaml runs on a GPU host
    mount = next(m["mountPath"] for m in engines["volumeMounts"] if m["name"] == "engines")
    assert {"name": "engines", "mountPath": mount} in ray_container["volumeMounts"]
    assert env["OLLAMA_BIN"].startswith(mount + "/") and "/engines/bin/" in engines["args"][0]
