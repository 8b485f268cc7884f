"""Streaming LLM clients: Ollama native (NDJSON) and OpenAI-compatible (SSE, llama.cpp timings).

Each call yields one `RequestRecord`. The timing loop does as little as possible between reading
a line and stamping it: one clock read per line, the JSON parse after the stamp. The clock is
injectable so tests can script it (`clock` returns integer nanoseconds).

Every call is bounded, as the Rust agent's are: one deadline for the whole call (connect, headers,
every read of the body), each read at most the read timeout, and no line or SSE event longer than
MAX_LINE_BYTES (read in bounded pieces, so a server cannot grow the client's memory). Proxies from
the environment are ignored for loopback endpoints (the Rust client ignores them everywhere).
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from bench.core import metrics
from bench.core.errors import RequestError, classify, classify_http
from bench.core.records import CallStamps, RequestRecord
from bench.host.machine import is_loopback as is_loopback_host

Clock = Callable[[], int]

# The longest line (its bytes before the "\n") and the longest SSE event (its data) a stream may
# have; a longer one is malformed_stream. rust-agents/src/stream.rs MAX_LINE_BYTES is the same.
MAX_LINE_BYTES = 1 << 20
# The most bytes one read of a body takes (within one HTTP chunk, urllib3 reads no more).
READ_BYTES = 64 * 1024


def is_loopback(url: str) -> bool:
    """True for an http(s) URL on this host (localhost, 127.0.0.0/8, ::1)."""
    return is_loopback_host(urlsplit(url).hostname or "")


# The API keys of the servers this process runs (llama-server's per-study key), by base URL: the
# runtime that starts a server records its key, and every client for that URL sends it, so no
# caller has to carry the secret (and nothing that dumps an Endpoint or a job can write it).
_API_KEYS: dict[str, str] = {}


def register_api_key(base_url: str, key: str | None) -> None:
    """Record (or with None, forget) the key of the server at `base_url`."""
    url = base_url.rstrip("/")
    if key:
        _API_KEYS[url] = key
    else:
        _API_KEYS.pop(url, None)


def api_key_for(base_url: str) -> str | None:
    """The recorded key of the server at `base_url`, or None."""
    return _API_KEYS.get(base_url.rstrip("/"))


def loopback_session(url: str) -> requests.Session:
    """A session for `url` that ignores HTTP(S)_PROXY and friends when it is on this host: a
    proxy from the environment must not stand between the bundle and its own servers."""
    session = requests.Session()
    session.trust_env = not is_loopback(url)
    return session


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


def _too_long(what: str) -> RequestError:
    return RequestError("malformed_stream", f"{what} longer than {MAX_LINE_BYTES} bytes")


def bounded_lines(reads: Iterable[bytes], expired: Callable[[], bool] = lambda: False) -> Iterator[bytes]:
    """The lines of a body read by read (split at "\n", which is not part of the line; a last line
    without one is a line too). A line longer than MAX_LINE_BYTES is refused as soon as its first
    byte over the limit arrives, and `expired()` is checked after each read (the call's deadline),
    so neither memory nor time grows without bound. The Rust parser splits and bounds alike."""
    pending = bytearray()
    for read in reads:
        if expired():
            raise RequestError("timeout", "the call's deadline passed mid-stream")
        start = 0
        while (end := read.find(b"\n", start)) >= 0:
            if len(pending) + end - start > MAX_LINE_BYTES:
                raise _too_long("a line")
            if pending:
                pending += read[start:end]
                line = bytes(pending)
                pending.clear()
            else:
                line = read[start:end]
            yield line
            start = end + 1
        if len(pending) + len(read) - start > MAX_LINE_BYTES:
            raise _too_long("a line")
        pending += read[start:]
    if pending:
        yield bytes(pending)


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


def error_body_message(raw: bytes) -> str:
    """The message of a non-200 reply's body, on one line: `{"error": "text"}` or
    `{"error": {"message": "text"}}`, else the body's text, shortened (rust-agents stream.rs
    error_body_message reads bodies alike)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj.get("error") is not None:
        text = _error_text(obj["error"])
    else:
        text = raw.decode(errors="replace")
        text = text if len(text) <= 160 else text[:160] + "…"
    return " ".join(text.split()) or "(empty body)"


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
        self._data_bytes = 0  # their length joined by newlines

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
            self._data = self._data or []
            self._data_bytes = (self._data_bytes + 1 if self._data else 0) + len(value)
            if self._data_bytes > MAX_LINE_BYTES:
                raise _too_long("an SSE event")
            self._data.append(value)
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

    def record_fields(self) -> dict:
        """The context's fields the record has too (rust-agents record.rs flattens its CallContext
        alike); run_t0_ns and cold_load_ms only shape the record's numbers."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in RequestRecord.model_fields}


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
        **ctx.record_fields(), endpoint=endpoint, api=api, model=model,
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
        output_text="".join(texts),
        timing=CallStamps(t_send_ns=t_send - ctx.run_t0_ns, content_ns=[t - ctx.run_t0_ns for t in stamps],
                          t_done_ns=t_done - ctx.run_t0_ns),
    ).on_clock(ctx.run_t0_ns)


class Deadline:
    """A call's deadline. `watch(resp)` arms a timer that shuts the response's socket down when the
    deadline passes: that ends a read in progress, which a server trickling bytes inside one HTTP
    chunk would otherwise keep from ever returning. `expired()` is also checked between reads."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self._timer: threading.Timer | None = None

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def watch(self, resp: requests.Response) -> "Deadline":
        conn = getattr(resp.raw, "connection", None)  # urllib3's HTTPConnection while the body is read
        sock = getattr(conn, "sock", None)

        def fire() -> None:
            self.fired = True
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # closed already
                    pass

        self._timer = threading.Timer(self.left(), fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __enter__(self) -> "Deadline":
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()


class StreamingClient:
    """A requests.Session bound to one endpoint and protocol.

    `timeout_s` is each call's deadline, the whole call (the Rust agent's job.timeout_s, the same
    profile value); `read_timeout_s` (default: the deadline) bounds each wait for bytes, and
    connecting waits at most 10 s. `api_key` (default: the key recorded for `base_url`) is sent as
    `Authorization: Bearer` (llama-server's --api-key-file); it is kept in the session's headers
    only, never in a message."""

    def __init__(self, base_url: str, api: str, timeout_s: float = 300.0,
                 clock: Clock = time.perf_counter_ns, session: requests.Session | None = None, *,
                 read_timeout_s: float | None = None, api_key: str | None = None):
        if api not in PARSERS:
            raise ValueError(f"unknown api {api!r}")
        if not timeout_s > 0 or (read_timeout_s is not None and not read_timeout_s > 0):
            raise ValueError(f"timeouts must be positive: timeout_s={timeout_s}, read_timeout_s={read_timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.timeout_s = timeout_s
        self.read_timeout_s = min(timeout_s, read_timeout_s or timeout_s)
        self.clock = clock
        self.session = session or loopback_session(self.base_url)
        api_key = api_key or api_key_for(self.base_url)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        self.session.close()

    def _error_from_response(self, resp: requests.Response, deadline: Deadline | None = None) -> RequestError:
        """A non-200 reply: its body's message (read within the limits), its kind by text, else by status."""
        try:
            raw = _bounded_body(resp, deadline or Deadline(self.read_timeout_s))
        except (RequestError, requests.RequestException):
            raw = b""
        msg = error_body_message(raw) if raw.strip() else (resp.reason or "(empty body)")
        return RequestError(classify_http(resp.status_code, msg), f"HTTP {resp.status_code}: {msg}", self.base_url)

    def _post(self, path: str, body: dict, deadline: Deadline) -> requests.Response:
        try:
            return self.session.post(self.base_url + path, json=body, stream=True,
                                     timeout=(min(10.0, deadline.left()), min(self.read_timeout_s, deadline.left())))
        except requests.ConnectionError as exc:
            raise RequestError("connection", f"cannot connect: {exc.__class__.__name__}", self.base_url) from None
        except requests.Timeout:
            raise RequestError("timeout", f"no response within {min(self.read_timeout_s, self.timeout_s)} s",
                               self.base_url) from None

    def _deadline_error(self, received: str) -> RequestError:
        return RequestError("timeout", f"no complete response within the call's deadline of {self.timeout_s} s "
                                       f"({received})", self.base_url)

    def chat(self, model: str, messages: list[dict], options: dict, ctx: CallContext) -> RequestRecord:
        path, body = build_request(self.api, model, messages, options)
        parser = PARSERS[self.api]()
        t_send = self.clock()
        deadline = Deadline(self.timeout_s)
        resp = self._post(path, body, deadline)
        with resp, deadline.watch(resp):
            if resp.status_code != 200:
                raise self._error_from_response(resp, deadline)
            lines = _CountingLines(bounded_lines(resp.iter_content(READ_BYTES), deadline.expired))
            try:
                stamps, texts, t_done = time_stream(lines, parser, self.clock)
            except (RequestError, requests.RequestException) as exc:
                if deadline.fired or deadline.expired():
                    # the deadline ended the read: whatever the cut socket then raised, it is a timeout
                    raise self._deadline_error(f"{lines.count} lines received") from None
                raise self._stream_error(exc) from None
        return build_record(ctx, self.base_url, self.api, model, t_send, stamps, texts, t_done, parser.counts)

    def _stream_error(self, exc: Exception) -> RequestError:
        if isinstance(exc, RequestError):  # an error line or a malformed one: say which server sent it
            return RequestError(exc.kind, exc.detail, self.base_url)
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):  # the connection closed mid-body
            return RequestError("stream_cut", f"stream broke: {exc}", self.base_url)
        if isinstance(exc, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in exc.args):
            return RequestError("timeout", f"stream stalled for {self.read_timeout_s} s", self.base_url)
        return RequestError("connection", f"connection lost mid-stream: {exc}", self.base_url)

    def plain_chat(self, model: str, messages: list[dict], options: dict) -> ServerCounts:
        """One non-streamed call: the engine's own counts and durations with no stream in between
        (the drift probe's reference for the harness, bench/study/instrument.py). Read by the same
        parsers as a stream's final message, so a malformed answer is refused alike; bounded by the
        same deadline and size limit."""
        path, body = build_request(self.api, model, messages, options)
        body["stream"] = False
        body.pop("stream_options", None)
        deadline = Deadline(self.timeout_s)
        resp = self._post(path, body, deadline)
        with resp, deadline.watch(resp):
            if resp.status_code != 200:
                raise self._error_from_response(resp, deadline)
            try:
                content = _bounded_body(resp, deadline)
            except (RequestError, requests.RequestException) as exc:
                if deadline.fired or deadline.expired():
                    raise self._deadline_error("a non-streamed reply") from None
                raise self._stream_error(exc) from None
        parser = PARSERS[self.api]()
        try:
            if self.api == "ollama":  # the reply is the stream's final message: done:true with the counts
                parser.feed(content)
            else:  # one JSON object: dispatched as the event a stream would have sent, compacted to one line
                parser.feed(b"data: " + json.dumps(_message(content), separators=(",", ":")).encode())
                parser.feed(b"")
        except RequestError as exc:
            raise RequestError(exc.kind, exc.detail, self.base_url) from None
        if self.api == "ollama" and not parser.finished:
            raise RequestError("malformed_stream", "a non-streamed reply without done:true", self.base_url)
        return parser.counts

    # ---- discovery, used by the runtimes for clear errors and the manifest ----

    def list_models(self) -> list[str]:
        path = "/api/tags" if self.api == "ollama" else "/v1/models"
        try:
            resp = self.session.get(self.base_url + path, timeout=min(10.0, self.timeout_s))
        except requests.RequestException as exc:
            raise RequestError("connection", f"cannot list models: {exc.__class__.__name__}: {exc}",
                               self.base_url) from None
        if resp.status_code != 200:
            raise self._error_from_response(resp)
        try:
            data = resp.json()
            if self.api == "ollama":
                return [m["name"] for m in data.get("models", [])]
            return [m["id"] for m in data.get("data", [])]
        except (ValueError, AttributeError, TypeError, KeyError):
            raise RequestError("malformed_stream", f"GET {path}: not the model list: {resp.text[:120]!r}",
                               self.base_url) from None


class _CountingLines:
    """The lines of a body, counted (for the deadline's message)."""

    def __init__(self, lines: Iterator[bytes]):
        self.lines, self.count = lines, 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.lines:
            self.count += 1
            yield line


def _bounded_body(resp: requests.Response, deadline: Deadline) -> bytes:
    """A whole (non-streamed) body, refused beyond MAX_LINE_BYTES: it is one message."""
    out = bytearray()
    for read in resp.iter_content(READ_BYTES):
        if deadline.expired():
            raise RequestError("timeout", "the call's deadline passed while reading the body")
        out += read
        if len(out) > MAX_LINE_BYTES:
            raise _too_long("a reply")
    return bytes(out)
