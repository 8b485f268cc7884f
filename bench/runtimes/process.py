"""A server process the bundle owns: started in its own process group, tracked by a small JSON
state file (so `invoke up`, `bench` and `down` can be separate processes), health-gated, and
stopped as one group so no child (Ollama's runners, llama-server's threads) is ever orphaned.

The state file records, beside the PID, the boot id, the process's start time and its executable
(bench/host/machine.py process_identity), written atomically. Before any signal the process is checked
against them: a state file left by a crash or a reboot, whose PID now belongs to someone else,
is removed and nothing is signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bench.core.errors import BenchError, RequestError, classify
from bench.core.store import atomic_write_json
from bench.host.machine import is_same_process, port_is_free, port_owner, process_identity


@dataclass
class ProcessState:
    pid: int
    port: int
    args: list[str]
    log: str
    started_at: float
    env: dict[str, str] = field(default_factory=dict)  # the settings we passed (not the whole env)
    model: str = ""
    model_file: str = ""
    # boot_id, start_ticks, exe of the process we started; absent in files written before they were
    identity: dict = field(default_factory=dict)

    def alive(self) -> bool:
        """Whether the process we started still runs: the PID alone could be someone else's now."""
        return is_same_process(self.pid, self.identity)


class ManagedProcess:
    """One server process on one port. `name` prefixes its state and log files."""

    def __init__(self, name: str, host: str, port: int, state_dir: Path, startup_timeout_s: float,
                 log_dir: Path | None = None):
        self.name, self.host, self.port = name, host, port
        self.state_file = state_dir / f"{name}-{port}.json"
        self.log_file = (log_dir or state_dir) / f"{name}-{port}.log"
        self.startup_timeout_s = startup_timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def state(self) -> ProcessState | None:
        """The running process, or None (a stale state file of a dead process is removed)."""
        if not self.state_file.is_file():
            return None
        try:
            st = ProcessState(**json.loads(self.state_file.read_text()))
        except (ValueError, TypeError):  # torn or foreign: it proves nothing about any process
            self.state_file.unlink(missing_ok=True)
            return None
        if not st.alive():
            self.state_file.unlink(missing_ok=True)
            return None
        return st

    def start(self, args: list[str], env: dict[str, str], healthy: Callable[[], bool], **meta) -> ProcessState:
        """Start the process and wait until `healthy()`; the caller has stopped any old one."""
        if not port_is_free(self.host, self.port):
            owner = port_owner(self.port)
            raise BenchError(f"port {self.port} on {self.host} is already in use"
                             + (f" by {owner}" if owner else " by another process")
                             + "; stop it (`invoke down` if it is ours) or set other ports under "
                               "runtime.endpoints in the profile")
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env},
                                    start_new_session=True)  # its own group: killed as one, never orphaned
        st = ProcessState(proc.pid, self.port, args, str(self.log_file), time.time(), env, **meta,
                          identity=process_identity(proc.pid))
        atomic_write_json(self.state_file, asdict(st))
        self._wait_healthy(proc, healthy)
        return st

    def _wait_healthy(self, proc: subprocess.Popen, healthy: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_tail()
                self.state_file.unlink(missing_ok=True)
                raise RequestError(classify(tail, default="crash"),
                                   f"{self.name} on port {self.port} exited with code {proc.returncode} "
                                   f"while starting:\n{tail}", self.url)
            if healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RequestError("loading", f"{self.name} on port {self.port} not healthy after "
                                      f"{self.startup_timeout_s} s:\n{self.log_tail()}", self.url)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 12) -> str:
        """The last lines of the server's log (where its own errors and the runner's land)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s; removes the state file. Only a process that
        state() confirmed as the one we started is signalled (see the module docstring)."""
        st = self.state()
        if st is None:
            return
        try:
            os.killpg(st.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while st.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if st.alive():
            try:
                os.killpg(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while st.alive():
                time.sleep(0.05)
        self.state_file.unlink(missing_ok=True)
