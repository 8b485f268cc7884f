"""The fleet's test hosts (tests/fleet_cluster.py) are real hosts: a Ray cluster whose worker nodes
each have their own address and their own loopback, so two hosts serve Ollama on the same
127.0.0.1:11434 at once; a killed host is reported dead by Ray and comes back on restart; and the
teardown, on a normal exit, Ctrl-C or a failed setup, leaves no Ray process, namespace, link or
engine behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet_cluster import (HOST_LABEL, HOST_RESOURCE, FleetClusterError, fleet_cluster, fleet_hosts,  # noqa: F401
                           links, netns_pids, tagged_pids)

pytestmark = pytest.mark.fleet
if os.environ.get("CI"):
    import ray  # in CI a missing Ray fails, as a missing engine does
else:
    ray = pytest.importorskip("ray", reason="the fleet extra is not installed (scripts/setup.sh --fleet)")
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks below ship by value


def start_ollama() -> dict:
    """On a host: start `ollama serve` on its own 127.0.0.1:11434 (the binary found as the runtime
    finds it, the models in the host's own BENCH_CACHE) and wait until it answers."""
    import requests

    from bench.host.assets import ollama_binary

    workdir = Path(os.environ["TR116_HOST_WORKDIR"])
    env = {**os.environ, "OLLAMA_HOST": "127.0.0.1:11434", "HOME": str(workdir),
           "OLLAMA_MODELS": str(Path(os.environ["BENCH_CACHE"]) / "ollama")}
    with open(workdir / "ollama.log", "ab") as log:
        proc = subprocess.Popen([str(ollama_binary()), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            version = requests.get("http://127.0.0.1:11434/api/version", timeout=1).json()["version"]
            break
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ollama serve did not answer: {(workdir / 'ollama.log').read_text()[-2000:]}")
            time.sleep(0.1)
    return {"pid": proc.pid, "version": version, "ip": ray.util.get_node_ip_address(),
            "host": os.environ["TR116_FLEET_HOST"], "root": os.environ["TR116_ROOT"], "workdir": str(workdir),
            "cache": os.environ["BENCH_CACHE"]}


def on(node_id: str):
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped by its parent counts: it holds no socket and runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop(pids: list[int]) -> None:
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not gone(p)]}"
        time.sleep(0.05)


@pytest.fixture()
def driver(fleet_hosts):
    ray.init(address=fleet_hosts.address, log_to_driver=False)
    yield fleet_hosts
    ray.shutdown()


def test_three_alive_nodes_each_host_with_its_resource_and_label(driver):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3
    by_ip = {n["NodeManagerAddress"]: n for n in nodes}
    assert set(by_ip) == {driver.address.split(":")[0]} | {h.ip for h in driver.hosts.values()}
    for name, host in driver.hosts.items():
        assert by_ip[host.ip]["Resources"][HOST_RESOURCE] == 1
        assert by_ip[host.ip]["Labels"][HOST_LABEL] == name
    assert HOST_RESOURCE not in by_ip[driver.address.split(":")[0]]["Resources"]  # the head is no host


def test_each_host_runs_its_own_engine_on_the_same_loopback_port_at_once(driver):
    refs = {name: ray.remote(num_cpus=0)(start_ollama).options(scheduling_strategy=on(driver.node_id(name))).remote()
            for name in driver.hosts}
    started = {name: ray.get(ref, timeout=60) for name, ref in refs.items()}
    try:
        for name, got in started.items():
            host = driver.hosts[name]
            assert (got["host"], got["ip"], got["workdir"]) == (name, host.ip, str(host.workdir))
            assert got["cache"] == str(host.workdir / "cache") and got["root"] == str(host.root)
            assert got["pid"] in netns_pids(host.netns)  # the engine runs inside its host's namespace
        # both listen on 127.0.0.1:11434 at this moment: only separate loopbacks allow that
        assert not any(gone(got["pid"]) for got in started.values())
        assert started["a"]["pid"] != started["b"]["pid"]
    finally:
        stop([got["pid"] for got in started.values()])


def test_a_killed_host_is_dead_to_ray_and_a_restart_brings_it_back(driver):
    old = driver.node_id("b")
    engine = ray.get(ray.remote(num_cpus=0)(start_ollama).options(scheduling_strategy=on(old)).remote(), timeout=60)
    raylets = [pid for pid in netns_pids(driver.hosts["b"].netns)
               if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet"]
    killed = driver.kill_host("b")
    assert engine["pid"] in killed and raylets and set(raylets) <= set(killed)
    assert netns_pids(driver.hosts["b"].netns) == []
    deadline = time.monotonic() + 15
    while any(n["NodeID"] == old and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, "Ray still reports the killed host alive"
        time.sleep(0.2)
    assert len(driver.wait_nodes(2, timeout=5)) == 2 and driver.node_id("b") is None
    new = driver.restart_host("b")
    assert new != old and driver.node_id("b") == new
    back = ray.get(ray.remote(num_cpus=0)(start_ollama).options(scheduling_strategy=on(new)).remote(), timeout=60)
    stop([back["pid"]])
    assert back["ip"] == driver.hosts["b"].ip
    assert len(driver.wait_nodes(3, timeout=5)) == 3


def test_teardown_on_ctrl_c_leaves_no_ray_process_namespace_link_or_engine():
    ray.shutdown()  # a process drives one cluster at a time
    with pytest.raises(KeyboardInterrupt):
        with fleet_cluster(["t"]) as cluster:
            ray.init(address=cluster.address, log_to_driver=False)
            engine = ray.get(ray.remote(num_cpus=0)(start_ollama).options(
                scheduling_strategy=on(cluster.node_id("t"))).remote(), timeout=60)
            ours = cluster.leftovers()["processes"]
            assert any("raylet" in p for p in ours) and any("gcs_server" in p for p in ours)
            pids = [int(p.split()[0]) for p in ours] + [engine["pid"]]
            raise KeyboardInterrupt  # Ctrl-C in the middle of a test
    assert not ray.is_initialized()  # the driver let go before its cluster went
    assert all(gone(pid) for pid in pids)
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert str(cluster.base) not in listing  # no Ray process of this cluster (each names its temp dir)
    assert cluster.hosts["t"].netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                           text=True, check=True).stdout
    assert not {cluster.bridge, cluster.hosts["t"].veth} & set(links())
    assert tagged_pids(cluster.id) == [] and not cluster.base.exists()
    print(f"cluster of 1 host up in {cluster.startup_s:.1f} s, torn down in {cluster.teardown_s:.1f} s")


def test_a_failed_setup_is_torn_down_too():
    with pytest.raises(FleetClusterError, match="not up after") as failed:
        with fleet_cluster(["t"], timeout=0.5):
            pytest.fail("a cluster that could not start must not be entered")
    cluster = failed.value.cluster
    assert cluster.head is not None and cluster.hosts["t"].netns  # it got as far as starting the head
    assert cluster.leftovers() == {"processes": [], "namespaces": [], "links": [], "files": []}
