"""User-facing errors and the classification of failed requests.

A `BenchError` is an expected failure with a message for the user: the tasks print it and exit
non-zero without a traceback. `RequestError` is a failed LLM call, classified by the shared
table in data/error_kinds.yaml (the Rust agents read the same table): its kind by substring, else
by HTTP status, and the kind's class (transient, load or permanent) says what the harness does
about it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import yaml

from bench.core.paths import ERROR_KINDS_FILE


class BenchError(Exception):
    """An expected failure, reported to the user as one clear message."""


TRANSIENT, LOAD, PERMANENT = "transient", "load", "permanent"


@dataclass(frozen=True)
class ErrorKind:
    kind: str
    cls: str
    substrings: tuple[str, ...]


@lru_cache(maxsize=1)
def _table() -> dict:
    return yaml.safe_load(ERROR_KINDS_FILE.read_text())


@lru_cache(maxsize=1)
def error_kinds() -> tuple[ErrorKind, ...]:
    return tuple(ErrorKind(k["kind"], k["class"], tuple(s.lower() for s in k.get("substrings", ())))
                 for k in _table()["kinds"])


@lru_cache(maxsize=1)
def _status_kinds() -> tuple[tuple[re.Pattern, str], ...]:
    # "5xx": x is any digit
    return tuple((re.compile(e["status"].replace("x", "[0-9]")), e["kind"]) for e in _table().get("statuses", ()))


def status_kind(status: int) -> str:
    """The kind of a non-200 reply by its status alone: the table's first matching pattern, else http."""
    return next((kind for pattern, kind in _status_kinds() if pattern.fullmatch(str(status))), "http")


def classify_http(status: int, message: str) -> str:
    """The kind of a non-200 reply: by its text (a server's own words win), else by its status."""
    return classify(message, default=status_kind(status))


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
