"""A protocol-faithful Ollama test server, for the faults a real Ollama can't produce on demand.

Built from shared/reference/protocols.md §1 and checked against a real Ollama 0.17.4
(tests/test_ollama_runtime.py::test_test_server_agrees_with_real_ollama): NDJSON streams with
chunked transfer encoding, durations in integer nanoseconds, omitempty metric fields, an empty
done:true chunk (or, with `text_in_final`, the last token in it, as older versions sent), the model
name echoed as requested, the real error bodies and status codes, /api/tags, /api/show, /api/ps
(no modified_at) and /api/version. Corrected after that comparison: the final chunk's text, the
echoed model name and the /api/ps fields.

Tokens are paced by real sleeps, so server-side durations are true measurements of this server.
`shared_lock`: when two servers get the same lock, each token step holds it, as two model
instances on one GPU would share its compute; independent servers get their own lock.

Faults of a server, for any model:
- `max_gpu_layers=N`: a load with more than N GPU layers (`num_gpu`) fails as a GPU without the
  memory does, HTTP 500 with `oom_error` (default: Ollama's CUDA allocation failure, issue
  ollama/ollama#11359). A request without num_gpu, or -1, gets Ollama's default: as many layers as
  fit, so it loads. With `oom_midstream`, the load succeeds and the runner dies a few tokens into
  the stream instead: HTTP 200, then an {"error": oom_error} line and no done line (what a
  memory-limited Ollama answered, tests/fixtures/ollama_memory_failures.json).
- `cut_after=N`: the `cut_nth` request (default the first, a warmup) of each model and runner
  options (num_ctx, num_gpu) streams N tokens, then the connection closes mid-body; every other
  request is served in full.
- `oom_at=N` (with `max_gpu_layers`): a runner with too many layers loads and dies at its Nth
  chat request instead (1, the default: the load itself, a warmup), HTTP 500 with `oom_error`.
- `unload_s=S`: a model whose runner died or was unloaded (keep_alive 0) stays listed in /api/ps
  for S seconds, as a scheduler slow to let go of a runner.

Faults of the transport, for any model's streamed /api/chat (each ends after `fault_cap_s`, so a
client without a deadline fails a test instead of hanging it):
- `fault="trickle"`: HTTP 200, then one HTTP chunk that declares 4 KiB and gets one byte every
  20 ms: every read returns, no line ever completes.
- `fault="endless"`: HTTP 200, then a blank line (NDJSON keep-alive) every 20 ms, forever; a pull
  gets a "pulling manifest" progress line every 20 ms, forever.
- `fault="huge_line"`: HTTP 200, then one 50 MiB line in 64 KiB chunks; `fault_bytes_sent` says
  how much of it the client took before it hung up.
- `http_errors=[502, ...]`: the first chat requests are answered with these statuses, in order,
  with the HTML body a proxy (nginx) sends; the requests after them are served.

Special model names trigger failure modes:
- "oom:latest"          → 500 "llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer"
- "busy:latest"         → 503 "server busy, please try again.  maximum pending requests exceeded"
- "midstream:latest"    → a few chunks, then {"error": "an error was encountered while running the model: ..."}
- "garbage:latest"      → a few chunks, then a line that is not JSON
- "truncated:latest"    → a few chunks, then the stream ends without done:true
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CUDA_OOM = "llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer"
DEFAULT_MODELS = ["gemma3:latest", "qwen2.5:7b", "oom:latest", "busy:latest", "midstream:latest",
                  "garbage:latest", "truncated:latest"]
WORDS = ("the", " model", " reads", " data", " and", " writes", " a", " report", ".")


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class FakeOllama:
    def __init__(self, *, token_s: float = 0.004, prompt_token_s: float = 0.0002, load_s: float = 0.05,
                 models: list[str] | None = None, shared_lock: threading.Lock | None = None,
                 version: str = "0.12.6", text_in_final: bool = False, max_gpu_layers: int | None = None,
                 oom_error: str = CUDA_OOM, oom_midstream: bool = False, cut_after: int | None = None,
                 cut_nth: int = 1, slow_from_model: str | None = None, slow_factor: float = 1.0,
                 oom_at: int = 1, unload_s: float = 0.0,
                 fault: str | None = None, fault_cap_s: float = 10.0, http_errors: list[int] | None = None):
        if fault not in (None, "trickle", "endless", "huge_line"):
            raise ValueError(f"unknown fault {fault!r}")
        self.fault, self.fault_cap_s, self.fault_bytes_sent = fault, fault_cap_s, 0
        self.http_errors = list(http_errors or [])
        self.token_s, self.prompt_token_s, self.load_s = token_s, prompt_token_s, load_s
        self.max_gpu_layers, self.oom_error, self.oom_midstream = max_gpu_layers, oom_error, oom_midstream
        self.cut_after, self.cut_nth = cut_after, cut_nth
        # a host that slows down mid-study: from the first request for this model on, every token
        # takes slow_factor times longer (the drift guard must see it)
        self.slow_from_model, self.slow_factor = slow_from_model, slow_factor
        self.per_runner: dict[tuple, int] = {}  # chat requests per (model, runner options)
        self.cuts = 0
        self.models = models or list(DEFAULT_MODELS)
        self.lock = shared_lock or threading.Lock()
        self.version = version
        self.text_in_final = text_in_final
        self.loaded: dict[str, dict] = {}  # model -> options that need a reload when they change
        self.requests: list[dict] = []
        self.oom_at, self.unload_s = oom_at, unload_s
        self.leaving: dict[str, float] = {}  # model -> monotonic time /api/ps stops listing it
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeOllama":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _resolve(self, name: str) -> str | None:
        for n in (name, f"{name}:latest"):
            if n in self.models:
                return n
        return None

    def _leave(self, name: str) -> None:
        """The model stays listed in /api/ps for unload_s seconds (a pending deadline stands)."""
        if self.unload_s > 0 and self.leaving.get(name, 0.0) <= time.monotonic():
            self.leaving[name] = time.monotonic() + self.unload_s

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _json(self, status: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunk(self, obj_or_bytes) -> None:
                data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else (json.dumps(obj_or_bytes) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _end_chunks(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                if self.path == "/":
                    body = b"Ollama is running"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/api/version":
                    self._json(200, {"version": server.version})
                elif self.path == "/api/tags":
                    self._json(200, {"models": [self._tag(m) for m in server.models]})
                elif self.path == "/api/ps":
                    # a model still leaving (unload_s) is listed as a loaded one is
                    listed = {**{m: {} for m, t in server.leaving.items() if t > time.monotonic()}, **server.loaded}
                    self._json(200, {"models": [{**{k: v for k, v in self._tag(m).items() if k != "modified_at"},
                                                 "expires_at": _now_rfc3339(), "size_vram": 3_338_801_804,
                                                 "context_length": o.get("num_ctx", 4096)}
                                                for m, o in listed.items()]})
                else:
                    self._json(404, {"error": "404 page not found"})

            def _tag(self, name: str) -> dict:
                return {"name": name, "model": name, "modified_at": "2025-11-01T10:00:00Z", "size": 3_338_801_804,
                        "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
                        "details": {"parent_model": "", "format": "gguf", "family": "gemma3",
                                    "families": ["gemma3"], "parameter_size": "4.3B",
                                    "quantization_level": "Q4_K_M"}}

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not raw:
                    return self._json(400, {"error": "missing request body"})
                try:
                    req = json.loads(raw)
                except ValueError as exc:
                    return self._json(400, {"error": str(exc)})
                server.requests.append({"path": self.path, **req})
                if self.path == "/api/chat" and server.slow_from_model and req.get("model") == server.slow_from_model:
                    server.token_s *= server.slow_factor
                    server.slow_from_model = None
                if self.path == "/api/show":
                    name = server._resolve(req.get("model", ""))
                    if not name:
                        return self._json(404, {"error": f"model '{req.get('model')}' not found"})
                    return self._json(200, {"modelfile": f"FROM {name}\n", "parameters": "temperature 1",
                                            "template": "{{ .Prompt }}",
                                            "details": self._tag(name)["details"],
                                            "model_info": {"general.architecture": "gemma3",
                                                           "general.parameter_count": 4_300_079_472,
                                                           "gemma3.context_length": 131072}})
                if self.path == "/api/pull":
                    return self._pull(req)
                if self.path in ("/api/chat", "/api/generate"):
                    return self._generate(req, chat=self.path == "/api/chat")
                return self._json(404, {"error": "404 page not found"})

            def _pull(self, req: dict) -> None:
                name = req.get("model", "")
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._chunk({"status": "pulling manifest"})
                if server.fault == "endless":  # a registry (or proxy) that never finishes
                    end = time.monotonic() + server.fault_cap_s
                    try:
                        while time.monotonic() < end:
                            self._chunk({"status": "pulling manifest"})
                            time.sleep(0.02)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                if name.split(":")[0] == "nope":
                    self._chunk({"error": "pull model manifest: file does not exist"})
                    return self._end_chunks()
                digest = "sha256:" + "ab" * 32
                for done in (0, 1_000_000, 2_000_000):
                    self._chunk({"status": f"pulling {digest[7:19]}", "digest": digest, "total": 2_000_000,
                                 "completed": done})
                for status in ("verifying sha256 digest", "writing manifest", "success"):
                    self._chunk({"status": status})
                if server._resolve(name) is None:
                    server.models.append(name if ":" in name else f"{name}:latest")
                self._end_chunks()

            def _proxy_error(self, status: int) -> None:
                reason = self.responses.get(status, ("Error",))[0]
                body = (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
                        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
                        "</body>\r\n</html>\r\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _fault(self, kind: str) -> None:
                """A 200 stream that never completes: see the module docstring."""
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                end = time.monotonic() + server.fault_cap_s
                try:
                    if kind == "trickle":
                        self.wfile.write(b"1000\r\n")  # a 4 KiB chunk, one byte at a time
                        line = b'{"message":{"role":"assistant","content":"' + b"x" * 4096
                        for byte in line[:4096]:
                            if time.monotonic() > end:
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.02)
                    elif kind == "endless":
                        while time.monotonic() < end:
                            self._chunk(b"\n")
                            time.sleep(0.02)
                    else:  # huge_line: 50 MiB of one line
                        self._chunk(b'{"message":{"role":"assistant","content":"')
                        piece = b"x" * 65536
                        for _ in range(50 * 16):
                            if time.monotonic() > end:
                                return
                            self._chunk(piece)
                            server.fault_bytes_sent += len(piece)
                        self._chunk(b'"},"done":false}\n')
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client hung up

            def _generate(self, req: dict, chat: bool) -> None:
                name = server._resolve(req.get("model", ""))
                if not name:
                    return self._json(404, {"error": f"model '{req.get('model')}' not found"})
                if chat and server.http_errors:
                    return self._proxy_error(server.http_errors.pop(0))
                if chat and server.fault and req.get("stream") is not False and req.get("messages"):
                    return self._fault(server.fault)
                base = name.split(":")[0]
                if base == "oom":
                    return self._json(500, {"error": CUDA_OOM})
                if base == "busy":
                    return self._json(503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
                opts = req.get("options") or {}
                t0 = time.perf_counter_ns()
                # Runner options (num_ctx, num_gpu) are load-time settings: a change means a reload.
                runner = {k: opts[k] for k in ("num_ctx", "num_gpu") if k in opts}
                load_ns = 0
                if req.get("keep_alive") == 0:
                    if server.loaded.pop(name, None) is not None:
                        server._leave(name)
                    return self._json(200, {"model": name, "created_at": _now_rfc3339(), "response": "",
                                            "done": True, "done_reason": "unload"})
                too_big = server.max_gpu_layers is not None and runner.get("num_gpu", -1) > server.max_gpu_layers
                if server.loaded.get(name) != runner:
                    time.sleep(server.load_s)
                    if too_big and not server.oom_midstream and server.oom_at == 1:
                        server.loaded.pop(name, None)
                        server._leave(name)
                        return self._json(500, {"error": server.oom_error})
                    server.loaded[name] = runner
                    server.leaving.pop(name, None)
                # Ollama's load_duration is the time to get a runner: never zero, even when loaded
                load_ns = time.perf_counter_ns() - t0
                messages = req.get("messages") if chat else None
                if chat and not messages:
                    return self._json(200, {"model": name, "created_at": _now_rfc3339(),
                                            "message": {"role": "assistant", "content": ""},
                                            "done_reason": "load", "done": True})
                key = (name, tuple(sorted(runner.items())))
                server.per_runner[key] = server.per_runner.get(key, 0) + 1
                if too_big and server.oom_at > 1 and server.per_runner[key] >= server.oom_at:  # the runner dies
                    server.per_runner[key] = 0
                    server.loaded.pop(name, None)
                    server._leave(name)
                    return self._json(500, {"error": server.oom_error})
                cut = server.cut_after is not None and server.per_runner[key] == server.cut_nth
                prompt = " ".join(m.get("content", "") for m in messages) if chat else req.get("prompt", "")
                n_prompt = max(1, len(prompt) // 4)
                n_predict = int(opts.get("num_predict", 32))
                if n_predict < 0:
                    n_predict = 64
                if req.get("stream") is False:  # one reply: the final message, with the whole text
                    return self._whole(req, name, chat, t0, load_ns, n_prompt, n_predict)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                tp = time.perf_counter_ns()
                with server.lock:
                    time.sleep(n_prompt * server.prompt_token_s)
                prompt_ns = time.perf_counter_ns() - tp
                te = time.perf_counter_ns()

                def chunk(text: str, done: bool = False, **extra) -> dict:
                    body = {"model": req["model"], "created_at": _now_rfc3339()}  # the name as requested
                    if chat:
                        body["message"] = {"role": "assistant", "content": text}
                    else:
                        body["response"] = text
                    body["done"] = done
                    body.update(extra)
                    return body

                # Ollama 0.17 sends every token in a done:false chunk and an empty done:true chunk;
                # `text_in_final` puts the last token in the done chunk instead, as older versions did.
                n_stream = n_predict - 1 if server.text_in_final else n_predict
                for i in range(n_stream):
                    with server.lock:
                        time.sleep(server.token_s)
                    if cut and i == server.cut_after:
                        server.cuts += 1
                        self.close_connection = True  # no terminating chunk: the client sees the body break
                        return
                    if too_big and i == 3:  # oom_midstream: the runner is killed while generating
                        server.loaded.pop(name, None)
                        self._chunk({"error": server.oom_error})
                        return self._end_chunks()
                    if base in ("midstream", "garbage", "truncated") and i == 3:
                        if base == "midstream":
                            self._chunk({"error": "an error was encountered while running the model: "
                                                  "CUDA error: an illegal memory access was encountered"})
                        elif base == "garbage":
                            self._chunk(b'{"model": "garbage", "message": {"content": "x"\n')
                        self._end_chunks()
                        return
                    self._chunk(chunk(WORDS[i % len(WORDS)]))
                if server.text_in_final:
                    with server.lock:
                        time.sleep(server.token_s)
                eval_ns = time.perf_counter_ns() - te
                last = WORDS[(n_predict - 1) % len(WORDS)] if server.text_in_final else ""
                final = chunk(last, True, done_reason="length", total_duration=time.perf_counter_ns() - t0)
                final["load_duration"] = load_ns
                final.update(prompt_eval_count=n_prompt, prompt_eval_duration=prompt_ns, eval_count=n_predict,
                             eval_duration=eval_ns)
                self._chunk(final)
                self._end_chunks()

            def _whole(self, req: dict, name: str, chat: bool, t0: int, load_ns: int, n_prompt: int,
                       n_predict: int) -> None:
                tp = time.perf_counter_ns()
                with server.lock:
                    time.sleep(n_prompt * server.prompt_token_s)
                prompt_ns = time.perf_counter_ns() - tp
                te = time.perf_counter_ns()
                with server.lock:
                    time.sleep(n_predict * server.token_s)
                text = "".join(WORDS[i % len(WORDS)] for i in range(n_predict))
                body = {"model": req["model"], "created_at": _now_rfc3339()}
                if chat:
                    body["message"] = {"role": "assistant", "content": text}
                else:
                    body["response"] = text
                body.update(done=True, done_reason="length", total_duration=time.perf_counter_ns() - t0)
                body["load_duration"] = load_ns
                body.update(prompt_eval_count=n_prompt, prompt_eval_duration=prompt_ns, eval_count=n_predict,
                            eval_duration=time.perf_counter_ns() - te)
                return self._json(200, body)

        return Handler
