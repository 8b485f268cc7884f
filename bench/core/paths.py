"""Where the bundle's own files live, and where it writes."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_DIR.parent
DATA_DIR = PACKAGE_DIR / "data"
PROFILES_DIR = DATA_DIR / "profiles"
WORKLOAD_FILE = DATA_DIR / "workload.yaml"
DATASET_DIR = DATA_DIR / "dataset"
SCHEMA_FILE = DATA_DIR / "metrics.schema.json"
ERROR_KINDS_FILE = DATA_DIR / "error_kinds.yaml"
SANITY_FILE = DATA_DIR / "sanity.yaml"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
CHAT_TEMPLATES_DIR = DATA_DIR / "chat_templates"  # a profile's `template:` names a file here, nothing else
RUST_CRATE_DIR = REPO_ROOT / "rust-agents"


def results_root() -> Path:
    """The output root; BENCH_RESULTS overrides it (tests use a temporary folder)."""
    return Path(os.environ.get("BENCH_RESULTS", REPO_ROOT / "results"))


def cache_dir() -> Path:
    """Assembled model files and other derived artefacts that outlive a study."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tr116-bench"
    return Path(os.environ.get("BENCH_CACHE", default))
