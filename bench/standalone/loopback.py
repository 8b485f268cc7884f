"""A loopback token server for measuring the clients themselves (`invoke bench-clients`).

It answers /api/chat (Ollama NDJSON) and /v1/chat/completions (OpenAI SSE) by streaming
`num_predict` tokens as fast as the socket takes them: one HTTP chunk per token, as real
servers send. The final chunk reports the server's own count and its first-to-last write time,
so a client's measured decode rate can be checked against what was actually sent (the skew).
It is a raw-socket server in its own process, so its cost never lands on the client's core.
With --pace-tps R it writes token i at t0 + i/R (busy-waiting on its own core for precision),
so a client that keeps up must measure R: the difference is the client's skew.

Run: python -m bench.standalone.loopback --port 0 [--cpu 0] [--pace-tps R]   (prints the bound port)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time

TOKEN = " tok"
# A request is read within these bounds, else its connection is closed: a client that sends an
# endless head or body, or nothing at all, cannot hold a thread or grow memory without end.
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 20
READ_TIMEOUT_S = 30.0


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _token_chunk(api: str) -> bytes:
    if api == "ollama":
        line = json.dumps({"model": "loopback", "created_at": "2026-01-01T00:00:00Z",
                           "message": {"role": "assistant", "content": TOKEN}, "done": False}) + "\n"
    else:
        line = "data: " + json.dumps({"id": "chatcmpl-loop", "object": "chat.completion.chunk",
                                      "choices": [{"index": 0, "delta": {"content": TOKEN},
                                                   "finish_reason": None}]}) + "\n\n"
    return _chunk(line.encode())


def _final_chunks(api: str, n: int, eval_ns: int) -> bytes:
    if api == "ollama":
        line = json.dumps({"model": "loopback", "created_at": "2026-01-01T00:00:00Z",
                           "message": {"role": "assistant", "content": ""}, "done": True,
                           "done_reason": "length", "prompt_eval_count": 1, "prompt_eval_duration": 1000,
                           "eval_count": n, "eval_duration": eval_ns}) + "\n"
        return _chunk(line.encode()) + b"0\r\n\r\n"
    predicted_ms = eval_ns / 1e6
    usage = {"id": "chatcmpl-loop", "object": "chat.completion.chunk", "choices": [],
             "usage": {"completion_tokens": n, "prompt_tokens": 1, "total_tokens": n + 1},
             "timings": {"prompt_n": 1, "prompt_ms": 0.001, "predicted_n": n, "predicted_ms": predicted_ms,
                         "predicted_per_second": n / (predicted_ms / 1000) if predicted_ms else 0}}
    finish = {"id": "chatcmpl-loop", "object": "chat.completion.chunk",
              "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    body = f"data: {json.dumps(finish)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"
    return _chunk(body.encode()) + b"0\r\n\r\n"


def _read_request(conn: socket.socket, buf: bytearray) -> tuple[str, dict] | None:
    """The next request's path and JSON body; None when the client is gone or broke the bounds
    (the socket's timeout bounds each wait: socket.timeout is raised)."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD_BYTES:
            return None
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD_BYTES:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        path = lines[0].split(" ")[1]
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), 0)
    except (IndexError, ValueError):
        return None
    if not 0 <= length <= MAX_BODY_BYTES:
        return None
    body = bytearray(rest)
    while len(body) < length:
        data = conn.recv(65536)
        if not data:
            return None
        body += data
    buf[:] = body[length:]
    try:
        request = json.loads(body[:length] or b"{}")
    except ValueError:
        return None
    return (path, request) if isinstance(request, dict) else None


def _serve(conn: socket.socket, pace_tps: float | None) -> None:
    try:
        _serve_requests(conn, pace_tps)
    except OSError:  # a read timed out, or the client reset the connection: drop it quietly
        pass
    finally:
        conn.close()


def _serve_requests(conn: socket.socket, pace_tps: float | None) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(READ_TIMEOUT_S)
    buf = bytearray()
    chunks = {"ollama": _token_chunk("ollama"), "openai": _token_chunk("openai")}
    with conn:
        while (req := _read_request(conn, buf)) is not None:
            path, body = req
            api = "ollama" if path.startswith("/api/") else "openai"
            n = int((body.get("options") or {}).get("num_predict") or body.get("max_tokens") or 128)
            ctype = "application/x-ndjson" if api == "ollama" else "text/event-stream"
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            token = chunks[api]
            send = conn.sendall
            clock = time.perf_counter_ns
            step_ns = int(1e9 / pace_tps) if pace_tps else 0
            t_first = clock()
            t_last = t_first
            for i in range(n):
                if step_ns:
                    due = t_first + i * step_ns
                    while clock() < due:
                        pass
                send(token)
                t_last = clock()
            # Report eval time so that eval_count / eval_duration is the rate at which tokens left:
            # n writes span n − 1 gaps.
            span = t_last - t_first
            send(_final_chunks(api, n, span * n // max(1, n - 1)))


def serve_forever(sock: socket.socket, pace_tps: float | None = None) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_serve, args=(conn, pace_tps), daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    ap.add_argument("--pace-tps", type=float, default=None, help="write tokens at this rate")
    args = ap.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(16)
    print(sock.getsockname()[1], flush=True)
    serve_forever(sock, args.pace_tps)


if __name__ == "__main__":
    main()
