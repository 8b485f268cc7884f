"""The harness as an instrument: how much of a measured number is the client itself.

Two measurements, printed by `invoke bench-clients` and stored in results/<study>/client_overhead.json
for the report:
1. Client floors. A loopback server (bench/standalone/loopback.py, its own process, its own core) streams
   tokens as fast as the socket takes them; each client (Python, Rust), pinned to one other core,
   streams a few long requests. Reported: sustained tokens/s and CPU µs per token. Then the server
   paces tokens at a known rate, and the skew is how far the client's measured decode rate is
   from it.
2. Harness vs the engine's own rate. For each model at the profile's thread count: the harness's
   decode tok/s on the real server ÷ a reference from the engine itself: llama-bench's tg tok/s
   (llama.cpp), or Ollama's eval rate of a plain non-streamed call with the same prompt (Ollama).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from bench.clients import agents, rust
from bench.clients.streaming import CallContext, StreamingClient
from bench.config.profile import ServerConfig
from bench.config.workload import load_workload, prompt_nonce
from bench.core import metrics
from bench.core.errors import BenchError
from bench.core.paths import cache_dir
from bench.core.store import CLIENT_OVERHEAD_NAME, atomic_write_json, utc_now
from bench.host import assets
from bench.study import manifest_writer as manifest

MESSAGES = [{"role": "user", "content": "stream"}]
# The loopback server ignores prompts; its records are never stored.
LOOPBACK_CTX = CallContext("single", "analysis", "single", 0, "0" * 16)


@contextmanager
def loopback_server(cpu: int | None, pace_tps: float | None = None):
    cmd = [sys.executable, "-m", "bench.standalone.loopback", "--port", "0"]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if pace_tps:
        cmd += ["--pace-tps", str(pace_tps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def skew_pct(client_rate: float | None, server_rate: float | None) -> float | None:
    """(client-measured decode rate − the server's write rate) / the server's write rate × 100."""
    if not client_rate or not server_rate:
        return None
    return (client_rate - server_rate) / server_rate * 100


def python_stream_bench(url: str, api: str, requests_n: int, num_predict: int) -> dict:
    """Stream requests through the Python client; measure wall, CPU and rates (one JSON result)."""
    client = StreamingClient(url, api, timeout_s=120)
    opts = {"num_predict": num_predict, "seed": 0}
    client.chat("loopback", MESSAGES, opts, LOOPBACK_CTX)  # warm the socket
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    records = [client.chat("loopback", MESSAGES, opts, LOOPBACK_CTX) for _ in range(requests_n)]
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    tokens = sum(r.output_tokens for r in records)
    return {"client": "python", "api": api, "requests": requests_n, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "cpu_s": cpu, "cpu_us_per_token": cpu / tokens * 1e6,
            "decode_tps_client_mean": statistics.fmean(r.decode_tps_client for r in records),
            "decode_tps_server_mean": statistics.fmean(r.decode_tps_server for r in records)}


def _pin(cpu: int | None):
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _measure(client: str, rust_cmd: list[str] | None, url: str, api: str, requests_n: int,
             num_predict: int, cpu: int | None) -> dict:
    if client == "python":
        cmd = [sys.executable, "-m", "bench.study.overhead", "--python-client", url, api, str(requests_n), str(num_predict)]
    else:
        cmd = [*rust_cmd, "stream-bench", "--url", url, "--api", api, "--requests", str(requests_n),
               "--num-predict", str(num_predict)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_pin(cpu), timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"{client} client benchmark failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def client_floors(rust_cmd: list[str] | None, *, requests_n: int = 5, num_predict: int = 20_000,
                  pace_tps: float = 20_000) -> list[dict]:
    """Both clients × both protocols: unpaced (throughput, CPU per token), then paced (skew).
    The server and the client run on separate cores."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu, client_cpu = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    clients = ["python"] + (["rust"] if rust_cmd else [])
    results = []
    with loopback_server(server_cpu) as fast, loopback_server(server_cpu, pace_tps) as paced:
        for api in ("ollama", "openai"):
            for client in clients:
                r = _measure(client, rust_cmd, fast, api, requests_n, num_predict, client_cpu)
                p = _measure(client, rust_cmd, paced, api, 3, int(pace_tps), client_cpu)
                r.update(pinned_cpu=client_cpu, paced_tps=pace_tps,
                         paced_client_tps=p["decode_tps_client_mean"],
                         paced_server_tps=p["decode_tps_server_mean"],
                         skew_pct=skew_pct(p["decode_tps_client_mean"], p["decode_tps_server_mean"]))
                results.append(r)
    return results


def llama_bench_tg(model_file: Path, threads: int, n_gen: int, depth: int = 0) -> dict:
    """llama-bench's text-generation rate (tg) for a model and thread count, decoding after
    `depth` tokens of context (the harness decodes after its prompt, not on an empty context)."""
    cmd = [str(assets.llama_bench_binary()), "-m", str(model_file), "-p", "0", "-n", str(n_gen),
           "-d", str(depth), "-t", str(threads), "-r", "3", "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"llama-bench failed: {proc.stderr.strip()[-500:]}")
    rows = json.loads(proc.stdout)
    tg = next(r for r in rows if r.get("n_gen"))
    return {"avg_ts": tg["avg_ts"], "stddev_ts": tg["stddev_ts"], "n_gen": tg["n_gen"],
            "n_threads": tg["n_threads"]}


def _harness_calls(profile, ep, model: str, opts: dict, requests_n: int) -> list:
    """A warmup, then `requests_n` streamed calls of the single agent's first prompt through the
    harness's client, each with its own prompt nonce (no prefix-cache hits)."""
    wl = load_workload()
    client = StreamingClient(ep.url, ep.api, timeout_s=profile.workload.timeout_s)
    recs = []
    for i in range(requests_n + 1):
        for attempt in agents.retrying(3):  # a server just (re)started may refuse the first connection
            with attempt:
                rec = agents.nonced_chat(client, model, wl, opts, key=f"{profile.study}/bench-clients/{model}",
                                         agent="single", stage="analysis", phase=f"call{i + 1}",
                                         attempt=attempt.retry_state.attempt_number)
        recs.append(rec)
    return recs[1:]


def harness_vs_llama_bench(profile, runtime, *, n_gen: int = 128, requests_n: int = 3) -> list[dict]:
    """Per model: harness decode tok/s on the real llama-server ÷ llama-bench tg tok/s, same model
    file, thread count and context depth (the harness prompt's length), so the ratio isolates the
    harness and the server's HTTP path. llama-bench runs while the servers are stopped."""
    opts = {"num_predict": n_gen, "seed": profile.workload.seed, "ignore_eos": True,
            "temperature": profile.single.temperature}
    out = []
    for model in profile.models:
        weights = profile.weights_of(model)
        path = assets.model_file(weights.name, weights.file)
        ep = runtime.endpoints()[0]  # the measured server; the runtime's others keep their defaults
        runtime.switch(model, {ep.name: ServerConfig(gpu_layers=0, ctx=1024)})
        recs = _harness_calls(profile, ep, model.name, opts, requests_n)
        depth = int(statistics.median(r.prompt_tokens for r in recs))
        runtime.down()  # llama-bench gets the cores to itself
        bench_tg = llama_bench_tg(path, runtime.threads, n_gen, depth)
        client_tps = statistics.fmean(r.decode_tps_client for r in recs)
        server_tps = statistics.fmean(r.decode_tps_server for r in recs)
        out.append({"model": model.name, "engine": "llama.cpp", "reference": f"llama-bench tg at depth {depth}",
                    "threads": runtime.threads, "n_gen": n_gen,
                    "reference_tps": bench_tg["avg_ts"], "reference_std": bench_tg["stddev_ts"],
                    "harness_client_tps": client_tps, "harness_server_tps": server_tps,
                    "ratio_client_to_reference": client_tps / bench_tg["avg_ts"],
                    "ratio_server_to_reference": server_tps / bench_tg["avg_ts"]})
    runtime.down()
    return out


def harness_vs_ollama(profile, runtime, *, n_gen: int = 128, requests_n: int = 3) -> list[dict]:
    """Per model: harness decode tok/s (streamed, client-timed) ÷ Ollama's own eval_count /
    eval_duration of a plain non-streamed call with the same prompt shape, options and threads."""
    ep = runtime.endpoints()[0]
    opts = {"num_predict": n_gen, "seed": profile.workload.seed, "temperature": profile.single.temperature,
            "num_thread": runtime.threads}
    wl = load_workload()
    out = []
    for model in profile.models:
        runtime.switch(model, {})
        recs = _harness_calls(profile, ep, model.name, opts, requests_n)
        ref = []
        for i in range(requests_n):
            nonce = prompt_nonce(f"{profile.study}/bench-clients/{model.name}", "single", "analysis", "plain", i + 1)
            body = {"model": model.name, "messages": wl.messages("single", "analysis", nonce), "stream": False,
                    "options": opts}
            done = requests.post(ep.url + "/api/chat", json=body, timeout=profile.workload.timeout_s).json()
            ref.append(metrics.decode_tps_server(done.get("eval_count"),
                                                 metrics.server_duration_ms(done.get("eval_duration"))))
        reference = statistics.fmean(r for r in ref if r)
        client_tps = statistics.fmean(r.decode_tps_client for r in recs)
        server_tps = statistics.fmean(r.decode_tps_server for r in recs)
        out.append({"model": model.name, "engine": "ollama", "reference": "Ollama eval rate, stream: false",
                    "threads": runtime.threads, "n_gen": n_gen, "reference_tps": reference,
                    "reference_std": statistics.stdev(ref) if len(ref) > 1 else None,
                    "harness_client_tps": client_tps, "harness_server_tps": server_tps,
                    "ratio_client_to_reference": client_tps / reference,
                    "ratio_server_to_reference": server_tps / reference})
    return out


def measure(loaded, runtime, results_dir: Path, *, requests_n: int = 5, num_predict: int = 20000,
            pace_tps: float = 20000.0, engine: bool = True) -> dict:
    """Everything `client_overhead.json` holds: both clients' floors, and (with `engine`) the harness
    against the engine's own rate where the bundle runs the engine (it starts the servers it needs
    and stops those it started). A study measures the latter interleaved with its runs instead:
    every drift probe pairs streamed and plain calls (bench/study/instrument.py)."""
    agent, reason = rust.find_rust_agent(containerized=False)  # the client's own cost, not docker run's
    rust_cmd = agent.command(results_dir) if agent else None
    result = {"client_floors": client_floors(rust_cmd, requests_n=requests_n, num_predict=num_predict,
                                             pace_tps=pace_tps),
              "measured_at": utc_now(), "rust_agent": agent.source if agent else reason,
              "harness_vs_engine": [], "host": manifest.host_info(), "harness": manifest.git_state()}
    if not engine:
        result["harness_vs_engine_missing"] = ("measured interleaved with the study: each drift probe pairs "
                                               "streamed harness calls with plain calls (probes.jsonl)")
        return result
    if runtime.kind not in ("local", "ollama"):
        result["harness_vs_engine_missing"] = f"the bundle does not run the engine of the {runtime.kind} runtime"
        return result
    owns_servers = not runtime.is_running()
    try:
        if runtime.kind == "local":
            result["harness_vs_engine"] = harness_vs_llama_bench(loaded.profile, runtime)
        else:
            runtime.up()
            result["harness_vs_engine"] = harness_vs_ollama(loaded.profile, runtime)
    finally:
        if owns_servers:
            runtime.down()
    return result


def cached_measure(loaded, runtime, store, *, engine: bool = True) -> tuple[dict, bool]:
    """`measure()` once per host, harness commit, Rust agent (and profile, with `engine`) (cached
    in the bundle's cache), written to the study's client_overhead.json; True when it came from
    the cache."""
    agent, _ = rust.find_rust_agent(containerized=False)
    key = hashlib.sha256(json.dumps({"host": manifest.host_info(), "harness": manifest.git_state(),
                                     "agent": agent.binary_sha256 if agent else None,
                                     "profile": loaded.sha256 if engine else None, "engine": engine},
                                    sort_keys=True).encode()).hexdigest()[:24]
    memo = cache_dir() / "client_overhead" / f"{key}.json"
    cached = memo.is_file()
    result = json.loads(memo.read_text()) if cached else measure(loaded, runtime, store.root.parent, engine=engine)
    if not cached:
        atomic_write_json(memo, result)
    atomic_write_json(store.root / CLIENT_OVERHEAD_NAME, result)
    return result, cached


def main() -> None:
    """Subprocess entry point for the pinned Python client measurement."""
    if len(sys.argv) == 6 and sys.argv[1] == "--python-client":
        _, _, url, api, n, tokens = sys.argv
        print(json.dumps(python_stream_bench(url, api, int(n), int(tokens))))
    else:
        raise SystemExit("usage: python -m bench.study.overhead --python-client URL API REQUESTS NUM_PREDICT")


if __name__ == "__main__":
    main()
