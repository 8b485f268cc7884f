"""How long bench/clients/rust.py lets the Rust agent run before killing it as hung."""

from __future__ import annotations

import json

from bench.clients import rust
from bench.config.job import Job
from bench.config.workload import STAGES
from bench.core.paths import DATA_DIR

JOBS = [Job.model_validate(c["job"]) for c in json.loads((DATA_DIR / "golden" / "jobs.json").read_text())["valid"]]


def calls_in_a_row(job: Job) -> int:
    """A single job's stages; a multi job's agents alone one by one, then together."""
    return len(STAGES) * (len(job.alone_order) + 1 if job.suite == "multi" else 1)


def test_the_agent_may_use_every_deadline_of_its_longest_row_of_calls():
    """A stage or an agent added to the suites without the constant following fails here."""
    assert {job.suite for job in JOBS} == {"single", "multi"}
    assert max(calls_in_a_row(job) for job in JOBS) == rust.CALLS_IN_A_ROW_MAX
    for job in JOBS:
        assert rust.agent_timeout_s(job) == job.timeout_s * rust.CALLS_IN_A_ROW_MAX * job.retries.attempts
