"""scripts/docker-host.sh against a real dockerd, each case in a network namespace of its own
(`unshare -n`: its own iptables, links, ip_forward and bridge netfilter sysctls) with a private
engine root (TR116_DOCKERD_ROOT), so the host's network and any engine on it are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "docker-host.sh"

# What dockerd changes, read inside the namespace: both tables, the sysctls, the links.
HOST_STATE = """
iptables-save -t filter | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'
iptables-save -t nat | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'
for k in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables; do
  echo "$k=$(cat /proc/sys/$k)"; done
ip -o link show | awk -F': ' '{print $2}'
"""

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("unshare"),
                       reason="needs root, dockerd and unshare (scripts/docker-host.sh up installs docker.io)"),
]


@pytest.fixture()
def engine_root():
    # short: containerd's sockets go under it, and a unix socket path has at most 107 bytes
    root = tempfile.mkdtemp(prefix="tr116-", dir="/tmp")
    yield root
    # dockerd bind-mounts its data root; one that died without `down` (a failing test) leaves it
    for line in Path("/proc/mounts").read_text().splitlines():
        if line.split()[1].startswith(root):
            subprocess.run(["umount", "--lazy", line.split()[1]], check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def env(tmp_path, engine_root):
    """A private engine, state, lock and plugin folder: nothing shared with the host's engine."""
    return {**os.environ, "TR116_DOCKERD_ROOT": engine_root,
            "TR116_DOCKER_STATE_DIR": str(tmp_path / "state"), "TR116_DOCKER_LOCK": str(tmp_path / "lock"),
            "DOCKER_CONFIG": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def in_namespace(script: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-n", "bash", "-c", "set -e; ip link set lo up\n" + script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def host_states(out: str) -> tuple[str, str]:
    _, before, after = out.split("=====\n")
    return before, after


def test_up_failing_after_dockerd_started_leaves_the_host_as_it_was(env, tmp_path, engine_root):
    # The Compose plugin cannot be installed (no index, no wheels): `up` fails after dockerd answered.
    env = {**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "no-wheels")}
    proc = in_namespace(f"""
# Values dockerd changes, so restoring them shows: it enables ip_forward at start (the bridge
# sysctls when a container joins its bridge: the next test).
echo 0 >/proc/sys/net/ipv4/ip_forward
echo 0 >/proc/sys/net/bridge/bridge-nf-call-iptables
echo 0 >/proc/sys/net/bridge/bridge-nf-call-ip6tables
echo =====; {HOST_STATE}
rc=0; bash {SCRIPT} up >&2 || rc=$?
echo =====; {HOST_STATE}
echo "rc=$rc" >&2
""", env)
    assert proc.returncode == 0, proc.stderr
    state = tmp_path / "state"
    log = (state / "dockerd.log").read_text()
    assert "API listen on" in log, "dockerd must have started before the failure"
    before, after = host_states(proc.stdout)
    assert "ip_forward=0" in before and "bridge-nf-call-iptables=0" in before
    assert after == before, proc.stderr
    assert "rc=1" in proc.stderr and "up failed" in proc.stderr, proc.stderr
    assert not (state / "state").exists(), "a restored host leaves no state"
    pids = subprocess.run(["pgrep", "-f", engine_root], capture_output=True, text=True).stdout
    assert not pids.strip(), f"dockerd or containerd still runs: {pids}"


def test_sigterm_during_up_leaves_the_host_as_it_was(env, tmp_path, engine_root):
    # A CI cancel: TERM to up's process group while it waits on the Compose download (an index that
    # accepts the connection and never answers). dockerd runs in a session of its own: only the
    # script's trap can stop it.
    state = tmp_path / "state"
    env = {**env, "PIP_INDEX_URL": "http://127.0.0.1:8999/simple", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0"}
    proc = in_namespace(f"""
python3 -c 'import socket, time; s = socket.socket(); s.bind(("127.0.0.1", 8999)); s.listen(); time.sleep(300)' &
silent=$!
echo 0 >/proc/sys/net/ipv4/ip_forward
echo =====; {HOST_STATE}
setsid bash {SCRIPT} up >&2 &
up=$!
for i in $(seq 1 200); do grep -q '^containerd=' {state}/state 2>/dev/null && break; sleep 0.1; done
sleep 1  # in pip now
kill -TERM -- -$up
rc=0; wait $up || rc=$?
kill $silent
echo =====; {HOST_STATE}
echo "rc=$rc" >&2
""", env)
    assert proc.returncode == 0, proc.stderr
    assert "API listen on" in (state / "dockerd.log").read_text()
    before, after = host_states(proc.stdout)
    assert "ip_forward=0" in before
    assert after == before, proc.stderr
    assert "rc=143" in proc.stderr and "up failed" in proc.stderr, proc.stderr
    assert not (state / "state").exists()
    pids = subprocess.run(["pgrep", "-f", engine_root], capture_output=True, text=True).stdout
    assert not pids.strip(), f"dockerd or containerd still runs: {pids}"


def snapshot_as_up_takes_it(state: Path) -> str:
    """The namespace's state in the files `up` writes before it starts dockerd."""
    return f"""
for k in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables; do
  echo "$k=$(cat /proc/sys/$k)"; done >{state}/sysctls
iptables -S FORWARD | sed -n 's/^-P FORWARD //p' >{state}/forward_policy
iptables -t filter -S >{state}/filter.rules; iptables -t nat -S >{state}/nat.rules
ip -o link show | awk -F': ' '{{print $2}}' >{state}/links
"""


def test_down_restores_the_bridge_netfilter_sysctls(env, tmp_path):
    # dockerd sets both to 1 when a container joins its bridge; here the engine is gone already.
    state = tmp_path / "state"
    state.mkdir()
    (state / "state").write_text(f"owned=1\nboot_id={_boot_id()}\n")
    proc = in_namespace("echo 0 >/proc/sys/net/bridge/bridge-nf-call-iptables\n"
                        "echo 0 >/proc/sys/net/bridge/bridge-nf-call-ip6tables\n"
                        + snapshot_as_up_takes_it(state) +
                        "echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables\n"
                        "echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables\n"
                        f"bash {SCRIPT} down\n"
                        "cat /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables",
                        env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[-2:] == ["0", "0"], proc.stdout
    assert "host restored" in proc.stdout


def _sleeper():
    proc = subprocess.Popen(["sleep", "300"])
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    start = stat.rsplit(") ", 1)[1].split()[19]
    return proc, start


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.mark.parametrize("case", ["start_time", "executable", "boot_id"])
def test_a_stale_pid_record_never_signals_an_unrelated_process(env, tmp_path, case):
    sleeper, start = _sleeper()
    try:
        exe = os.readlink(f"/proc/{sleeper.pid}/exe")
        boot = _boot_id()
        recorded = {"start_time": f"{sleeper.pid} {int(start) - 100} {exe}",
                    "executable": f"{sleeper.pid} {start} /usr/sbin/dockerd",
                    "boot_id": f"{sleeper.pid} {start} {exe}"}[case]
        if case == "boot_id":
            boot = "00000000-0000-0000-0000-000000000000"
        state = tmp_path / "state"
        state.mkdir()
        (state / "state").write_text(f"owned=1\nboot_id={boot}\npid={sleeper.pid}\ndockerd={recorded}\n")
        # The snapshot of this namespace, as `up` takes it: `down` finds nothing else to restore.
        proc = in_namespace(snapshot_as_up_takes_it(state) + f"bash {SCRIPT} down", env)
        time.sleep(0.5)  # a TERM, had one been sent, has landed
        assert sleeper.poll() is None, f"the unrelated process was killed:\n{proc.stdout}{proc.stderr}"
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if case == "boot_id":
            assert "earlier boot" in proc.stdout
        else:
            assert f"pid {sleeper.pid} is not the dockerd that up started" in proc.stdout
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_systemd_host_is_refused_before_anything_is_installed_or_started(env, tmp_path):
    # A mount namespace whose /run says systemd is PID 1 (the marker sd_booted() checks).
    proc = subprocess.run(["unshare", "-m", "-n", "bash", "-c",
                           f"mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && bash {SCRIPT} up"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "this host runs systemd" in proc.stdout
    assert not (tmp_path / "state" / "dockerd.log").exists()
