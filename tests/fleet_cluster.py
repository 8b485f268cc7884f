"""A real multi-host Ray cluster on this one machine, for the fleet tests (issue 21).

Each "host" is a network namespace with its own address on a bridge, its own loopback (so its
127.0.0.1:11434/11435 are its own: two hosts run two `ollama serve` pairs on the same ports at
once) and a Ray worker node started inside it with `ip netns exec`; the head node runs in the root
namespace on the bridge's address. Layout, for the first free subnet index X (0 when no other run
holds it):

    bridge tr116br<X> 10.116.X.1/24 (head, GCS on :6380 or a free port when another run has it)
    host k: namespace tr116-<name>-<X>, veth t116-<X>-<k> <-> eth0, 10.116.X.<k+1>/24, lo up

Every process is started by us (Popen) with the tag TR116_FLEET_CLUSTER=<id> in its environment,
which Ray's workers and any engine they start inherit: teardown stops the nodes by the pids it
owns, then kills whatever still carries the tag. Never `ray stop`: it kills every Ray process on
the machine, other sessions' included. Only addresses this module created are ever used.

    with fleet_cluster(["a", "b"], roots={"b": other_clone}) as c:
        ray.init(address=c.address)
        c.kill_host("b"); c.wait_nodes(2); c.restart_host("b")

Needs root, iproute2 and the fleet extra (`scripts/setup.sh --fleet`). The session fixture
`fleet_hosts` (`from fleet_cluster import fleet_hosts` in a test module) shares one cluster of
hosts "a" and "b" between every fleet test of the session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.prefix) / "bin" / "ray"
TAG = "TR116_FLEET_CLUSTER"
GCS_PORT = 6380  # outside Ray's worker port range (10002-19999), which `ray start` refuses
HOST_RESOURCE = "tr116-host"
HOST_LABEL = "tr116.host"
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # results ship as small tar.gz: keep /dev/shm use small
# A killed host is reported dead in ~1.5 s instead of Ray's default ~15 s (5 checks, 3 s apart).
HEALTH_CHECK = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}
# Ray 2.60 turns token authentication on for any node started while ~/.ray/auth_token exists (a
# local `ray.init()` writes one): say "disabled" explicitly, so the cluster is the same whatever
# this machine's home folder holds. Only this machine's own test addresses can reach it.
AUTH = {"RAY_AUTH_MODE": "disabled"}
NAME = re.compile(r"[a-z][a-z0-9]{0,7}")


class FleetClusterError(RuntimeError):
    """The test cluster could not be set up or torn down cleanly (the message says what); `cluster`
    is the cluster it happened to, for a look at what it left (None before one existed)."""

    cluster: FleetCluster | None = None


@dataclass
class Host:
    name: str
    index: int  # 1-based: the veth is t116-<X>-<index>, the address 10.116.X.<index + 1>
    ip: str
    netns: str
    veth: str
    root: Path  # TR116_ROOT: the bundle checkout this host runs
    workdir: Path  # TR116_HOST_WORKDIR: host-local work folder (BENCH_CACHE is <workdir>/cache)
    env: dict[str, str] = field(repr=False, default_factory=dict)
    proc: subprocess.Popen | None = field(repr=False, default=None)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise FleetClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    """Every network namespace's name (`ip netns list`)."""
    return [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def links() -> list[str]:
    """Every network interface's name in the root namespace."""
    return [entry["ifname"] for entry in json.loads(_run("ip", "-j", "link", "show").stdout or "[]")]


def _used_subnet_indexes() -> set[int]:
    """X of every 10.116.X.0/24 someone already has: an address, a route or one of our bridges."""
    text = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
    used = {int(x) for x in re.findall(r"\b10\.116\.(\d{1,3})\.", text)}
    used |= {int(m.group(1)) for name in links() if (m := re.fullmatch(r"tr116br(\d+)", name))}
    used |= {int(m.group(1)) for ns in namespaces() if (m := re.fullmatch(r"tr116-.+-(\d+)", ns))}
    return used


def tagged_pids(cluster_id: str) -> list[int]:
    """Pids of every process whose environment carries TR116_FLEET_CLUSTER=<cluster_id>."""
    needle = f"{TAG}={cluster_id}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                pids.append(int(entry.name))
        except OSError:  # gone, or a kernel thread
            continue
    return [pid for pid in pids if pid != os.getpid()]


def netns_pids(netns: str) -> list[int]:
    """Pids of every process in a network namespace (`ip netns pids`), [] once it is gone."""
    proc = _run("ip", "netns", "pids", netns, check=False)
    return [int(pid) for pid in proc.stdout.split()] if proc.returncode == 0 else []


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _free_port(preferred: int = 0) -> int:
    """`preferred` when nothing on this machine listens on it, else a free port from the kernel."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the GCS binds: TIME_WAIT is no owner
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise FleetClusterError("no free TCP port")


def ray_nodes(address: str) -> list[dict]:
    """Every node the cluster's GCS knows: node_id, ip, alive, labels (no driver needed)."""
    from ray._raylet import GcsClient  # the GCS's own client: works without ray.init
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    infos = GcsClient(address=address).get_all_node_info(timeout=10)
    return [{"node_id": info.node_id.hex(), "ip": info.node_manager_address,
             "alive": info.state == GcsNodeInfo.ALIVE, "labels": dict(info.labels)} for info in infos.values()]


class FleetCluster:
    """A head in the root namespace and one Ray worker node per host namespace (see the module doc)."""

    def __init__(self, names: list[str], roots: dict[str, Path] | None = None,
                 env: dict[str, str] | None = None, timeout: float = 90.0):
        bad = [name for name in names if not NAME.fullmatch(name)]
        if bad or len(set(names)) != len(names) or not names:
            raise FleetClusterError(f"host names must be distinct, 1-8 of [a-z0-9] starting with a letter: {names}")
        unknown = sorted(set(roots or {}) - set(names))
        if unknown:
            raise FleetClusterError(f"roots for hosts that are not in the cluster: {unknown}")
        for name, root in (roots or {}).items():
            if not Path(root).is_dir():
                raise FleetClusterError(f"TR116_ROOT of host {name} is not a folder: {root}")
        if not RAY.is_file():
            raise FleetClusterError(f"no Ray at {RAY}: install the fleet extra (scripts/setup.sh --fleet)")
        self.names, self.roots, self.extra_env, self.timeout = list(names), dict(roots or {}), dict(env or {}), timeout
        self.id = f"tr116-{secrets.token_hex(4)}"
        self.subnet: int | None = None
        self.bridge: str | None = None
        self.base: Path | None = None
        self.head: subprocess.Popen | None = None
        self.head_pids: set[int] = set()
        self.address = ""
        self.hosts: dict[str, Host] = {}
        self.startup_s: float | None = None  # measured: start() and close() wall time
        self.teardown_s: float | None = None

    # -- setup -------------------------------------------------------------------------------

    def start(self) -> FleetCluster:
        t0 = time.monotonic()
        self._claim_bridge()
        self.base = Path(tempfile.mkdtemp(prefix=f"tr116-fleet-{self.subnet}-"))
        for k, name in enumerate(self.names, start=1):
            self._add_namespace(name, k)
        self._start_head()
        for host in self.hosts.values():
            self._start_node(host)
        for host in self.hosts.values():
            self._wait_node_alive(host)
        self.startup_s = time.monotonic() - t0
        return self

    def _claim_bridge(self) -> None:
        """The first free 10.116.X.0/24: creating bridge tr116br<X> is the claim (two runs can't both)."""
        used = _used_subnet_indexes()
        for x in range(256):
            if x in used:
                continue
            if _run("ip", "link", "add", f"tr116br{x}", "type", "bridge", check=False).returncode != 0:
                continue  # another run took it between our look and our claim
            self.subnet, self.bridge = x, f"tr116br{x}"
            _run("ip", "addr", "add", f"10.116.{x}.1/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            return
        raise FleetClusterError("no free subnet 10.116.X.0/24 for the test cluster")

    def _add_namespace(self, name: str, k: int) -> None:
        x = self.subnet
        netns, veth, ip = f"tr116-{name}-{x}", f"t116-{x}-{k}", f"10.116.{x}.{k + 1}"
        workdir = self.base / name
        (workdir / "cache").mkdir(parents=True)
        host = Host(name, k, ip, netns, veth, Path(self.roots.get(name, REPO)), workdir)
        self.hosts[name] = host  # registered before creation: a failure half-way is still torn down
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        _run("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        host.env = {"TR116_ROOT": str(host.root), "TR116_HOST_WORKDIR": str(workdir),
                    "BENCH_CACHE": str(workdir / "cache"), "TR116_FLEET_HOST": name}

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(HEALTH_CHECK, **AUTH, RAY_USAGE_STATS_ENABLED="0", **{TAG: self.id})
        env.update(self.extra_env)
        env.update(extra)
        return env

    def _start_head(self) -> None:
        port = _free_port(GCS_PORT)
        self.address = f"10.116.{self.subnet}.1:{port}"
        # The head shares the root namespace with other sessions: every port it would take by a
        # fixed default (dashboard 8265, dashboard agent 52365) is a free one instead.
        args = [str(RAY), "start", "--head", f"--node-ip-address=10.116.{self.subnet}.1", f"--port={port}",
                "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", "--block",
                f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                f"--temp-dir={self.base / 'ray'}"]
        log = open(self.base / "head.log", "wb")
        self.head = subprocess.Popen(args, cwd=REPO, env=self._env({"TR116_FLEET_HOST": "head"}), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._wait(lambda: any(n["alive"] for n in self._nodes_or_empty()), self.head, "the head", self.base / "head.log")

    def _start_node(self, host: Host) -> None:
        args = ["ip", "netns", "exec", host.netns, str(RAY), "start", f"--address={self.address}",
                f"--node-ip-address={host.ip}", "--num-cpus=1", f"--resources={json.dumps({HOST_RESOURCE: 1})}",
                f"--labels={HOST_LABEL}={host.name}", "--disable-usage-stats", "--block",
                f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={host.workdir / 'ray'}"]
        # Its own temp dir, as a real host has its own /tmp: nodes sharing the head's would race
        # for the same raylet socket names when they start together.
        log = open(host.workdir / "ray-node.log", "ab")
        host.proc = subprocess.Popen(args, cwd=host.root, env=self._env(host.env), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _wait_node_alive(self, host: Host) -> None:
        self._wait(lambda: self.node_id(host.name) is not None, host.proc, f"host {host.name}",
                   host.workdir / "ray-node.log")

    def _wait(self, ready, proc: subprocess.Popen, what: str, log: Path) -> None:
        deadline = time.monotonic() + self.timeout
        while not ready():
            if proc.poll() is not None:
                raise FleetClusterError(f"{what}'s `ray start` exited ({proc.returncode}): {_tail(log)}")
            if time.monotonic() > deadline:
                raise FleetClusterError(f"{what} not up after {self.timeout:.0f} s: {_tail(log)}")
            time.sleep(0.25)

    # -- what the tests use --------------------------------------------------------------------

    def _nodes_or_empty(self) -> list[dict]:
        try:
            return ray_nodes(self.address)
        except Exception:  # the GCS is not up yet
            return []

    def nodes(self) -> list[dict]:
        """Every node the cluster knows, dead ones included: node_id, ip, alive, labels."""
        return ray_nodes(self.address)

    def node_id(self, name: str) -> str | None:
        """The Ray node id of host `name`'s alive node, None while it has none."""
        ip = self.hosts[name].ip
        alive = [n["node_id"] for n in self._nodes_or_empty() if n["alive"] and n["ip"] == ip]
        return alive[0] if alive else None

    def wait_nodes(self, n: int, timeout: float = 30.0) -> list[dict]:
        """Wait until exactly `n` nodes are alive (head included); returns them."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [node for node in self._nodes_or_empty() if node["alive"]]
            if len(alive) == n:
                return alive
            if time.monotonic() > deadline:
                raise FleetClusterError(f"{len(alive)} nodes alive after {timeout:.0f} s, not {n}: "
                                        f"{sorted(node['ip'] for node in alive)}")
            time.sleep(0.2)

    def kill_host(self, name: str) -> list[int]:
        """kill -9 every process in the host's namespace (raylet, workers, engines): a host that dies."""
        host = self.hosts[name]
        killed = []
        while pids := netns_pids(host.netns):  # a worker may fork while we kill: until none is left
            _kill(pids)
            killed += pids
            time.sleep(0.05)
        if host.proc is not None:
            host.proc.wait(timeout=10)  # reap our `ray start`
        return sorted(set(killed))

    def restart_host(self, name: str) -> str:
        """Start the host's worker node again (same address, env and labels); returns its new node id."""
        host = self.hosts[name]
        if netns_pids(host.netns):
            raise FleetClusterError(f"host {name} still has processes: kill_host({name!r}) first")
        self._start_node(host)
        self._wait_node_alive(host)
        return self.node_id(name)

    def leftovers(self) -> dict[str, list]:
        """What of this cluster still exists: tagged processes, namespaces, links, the work folder."""
        mine_ns = {host.netns for host in self.hosts.values()}
        mine_links = {host.veth for host in self.hosts.values()} | ({self.bridge} if self.bridge else set())
        return {"processes": [_describe(pid) for pid in tagged_pids(self.id)],
                "namespaces": sorted(mine_ns & set(namespaces())),
                "links": sorted(mine_links & set(links())),
                "files": [str(self.base)] if self.base and self.base.exists() and not _keep_files() else []}

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this cluster started; raises if anything is left afterwards."""
        t0 = time.monotonic()
        _disconnect_driver(self.address)
        steps = [(f"host {h.name}", lambda h=h: self._stop_host(h)) for h in self.hosts.values()]
        steps += [("head", self._stop_head), ("tagged processes", self._kill_tagged),
                  ("network", self._remove_network), ("files", self._remove_files)]
        errors = []
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down: one failure must not leave the rest behind
                errors.append(f"{what}: {exc}")
        self.teardown_s = time.monotonic() - t0
        left = {kind: items for kind, items in self.leftovers().items() if items}
        if errors or left:
            raise FleetClusterError(f"teardown of {self.id} incomplete: errors {errors}, left {left}")

    def _stop_host(self, host: Host) -> None:
        # kill -9, not `ray start`'s SIGTERM: a node drains its running tasks for up to 30 s first,
        # and a test host has nothing to keep
        if host.netns in namespaces():
            self.kill_host(host.name)
        elif host.proc is not None and host.proc.poll() is None:
            host.proc.kill()
            host.proc.wait(timeout=10)

    def _stop_head(self) -> None:
        if self.head is None:
            return
        self.head_pids = _descendants(self.head.pid)
        if self.head.poll() is None:
            self.head.terminate()  # the GCS and raylet get to close their files and sockets
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.head.pid, signal.SIGKILL)  # its own session: gcs, raylet, agents, workers
        _kill(sorted(self.head_pids))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.head.wait(timeout=10)

    def _kill_tagged(self) -> None:
        deadline = time.monotonic() + 10
        while (pids := tagged_pids(self.id)) and time.monotonic() < deadline:
            _kill(pids)
            time.sleep(0.1)

    def _remove_network(self) -> None:
        present = set(namespaces())
        for host in self.hosts.values():
            if host.netns in present:
                _run("ip", "netns", "del", host.netns)  # takes its veth pair along
        for name in [h.veth for h in self.hosts.values()] + ([self.bridge] if self.bridge else []):
            if name in links():
                _run("ip", "link", "del", name)

    def _remove_files(self) -> None:
        if self.base and self.base.exists() and not _keep_files():
            shutil.rmtree(self.base)


def _keep_files() -> bool:
    """TR116_FLEET_KEEP=1 keeps the cluster's folder (Ray's logs, each host's work folder) to debug a failure."""
    return bool(os.environ.get("TR116_FLEET_KEEP"))


def _disconnect_driver(address: str) -> None:
    """A driver of this process connected to the cluster disconnects first: once the GCS is gone it
    would otherwise kill its own process (this test session) after Ray's reconnect timeout."""
    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address == address:
        ray.shutdown()


def _descendants(pid: int) -> set[int]:
    """pid and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        current = todo.pop()
        out.add(current)
        todo += children.get(current, [])
    return out


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = "?"
    return f"{pid} {cmd[:120]}"


def _tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {log})"


@contextlib.contextmanager
def fleet_cluster(names: list[str], roots: dict[str, Path] | None = None, env: dict[str, str] | None = None,
                  timeout: float = 90.0) -> Iterator[FleetCluster]:
    """A running test cluster of hosts `names`, torn down on every way out of the block
    (an error, a failed setup, Ctrl-C, SIGTERM); the teardown raises if anything is left."""
    cluster = FleetCluster(names, roots, env, timeout)
    with _sigterm_as_interrupt():
        try:
            yield cluster.start()
        except FleetClusterError as exc:
            exc.cluster = cluster
            raise
        finally:
            cluster.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the teardown still runs."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def fleet_unavailable() -> str | None:
    """Why this machine can't run the test cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    if not RAY.is_file():
        return f"no Ray at {RAY} (scripts/setup.sh --fleet)"
    return None


_SHARED = contextlib.ExitStack()
_SHARED_CLUSTER: list[FleetCluster] = []


@pytest.fixture(scope="session")
def fleet_hosts() -> Iterator[FleetCluster]:
    """One cluster of hosts "a" and "b" shared by every fleet test of the session (a test that
    kills a host restarts it before it ends). Test modules import this fixture; pytest then holds
    one copy per module, so the cluster itself is kept here, started by the first and closed by
    the first teardown at the session's end. Skipped where the machine can't run it, except in CI."""
    why = fleet_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the fleet test cluster can't run here: {why}")
        pytest.skip(f"fleet test cluster: {why}")
    if not _SHARED_CLUSTER:
        _SHARED_CLUSTER.append(_SHARED.enter_context(fleet_cluster(["a", "b"])))
    yield _SHARED_CLUSTER[0]
    _SHARED_CLUSTER.clear()
    _SHARED.close()
