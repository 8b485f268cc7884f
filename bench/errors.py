"""User-facing errors and the classification of failed requests.

A `BenchError` is an expected failure with a message for the user: the tasks print it and exit
non-zero without a traceback. `RequestError` is a failed LLM call, classified by the shared
table in data/error_kinds.yaml (the Rust agents read the same table): its kind by substring, and
the kind's class (transient, load or permanent) says what the harness does about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml

from bench.paths import ERROR_KINDS_FILE


class BenchError(Exception):
    """An expected failure, reported to the user as one clear message."""


TRANSIENT, LOAD, PERMANENT = "transient", "load", "permanent"


@dataclass(frozen=True)
class ErrorKind:
    kind: str
    cls: str
    substrings: tuple[str, ...]


@lru_cache(maxsize=1)
def error_kinds() -> tuple[ErrorKind, ...]:
    raw = yaml.safe_load(ERROR_KINDS_FILE.read_text())
    return tuple(ErrorKind(k["kind"], k["class"], tuple(s.lower() for s in k.get("substrings", ())))
                 for k in raw["kinds"])


def classify(message: str, default: str = "http") -> str:
    """The kind of a server error message: the first table entry with a matching substring."""
    lowered = message.lower()
    for entry in error_kinds():
        if any(s in lowered for s in entry.substrings):
            return entry.kind
    return default


def kind_class(kind: str) -> str:
    """transient, load or permanent (a kind outside the table, e.g. a Rust agent's own, is permanent)."""
    return next((e.cls for e in error_kinds() if e.kind == kind), PERMANENT)


class RequestError(BenchError):
    """A failed LLM request; `kind` is one of the schema's error kinds."""

    def __init__(self, kind: str, message: str, endpoint: str = ""):
        super().__init__(f"{endpoint}: {message}" if endpoint else message)
        self.kind = kind
        self.endpoint = endpoint
        self.detail = message

    @property
    def cls(self) -> str:
        return kind_class(self.kind)
