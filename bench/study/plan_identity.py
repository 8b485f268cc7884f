"""The plan fingerprint: what a stored run must share with this plan to be pooled with its runs.

Each run's metrics.json carries `plan_fingerprint`, written by the harness (never by an agent):
the sha256 of four parts, each also kept as its own short hash so a mismatch can say which one
changed:

- workload: seed, num_predict, ignore_eos, and the sha256 of the prompts (data/workload.yaml and
  the data set's files);
- model: the run's model identity (ModelIdentity.match_identity: a GGUF file's sha256 with the
  template and parameters Ollama created the model with, a pulled model's registry digest; the
  name where a server reports neither). Not the Ollama digest of a model created from a file: it
  differs between model stores of the same inputs, so a study resumed on a rebuilt store, or the
  same study on another host, keeps one plan;
- runtime: the runtime kind, its engine and the endpoints' APIs;
- harness_commit: the git commit of the bundle (null outside a git checkout).

On resume (bench/study/runner.py) a stored run whose fingerprint differs, or that has none (made by an
older harness, or an agent's bare document), is never pooled: the store moves it aside
(Store.set_aside), out of every reader's sight.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from bench.config.profile import ModelSpec, WorkloadSpec
from bench.core.manifest import ModelIdentity
from bench.core.paths import DATASET_DIR, WORKLOAD_FILE
from bench.study.manifest_writer import git_commit

PART_CHARS = 16
PARTS = ("workload", "model", "runtime", "harness_commit")
NO_FINGERPRINT = "made before runs carried a plan fingerprint, or not completed by the harness"


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@lru_cache(maxsize=4)
def prompts_sha256(workload_file: Path = WORKLOAD_FILE, dataset_dir: Path = DATASET_DIR) -> str:
    """The prompts the agents send: the workload file and every file of the data set."""
    h = hashlib.sha256(workload_file.read_bytes())
    for p in sorted(q for q in dataset_dir.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(dataset_dir)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def workload_part(spec: WorkloadSpec) -> dict:
    return {"seed": spec.seed, "num_predict": spec.num_predict, "ignore_eos": spec.ignore_eos,
            "prompts_sha256": prompts_sha256()}


def model_part(identity: dict, model: ModelSpec) -> dict:
    """The identity a runtime reported for the model (match_identity), or its name where it reported none."""
    return ModelIdentity.model_validate(identity).match_identity() or {"name": model.name}


def runtime_part(runtime) -> dict:
    return {"kind": runtime.kind, "engine": runtime.engine, "apis": [e.api for e in runtime.endpoints()]}


def harness_commit() -> str | None:
    return git_commit()


def fingerprint(workload: dict, model: dict, runtime: dict, commit: str | None) -> dict:
    """The block stored as a run's `plan_fingerprint`."""
    parts = {"workload": _sha256(workload)[:PART_CHARS], "model": _sha256(model)[:PART_CHARS],
             "runtime": _sha256(runtime)[:PART_CHARS], "harness_commit": commit}
    return {"sha256": _sha256(parts), "parts": parts}


def mismatch(stored: dict | None, expected: dict) -> str | None:
    """Why a stored run's fingerprint keeps it out of this plan (None when it matches)."""
    if not stored:
        return NO_FINGERPRINT
    if stored.get("sha256") == expected["sha256"]:
        return None
    old = stored.get("parts") or {}
    changed = [p for p in PARTS if old.get(p) != expected["parts"][p]]
    return f"another plan ({', '.join(changed) or 'fingerprint'} changed)"
