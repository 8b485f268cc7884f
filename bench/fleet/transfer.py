"""Run folders as bytes: what a host ships to the head, and what the head seeds a host with.

A folder travels as a tar.gz of its files (paths relative to the study root). Unpacking replaces
each file atomically (os.replace of a file written beside it), metrics.json last, so a reader of the
head's copy never sees a run whose metrics.json is there but whose other files are not.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from bench.core.store import RUN_GLOB

METRICS = "metrics.json"


def finished_runs(study_root: Path) -> dict[str, int]:
    """Every run folder of a study whose metrics.json exists → that file's mtime (ns). A folder
    whose name starts with a dot (runs moved aside, locks) is no part of the study."""
    out = {}
    for p in study_root.glob(RUN_GLOB):
        rel = p.parent.relative_to(study_root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        try:
            out[str(rel)] = p.stat().st_mtime_ns
        except FileNotFoundError:  # moved aside while we looked
            continue
    return out


def pack(root: Path, rels: list[str], skip_dirs: set[str] = frozenset()) -> bytes:
    """The files under root/<rel> for each rel (a file or a folder), as tar.gz bytes with paths
    relative to root; folders named in skip_dirs (relative to root) and dot folders are left out."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for rel in rels:
            for path in _files(root / rel):
                name = path.relative_to(root)
                if any(part.startswith(".") for part in name.parts) or _under(name, skip_dirs):
                    continue
                tar.add(path, arcname=str(name), recursive=False)
    return buf.getvalue()


def _under(name: Path, dirs: set[str]) -> bool:
    return any(str(parent) in dirs for parent in name.parents)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


def unpack(data: bytes, dest: Path) -> list[str]:
    """Extract tar.gz bytes under dest, each file replaced atomically, every metrics.json last.
    Returns the relative paths written. Members that would land outside dest are refused (tarfile's
    'data' filter)."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".incoming-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
        names = sorted((str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()),
                       key=lambda n: (Path(n).name == METRICS, n))
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)
