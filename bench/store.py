"""The results store: the folder layout, atomic writes, resume, and the failure log.

Layout: results/<study>/<suite>/<lang>/<model_slug>/<config>/run_<k>/metrics.json, with the
per-config summary.json and summary.md beside the run folders, failures.jsonl and manifest.json
at the study root. Every file is written to a temporary name and renamed into place, so an
interrupted study never leaves a half-written file, and a run with a valid metrics.json is done.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import jsonschema

from bench.paths import SCHEMA_FILE, results_root


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
    """Human-readable schema violations of one metrics.json document (empty when valid)."""
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(metrics_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    def __init__(self, study: str, root: Path | None = None):
        self.root = (root or results_root()) / study

    def path(self, rel: Path | str) -> Path:
        return self.root / rel

    def metrics_path(self, run_rel_dir: Path) -> Path:
        return self.root / run_rel_dir / "metrics.json"

    def load_valid(self, run_rel_dir: Path) -> dict | None:
        """The run's metrics.json when it exists and validates, else None (so it is rerun)."""
        p = self.metrics_path(run_rel_dir)
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_text())
        except ValueError:
            return None
        return None if schema_errors(doc) else doc

    def write_metrics(self, run_rel_dir: Path, doc: dict) -> Path:
        errors = schema_errors(doc)
        if errors:
            raise ValueError("metrics.json does not match the schema: " + "; ".join(errors[:5]))
        p = self.metrics_path(run_rel_dir)
        atomic_write_json(p, doc)
        return p

    def append_jsonl(self, name: str, entry: dict) -> None:
        """Append one JSON line to a study log (one write call, so a line is never torn)."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": utc_now(), **entry}) + "\n"
        with open(self.root / name, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def read_jsonl(self, name: str) -> list[dict]:
        p = self.root / name
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def log_failure(self, entry: dict) -> None:
        self.append_jsonl("failures.jsonl", entry)

    def failures(self) -> list[dict]:
        return self.read_jsonl("failures.jsonl")

    def run_docs(self, cell_rel_dir: Path) -> list[tuple[Path, dict]]:
        out = []
        for p in sorted((self.root / cell_rel_dir).glob("run_*/metrics.json"),
                        key=lambda q: int(q.parent.name.split("_")[1])):
            try:
                out.append((p, json.loads(p.read_text())))
            except ValueError:
                continue
        return out
