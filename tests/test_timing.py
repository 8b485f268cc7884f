"""Client timing against a scripted clock: TTFT, gaps, e2e and decode rates must reconcile.

The clock here is read once per line (and once at the send and the end); bench/data/golden/
streams.json and requests.json hold the cases both clients run, on a scripted network."""

from __future__ import annotations

import json

import pytest

from bench.clients.streaming import CallContext, StreamingClient
from bench.core import metrics
from bench.core.errors import RequestError

MS = 1_000_000


class ScriptedClock:
    """Returns the scripted nanosecond times in order; fails loudly if the code reads it more."""

    def __init__(self, times_ns):
        self.times = list(times_ns)
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        if not self.times:
            raise AssertionError("clock read more often than scripted")
        return self.times.pop(0)


class RecordedResponse:
    """The part of requests.Response the client reads: the body, one read per line (no live
    socket behind it, so the deadline's timer has nothing to shut)."""

    status_code = 200
    raw = None

    def __init__(self, lines):
        self._lines = lines

    def iter_content(self, chunk_size=None):
        for line in self._lines:
            yield line + b"\n"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class RecordedSession:
    def __init__(self, lines):
        self.lines = lines
        self.posted = []

    def post(self, url, json=None, stream=False, timeout=None):
        self.posted.append((url, json))
        return RecordedResponse(self.lines)

    def close(self):
        pass


def ollama_lines(texts, eval_ns=40 * MS, prompt_ns=5 * MS, load_ns=None):
    lines = [json.dumps({"model": "m", "message": {"role": "assistant", "content": t}, "done": False}).encode()
             for t in texts[:-1]]
    final = {"model": "m", "message": {"role": "assistant", "content": texts[-1]}, "done": True,
             "done_reason": "length", "eval_count": len(texts), "eval_duration": eval_ns,
             "prompt_eval_count": 12, "prompt_eval_duration": prompt_ns}
    if load_ns is not None:
        final["load_duration"] = load_ns
    return lines + [json.dumps(final).encode()]


def sse_lines(texts, predicted_ms=40.0):
    out = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}', b""]
    for t in texts:
        out += [b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}).encode(), b""]
    out += [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}', b""]
    out += [b"data: " + json.dumps({"choices": [], "usage": {"completion_tokens": len(texts), "prompt_tokens": 12},
                                    "timings": {"prompt_n": 12, "prompt_ms": 5.0, "predicted_n": len(texts),
                                                "predicted_ms": predicted_ms,
                                                "predicted_per_second": len(texts) / predicted_ms * 1000}}).encode(), b""]
    return out + [b"data: [DONE]", b""]


def run_chat(api, lines, times):
    clock = ScriptedClock(times)
    client = StreamingClient("http://test", api, clock=clock, session=RecordedSession(lines))
    ctx = CallContext("single", "analysis", "single", run_t0_ns=times[0] - 2 * MS, prompt_nonce="0" * 16)
    rec = client.chat("m", [{"role": "user", "content": "hi"}], {"num_predict": 5, "seed": 1}, ctx)
    return rec, clock


def test_ollama_timing_reconciles():
    # send at 1000 ms; 5 text chunks at 1100, 1110, 1125, 1130, 1150 ms; stream end read at 1152 ms
    t = [1000, 1100, 1110, 1125, 1130, 1150, 1152]
    rec, clock = run_chat("ollama", ollama_lines(["a", "b", "c", "d", "e"]), [x * MS for x in t])
    assert clock.times == []  # one read for send, one per line, one at the end: no more, no less
    assert rec.ttft_ms == pytest.approx(100.0)
    assert rec.e2e_ms == pytest.approx(152.0)
    assert rec.start_offset_ms == pytest.approx(2.0)
    assert rec.itl_ms.n == 4
    assert rec.itl_ms.mean == pytest.approx(12.5)
    assert rec.itl_ms.max == pytest.approx(20.0)
    assert rec.itl_ms.p50 == pytest.approx(12.5)  # gaps 10, 15, 5, 20 → median 12.5
    # reconciliation: ttft + Σgaps = time of the last text chunk ≤ e2e
    assert rec.ttft_ms + rec.itl_ms.mean * rec.itl_ms.n == pytest.approx(150.0)
    assert rec.ttft_ms + rec.itl_ms.mean * rec.itl_ms.n <= rec.e2e_ms
    # (N − 1) tokens over the 50 ms from first to last text chunk
    assert rec.decode_tps_client == pytest.approx(4 / 0.050)
    assert rec.output_tokens == 5 and not rec.output_tokens_estimated
    assert rec.decode_tps_server == pytest.approx(5 / 0.040)  # eval_count / eval_duration
    assert rec.eval_ms == pytest.approx(40.0) and rec.prompt_eval_ms == pytest.approx(5.0)
    assert rec.load_ms == 0.0  # omitempty: an absent load_duration means 0
    assert rec.output_text == "abcde" and rec.done_reason == "length"
    assert rec.cold_load is False


def test_openai_sse_timing_reconciles_and_ignores_empty_chunks():
    texts = ["x", "y", "z"]
    lines = sse_lines(texts, predicted_ms=30.0)
    # one clock read per line (including blanks and non-text events), then the end
    stamps = [1000] + [1000 + 10 * (i + 1) for i in range(len(lines))] + [1000 + 10 * (len(lines) + 1)]
    rec, clock = run_chat("openai", lines, [s * MS for s in stamps])
    assert clock.times == []  # [DONE] is complete at the last blank line, and nothing after it is read
    # the role-only first event (content null) is not a token; an SSE event is complete at the blank
    # line after its data line: TTFT is the first 'x' event's blank line, line index 3
    assert rec.ttft_ms == pytest.approx(40.0)
    assert rec.content_chunks == 3
    assert rec.itl_ms.mean == pytest.approx(20.0)  # text events are 2 lines apart
    assert rec.e2e_ms == pytest.approx(10 * (len(lines) + 1))
    assert rec.decode_tps_client == pytest.approx(2 / 0.040)
    assert rec.decode_tps_server == pytest.approx(3 / 0.030)
    assert rec.prompt_tokens == 12 and rec.done_reason == "length"


def test_cold_load_flag_from_load_duration():
    t = [0, 10, 20, 30, 31]
    rec, _ = run_chat("ollama", ollama_lines(["a", "b", "c"], load_ns=1500 * MS), [x * MS for x in t])
    assert rec.load_ms == pytest.approx(1500.0)
    assert rec.cold_load is True


def test_fallback_token_count_is_marked_estimated():
    lines = [b'data: {"choices":[{"delta":{"content":"a"}}]}', b"", b'data: {"choices":[{"delta":{"content":"b"}}]}',
             b"", b"data: [DONE]", b""]
    rec, _ = run_chat("openai", lines, [x * MS for x in (0, 4, 5, 14, 15, 16, 17, 18)])
    assert rec.output_tokens == 2 and rec.output_tokens_estimated
    assert rec.decode_tps_server is None  # no server timing: not invented
    assert rec.decode_tps_client == pytest.approx(1 / 0.010)


def test_sse_data_lines_without_blank_lines_are_one_event():
    """SSE: data lines up to a blank line are one event, joined by newlines. Three JSON data lines
    with no blank line between them are not one JSON document: malformed, in both clients
    (bench/data/golden/streams.json holds the cases both parsers run)."""
    lines = [b'data: {"choices":[{"delta":{"content":"a"}}]}', b'data: {"choices":[{"delta":{"content":"b"}}]}',
             b"data: [DONE]"]
    with pytest.raises(RequestError) as info:
        run_chat("openai", lines, [x * MS for x in range(6)])
    assert info.value.kind == "malformed_stream"


def test_stream_stops_at_the_terminal_message():
    """Lines after done:true are not read (the clock is not read for them either)."""
    lines = ollama_lines(["a", "b"]) + [b"not json", b'{"error":"late"}']
    rec, clock = run_chat("ollama", lines, [x * MS for x in (0, 10, 20, 21, 99, 99)])
    assert rec.e2e_ms == pytest.approx(21.0) and rec.output_text == "ab"
    assert clock.times == [99 * MS, 99 * MS]


def test_single_chunk_has_no_gaps_and_no_decode_rate():
    rec, _ = run_chat("ollama", ollama_lines(["only"]), [x * MS for x in (0, 40, 41)])
    assert rec.itl_ms is None
    assert rec.decode_tps_client is None
    assert rec.ttft_ms == pytest.approx(40.0)


def test_metric_formulas_on_known_values():
    assert metrics.ttft_ms(0, 250 * MS) == 250.0
    assert metrics.e2e_ms(0, 1_000 * MS) == 1000.0
    assert metrics.inter_token_gaps_ms([0, 10 * MS, 30 * MS]) == [10.0, 20.0]
    assert metrics.decode_tps_client(11, 0, 1_000 * MS) == pytest.approx(10.0)
    assert metrics.decode_tps_server(100, 1000.0) == pytest.approx(100.0)
    assert metrics.run_decode_tps([100, 50], [1000.0, 1000.0]) == pytest.approx(75.0)  # token-weighted
    assert metrics.run_decode_tps_client([11, 21], [1.0, 1.0]) == pytest.approx(15.0)
    assert metrics.run_latency_ms([100.0, 250.0]) == 350.0


def test_every_metric_has_a_formula_for_the_report():
    defs = metrics.definitions()
    names = {d.name for d in defs}
    assert {"ttft_ms", "e2e_ms", "decode_tps", "speedup", "efficiency_pct", "evenness_pct",
            "contention", "legacy_contention"} <= names
    for d in defs:
        assert "=" in d.formula and d.description, d.name
