"""The fixed sizes of the study's own measuring protocol (core): the study measures with them
(bench/study/instrument.py, bench/study/power.py) and the report states them, so both read them here."""

from __future__ import annotations

PROBE_PAIRS = 2  # the drift probe: streamed + plain call pairs per probe
PROBE_TOKENS = 32  # the drift probe: tokens per call
IDLE_SETTLE_S = 1.0  # power: after the warmup, before the idle baseline, to let the clocks drop
IDLE_S = 3.0  # power: the idle baseline's samples
