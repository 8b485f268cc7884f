"""Python and Rust agents run the same workload against the same real engine, on llama-server and
on Ollama.

Each round runs the Python agent on the first instance and the Rust agent on the second, both with
the same run key, so both send the same bytes (the prompt nonce is the same function in both
languages) and neither instance has seen the prompt before (Ollama's prompt cache cannot be turned
off). Same bytes, seed and model give the same tokens and text.

Tolerances: both clients stamp token arrivals on loopback and their own cost is ~1.4 µs (Rust) and
~6 µs (Python) of CPU per token (`invoke bench-clients`), against ~5–30 ms per token here, so the
clients themselves differ by well under 1 %. What differs between two runs is the machine: on 2
shared cores a server's decode rate varies by ~5–10 % from run to run. Medians of interleaved runs
are therefore required to agree within 20 % (rates, durations) and TTFT within 25 % or 40 ms,
whichever is larger.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest

from bench import agents, rust
from bench.agents import AgentTarget
from bench.clients import StreamingClient
from bench.profile import ModelSpec, ServerConfig, WorkloadSpec
from bench.store import schema_errors
from bench.workload import load_workload, prompt_nonce

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def rust_agent():
    """The native binary: this compares the clients, not the packaging (a `docker run` per job
    costs CPU on 2 cores while the server decodes; tests/test_docker_rust_image.py covers it)."""
    if not rust.NATIVE_BINARY.is_file():
        pytest.fail(f"the Rust agent is not built: {rust.NATIVE_BINARY} (scripts/setup.sh)")
    return rust.RustAgent((str(rust.NATIVE_BINARY),), f"native {rust.NATIVE_BINARY}")


@pytest.fixture(params=[pytest.param("llama_runtime", marks=pytest.mark.llama),
                        pytest.param("ollama_runtime", marks=pytest.mark.ollama)])
def engine(request):
    return request.getfixturevalue(request.param)


def test_python_and_rust_records_agree(engine, rust_agent, tmp_path):
    py_ep, rs_ep = engine.endpoints()
    engine.switch(ModelSpec(name=MODEL), {ep.name: ServerConfig(gpu_layers=0, ctx=1024) for ep in (py_ep, rs_ep)})
    wl_spec = WorkloadSpec(seed=42, num_predict=32, ignore_eos=True)
    threads = 1 if py_ep.api == "ollama" else None
    options = agents.request_options(wl_spec, None, threads) | {"temperature": 0.8}
    workload = load_workload()
    target = AgentTarget("single", StreamingClient(py_ep.url, py_ep.api), MODEL, options)
    agents.warmup(target, workload, 1, "parity/python")
    agents.warmup(AgentTarget("single", StreamingClient(rs_ep.url, rs_ep.api), MODEL, options), workload, 1,
                  "parity/rust")
    config = {"gpu_layers": 0, "ctx": 1024, "temperature": 0.8, "seed": 42, "num_predict": 32,
              "ignore_eos": True, "scenario": None}
    py_runs, rs_runs = [], []
    for k in range(1, 6):  # interleaved, so drift hits both clients alike; 5 so one slow run cannot move a median
        run_key = f"parity/{engine.kind}/run_{k}"
        _, records, _ = agents.run_single(target, workload, run_key)
        py_runs.append([r.to_json() for r in records])
        job = rust.job_document(suite="single", study="parity", run_key=run_key, run_index=k,
                                model={"name": MODEL, "slug": MODEL, "baseline": False}, config=config,
                                agents={"single": {"endpoint": rs_ep.url, "api": rs_ep.api, "model": MODEL,
                                                   "options": options}},
                                timeout_s=120, cold_load_ms=1000, retries=3,
                                contention={"min_tps_ratio": 0.85, "max_ttft_inflation": 2.0})
        out = tmp_path / f"run_{k}" / "metrics.json"
        rust.run_job(rust_agent, job, out, tmp_path, timeout_s=300)
        doc = json.loads(out.read_text())
        assert schema_errors(doc) == [] and doc["lang"] == "rust"
        assert doc["workload"]["prompts_sha256"] == workload.prompts_sha256
        assert doc["workload"]["dataset_sha256"] == workload.dataset_sha256  # same data set text, byte for byte
        rs_runs.append(doc["requests"])
        time.sleep(0.1)

    compared = 0
    for k, (py_run, rs_run) in enumerate(zip(py_runs, rs_runs), start=1):
        prompts_agree = True  # the report prompt carries the analysis output, so one retry splits both
        for stage, (py, rs) in enumerate(zip(py_run, rs_run)):
            # the same nonce from the same function in both languages, so the same prompt bytes; a
            # call retried on a transient error (a loaded host) carries its try's nonce on either side
            for side, rec in (("python", py), ("rust", rs)):
                assert rec["prompt_nonce"] == prompt_nonce(f"parity/{engine.kind}/run_{k}", "single",
                                                           ("analysis", "report")[stage], "single",
                                                           rec["call_attempt"]), (side, k, stage)
            prompts_agree = prompts_agree and py["call_attempt"] == rs["call_attempt"]
            if not prompts_agree:
                continue
            compared += 1
            # exact: same prompt in, same tokens and text out (deterministic sampling with a seed)
            assert py["prompt_tokens"] == rs["prompt_tokens"]
            assert py["output_tokens"] == rs["output_tokens"]
            assert py["output_text"] == rs["output_text"] and py["output_text"]
    assert compared >= 6, f"only {compared} of 10 calls went out on the same try in both clients"
    if py_ep.api == "openai":
        assert {r["output_tokens"] for run in py_runs + rs_runs for r in run} == {32}  # ignore_eos

    for stage in (0, 1):
        py = [run[stage] for run in py_runs]
        rs = [run[stage] for run in rs_runs]

        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        for key in ("eval_ms", "prompt_eval_ms", "decode_tps_server", "decode_tps_client"):
            assert med(rs, key) == pytest.approx(med(py, key), rel=0.20), key
        ttft_py, ttft_rs = med(py, "ttft_ms"), med(rs, "ttft_ms")
        assert abs(ttft_rs - ttft_py) <= max(40.0, 0.25 * ttft_py), (ttft_py, ttft_rs)


@pytest.mark.llama
def test_rust_integration_test_against_real_llama_server(llama_runtime):
    """rust-agents/tests/llama_server.rs, pointed at a real llama-server (skipped by plain cargo test)."""
    import os
    import subprocess

    from bench.paths import RUST_CRATE_DIR

    llama_runtime.switch(ModelSpec(name=MODEL), {"a": ServerConfig(gpu_layers=0, ctx=1024)})
    env = {**os.environ, "TR116_LLAMA_URL": llama_runtime.endpoints()[0].url, "TR116_LLAMA_MODEL": MODEL}
    proc = subprocess.run(["cargo", "test", "--release", "--locked", "-q", "--test", "llama_server"],
                          cwd=RUST_CRATE_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" not in proc.stderr
