"""Streaming LLM clients: Ollama native (NDJSON) and OpenAI-compatible (SSE, llama.cpp timings).

Each call yields one `RequestRecord`. The timing loop does as little as possible between reading
a line and stamping it: one clock read per line, the JSON parse after the stamp. The clock is
injectable so tests can script it (`clock` returns integer nanoseconds).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import requests

from bench import metrics
from bench.errors import RequestError, classify
from bench.records import CallStamps, RequestRecord

Clock = Callable[[], int]


@dataclass
class ServerCounts:
    """What the server reported about a call, in the bundle's units."""

    output_tokens: int | None = None
    prompt_tokens: int | None = None
    load_ms: float | None = None
    prompt_eval_ms: float | None = None
    eval_ms: float | None = None
    done_reason: str | None = None
    # prompt tokens the engine took from its cache instead of evaluating (llama.cpp timings.cache_n;
    # Ollama reports none)
    prompt_cached_tokens: int | None = None


def gap_stats(gaps_ms: list[float]) -> dict | None:
    """n, mean, p50, p95 and max of the inter-token gaps (linear-interpolated percentiles)."""
    if not gaps_ms:
        return None
    if len(gaps_ms) == 1:
        g = gaps_ms[0]
        return {"n": 1, "mean": g, "p50": g, "p95": g, "max": g}
    q = statistics.quantiles(gaps_ms, n=100, method="inclusive")
    return {"n": len(gaps_ms), "mean": statistics.fmean(gaps_ms), "p50": q[49], "p95": q[94],
            "max": max(gaps_ms)}


# ---------------------------------------------------------------------------------------------
# Wire formats
# ---------------------------------------------------------------------------------------------


def build_request(api: str, model: str, messages: list[dict], options: dict) -> tuple[str, dict]:
    """Path and JSON body for a streamed chat call. `options` always has num_predict and seed;
    temperature, num_ctx, num_gpu, num_thread and ignore_eos are sent where the protocol has them."""
    if api == "ollama":
        wire = {k: options[k] for k in ("num_predict", "seed", "temperature", "num_ctx", "num_gpu", "num_thread")
                if k in options}
        return "/api/chat", {"model": model, "messages": messages, "stream": True, "options": wire}
    if api == "openai":
        body = {"model": model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": options["num_predict"], "seed": options["seed"],
                # a repeated prompt would otherwise hit llama.cpp's prompt cache and hide prefill time
                "cache_prompt": False}
        if "temperature" in options:
            body["temperature"] = options["temperature"]
        if options.get("ignore_eos"):
            body["ignore_eos"] = True
        return "/v1/chat/completions", body
    raise ValueError(f"unknown api {api!r}")


def _malformed(what: str, raw: bytes) -> RequestError:
    return RequestError("malformed_stream", f"{what}: {raw[:120]!r}")


def _message(raw: bytes) -> dict:
    """One protocol message: a JSON object, else the stream is malformed."""
    try:
        obj = json.loads(raw)
    except ValueError:  # also bytes that are not UTF-8
        raise _malformed("not JSON", raw) from None
    if not isinstance(obj, dict):
        raise _malformed("not a JSON object", raw)
    return obj


# The types a message's fields must have; the Rust agents' serde structs (stream.rs) refuse the
# same values, so both clients call the same streams malformed.
def _typed(obj: dict | None, key: str, kind: str, raw: bytes):
    value = None if obj is None else obj.get(key)
    if value is None:
        return None
    ok = {"text": isinstance(value, str),
          "object": isinstance(value, dict),
          "list": isinstance(value, list),
          "flag": isinstance(value, bool),
          "count": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
          "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
    if not ok:
        raise _malformed(f"{key} is not a {kind}", raw)
    return value


def _error_text(err) -> str:
    """An in-stream error: Ollama's "error": "text", OpenAI's "error": {"message": "text"}, else its JSON."""
    if isinstance(err, str):
        return err
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    return json.dumps(err, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _raise_if_error(obj: dict) -> None:
    if obj.get("error") is not None:
        msg = _error_text(obj["error"])
        raise RequestError(classify(msg), msg)


class OllamaStream:
    """Ollama /api/chat NDJSON: one JSON object per line, the last with "done": true.

    `feed` takes one line and returns the generated text it carries ('' if none); every
    non-blank line is one message. `finish` is called when the body ended before the done line."""

    def __init__(self) -> None:
        self.counts = ServerCounts()
        self.finished = False

    def feed(self, line: bytes) -> str:
        if not line.strip():
            return ""
        obj = _message(line)
        _raise_if_error(obj)
        text = _typed(_typed(obj, "message", "object", line), "content", "text", line) or ""
        if _typed(obj, "done", "flag", line):
            # Metrics fields are omitempty: a missing one means zero.
            c = self.counts
            c.output_tokens = _typed(obj, "eval_count", "count", line) or 0
            c.prompt_tokens = _typed(obj, "prompt_eval_count", "count", line) or 0
            c.load_ms = metrics.server_duration_ms(_typed(obj, "load_duration", "number", line) or 0)
            c.prompt_eval_ms = metrics.server_duration_ms(_typed(obj, "prompt_eval_duration", "number", line) or 0)
            c.eval_ms = metrics.server_duration_ms(_typed(obj, "eval_duration", "number", line) or 0)
            c.done_reason = _typed(obj, "done_reason", "text", line)
            self.finished = True
        return text

    def finish(self) -> str:
        """The body ended: no message is pending (every line was fed), so without its done line
        the stream was cut."""
        if not self.finished:
            raise RequestError("stream_cut", "stream ended without a done:true chunk")
        return ""


class OpenAIStream:
    """OpenAI-compatible SSE (`data: {...}` events, `data: [DONE]`), with llama.cpp `timings`.

    An event is its `data:` lines, joined by newlines, dispatched by the blank line that ends it
    (or by the end of the body); `feed` returns the text of the event a line completed. Comment
    lines (':') and the `event`, `id` and `retry` fields carry nothing here; any other field is
    not the protocol."""

    def __init__(self) -> None:
        self.counts = ServerCounts()
        self.finished = False
        self._data: list[bytes] | None = None  # the pending event's data lines

    def feed(self, line: bytes) -> str:
        line = line.removesuffix(b"\r")
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return ""
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data = (self._data or []) + [value]
        elif name not in (b"event", b"id", b"retry"):
            raise _malformed("not an SSE line", line)
        return ""

    def finish(self) -> str:
        """The body ended: an event it ended inside is dispatched; without [DONE] the stream was cut."""
        text = self._dispatch()
        if not self.finished:
            raise RequestError("stream_cut", "stream ended without data: [DONE]")
        return text

    def _dispatch(self) -> str:
        if self._data is None:
            return ""
        payload, self._data = b"\n".join(self._data), None
        if payload.strip() == b"[DONE]":
            self.finished = True
            return ""
        obj = _message(payload)
        _raise_if_error(obj)
        c = self.counts
        usage = _typed(obj, "usage", "object", payload)
        if usage is not None:
            n = _typed(usage, "completion_tokens", "count", payload)
            c.output_tokens = c.output_tokens if n is None else n
            n = _typed(usage, "prompt_tokens", "count", payload)
            c.prompt_tokens = c.prompt_tokens if n is None else n
        timings = _typed(obj, "timings", "object", payload)
        if timings is not None:
            ms = _typed(timings, "prompt_ms", "number", payload)
            c.prompt_eval_ms = c.prompt_eval_ms if ms is None else ms
            ms = _typed(timings, "predicted_ms", "number", payload)
            c.eval_ms = c.eval_ms if ms is None else ms
            if c.output_tokens is None:
                c.output_tokens = _typed(timings, "predicted_n", "count", payload)
            if c.prompt_tokens is None:
                c.prompt_tokens = _typed(timings, "prompt_n", "count", payload)
            n = _typed(timings, "cache_n", "count", payload)
            c.prompt_cached_tokens = c.prompt_cached_tokens if n is None else n
        choices = _typed(obj, "choices", "list", payload)
        if not choices:
            return ""
        choice = choices[0]
        if not isinstance(choice, dict):
            raise _malformed("choices[0] is not an object", payload)
        reason = _typed(choice, "finish_reason", "text", payload)
        if reason is not None:
            c.done_reason = reason
        return _typed(_typed(choice, "delta", "object", payload), "content", "text", payload) or ""


PARSERS = {"ollama": OllamaStream, "openai": OpenAIStream}


# ---------------------------------------------------------------------------------------------
# The timed call
# ---------------------------------------------------------------------------------------------


@dataclass
class CallContext:
    """Who makes a call and where it sits in a run (copied into the record)."""

    agent: str
    stage: str
    phase: str
    run_t0_ns: int
    prompt_nonce: str
    # which try of this call made the record (1: first; more: earlier tries failed transiently)
    call_attempt: int = 1
    cold_load_ms: float = 1000.0


def time_stream(lines: Iterable[bytes], parser, clock: Clock) -> tuple[list[int], list[str], int]:
    """Consume a stream of lines: the stamps of its content messages, their texts, and the end stamp.

    A content message (an NDJSON line, an SSE event, with non-empty generated text) is stamped with
    the instant its complete message was available: the clock is read as each line arrives, before
    it is parsed, and a message takes the stamp of the line that completed it (SSE: the blank line
    ending the event). Messages that arrive in one network read are stamped one by one. The end
    stamp is read once the terminal message (done:true, [DONE]) is in; nothing after it is read.
    The Rust agents stamp the same unit (rust-agents/src/stream.rs TimedStream)."""
    stamps: list[int] = []
    texts: list[str] = []
    for line in lines:
        t = clock()  # stamp first: parsing must not delay the measurement
        text = parser.feed(line)
        if text:
            stamps.append(t)
            texts.append(text)
        if parser.finished:
            break
    t_done = clock()
    text = parser.finish()  # an event the body ended inside is complete now; no terminal message: cut
    if text:
        stamps.append(t_done)
        texts.append(text)
    return stamps, texts, t_done


def build_record(ctx: CallContext, endpoint: str, api: str, model: str, t_send: int,
                 stamps: list[int], texts: list[str], t_done: int, counts: ServerCounts) -> RequestRecord:
    t_first = stamps[0] if stamps else None
    t_last = stamps[-1] if stamps else None
    estimated = counts.output_tokens is None
    n_out = len(stamps) if estimated else int(counts.output_tokens)
    return RequestRecord(
        agent=ctx.agent, stage=ctx.stage, phase=ctx.phase, endpoint=endpoint, api=api, model=model,
        prompt_nonce=ctx.prompt_nonce,
        call_attempt=ctx.call_attempt,
        start_offset_ms=max(0.0, (t_send - ctx.run_t0_ns) / metrics.NS_PER_MS),
        ttft_ms=metrics.ttft_ms(t_send, t_first),
        e2e_ms=metrics.e2e_ms(t_send, t_done),
        itl_ms=gap_stats(metrics.inter_token_gaps_ms(stamps)),
        content_chunks=len(stamps),
        output_tokens=n_out,
        output_tokens_estimated=estimated,
        prompt_tokens=counts.prompt_tokens,
        prompt_cached_tokens=counts.prompt_cached_tokens,
        decode_tps_client=metrics.decode_tps_client(n_out, t_first, t_last),
        decode_tps_server=metrics.decode_tps_server(n_out, counts.eval_ms),
        load_ms=counts.load_ms,
        prompt_eval_ms=counts.prompt_eval_ms,
        eval_ms=counts.eval_ms,
        cold_load=metrics.is_cold_load(counts.load_ms, ctx.cold_load_ms),
        done_reason=counts.done_reason,
        error=None, error_kind=None,
        output_text="".join(texts),
        timing=CallStamps(t_send_ns=t_send - ctx.run_t0_ns, content_ns=[t - ctx.run_t0_ns for t in stamps],
                          t_done_ns=t_done - ctx.run_t0_ns),
    ).on_clock(ctx.run_t0_ns)


class StreamingClient:
    """A requests.Session bound to one endpoint and protocol."""

    def __init__(self, base_url: str, api: str, timeout_s: float = 300.0,
                 clock: Clock = time.perf_counter_ns, session: requests.Session | None = None):
        if api not in PARSERS:
            raise ValueError(f"unknown api {api!r}")
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.timeout_s = timeout_s
        self.clock = clock
        self.session = session or requests.Session()

    def close(self) -> None:
        self.session.close()

    def _error_from_response(self, resp: requests.Response) -> RequestError:
        try:
            body = resp.json()
            err = body.get("error", body)
            msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        except ValueError:
            msg = resp.text[:300] or resp.reason
        kind = classify(msg, default="http")
        if resp.status_code == 404 and kind == "http":
            kind = "not_found"
        if resp.status_code == 503 and kind == "http":
            kind = "busy"
        return RequestError(kind, f"HTTP {resp.status_code}: {msg}", self.base_url)

    def chat(self, model: str, messages: list[dict], options: dict, ctx: CallContext) -> RequestRecord:
        path, body = build_request(self.api, model, messages, options)
        parser = PARSERS[self.api]()
        t_send = self.clock()
        try:
            resp = self.session.post(self.base_url + path, json=body, stream=True,
                                     timeout=(min(10.0, self.timeout_s), self.timeout_s))
        except requests.ConnectionError as exc:
            raise RequestError("connection", f"cannot connect: {exc.__class__.__name__}", self.base_url) from None
        except requests.Timeout:
            raise RequestError("timeout", f"no response within {self.timeout_s} s", self.base_url) from None
        with resp:
            if resp.status_code != 200:
                raise self._error_from_response(resp)
            try:
                stamps, texts, t_done = time_stream(resp.iter_lines(chunk_size=None), parser, self.clock)
            except RequestError as exc:  # an error line in the stream: say which server sent it
                raise RequestError(exc.kind, exc.detail, self.base_url) from None
            except requests.exceptions.ChunkedEncodingError as exc:  # the connection closed mid-body
                raise RequestError("stream_cut", f"stream broke: {exc}", self.base_url) from None
            except requests.Timeout:
                raise RequestError("timeout", f"stream stalled for {self.timeout_s} s", self.base_url) from None
            except requests.ConnectionError as exc:
                raise RequestError("connection", f"connection lost mid-stream: {exc}", self.base_url) from None
        return build_record(ctx, self.base_url, self.api, model, t_send, stamps, texts, t_done, parser.counts)

    def plain_chat(self, model: str, messages: list[dict], options: dict) -> ServerCounts:
        """One non-streamed call: the engine's own counts and durations with no stream in between
        (the drift probe's reference for the harness, bench/instrument.py). Read by the same
        parsers as a stream's final message, so a malformed answer is refused alike."""
        path, body = build_request(self.api, model, messages, options)
        body["stream"] = False
        body.pop("stream_options", None)
        try:
            resp = self.session.post(self.base_url + path, json=body, timeout=(min(10.0, self.timeout_s), self.timeout_s))
        except requests.ConnectionError as exc:
            raise RequestError("connection", f"cannot connect: {exc.__class__.__name__}", self.base_url) from None
        except requests.Timeout:
            raise RequestError("timeout", f"no response within {self.timeout_s} s", self.base_url) from None
        if resp.status_code != 200:
            raise self._error_from_response(resp)
        parser = PARSERS[self.api]()
        if self.api == "ollama":  # the reply is the stream's final message: done:true with the counts
            parser.feed(resp.content)
        else:  # one JSON object: dispatched as the event a stream would have sent, compacted to one line
            parser.feed(b"data: " + json.dumps(_message(resp.content), separators=(",", ":")).encode())
            parser.feed(b"")
        if self.api == "ollama" and not parser.finished:
            raise RequestError("malformed_stream", "a non-streamed reply without done:true", self.base_url)
        return parser.counts

    # ---- discovery, used by the runtimes for clear errors and the manifest ----

    def list_models(self) -> list[str]:
        path = "/api/tags" if self.api == "ollama" else "/v1/models"
        try:
            resp = self.session.get(self.base_url + path, timeout=10)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot list models: {exc.__class__.__name__}: {exc}",
                               self.base_url) from None
        data = resp.json()
        if self.api == "ollama":
            return [m["name"] for m in data.get("models", [])]
        return [m["id"] for m in data.get("data", [])]

