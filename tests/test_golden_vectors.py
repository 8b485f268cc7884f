"""The shared golden vectors of bench/data/golden/, through the Python functions. rust-agents/tests/
golden.rs runs the same files through the Rust ones, so the two clients are held to one set of
expected values (written by hand from the formulas) rather than to each other."""

from __future__ import annotations

import copy
import json

import pytest
import requests
from tenacity import RetryCallState

from bench.clients import agents, rust
from bench.clients.streaming import PARSERS, CallContext, ServerCounts, StreamingClient, build_record, time_stream
from bench.config.workload import nonce_attempt, prompt_nonce
from bench.core import metrics
from bench.core.errors import BenchError, RequestError
from bench.core.paths import DATA_DIR

GOLDEN = DATA_DIR / "golden"


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def ids(cases: list[dict]) -> list[str]:
    return [c["name"] for c in cases]


def num(value, expected, where: str) -> None:
    if expected is None:
        assert value is None, f"{where}: {value} instead of null"
    else:
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12), where


class Network:
    """A scripted body: `stream()` hands out the reads the way urllib3 does for requests'
    iter_lines, and the clock reads the instant of the latest read (the end of the body once it is
    exhausted), so each line is stamped with the arrival of the read that completed it."""

    def __init__(self, reads: list[dict], eof_ns: int, t_start_ns: int = 0):
        self.reads, self.eof_ns, self.now = reads, eof_ns, t_start_ns

    def clock(self) -> int:
        return self.now

    def stream(self, chunk_size=None, decode_content=True):
        for read in self.reads:
            self.now = read["t_ns"]
            yield bytes.fromhex(read["hex"]) if "hex" in read else read["data"].encode()
        self.now = self.eof_ns

    def close(self):
        pass


class Session:
    """A requests session whose POST answers 200 with the scripted body (a real requests.Response,
    so its own iter_lines splits the lines)."""

    def __init__(self, net: Network):
        self.net = net

    def post(self, url, json=None, stream=False, timeout=None):
        resp = requests.Response()
        resp.status_code, resp.raw, resp.url = 200, self.net, url
        return resp

    def close(self):
        pass


def chat(api: str, net: Network, *, run_t0_ns: int = 0, cold_load_ms: float = 1000.0):
    """The client's whole call on the scripted network: send stamp, parse, stamp, record."""
    client = StreamingClient("http://golden", api, clock=net.clock, session=Session(net))
    ctx = CallContext("single", "analysis", "single", run_t0_ns, "0123456789abcdef", cold_load_ms=cold_load_ms)
    return client.chat("m", [{"role": "user", "content": "hi"}], {"num_predict": 8, "seed": 1}, ctx)


STREAMS = golden("streams.json")["cases"]


@pytest.mark.parametrize("case", STREAMS, ids=ids(STREAMS))
def test_stream_bodies(case):
    """What StreamingClient.chat does with a 200 body: requests' iter_lines, then time_stream."""
    net = Network(case["reads"], case["eof_ns"])
    parser = PARSERS[case["api"]]()
    lines = Session(net).post("http://golden").iter_lines(chunk_size=None)
    want = case["expect"]
    if "error_kind" in want:
        with pytest.raises(RequestError) as info:
            time_stream(lines, parser, net.clock)
        assert info.value.kind == want["error_kind"], info.value
        return
    stamps, texts, t_done = time_stream(lines, parser, net.clock)
    assert texts == want["texts"]
    assert stamps == want["stamps_ns"]
    assert t_done == want["t_done_ns"]
    counts = want["counts"]
    for field in ("output_tokens", "prompt_tokens", "prompt_cached_tokens", "done_reason"):
        assert getattr(parser.counts, field) == counts[field], field
    for field in ("load_ms", "prompt_eval_ms", "eval_ms"):
        num(getattr(parser.counts, field), counts[field], field)


REQUESTS = golden("requests.json")


@pytest.mark.parametrize("case", REQUESTS["cases"], ids=ids(REQUESTS["cases"]))
def test_request_records(case):
    net = Network(case["reads"], eof_ns=2**62, t_start_ns=REQUESTS["t_send_ns"])  # the first clock read sends
    rec = chat(case["api"], net, run_t0_ns=REQUESTS["run_t0_ns"], cold_load_ms=case["cold_load_ms"])
    got = rec.to_json()
    for field, want in case["expect"].items():
        where = f"{case['name']}: {field}"
        if field == "itl_ms" and want is not None:
            assert got["itl_ms"]["n"] == want["n"], where
            for stat in ("mean", "p50", "p95", "max"):
                num(got["itl_ms"][stat], want[stat], f"{where}.{stat}")
        elif isinstance(want, float) or (want is None and isinstance(got[field], float)):
            num(got[field], want, where)
        else:
            assert got[field] == want, where


def records(calls: list[dict], agent: str, phase: str) -> list:
    out = []
    for i, c in enumerate(calls):
        ctx = CallContext(agent, ("analysis", "report")[min(i, 1)], phase, 0, "0123456789abcdef")
        counts = ServerCounts(output_tokens=c["output_tokens"], eval_ms=c["eval_ms"])
        out.append(build_record(ctx, "http://golden", "ollama", "m", c["t_send_ns"], c["content_ns"],
                                ["x"] * len(c["content_ns"]), c["t_done_ns"], counts))
    return out


RUNS = golden("runs.json")


@pytest.mark.parametrize("case", RUNS["single"], ids=ids(RUNS["single"]))
def test_single_run_metrics(case):
    got = agents.single_metrics(records(case["calls"], "single", "single"))
    for field in ("decode_tps", "decode_tps_client", "ttft_ms", "latency_ms"):
        num(got[field], case["expect"][field], field)
    assert got["output_tokens"] == case["expect"]["output_tokens"]


@pytest.mark.parametrize("case", RUNS["multi"], ids=ids(RUNS["multi"]))
def test_multi_run_metrics(case):
    """bench/clients/agents.py run_multi's bookkeeping: an agent's phase time runs from its release to its
    last call's end; the together phase is released at the earlier post-barrier start."""
    recs, t_alone, t_together = [], {}, {}
    for phase in ("alone", "together"):
        for agent in ("collector", "insight"):
            recs += records(case[phase][agent]["calls"], agent, phase)
    for agent in ("collector", "insight"):
        a = case["alone"][agent]
        t_alone[agent] = metrics.agent_time_s(a["t_release_ns"], a["calls"][-1]["t_done_ns"])
    release = min(case["together"][a]["t_release_ns"] for a in ("collector", "insight"))
    done = {a: case["together"][a]["calls"][-1]["t_done_ns"] for a in ("collector", "insight")}
    for agent, t_done in done.items():
        t_together[agent] = metrics.agent_time_s(release, t_done)
    wall = metrics.wall_s(release, max(done.values()))
    th = case["contention"]
    got = agents.multi_metrics(recs, t_alone, t_together, wall, th["min_tps_ratio"], th["max_ttft_inflation"])
    want = case["expect"]
    for field in ("wall_s", "seq_s", "speedup", "efficiency_pct", "evenness_pct"):
        num(got[field], want[field], field)
    assert got["contention"] is want["contention"]
    assert got["legacy_contention"] is want["legacy_contention"]
    for agent in ("collector", "insight"):
        assert set(got["agents"][agent]) == set(want["agents"][agent])
        for field, value in want["agents"][agent].items():
            num(got["agents"][agent][field], value, f"{agent}.{field}")


@pytest.mark.parametrize("case", RUNS["steps"], ids=ids(RUNS["steps"]))
def test_steps_run_metrics(case):
    """bench/clients/agents.py run_steps's bookkeeping: the first agent alone is the reference (seq_s is
    N times its time); the N agents are released at the earliest post-barrier start."""
    ((first, alone),) = case["alone"].items()
    recs = records(alone["calls"], first, "alone")
    t_alone = metrics.agent_time_s(alone["t_release_ns"], alone["calls"][-1]["t_done_ns"])
    release = min(a["t_release_ns"] for a in case["together"].values())
    done = {agent: a["calls"][-1]["t_done_ns"] for agent, a in case["together"].items()}
    for agent, a in case["together"].items():
        recs += records(a["calls"], agent, "together")
    t_together = {agent: metrics.agent_time_s(release, t_done) for agent, t_done in done.items()}
    th = case["contention"]
    got = agents.steps_metrics(recs, t_alone, t_together, metrics.wall_s(release, max(done.values())),
                               th["min_tps_ratio"], th["max_ttft_inflation"])
    want = case["expect"]
    assert set(got) == set(want)
    assert (got["n_agents"], got["contention"]) == (want["n_agents"], want["contention"])
    for field, value in want.items():
        if field not in ("n_agents", "contention", "agents"):
            num(got[field], value, field)
    assert set(got["agents"]) == set(want["agents"])
    for agent, fields in want["agents"].items():
        assert set(got["agents"][agent]) == set(fields)
        for field, value in fields.items():
            num(got["agents"][agent][field], value, f"{agent}.{field}")


NONCES = golden("nonces.json")


@pytest.mark.parametrize("case", NONCES["prompt_nonce"], ids=lambda c: c["why"])
def test_prompt_nonces(case):
    assert prompt_nonce(case["run_key"], case["agent"], case["stage"], case["phase"], case["attempt"]) == case["nonce"]


@pytest.mark.parametrize("case", NONCES["nonce_attempt"], ids=lambda c: c["why"])
def test_nonce_attempts(case):
    assert nonce_attempt(case["run_attempt"], case["call_attempt"], case["attempts"]) == case["attempt"]


JOBS = golden("jobs.json")


@pytest.mark.parametrize("case", JOBS["valid"], ids=ids(JOBS["valid"]))
def test_valid_jobs(case):
    rust.validate_job(case["job"])


def _parent(doc: dict, path: str) -> tuple[dict, str]:
    *parents, key = path.split("/")
    for p in parents:
        doc = doc[p]
    return doc, key


@pytest.mark.parametrize("case", JOBS["invalid"], ids=ids(JOBS["invalid"]))
def test_invalid_jobs(case):
    job = copy.deepcopy(JOBS["valid"][case["base"]]["job"])
    for path, value in case.get("set", {}).items():
        parent, key = _parent(job, path)
        parent[key] = value
    for path in case.get("remove", []):
        parent, key = _parent(job, path)
        del parent[key]
    with pytest.raises(BenchError) as info:
        rust.validate_job(job)
    assert case["mentions"] in str(info.value)


RETRIES = golden("retries.json")


def _state(attempt: int, exc: Exception | None = None) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if exc is not None:
        state.set_exception((type(exc), exc, None))
    return state


def test_transient_kinds_are_the_retried_ones():
    from bench.core.errors import TRANSIENT, error_kinds
    assert {k.kind: k.cls == TRANSIENT for k in error_kinds()} == RETRIES["retried"]
    retry = agents.retrying(3).retry
    for kind, retried in RETRIES["retried"].items():
        assert retry(_state(1, RequestError(kind, "x"))) is retried, kind


@pytest.mark.parametrize("case", RETRIES["backoff"], ids=lambda c: c["why"])
def test_backoff_waits(case, monkeypatch):
    """tenacity's wait_exponential with the job's numbers (the Rust agent's Retries::wait_after)."""
    monkeypatch.setattr(agents, "RETRY_WAIT_S", case["wait_s"])
    monkeypatch.setattr(agents, "RETRY_MAX_WAIT_S", case["max_wait_s"])
    wait = agents.retrying(len(case["waits_s"]) + 1).wait
    assert [wait(_state(n)) for n in range(1, len(case["waits_s"]) + 1)] == pytest.approx(case["waits_s"])
