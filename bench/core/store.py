"""The results store: the folder layout, atomic writes, resume, and the failure log.

Layout: results/<study>/<suite>/<lang>/<model_slug>/<config>/run_<k>/metrics.json, with the
per-config summary.json and summary.md beside the run folders, failures.jsonl and manifest.json
at the study root. Every file is written to a temporary name and renamed into place, so an
interrupted study never leaves a half-written file, and a run with a valid metrics.json is done.

Runs of another plan (bench/study/plan_identity.py) are moved aside, whole run folders renamed in one
step, to <study>/.superseded/<UTC time>/<suite>/.../run_<k>/ with a superseded.json that says
why: no reader of the study (iter_runs, and so analysis, report, validate, compare) looks under a
folder whose name starts with a dot, so a study's readers only ever pool runs of one plan.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import jsonschema
from jsonschema.exceptions import best_match
from pydantic import ValidationError

from bench.core.paths import SCHEMA_FILE, results_root
from bench.core.records import RunDocument

# The one place the layout is read: results/<study>/<suite>/<lang>/<model_slug>/<config>/run_<k>/
RUN_GLOB = "*/*/*/*/run_*/metrics.json"
# The study root's own files.
MANIFEST_NAME = "manifest.json"  # bench/study/manifest_writer.py
CLIENT_OVERHEAD_NAME = "client_overhead.json"  # `invoke bench-clients` (bench/study/overhead.py)
TIMELINE = "timeline.jsonl"  # the runner's events (bench/study/instrument.py)
PROBES = "probes.jsonl"  # the drift probes (bench/study/instrument.py)
SAMPLING = "sampling.jsonl"  # an adaptive study's stop decisions, one line per config (bench/study/scheduler.py)
COLDSTART = "coldstart.jsonl"  # cold start per model and endpoint (bench/study/probes.py)
SANITY = "sanity.json"  # the answer sanity probe per model (bench/study/probes.py)
FAILURES = "failures.jsonl"
HTML_REPORT_NAME = "Technical_Report_116.html"  # the report as one offline page (bench/report/html_report.py)
ISSUE_SUMMARY = "issue_summary.md"  # the paste-ready block `invoke report` writes (bench/report/issue_summary.py)
# `invoke compare` (bench/report/compare.py): results/compare-<UTC time>/ holds the merged report and tables.
COMPARE_PREFIX = "compare-"
COMPARISON_REPORT = "comparison.md"
COMPARISON_TABLE = "comparison.csv"  # per matched config, metric and study
COMPARISON_VARIANCE = "variance.csv"  # η² of host, study, model, config and language
COMPARISON_STUDIES = "studies.csv"  # one row per study: its fingerprint
SUPERSEDED_DIR = ".superseded"  # runs of another plan, moved aside on resume (Store.set_aside)
SUPERSEDED_NAME = "superseded.json"  # in each moved run folder: why
# A study merged from the shards of several hosts (`invoke fleet --shard`, bench/fleet/shard.py):
# {"hosts": {host: what the fleet knows of it}, "runs": {run folder: host}}; the analysis reads the
# host of each run from it (runs.csv `fleet_host`), so no host's metrics.json is ever rewritten.
FLEET_HOSTS = "fleet_hosts.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 would hide results from others


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


@lru_cache(maxsize=1)
def metrics_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_errors(doc) -> list[str]:
    """Human-readable schema violations of one metrics.json document (empty when valid), each
    narrowed to its most specific cause: a `oneOf` failure (the single/multi metrics) reports the
    best-matching branch's error, not the whole object."""
    out = []
    for e in sorted(metrics_validator().iter_errors(doc), key=lambda e: list(e.absolute_path)):
        if e.context:
            e = best_match(e.context)
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        out.append(f"{where}: {e.message if len(e.message) < 200 else e.message[:200] + '…'}")
    return out


@dataclass(frozen=True)
class StoredRun:
    """One run folder of a study: where it is, and its document (None when unreadable or
    invalid, with the problems that say why)."""

    rel_dir: Path  # <suite>/<lang>/<model_slug>/<config>/run_<k>
    path: Path
    doc: RunDocument | None
    problems: tuple[str, ...] = ()

    @property
    def cell_key(self) -> str:
        """The config folder, <suite>/<lang>/<model_slug>/<config>: the plan's Cell.key."""
        return str(self.rel_dir.parent)

    @property
    def config_tag(self) -> str:
        return self.rel_dir.parent.name

    @property
    def folder_index(self) -> int | None:
        """The run index the folder name gives (run_<k>), None when it is not a number."""
        try:
            return int(self.rel_dir.name.split("_", 1)[1])
        except (IndexError, ValueError):
            return None

    @property
    def folder_names(self) -> dict[str, str]:
        suite, lang, slug, _config, run_dir = self.rel_dir.parts[:5]
        return {"suite": suite, "lang": lang, "model slug": slug, "run": run_dir}


def read_run(path: Path, rel_dir: Path) -> StoredRun:
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        return StoredRun(rel_dir, path, None, (f"not valid JSON ({exc})",))
    errors = schema_errors(raw)
    if errors:
        return StoredRun(rel_dir, path, None, tuple(errors))
    try:
        return StoredRun(rel_dir, path, RunDocument.model_validate(raw))
    except ValidationError as exc:  # the schema passed it: the models lag behind the schema
        return StoredRun(rel_dir, path, None, tuple(f"{'/'.join(map(str, e['loc']))}: {e['msg']}"
                                                    for e in exc.errors()))


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    def __init__(self, study: str, root: Path | None = None):
        self.root = (root or results_root()) / study

    def path(self, rel: Path | str) -> Path:
        return self.root / rel

    def metrics_path(self, run_rel_dir: Path) -> Path:
        return self.root / run_rel_dir / "metrics.json"

    def load_valid(self, run_rel_dir: Path) -> RunDocument | None:
        """The run's document when its metrics.json exists and validates, else None (so it is rerun)."""
        p = self.metrics_path(run_rel_dir)
        return read_run(p, run_rel_dir).doc if p.is_file() else None

    def iter_runs(self, cell_rel_dir: Path | str | None = None, *, valid_only: bool = True) -> Iterator[StoredRun]:
        """Every run of the study (or of one config folder) in a stable order: by config folder,
        then run index. With valid_only, runs whose metrics.json is unreadable or off the schema
        are left out (the runner redoes them; `invoke validate` reports them)."""
        base = self.root / cell_rel_dir if cell_rel_dir is not None else self.root
        pattern = "run_*/metrics.json" if cell_rel_dir is not None else RUN_GLOB
        # a dot folder (runs moved aside, locks) is never part of the study
        paths = [p for p in base.glob(pattern)
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts)]

        def order(p: Path):
            idx = p.parent.name.split("_", 1)[1]
            return (str(p.parent.parent.relative_to(self.root)), int(idx) if idx.isdigit() else 1 << 30, idx)

        for p in sorted(paths, key=order):
            run = read_run(p, p.parent.relative_to(self.root))
            if run.doc is not None or not valid_only:
                yield run

    def write_metrics(self, run_rel_dir: Path, doc: RunDocument) -> Path:
        """Store a run's document as its metrics.json, whole (atomically) and only when it passes
        the JSON Schema, the source of truth the models mirror."""
        stored = doc.to_json()
        errors = schema_errors(stored)
        if errors:
            raise ValueError("metrics.json does not match the schema: " + "; ".join(errors[:5]))
        p = self.metrics_path(run_rel_dir)
        atomic_write_json(p, stored)
        return p

    def set_aside(self, run_rel_dir: Path, why: dict, stamp: str) -> Path:
        """Move a run folder out of the study, in one rename, to .superseded/<stamp>/<run_rel_dir>,
        with `why` beside it; readers never see it again, and the run index is free to be rerun."""
        dest = self.root / SUPERSEDED_DIR / stamp / run_rel_dir
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.root / run_rel_dir, dest)
        atomic_write_json(dest / SUPERSEDED_NAME, {"at": utc_now(), "run": str(run_rel_dir), **why})
        return dest

    def append_jsonl(self, name: str, entry: dict) -> None:
        """Append one JSON line to a study log, in one write call. A line an earlier write left torn
        (a full disk) is closed first, so the new line is never glued onto it and only that one is lost."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({"at": utc_now(), **entry}) + "\n").encode()
        with open(self.root / name, "a+b") as fh:
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def read_jsonl(self, name: str) -> list[dict]:
        """The entries of a study log. A line that is not a JSON object (the torn end of a write the
        disk could not finish, or a later line glued onto it) is skipped with a warning: one lost
        line must not make the whole study unreadable."""
        p = self.root / name
        if not p.is_file():
            return []
        out = []
        for number, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                entry, why = None, f"not JSON ({exc})"
            else:
                why = f"a JSON {type(entry).__name__}, not an object"
            if isinstance(entry, dict):
                out.append(entry)
            else:
                logging.getLogger("bench").warning("%s line %d skipped: %s (a torn write, e.g. a full disk?)",
                                                   p, number, why)
        return out

    def log_failure(self, entry: dict) -> None:
        self.append_jsonl(FAILURES, entry)

    def failures(self) -> list[dict]:
        return self.read_jsonl(FAILURES)

    def read_json(self, name: str) -> dict | None:
        """A JSON file at the study root (the manifest, the overhead study), None when absent
        or unreadable."""
        p = self.root / name
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None
