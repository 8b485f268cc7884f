"""How the Python matrix runs the Rust agents (rust-agents/, binary `tr116-agent`).

The binary comes from the Docker image where a Docker engine is usable and the image exists,
else from `cargo build --release`. With neither, the Rust suite is recorded as skipped with the
reason, never silently dropped.

The contract between the two: the job file (data/job.schema.json, checked here before it is written
and by the agent when it loads it) and, when the agent fails, its last stderr line, one JSON object
(data/agent_error.schema.json). The agent writes its document to a file of its own in the run
folder (AGENT_OUT_NAME), never to metrics.json: run_job reads and checks it and hands the typed
document back, and only the harness writes metrics.json, whole, with its own blocks added. A
harness that dies in between leaves no metrics.json that resume would count.

A server's API key (llama-server's per-study key) reaches the agent in its environment
(API_KEY_ENV), never in job.json or on its command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jsonschema import Draft202012Validator

from bench.clients.streaming import api_key_for
from bench.config.job import Job
from bench.core.errors import BenchError, RequestError, error_kinds
from bench.core.paths import DATA_DIR, REPO_ROOT, RUST_CRATE_DIR
from bench.core.records import RunDocument
from bench.core.store import atomic_write_json, read_run
from bench.host.assets import file_sha256
from bench.host.machine import docker_engine

IMAGE = "tr116-rust-agents:local"
NATIVE_BINARY = RUST_CRATE_DIR / "target" / "release" / "tr116-agent"
JOB_SCHEMA_FILE = DATA_DIR / "job.schema.json"
AGENT_ERROR_SCHEMA_FILE = DATA_DIR / "agent_error.schema.json"
EXIT_BAD_JOB, EXIT_REQUEST_FAILED = 2, 3
JOB_NAME = "job.json"
# where the agent writes its document (atomically, via <name>.tmp), beside job.json; deleted once read
AGENT_OUT_NAME = "agent-metrics.json"
# a crash's stderr tail quoted in its error
STDERR_TAIL_CHARS = 600
# the environment variable the agent reads the servers' API key from (rust-agents client.rs API_KEY_ENV)
API_KEY_ENV = "TR116_API_KEY"


@dataclass(frozen=True)
class RustAgent:
    """A way to run tr116-agent: a command prefix and where it came from."""

    prefix: tuple[str, ...]
    source: str  # "docker image <id>" or "native <path>"
    binary_sha256: str | None = None

    def command(self, results_dir: Path, *args: str) -> list[str]:
        """The full command line; the results folder is mounted when the agent runs in Docker."""
        return [p.replace("{results}", str(results_dir)) for p in self.prefix] + list(args)


def _docker_image_id() -> str | None:
    engine, _ = docker_engine()
    if engine is None:
        return None
    try:
        return engine.images.get(IMAGE).id
    except Exception:  # no such image: fall through to the native binary
        return None


def _image_agent() -> RustAgent | None:
    image = _docker_image_id()
    if not image:
        return None
    uid = f"{os.getuid()}:{os.getgid()}"
    # Host network so 127.0.0.1 URLs reach the servers; the repo's data and the results are
    # mounted at the same paths, so job files need no path translation.
    # `-e NAME` without a value passes the caller's value on, so the key is not in docker's argv
    prefix = ("docker", "run", "--rm", "--network", "host", "--user", uid, "-e", API_KEY_ENV,
              "-v", f"{REPO_ROOT}:{REPO_ROOT}:ro", "-v", "{results}:{results}", IMAGE)
    return RustAgent(prefix, f"docker image {image}", image)


def _native_agent() -> RustAgent | None:
    if not NATIVE_BINARY.is_file():
        return None
    return RustAgent((str(NATIVE_BINARY),), f"native {NATIVE_BINARY}", file_sha256(NATIVE_BINARY))


def find_rust_agent(containerized: bool = True) -> tuple[RustAgent | None, str]:
    """The Rust agent to use, or None and the reason there is none. `containerized`: the image
    first (the docker runtime, whose `up` builds it from the current binary), else the native
    binary first: a stale image must not stand in for the binary setup just built, and a
    `docker run` per job would cost CPU beside CPU-bound servers."""
    override = os.environ.get("TR116_AGENT_BIN")
    if override:
        return RustAgent((override,), f"native {override} (TR116_AGENT_BIN)"), ""
    order = (_image_agent, _native_agent) if containerized else (_native_agent, _image_agent)
    for find in order:
        agent = find()
        if agent is not None:
            return agent, ""
    reasons = ["no Docker image " + IMAGE]
    if shutil.which("cargo") is None:
        reasons.append("no cargo to build rust-agents")
    else:
        reasons.append(f"{NATIVE_BINARY} not built (run `invoke build-rust`)")
    return None, "; ".join(reasons)


def build_native() -> Path:
    if shutil.which("cargo") is None:
        raise BenchError("cargo is not installed: install Rust (rustup) to build rust-agents")
    done = subprocess.run(["cargo", "build", "--release", "--locked"], cwd=RUST_CRATE_DIR)
    if done.returncode != 0:
        raise BenchError(f"cargo build --release failed (exit {done.returncode}) in {RUST_CRATE_DIR}: "
                         "its errors are printed above")
    return NATIVE_BINARY


@lru_cache(maxsize=None)
def _validator(path: Path) -> Draft202012Validator:
    return Draft202012Validator(json.loads(path.read_text()))


def _violations(doc, schema: Path) -> list[str]:
    """Each way `doc` breaks the schema, as "key `a/b`: what is wrong" (the agent words them alike)."""
    out = []
    for err in sorted(_validator(schema).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        key = "/".join(map(str, err.absolute_path))
        out.append(f"key `{key}`: {err.message}" if key else err.message)
    return out


def validate_job(job: dict) -> None:
    """Refuse a job that breaks data/job.schema.json, naming the keys (a harness bug: BenchError)."""
    problems = _violations(job, JOB_SCHEMA_FILE)
    if problems:
        raise BenchError(f"bad tr116-agent job ({JOB_SCHEMA_FILE.name}): " + "; ".join(problems[:5]))


def agent_failure(returncode: int, stderr: str) -> BenchError:
    """The error a failed tr116-agent run stands for, from its last stderr line (one JSON object,
    data/agent_error.schema.json): a failed request is a RequestError of its kind; a refused job or
    the agent's own failure is a BenchError. An agent killed by a signal (the kernel's OOM killer,
    a kill) is a `crash`, as a killed server runner is. One that exited without that line (a
    panic) is malformed_stream, permanent: the agent broke its protocol, and neither a retry nor
    the fallback ladder would help. Either way its stderr tail, on one line, says what happened."""
    lines = stderr.strip().splitlines()
    try:
        line = json.loads(lines[-1]) if lines else None
    except ValueError:
        line = None
    known = {k.kind for k in error_kinds()}
    if isinstance(line, dict) and not _violations(line, AGENT_ERROR_SCHEMA_FILE):
        kind, message = line["error_kind"], line["message"]
        if returncode == EXIT_REQUEST_FAILED and kind in known:
            return RequestError(kind, f"tr116-agent: {message}")
        if returncode != EXIT_REQUEST_FAILED and kind is None:
            what = "refused the job" if returncode == EXIT_BAD_JOB else "failed"
            return BenchError(f"tr116-agent {what} (exit {returncode}): {message}")
    tail = " ".join(stderr.strip()[-STDERR_TAIL_CHARS:].split()) or "(no stderr)"
    if returncode < 0:
        return RequestError("crash", f"tr116-agent was killed by signal {-returncode} "
                                     f"({_signal_name(-returncode)}); stderr ends: {tail}")
    return RequestError("malformed_stream", f"tr116-agent exited {returncode} without a valid error line; "
                                            f"stderr ends: {tail}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def agent_env(job: Job) -> dict[str, str]:
    """The agent's environment: ours, with the API key of the job's servers (or none)."""
    keys = {api_key_for(a.endpoint) for a in job.agents.values()} - {None}
    if len(keys) > 1:
        raise BenchError("the job's endpoints have different API keys; tr116-agent takes one (TR116_API_KEY)")
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if keys:
        env[API_KEY_ENV] = keys.pop()
    return env


def _agent_document(path: Path) -> RunDocument:
    """The agent's document, checked once: the schema (the source of truth), then the models. A
    missing or failing one is the agent breaking its protocol (malformed_stream, permanent)."""
    if not path.is_file():
        raise RequestError("malformed_stream", f"tr116-agent exited 0 without writing {path.name}")
    run = read_run(path, path.parent)
    if run.doc is None:
        raise RequestError("malformed_stream", "Rust metrics.json failed the schema: " + "; ".join(run.problems[:3]))
    return run.doc


# The most calls a job makes one after another: the multi suite's alone phase (collector's two
# stages, then insight's) and its together phase (two stages, both agents at once); single makes 2.
CALLS_IN_A_ROW_MAX = 6


def agent_timeout_s(job: Job) -> float:
    """How long the agent process may run before it is killed as hung: every call in a row may use
    its whole deadline (job.timeout_s) on each of its tries. The waits between tries (at most
    retries.max_wait_s each) are left out: a job that slow fails as a timeout either way."""
    return job.timeout_s * CALLS_IN_A_ROW_MAX * job.retries.attempts


def run_job(agent: RustAgent, job: Job, run_dir: Path, results_dir: Path, timeout_s: float) -> RunDocument:
    """Run one job in `run_dir` (job.json beside the agent's document) and return the typed
    document. Raises RequestError with the agent's error kind when a request failed, BenchError
    when the job was refused (a steps job: Python only) or the agent failed on its own."""
    spec = job.to_json()
    validate_job(spec)
    job_path, out = run_dir / JOB_NAME, run_dir / AGENT_OUT_NAME
    atomic_write_json(job_path, spec)
    cmd = agent.command(results_dir, job.suite, "--job", str(job_path), "--out", str(out),
                        "--job-schema", str(JOB_SCHEMA_FILE))
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=agent_env(job))
        except subprocess.TimeoutExpired:
            raise RequestError("timeout", f"tr116-agent did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            raise agent_failure(proc.returncode, proc.stderr)
        return _agent_document(out)
    finally:
        for left in (out, out.with_name(out.name + ".tmp")):  # a killed agent may leave its .tmp
            left.unlink(missing_ok=True)
