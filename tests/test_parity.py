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

The contract tests at the end need no engine: on a scripted loopback server both clients must retry
the same unit (a call, transient kinds only, with the same nonces and waits), and run_job must turn
the agent's JSON error line, or its absence, into the right error.
"""

from __future__ import annotations

import http.server
import json
import statistics
import subprocess
import threading
import time

import pytest
from pydantic import ValidationError

from bench.clients import agents, rust
from bench.clients.agents import AgentTarget
from bench.clients.streaming import StreamingClient
from bench.config.job import Job, data_files
from bench.config.profile import ModelSpec, ServerConfig, WorkloadSpec
from bench.config.workload import load_workload, prompt_nonce
from bench.core.errors import BenchError, RequestError, kind_class
from bench.core.store import schema_errors

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def rust_agent():
    """The native binary: this compares the clients, not the packaging (a `docker run` per job
    costs CPU on 2 cores while the server decodes; tests/test_docker_rust_image.py covers it)."""
    if not rust.NATIVE_BINARY.is_file():
        pytest.fail(f"the Rust agent is not built: {rust.NATIVE_BINARY} (scripts/setup.sh)")
    return rust.RustAgent((str(rust.NATIVE_BINARY),), f"native {rust.NATIVE_BINARY}")


def single_job(url: str, api: str, run_key: str, options: dict, *, model: str = MODEL, run_index: int = 1,
               attempts: int = 3, timeout_s: float = 30, config: dict | None = None) -> Job:
    """A single-suite job for one endpoint, as the runner builds one (its document's config must
    pass the schema: by default the server's CPU placement and the options' controls)."""
    config = config or {"gpu_layers": 0, "ctx": 1024, "temperature": 0.8, "seed": options["seed"],
                        "num_predict": options["num_predict"]}
    return Job(suite="single", study=run_key.split("/")[0], run_key=run_key, attempt=1, run_index=run_index,
               retries={"attempts": attempts, "wait_s": agents.RETRY_WAIT_S, "max_wait_s": agents.RETRY_MAX_WAIT_S},
               model={"name": model, "slug": model}, config=config, **data_files(),
               timeout_s=timeout_s, cold_load_ms=1000, contention={"min_tps_ratio": 0.85, "max_ttft_inflation": 2.0},
               agents={"single": {"endpoint": url, "api": api, "model": model, "options": options}})


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
        job = single_job(rs_ep.url, rs_ep.api, run_key, options, run_index=k, timeout_s=120, config=config)
        doc = rust.run_job(rust_agent, job, tmp_path / f"run_{k}", tmp_path, timeout_s=300).to_json()
        assert schema_errors(doc) == [] and doc["lang"] == "rust"
        assert not (tmp_path / f"run_{k}" / rust.AGENT_OUT_NAME).exists()  # read once, then deleted
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
                # both store their raw clock; the timing metrics follow from it
                t = rec["timing"]
                assert rec["ttft_ms"] == pytest.approx((t["content_ns"][0] - t["t_send_ns"]) / 1e6), side
                assert rec["e2e_ms"] == pytest.approx((t["t_done_ns"] - t["t_send_ns"]) / 1e6), side
                assert len(t["content_ns"]) == rec["content_chunks"], side
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

    from bench.core.paths import RUST_CRATE_DIR

    llama_runtime.switch(ModelSpec(name=MODEL), {"a": ServerConfig(gpu_layers=0, ctx=1024)})
    env = {**os.environ, "TR116_LLAMA_URL": llama_runtime.endpoints()[0].url, "TR116_LLAMA_MODEL": MODEL,
           "TR116_API_KEY": llama_runtime.api_key()}
    proc = subprocess.run(["cargo", "test", "--release", "--locked", "-q", "--test", "llama_server"],
                          cwd=RUST_CRATE_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# The contract without an engine: retry scope and the agent's error line, on a scripted server
# (fast; these need the native binary but no model).
# ---------------------------------------------------------------------------------------------


class ScriptedOllama:
    """A loopback /api/chat that answers each request from `replies` in turn (status, body) and
    records the system message's nonce line of each request."""

    def __init__(self, replies: list[tuple[int, bytes]]):
        self.replies, self.nonces = list(replies), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.nonces.append(body["messages"][0]["content"].split("\n", 1)[0][len("[run "):-1])
                status, data = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                self.send_response(status)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _stream(texts, done=True) -> bytes:
    lines = [json.dumps({"message": {"content": t}, "done": False}) for t in texts]
    if done:
        lines.append(json.dumps({"message": {"content": ""}, "done": True, "done_reason": "stop",
                                 "eval_count": len(texts), "eval_duration": 10_000_000}))
    return ("\n".join(lines) + "\n").encode()


CUT, WHOLE = (200, _stream(["par", "tial"], done=False)), (200, _stream(["fine", " text"]))
OPTIONS = {"num_predict": 8, "seed": 42}


def _rust_job(url: str, run_key: str, attempts: int) -> Job:
    return single_job(url, "ollama", run_key, OPTIONS, attempts=attempts)


def test_both_clients_retry_a_cut_call_not_the_run(rust_agent, tmp_path):
    """The first analysis call is cut (stream_cut, transient): each client sends that call again
    with its next nonce, after the same 0.5 s wait, and records call_attempt 2 for it and 1 for the
    report; the run is not started over."""
    run_key = "contract/retry/run_1"
    nonce = {s: [prompt_nonce(run_key, "single", s, "single", a) for a in (1, 2)] for s in ("analysis", "report")}
    want_sent = [nonce["analysis"][0], nonce["analysis"][1], nonce["report"][0]]
    workload = load_workload()
    with ScriptedOllama([CUT, WHOLE]) as server:
        target = AgentTarget("single", StreamingClient(server.url, "ollama"), MODEL, OPTIONS)
        _, records, _ = agents.run_single(target, workload, run_key, attempts=3)
        py_sent = server.nonces
    with ScriptedOllama([CUT, WHOLE]) as server:
        rs_records = rust.run_job(rust_agent, _rust_job(server.url, run_key, 3), tmp_path, tmp_path,
                                  timeout_s=60).to_json()["requests"]
        rs_sent = server.nonces
    assert py_sent == rs_sent == want_sent
    for recs in ([r.to_json() for r in records], rs_records):
        assert [(r["stage"], r["call_attempt"], r["prompt_nonce"]) for r in recs] == [
            ("analysis", 2, nonce["analysis"][1]), ("report", 1, nonce["report"][0])]
        assert recs[0]["output_text"] == "fine text"


def test_both_clients_do_not_retry_a_permanent_kind(rust_agent, tmp_path):
    not_found = (404, json.dumps({"error": f"model '{MODEL}' not found"}).encode())
    with ScriptedOllama([not_found]) as server:
        target = AgentTarget("single", StreamingClient(server.url, "ollama"), MODEL, OPTIONS)
        with pytest.raises(RequestError) as py:
            agents.run_single(target, load_workload(), "contract/nf/run_1", attempts=3)
        assert len(server.nonces) == 1
    with ScriptedOllama([not_found]) as server:
        with pytest.raises(RequestError) as rs:
            rust.run_job(rust_agent, _rust_job(server.url, "contract/nf/run_1", 3), tmp_path, tmp_path, 60)
        assert len(server.nonces) == 1
    assert py.value.kind == rs.value.kind == "not_found"
    assert "not found" in str(rs.value) and server.url in str(rs.value)  # the agent's own message


def test_a_failed_request_comes_back_with_its_kind(rust_agent, tmp_path):
    """The agent's JSON error line: a cut stream after its one allowed try is stream_cut."""
    with ScriptedOllama([CUT]) as server:
        with pytest.raises(RequestError) as info:
            rust.run_job(rust_agent, _rust_job(server.url, "contract/cut/run_1", 1), tmp_path, tmp_path, timeout_s=60)
    assert info.value.kind == "stream_cut" and info.value.cls == "transient"
    assert not (tmp_path / rust.AGENT_OUT_NAME).exists() and not (tmp_path / "metrics.json").exists()


def test_a_bad_job_is_refused_before_the_agent_runs(tmp_path):
    """A job that breaks the schema cannot be built (bench/config/job.py); the file check names the same
    key (tests/test_job.py shows run_job refusing a job the schema refuses, before it writes it)."""
    job = _rust_job("http://127.0.0.1:9", "contract/bad/run_1", 1).to_json()
    job["agents"]["single"]["options"]["num_predict"] = 0
    with pytest.raises(ValidationError, match=r"agents\.single\.options\.num_predict\n  Input should be greater than "
                                              r"or equal to 1"):
        Job.model_validate(job)
    with pytest.raises(BenchError, match=r"key `agents/single/options/num_predict`: 0 is less than the minimum of 1"):
        rust.validate_job(job)


def test_the_agent_refuses_a_bad_job_itself(rust_agent, tmp_path):
    """A job that skipped Python's check (here written by hand) is refused by the agent: exit 2 and
    an error line without a kind, which run_job turns into a BenchError naming the key."""
    job = _rust_job("http://127.0.0.1:9", "contract/bad/run_1", 1).to_json()
    job["attempt"] = 0
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    proc = subprocess.run(rust_agent.command(tmp_path, "single", "--job", str(path), "--out", str(tmp_path / "m.json"),
                                             "--job-schema", str(rust.JOB_SCHEMA_FILE)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    line = json.loads(proc.stderr.splitlines()[-1])
    assert line["error_kind"] is None and line["class"] is None
    err = rust.agent_failure(proc.returncode, proc.stderr)
    assert isinstance(err, BenchError) and not isinstance(err, RequestError)
    assert "refused the job" in str(err) and "key `attempt`" in str(err)


@pytest.mark.parametrize("script, how, kind", [
    ("echo 'thread main panicked at src/agent.rs:9:5: index out of bounds' >&2; exit 101", "exited 101",
     "malformed_stream"),
    ("echo 'partial output' >&2; kill -9 $$", "killed by signal 9", "crash"),
    ("echo '{\"error_kind\": \"gremlins\", \"class\": \"load\", \"message\": \"m\"}' >&2; exit 3", "exited 3",
     "malformed_stream"),
])
def test_an_agent_that_dies_without_its_error_line(script, how, kind, tmp_path):
    """No valid error line: a panic or a kind the table does not know is a malformed_stream
    (permanent), an agent killed by a signal is a crash (its class from the table); both quote the
    stderr tail."""
    crashing = rust.RustAgent(("sh", "-c", script, "tr116-agent"), "a crashing stand-in")
    job = _rust_job("http://127.0.0.1:9", "contract/crash/run_1", 1)
    with pytest.raises(RequestError) as info:
        rust.run_job(crashing, job, tmp_path, tmp_path, timeout_s=30)
    assert info.value.kind == kind and info.value.cls == kind_class(kind)
    assert how in str(info.value)
    last = script.split("'")[1]
    assert last[:20] in str(info.value), "the stderr tail is quoted"
