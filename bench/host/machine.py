"""What this host offers, probed without side effects: a Docker engine, NVIDIA GPUs, free ports,
live processes. The bottom of the runtime layer: it imports nothing else from the bundle's
runtimes, so profiles, runtimes and the Rust agent launcher can all use it without a circle.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from pathlib import Path

from bench.host import gpu

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def docker_engine():
    """A connected Docker SDK client and "", or None and why no engine is usable here."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:  # any failure means: no usable engine
        return None, f"no usable Docker engine ({type(exc).__name__})"
    return client, ""


def detect_gpu_host() -> tuple[bool, str]:
    """Whether a Docker engine and an NVIDIA GPU are both usable here, and why (not)."""
    if shutil.which("docker") is None:
        return False, "no docker client on PATH"
    engine, why_not = docker_engine()
    if engine is None:
        return False, why_not
    count, why = gpu.nvidia_gpu_count()
    if count == 0:
        return False, f"Docker engine is up but no NVIDIA GPU ({why})"
    return True, f"Docker engine is up and {count} NVIDIA GPU(s) found"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """'pid N: command line' of the process listening on a TCP port, when /proc lets us see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return f"pid {proc.name}: {cmd.strip()}"
        except OSError:
            continue
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and ") Z " not in stat.read_text()


BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot's id: a PID recorded before a reboot names nobody we started."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    boot id it tells the process we started from a later one that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (the state)


def process_exe(pid: int) -> str | None:
    """The process's executable, None when it is gone or not ours to read."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")  # a binary rebuilt under it
    except OSError:
        return None


def process_identity(pid: int) -> dict:
    """What a state file records beside a PID, so that a later kill can check it is still ours."""
    return {"boot_id": boot_id(), "start_ticks": process_start_ticks(pid), "exe": process_exe(pid)}


def is_same_process(pid: int, identity: dict) -> bool:
    """Whether `pid` is still the process `identity` was recorded from: same boot, same start time
    and, where both are readable, the same executable. Unknown fields count as a mismatch, so a
    stale record never leads to a signal."""
    if not pid_alive(pid):
        return False
    now = process_identity(pid)
    if identity.get("boot_id") is None or identity.get("boot_id") != now["boot_id"]:
        return False
    if identity.get("start_ticks") is None or identity.get("start_ticks") != now["start_ticks"]:
        return False
    return identity.get("exe") is None or now["exe"] is None or identity["exe"] == now["exe"]
