"""The head's two actors: the ResultSink that stores what hosts ship, and the Progress board.

Both are plain classes; the driver starts them on the head node (ray.remote(...).options(...)), so
the files land on the head's disk and a host that dies keeps every run it shipped.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.fleet.transfer import unpack

HOSTS_DIR = "hosts"  # results/fleet-<name>/hosts/<host>/<study>/


def host_study(fleet_dir: Path, host: str, study: str) -> Path:
    return fleet_dir / HOSTS_DIR / host / study


class ResultSink:
    """Writes each shipped folder under the fleet folder (atomically per file, transfer.unpack) and
    counts the bytes: per host, per run and for the study-level files."""

    def __init__(self, fleet_dir: str):
        self.fleet_dir = Path(fleet_dir)
        self.run_bytes: dict[str, dict[str, int]] = {}
        self.study_bytes: dict[str, int] = {}

    def put_run(self, host: str, study: str, rel: str, data: bytes) -> int:
        files = unpack(data, host_study(self.fleet_dir, host, study))
        self.run_bytes.setdefault(host, {})[rel] = len(data)
        return len(files)

    def put_study_files(self, host: str, study: str, data: bytes) -> int:
        files = unpack(data, host_study(self.fleet_dir, host, study))
        self.study_bytes[host] = self.study_bytes.get(host, 0) + len(data)
        return len(files)

    def stats(self) -> dict[str, dict]:
        hosts = set(self.run_bytes) | set(self.study_bytes)
        return {h: {"runs_shipped": len(self.run_bytes.get(h, {})),
                    "run_bytes": sum(self.run_bytes.get(h, {}).values()),
                    "study_file_bytes": self.study_bytes.get(h, 0)} for h in sorted(hosts)}


class Progress:
    """Per host: runs done / planned, the config it is on, when it started, and its state. Agents
    report to it; the driver reads snapshot() to draw one bar per host."""

    def __init__(self):
        self.hosts: dict[str, dict] = {}

    def start(self, host: str, planned: int, done: int) -> None:
        self.hosts[host] = {"planned": planned, "done": done, "done_at_start": done, "config": "",
                            "started": time.time(), "state": "running"}

    def update(self, host: str, done: int, config: str | None) -> None:
        entry = self.hosts.setdefault(host, {"planned": 0, "done_at_start": 0, "started": time.time(),
                                             "state": "running"})
        entry["done"] = done
        if config:
            entry["config"] = config

    def finish(self, host: str, state: str) -> None:
        if host in self.hosts:
            self.hosts[host]["state"] = state

    def snapshot(self) -> dict[str, dict]:
        return {h: dict(v) for h, v in self.hosts.items()}
