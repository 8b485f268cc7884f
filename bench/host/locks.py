"""One study, one writer: advisory locks (fcntl.flock) per study folder and per server port.

`up`, `bench`, `down`, `clean` and `reproduce` hold the lock of their study and of each port of its
endpoints while they run, and a second task that wants one of them refuses at once, naming the
holder (pid, command line, since when: written into the lock file). The kernel drops a lock when
its holder exits, however it exits, so a crash never leaves a study locked.

A task holds its locks only while it runs: `invoke up` then `invoke bench` (or `up bench down` on
one line) take them in turn; two benches at once, or a `down` during someone's bench, cannot.

Where the locks live: the study's beside the results (<results>/.locks/), the ports' per user in
the temporary folder, because a port is the host's, whichever results folder a study writes to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from bench.core.errors import BenchError
from bench.core.paths import results_root
from bench.host.machine import is_loopback

LOCKS_DIR_NAME = ".locks"


def study_lock_path(study: str) -> Path:
    # a study name from someone else's manifest must not steer where the file goes
    return results_root() / LOCKS_DIR_NAME / f"study-{re.sub(r'[^A-Za-z0-9._-]', '_', study)}.lock"


def port_lock_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"tr116-locks-{os.getuid()}" / f"port-{int(port)}.lock"


def _holder_text(fd: int) -> str:
    """Who holds a lock, from what it wrote into the file (it may not have written yet)."""
    try:
        raw = os.pread(fd, 4096, 0).decode(errors="replace")
        who = json.loads(raw)
        return f"pid {who['pid']} (`{who['command']}`, since {who['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not said which yet)"


def _acquire(path: Path, what: str, task: str) -> int:
    """The open, locked file descriptor of `path`; BenchError naming the holder when it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_text(fd)
        os.close(fd)
        raise BenchError(f"{what} is in use by {holder}: one writer at a time; wait for it to finish, "
                         f"or stop it (Ctrl-C, or `kill` that pid) and run `invoke {task}` again") from None
    except BaseException:
        os.close(fd)
        raise
    who = {"pid": os.getpid(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "task": task, "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    # the same inode must stay locked, so the holder is written in place (a reader tolerates a torn one)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(who).encode(), 0)
    return fd


@contextlib.contextmanager
def holding(task: str, study: str | None, ports: Iterable[int] = ()) -> Iterator[None]:
    """Hold the study's lock and each port's for the block; refuse at once when one is held."""
    wanted = [(study_lock_path(study), f"study '{study}'")] if study else []
    wanted += [(port_lock_path(p), f"port {p}") for p in sorted(set(ports))]
    held: list[int] = []
    try:
        for path, what in wanted:
            held.append(_acquire(path, what, task))
        yield
    finally:
        for fd in reversed(held):
            os.close(fd)  # closing the last descriptor of the file releases its lock


def profile_ports(profile) -> list[int]:
    """The ports of this host a profile's servers listen on: the bundle's own, and an external
    server's where its URL is on loopback (a remote server's port is not this host's to lock)."""
    ports = []
    for e in profile.runtime.endpoints:
        if e.port is not None:
            ports.append(e.port)
        elif e.url:
            url = urlsplit(e.url)
            if is_loopback(url.hostname or ""):
                ports.append(url.port or {"http": 80, "https": 443}.get(url.scheme, 80))
    return ports


def for_profile(task: str, profile, study: str | None = None) -> contextlib.AbstractContextManager:
    """The locks of a profile's study (or `study`, for a study made from it) and its ports."""
    return holding(task, study or profile.study, profile_ports(profile))


def manifest_targets(manifest_path: Path) -> tuple[str | None, list[int]]:
    """The study a manifest names and its endpoints' ports, read as plain data for the locks of
    `reproduce`; (None, []) when the manifest does not say (reproduce itself then says why)."""
    try:
        doc = json.loads(manifest_path.read_text())
        resolved = doc["profile"]["resolved"]
        ports = [int(e["port"]) for e in resolved["runtime"]["endpoints"] if e.get("port") is not None]
        return str(resolved["study"]), ports
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, []
