"""Real Ollama memory failures, replayed: what a memory-limited Ollama container answered
(tests/fixtures/ollama_memory_failures.json, recorded by tests/ollama_memory.py) is served again
byte for byte, and both clients must classify each shape as a load-class failure (the runner walks
its fallback ladder on those), through their real code paths: the HTTP 500 body at load
(StreamingClient._error_from_response, OllamaAPI), and the error line after HTTP 200 mid-stream
(OllamaStream.feed; the Rust agent's stream parser). The live version of these failures runs in
tests/test_docker_smoke.py and tests/test_docker_host.py."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.clients import rust
from bench.clients.streaming import CallContext, StreamingClient
from bench.core.errors import LOAD, RequestError, kind_class
from bench.runtimes.ollama_api import OllamaAPI

from docker_env import unavailable
from ollama_memory import FIXTURE, LOAD_KILLED, MIDSTREAM_EOF
from test_parity import single_job

CASES = json.loads(FIXTURE.read_text())["cases"]
EXPECTED = {"load": LOAD_KILLED, "midstream": MIDSTREAM_EOF, "midstream_nonstream": MIDSTREAM_EOF}


class Replay:
    """Answers every generate/chat call with one recorded case: its status and content type, and
    its body, or its NDJSON lines in chunked transfer encoding as Ollama sends them."""

    def __init__(self, case: dict):
        self.case = case
        self.paths: list[str] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                replay.paths.append(self.path)
                case = replay.case
                self.send_response(case["status"])
                self.send_header("Content-Type", case["content_type"])
                if "lines" in case:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in case["lines"]:
                        data = json.dumps(line).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    body = json.dumps(case["body"]).encode()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "Replay":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fixture_holds_both_shapes():
    assert CASES["load"]["status"] == 500
    assert CASES["midstream"]["status"] == 200 and CASES["midstream"]["lines"][-1] == {"error": MIDSTREAM_EOF}
    assert sum(1 for line in CASES["midstream"]["lines"] if line.get("response")) > 0


@pytest.mark.parametrize("name", list(EXPECTED))
def test_python_client_classifies_each_shape_as_a_load_failure(name):
    with Replay(CASES[name]) as server:
        client = StreamingClient(server.url, "ollama", timeout_s=30)
        ctx = CallContext("single", "analysis", "single", time.perf_counter_ns(), "nonce")
        with pytest.raises(RequestError) as info:
            client.chat("gemma3-270m", [{"role": "user", "content": "x"}], {"num_predict": 400, "seed": 42}, ctx)
    exc = info.value
    assert exc.kind == "crash" and kind_class(exc.kind) == LOAD
    assert EXPECTED[name] in str(exc) and server.url in str(exc)  # which server said it
    assert server.paths == ["/api/chat"]


def test_management_api_classifies_the_load_kill():
    """The runtime's own load (OllamaAPI.load, as the native runtime's SIMD check uses it)."""
    with Replay(CASES["load"]) as server:
        with pytest.raises(RequestError) as info:
            OllamaAPI(server.url).load("gemma3-270m", keep_alive="30m")
    assert info.value.kind == "crash" and LOAD_KILLED in str(info.value)


@pytest.mark.parametrize("name", ["load", "midstream"])
def test_rust_agent_classifies_each_shape_as_a_load_failure(name, tmp_path):
    """The Rust agent reads the same error_kinds.yaml: it must exit with the same kind."""
    if not rust.NATIVE_BINARY.is_file():
        unavailable(f"the Rust agent is not built: {rust.NATIVE_BINARY} (scripts/setup.sh)")
    agent = rust.RustAgent((str(rust.NATIVE_BINARY),), "native")
    with Replay(CASES[name]) as server:
        job = single_job(server.url, "ollama", f"replay/{name}", {"num_predict": 400, "seed": 42},
                         model="gemma3-270m", attempts=1,  # one attempt: the shape itself, not a retry's
                         config={"gpu_layers": 0, "ctx": 2048, "temperature": 0.8, "seed": 42, "num_predict": 400,
                                 "ignore_eos": False, "scenario": None})
        with pytest.raises(RequestError) as info:
            rust.run_job(agent, job, tmp_path, tmp_path, timeout_s=60)
    assert info.value.kind == "crash" and kind_class(info.value.kind) == LOAD
    assert EXPECTED[name] in str(info.value)
    assert not (tmp_path / rust.AGENT_OUT_NAME).exists() and not (tmp_path / "metrics.json").exists()
