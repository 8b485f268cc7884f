"""llama-server gets an API key per study (issue 18, item 9): the real server refuses a call
without it (HTTP 401), both clients send it, and it is in no command line, state file, repr or
runtime description (the manifest's source)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
import requests

from bench.clients import rust
from bench.clients.streaming import CallContext, StreamingClient
from bench.config.profile import ModelSpec, ServerConfig

from test_parity import single_job

pytestmark = pytest.mark.llama
MODEL = "smollm2-135m"
OPTIONS = {"num_predict": 8, "seed": 42}
MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture()
def served(llama_runtime):
    llama_runtime.switch(ModelSpec(name=MODEL), {"a": ServerConfig(gpu_layers=0, ctx=1024)})
    return llama_runtime


def test_a_call_without_the_key_is_refused(served):
    ep = served.endpoints()[0]
    direct = requests.Session()
    direct.trust_env = False
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    assert direct.post(ep.url + "/v1/chat/completions", json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert direct.post(ep.url + "/v1/chat/completions", json=body, headers=wrong, timeout=60).status_code == 401
    assert direct.get(ep.url + "/props", timeout=10).status_code == 401
    assert direct.get(ep.url + "/health", timeout=10).status_code == 200  # the health gate needs none


def test_both_clients_send_the_key(served, tmp_path):
    ep = served.endpoints()[0]
    ctx = CallContext("single", "analysis", "single", time.perf_counter_ns(), "0123456789abcdef")
    record = StreamingClient(ep.url, ep.api, timeout_s=120).chat(MODEL, MESSAGES, OPTIONS, ctx)
    assert record.output_tokens and record.output_text
    doc = rust.run_job(rust.RustAgent((str(rust.NATIVE_BINARY),), "native"),
                       single_job(ep.url, "openai", "apikey/rust", OPTIONS, model=MODEL, attempts=1, timeout_s=120),
                       tmp_path, tmp_path, timeout_s=300)
    assert len(doc.requests) == 2 and all(r.output_tokens for r in doc.requests)
    assert served.api_key() not in (tmp_path / rust.JOB_NAME).read_text(), "the key is not in job.json"


def test_the_key_is_kept_secret(served):
    key = served.api_key()
    assert len(key) >= 40  # secrets.token_urlsafe(32)
    key_file = served.key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    ep = served.endpoints()[0]
    assert ep.api_key == key and key not in repr(ep) and "api_key" not in ep.__dict__
    assert key not in json.dumps(served.describe(), default=str)
    for server in served.servers.values():
        st = server.state()
        assert key not in Path(f"/proc/{st.pid}/cmdline").read_bytes().decode(errors="replace")
        assert key not in server.state_file.read_text()
        assert "--api-key-file" in st.args
