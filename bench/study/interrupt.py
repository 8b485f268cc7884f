"""SIGTERM cleans up exactly like Ctrl-C; a second signal exits at once.

CI cancels, `timeout` and `kill` send SIGTERM, whose default action ends Python without running a
single `finally`: the servers a task started (in their own sessions, so the signal never reaches
them) stayed up and listening. Here the first SIGINT or SIGTERM raises KeyboardInterrupt in the
main thread, so the same cleanup runs on either (servers this task started, the Rust agent's
process and container, the locks); a second one, while that cleanup runs, exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted:
    """The first signal received while `graceful()` was active, None before any."""

    signum: int | None = None


def exit_code(signum: int | None) -> int:
    """The shell's code for death by a signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + (signum or signal.SIGINT)


def _second(signum, _frame) -> None:
    sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now, cleanup left unfinished\n")
    sys.stderr.flush()
    os._exit(exit_code(signum))


def _first(signum, _frame) -> None:
    Interrupted.signum = signum
    for sig in HANDLED:
        signal.signal(sig, _second)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises KeyboardInterrupt; the handlers before
    it are restored afterwards. Only the main thread can install handlers: elsewhere a no-op."""
    try:
        previous = {sig: signal.signal(sig, _first) for sig in HANDLED}
    except ValueError:  # not the main thread
        yield
        return
    Interrupted.signum = None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
