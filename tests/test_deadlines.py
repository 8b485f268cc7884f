"""Every call has a deadline and a size limit, and failures get the class that matches them
(issue 18, items 6 and 7), in both clients: the Python StreamingClient and the Rust agent binary,
against the protocol-faithful test server's transport faults (tests/ollama_server.py).

Each fault ends on the server's side after FAULT_CAP_S, so a client without the guarantee fails
its test (wrong kind, too slow) instead of hanging the suite."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from bench.clients import agents, rust
from bench.clients import streaming as clients
from bench.clients.streaming import MAX_LINE_BYTES, CallContext, StreamingClient, bounded_lines, is_loopback
from bench.core.errors import TRANSIENT, RequestError
from bench.runtimes.ollama_api import OllamaAPI
from bench.standalone import loopback

from conftest import free_port
from docker_env import unavailable
from ollama_server import FakeOllama
from test_parity import single_job

FAULT_CAP_S = 8.0
DEADLINE_S = 1.0
MODEL = "gemma3"
OPTIONS = {"num_predict": 8, "seed": 42}
MESSAGES = [{"role": "user", "content": "hi"}]
GOLDEN = Path(__file__).parent.parent / "bench" / "data" / "golden"


def ctx() -> CallContext:
    return CallContext("single", "analysis", "single", time.perf_counter_ns(), "0123456789abcdef")


def native_agent() -> rust.RustAgent:
    if not rust.NATIVE_BINARY.is_file():
        unavailable(f"the Rust agent is not built: {rust.NATIVE_BINARY} (scripts/setup.sh)")
    return rust.RustAgent((str(rust.NATIVE_BINARY),), "native")


def chat_requests(server: FakeOllama) -> int:
    return sum(r["path"] == "/api/chat" for r in server.requests)


# ---- deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["trickle", "endless"])
def test_python_call_ends_at_its_deadline(fault):
    """A byte every 20 ms inside one HTTP chunk (every read returns, no line completes), or a
    keep-alive line every 20 ms: the per-read timeout never fires; the call's deadline does."""
    with FakeOllama(fault=fault, fault_cap_s=FAULT_CAP_S) as server:
        client = StreamingClient(server.url, "ollama", timeout_s=DEADLINE_S)
        t0 = time.monotonic()
        with pytest.raises(RequestError) as info:
            client.chat(MODEL, MESSAGES, OPTIONS, ctx())
        elapsed = time.monotonic() - t0
    assert info.value.kind == "timeout", info.value
    assert "deadline" in str(info.value) and "\n" not in str(info.value)
    assert DEADLINE_S <= elapsed < DEADLINE_S + 1.5, elapsed


@pytest.mark.parametrize("fault", ["trickle", "endless"])
def test_rust_call_ends_at_its_deadline(fault, tmp_path):
    """The agent's deadline (job.timeout_s, the same profile value) covers the whole stream."""
    agent = native_agent()
    with FakeOllama(fault=fault, fault_cap_s=FAULT_CAP_S) as server:
        job = single_job(server.url, "ollama", f"deadline/{fault}", OPTIONS, model=MODEL, attempts=1,
                         timeout_s=DEADLINE_S)
        t0 = time.monotonic()
        with pytest.raises(RequestError) as info:
            rust.run_job(agent, job, tmp_path, tmp_path, timeout_s=60)
        elapsed = time.monotonic() - t0
    assert info.value.kind == "timeout" and "no complete response within 1.0 s" in str(info.value), info.value
    assert elapsed < DEADLINE_S + 3, elapsed


def test_a_stall_mid_stream_ends_at_the_deadline_not_a_read_timeout_later():
    """A read timeout longer than what is left of the deadline does not stretch the call."""
    with FakeOllama(fault="trickle", fault_cap_s=FAULT_CAP_S) as server:
        client = StreamingClient(server.url, "ollama", timeout_s=DEADLINE_S, read_timeout_s=30)
        t0 = time.monotonic()
        with pytest.raises(RequestError) as info:
            client.chat(MODEL, MESSAGES, OPTIONS, ctx())
    assert info.value.kind == "timeout" and time.monotonic() - t0 < DEADLINE_S + 1.5


def test_pull_ends_at_its_deadline():
    """A registry or proxy that sends progress forever: the pull ends at its deadline."""
    with FakeOllama(fault="endless", fault_cap_s=FAULT_CAP_S) as server:
        t0 = time.monotonic()
        with pytest.raises(RequestError) as info:
            OllamaAPI(server.url).pull("gemma3:1b", deadline_s=DEADLINE_S)
        elapsed = time.monotonic() - t0
    assert info.value.kind == "timeout" and "not done within 1 s" in str(info.value)
    assert elapsed < DEADLINE_S + 1.5, elapsed


# ---- line limit -----------------------------------------------------------------------------


def test_python_refuses_a_huge_line_without_reading_it():
    """A 50 MiB line: malformed_stream once the limit is passed; memory stays bounded and the
    client hangs up instead of reading the rest."""
    with FakeOllama(fault="huge_line", fault_cap_s=FAULT_CAP_S) as server:
        client = StreamingClient(server.url, "ollama", timeout_s=30)
        tracemalloc.start()
        try:
            with pytest.raises(RequestError) as info:
                client.chat(MODEL, MESSAGES, OPTIONS, ctx())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        time.sleep(0.2)  # the server's writes fail once the client is gone
        sent = server.fault_bytes_sent
    assert info.value.kind == "malformed_stream", info.value
    assert f"a line longer than {MAX_LINE_BYTES} bytes" in str(info.value)
    assert peak < 8 * MAX_LINE_BYTES, f"peak {peak / 2**20:.1f} MiB"
    assert sent < 16 * 2**20, f"the client read {sent / 2**20:.0f} MiB of the line"


def test_rust_refuses_a_huge_line_without_reading_it(tmp_path):
    agent = native_agent()
    with FakeOllama(fault="huge_line", fault_cap_s=FAULT_CAP_S) as server:
        job = single_job(server.url, "ollama", "limit/huge", OPTIONS, model=MODEL, attempts=1, timeout_s=30)
        with pytest.raises(RequestError) as info:
            rust.run_job(agent, job, tmp_path, tmp_path, timeout_s=60)
        time.sleep(0.2)
        sent = server.fault_bytes_sent
    assert info.value.kind == "malformed_stream", info.value
    assert f"a line longer than {MAX_LINE_BYTES} bytes" in str(info.value)
    assert sent < 16 * 2**20, f"the agent read {sent / 2**20:.0f} MiB of the line"


def test_line_limit_is_exact_and_one_number_in_both_languages():
    """A line of exactly MAX_LINE_BYTES is read, one byte more is refused, whole or across reads;
    and the Rust parser's constant is the same number (its unit test holds it to the same edge)."""
    line = b"x" * MAX_LINE_BYTES
    assert list(bounded_lines([line + b"\n", b"next"])) == [line, b"next"]
    assert list(bounded_lines([line[:10], line[10:], b"\n"])) == [line]
    for reads in ([line + b"x\n"], [line, b"x"], [b"x" * 65536] * 17):
        with pytest.raises(RequestError) as info:
            list(bounded_lines(reads))
        assert info.value.kind == "malformed_stream"
    rust_src = (rust.RUST_CRATE_DIR / "src" / "stream.rs").read_text()
    assert "pub const MAX_LINE_BYTES: usize = 1 << 20;" in rust_src and MAX_LINE_BYTES == 1 << 20


def test_an_sse_event_over_the_limit_is_malformed():
    parser = clients.OpenAIStream()
    with pytest.raises(RequestError) as info:
        for _ in range(20):
            parser.feed(b"data: " + b"a" * 60_000)
    assert info.value.kind == "malformed_stream" and "SSE event" in str(info.value)


# ---- proxies --------------------------------------------------------------------------------


def test_proxy_variables_are_ignored_for_loopback_endpoints(monkeypatch, tmp_path):
    """HTTP(S)_PROXY at a dead port: calls to the bundle's own servers go direct, in both clients
    and the management API."""
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, dead)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FakeOllama() as server:
        record = StreamingClient(server.url, "ollama", timeout_s=30).chat(MODEL, MESSAGES, OPTIONS, ctx())
        assert record.output_tokens == OPTIONS["num_predict"]
        assert OllamaAPI(server.url).version()
        job = single_job(server.url, "ollama", "proxy/rust", OPTIONS, model=MODEL, attempts=1)
        doc = rust.run_job(native_agent(), job, tmp_path, tmp_path, timeout_s=60)
        assert [r.output_tokens for r in doc.requests] == [OPTIONS["num_predict"]] * 2


def test_only_loopback_hosts_skip_the_proxy():
    assert all(is_loopback(u) for u in ("http://127.0.0.1:1", "http://localhost:8", "http://[::1]:9", "http://127.3.4.5"))
    assert not any(is_loopback(u) for u in ("http://10.0.0.2:80", "https://api.example.com", "http://192.168.1.9"))
    assert clients.loopback_session("http://example.com").trust_env  # someone else's server: their proxy


# ---- error classes --------------------------------------------------------------------------


def test_a_502_is_retried_then_succeeds_python():
    with FakeOllama(http_errors=[502]) as server:
        job = single_job(server.url, "ollama", "retry/python", OPTIONS, model=MODEL)
        doc = agents.run_job(job, {server.url: StreamingClient(server.url, "ollama", timeout_s=30)})
        assert [r.call_attempt for r in doc.requests] == [2, 1]
        assert chat_requests(server) == 3


def test_a_502_is_retried_then_succeeds_rust(tmp_path):
    with FakeOllama(http_errors=[502]) as server:
        job = single_job(server.url, "ollama", "retry/rust", OPTIONS, model=MODEL)
        doc = rust.run_job(native_agent(), job, tmp_path, tmp_path, timeout_s=60)
        assert [r.call_attempt for r in doc.requests] == [2, 1]
        assert chat_requests(server) == 3


@pytest.mark.parametrize("status, kind", [(400, "http"), (401, "http")])
def test_a_refused_request_is_not_retried(status, kind, tmp_path):
    with FakeOllama(http_errors=[status] * 3) as server:
        job = single_job(server.url, "ollama", "refused/python", OPTIONS, model=MODEL)
        with pytest.raises(RequestError) as info:
            agents.run_job(job, {server.url: StreamingClient(server.url, "ollama", timeout_s=30)})
        assert info.value.kind == kind and f"HTTP {status}" in str(info.value)
        with pytest.raises(RequestError) as info:
            rust.run_job(native_agent(), single_job(server.url, "ollama", "refused/rust", OPTIONS, model=MODEL),
                         tmp_path, tmp_path, timeout_s=60)
        assert info.value.kind == kind
        assert chat_requests(server) == 2, "one try each"


@pytest.mark.parametrize("case", json.loads((GOLDEN / "retries.json").read_text())["http_statuses"]["cases"],
                         ids=lambda c: f"{c['status']}-{c['kind']}")
def test_http_status_kinds_golden(case):
    """The shared vectors (rust-agents/tests/golden.rs reads them too), through the client's own
    reading of a non-200 reply."""
    resp = requests.Response()
    resp.status_code, resp.raw, resp.reason = case["status"], io.BytesIO(case["body"].encode()), "Reason"
    err = StreamingClient("http://127.0.0.1:1", "ollama")._error_from_response(resp)
    assert err.kind == case["kind"], err
    assert (err.cls == TRANSIENT) is case["retried"]


def test_an_agent_killed_by_a_signal_is_a_crash(tmp_path):
    """The real agent, mid-call on a trickling server, SIGKILLed (as the kernel's OOM killer does)."""
    binary = native_agent().prefix[0]
    # the subshell kills $$, which `exec` made the agent itself
    killed = rust.RustAgent(("sh", "-c", '(sleep 1; kill -KILL $$) & exec "$0" "$@"', binary), "native, killed")
    with FakeOllama(fault="trickle", fault_cap_s=FAULT_CAP_S) as server:
        job = single_job(server.url, "ollama", "killed/rust", OPTIONS, model=MODEL, attempts=1, timeout_s=30)
        with pytest.raises(RequestError) as info:
            rust.run_job(killed, job, tmp_path, tmp_path, timeout_s=60)
    assert info.value.kind == "crash", info.value
    assert "killed by signal 9 (SIGKILL)" in str(info.value) and "\n" not in str(info.value)


def test_an_agent_past_its_time_is_a_one_line_timeout(tmp_path):
    with FakeOllama(fault="trickle", fault_cap_s=FAULT_CAP_S) as server:
        job = single_job(server.url, "ollama", "slow/rust", OPTIONS, model=MODEL, attempts=1, timeout_s=30)
        with pytest.raises(RequestError) as info:
            rust.run_job(native_agent(), job, tmp_path, tmp_path, timeout_s=0.5)
    assert info.value.kind == "timeout" and "\n" not in str(info.value)


class NotAnAPI:
    """Something else on the port: every request answers 200 with an HTML page."""

    def __enter__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _page(self):
                body = b"<html><body>It works!</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _page

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("call", ["list_models", "plain_chat", "version", "tags"])
def test_a_non_json_200_is_a_one_line_error(call):
    with NotAnAPI() as other:
        client, api = StreamingClient(other.url, "ollama", timeout_s=10), OllamaAPI(other.url)
        do = {"list_models": client.list_models, "plain_chat": lambda: client.plain_chat(MODEL, MESSAGES, OPTIONS),
              "version": api.version, "tags": api.tags}[call]
        with pytest.raises(RequestError) as info:
            do()
    assert info.value.kind == "malformed_stream" and "\n" not in str(info.value), info.value


# ---- the loopback server's reads ------------------------------------------------------------


@pytest.fixture()
def loopback_server(monkeypatch):
    monkeypatch.setattr(loopback, "READ_TIMEOUT_S", 0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    threading.Thread(target=loopback.serve_forever, args=(sock,), daemon=True).start()
    yield sock.getsockname()
    sock.close()


def _closed_by_server(conn: socket.socket, within_s: float) -> bool:
    conn.settimeout(within_s)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_loopback_server_drops_a_silent_client(loopback_server):
    with socket.create_connection(loopback_server) as conn:
        assert _closed_by_server(conn, within_s=3)


def test_loopback_server_drops_an_endless_head(loopback_server):
    with socket.create_connection(loopback_server) as conn:
        conn.sendall(b"POST /api/chat HTTP/1.1\r\nX-Pad: " + b"a" * (loopback.MAX_HEAD_BYTES + 1024))
        assert _closed_by_server(conn, within_s=3)


def test_loopback_server_refuses_a_huge_body(loopback_server):
    with socket.create_connection(loopback_server) as conn:
        conn.sendall(b"POST /api/chat HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (loopback.MAX_BODY_BYTES + 1))
        assert _closed_by_server(conn, within_s=3)


def test_loopback_server_still_serves_a_client(loopback_server):
    host, port = loopback_server
    record = StreamingClient(f"http://{host}:{port}", "ollama", timeout_s=10).chat("loopback", MESSAGES, OPTIONS, ctx())
    assert record.output_tokens == OPTIONS["num_predict"]
