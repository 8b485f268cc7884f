"""Real Ollama memory failures: the local CPU Ollama image in a memory-limited container.

On a cgroup v1 host Ollama does not see a container's memory limit (it reads only the cgroup v2
files), so it never refuses up front: the kernel kills its runner when the container's memory
runs out. With Gemma 3 270M (Ollama's Go engine; the runner holds ~550 MiB once generating):

- `load`: 400 MiB. The runner is killed while loading the model:
  HTTP 500 {"error":"llama runner process has terminated: signal: killed"}.
- `midstream`: 900 MiB with GOGC=off. The model loads and streams; with the Go collector off the
  runner's heap grows by ~3 MiB per generated token (sampling over Gemma's 262k-token vocabulary),
  so the runner is killed a few dozen tokens in: HTTP 200, token lines, then
  {"error":"an error was encountered while running the model: unexpected EOF"} and no done line.
  With the default collector the window between "killed while loading" and "runs" is ~30 MiB
  (530–560 MiB) and depends on timing, so the test uses the deterministic growth instead.
- `midstream_nonstream`: the same server again with "stream": false: HTTP 500 with that text.

Each limited container starts on a volume where an unlimited one already created the model over
HTTP (blob upload, then /api/create), so it only loads and generates. With GOGC=off 900 MiB gives
~70 tokens (~3.1 MiB per token: 700 MiB gives ~6, 1000 MiB ~100); at 650 MiB the runner dies
before answering: HTTP 500 "llama runner process no longer running: -1 ".

The server itself survives each time. `docker inspect` says OOMKilled=false (only a child died);
the container's cgroup `oom_kill` counter is the reliable sign.

Run as a script to record what Ollama answered into tests/fixtures/ollama_memory_failures.json
(the fault tests replay it):  python tests/ollama_memory.py [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ollama_memory_failures.json"
MODEL = "gemma3-270m"  # bench.host.assets' name for the Gemma 3 270M GGUF shipped on PyPI
PROMPT = "Write a long story about a dragon."
LOAD_KILLED = "llama runner process has terminated: signal: killed"
MIDSTREAM_EOF = "an error was encountered while running the model: unexpected EOF"


@dataclass(frozen=True)
class Case:
    name: str
    memory: str | None               # docker's --memory (swap is set to the same: none)
    env: dict = field(default_factory=dict)
    num_ctx: int = 2048
    num_predict: int = 64
    stream: bool = True


LOAD = Case("load", "400m")
MIDSTREAM = Case("midstream", "900m", {"GOGC": "off"}, num_ctx=8192, num_predict=400)
MIDSTREAM_NONSTREAM = Case("midstream_nonstream", MIDSTREAM.memory, MIDSTREAM.env, MIDSTREAM.num_ctx,
                           MIDSTREAM.num_predict, stream=False)
LABELS = {"org.tr116.test": "ollama-memory"}


def ollama_image() -> str:
    """The local CPU image's tag, as scripts/build-images.sh names it."""
    import os
    import subprocess

    binary = os.environ.get("OLLAMA_BIN", str(Path(sys.prefix) / "bin" / "ollama"))
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    version = (out.stdout + out.stderr).rsplit("version is", 1)[-1].strip()
    return f"tr116-ollama:cpu-{os.environ.get('TR116_OLLAMA_VERSION', version)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def oom_kills(container) -> int:
    """The container's cgroup oom_kill counter, as the docker runtime reads it for failures.jsonl."""
    from bench.runtimes.docker import cgroup_oom_kills

    count = cgroup_oom_kills(container)
    if count is None:
        raise RuntimeError("no cgroup memory counters visible in the container")
    return count


@contextlib.contextmanager
def limited_ollama(client, image: str, case: Case, volume: str | None = None, startup_s: float = 60):
    """A container of `image` limited to case.memory, its port on 127.0.0.1, the model store on
    `volume` if given; removed on every exit."""
    port = _free_port()
    limits = {"mem_limit": case.memory, "memswap_limit": case.memory} if case.memory else {}
    container = client.containers.run(
        image, detach=True, environment={"OLLAMA_NOPRUNE": "1", **case.env},
        ports={"11434/tcp": ("127.0.0.1", port)}, labels=LABELS,
        volumes={volume: {"bind": "/root/.ollama", "mode": "rw"}} if volume else None, **limits)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_s
        while True:
            try:
                requests.get(url + "/api/version", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                container.reload()
                if container.status != "running" or time.monotonic() > deadline:
                    raise RuntimeError(f"Ollama did not start in {container.name}:\n"
                                       + container.logs().decode()[-2000:]) from None
                time.sleep(0.2)
        yield container, url
    finally:
        container.remove(force=True, v=True)


@contextlib.contextmanager
def model_volume(client, image: str, path: Path, sha256: str):
    """A volume holding MODEL, created over HTTP by an unlimited container; removed on every exit.
    The limited containers only load and generate: with GOGC=off a server that had received the
    blob itself would keep the upload's garbage and could outgrow the runner as the OOM victim."""
    volume = client.volumes.create(f"tr116-test-models-{uuid.uuid4().hex[:12]}", labels=LABELS)
    try:
        with limited_ollama(client, image, Case("prepare", None), volume.name) as (_, url):
            create_model(url, MODEL, path, sha256)
        yield volume.name
    finally:
        volume.remove(force=True)


def create_model(url: str, name: str, path: Path, sha256: str) -> None:
    """Upload the GGUF as a blob, then create the model from it (no registry)."""
    with path.open("rb") as fh:
        resp = requests.post(f"{url}/api/blobs/sha256:{sha256}", data=fh, timeout=300)
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"blob upload: HTTP {resp.status_code}: {resp.text}")
    resp = requests.post(url + "/api/create", json={"model": name, "files": {path.name: f"sha256:{sha256}"},
                                                    "stream": False}, timeout=300)
    if resp.status_code != 200:
        raise RuntimeError(f"create {name}: HTTP {resp.status_code}: {resp.text}")


def generate(url: str, model: str, case: Case) -> dict:
    """One /api/generate call; what came back, exactly (status, body or stream lines)."""
    request = {"model": model, "prompt": PROMPT, "stream": case.stream,
               "options": {"num_ctx": case.num_ctx, "num_predict": case.num_predict, "num_thread": 1}}
    t0 = time.perf_counter()
    with requests.post(url + "/api/generate", json=request, stream=True, timeout=(10, 300)) as resp:
        answer = {"request": request, "status": resp.status_code,
                  "content_type": resp.headers.get("Content-Type")}
        if resp.status_code == 200 and case.stream:
            answer["lines"] = [json.loads(line) for line in resp.iter_lines() if line]
        else:
            answer["body"] = resp.json()
    answer["seconds"] = round(time.perf_counter() - t0, 2)
    return answer


def run_case(client, image: str, case: Case, volume: str, *, then: Case | None = None) -> dict:
    """Run `case` (and `then`, on the same server) in a fresh limited container on `volume`."""
    with limited_ollama(client, image, case, volume) as (container, url):
        results = {}
        for step in (case, then) if then else (case,):
            answer = generate(url, MODEL, step)
            answer.update(memory_limit=case.memory, env=case.env, oom_kill=oom_kills(container),
                          server_alive=requests.get(url + "/api/version", timeout=10).status_code == 200)
            container.reload()
            answer["inspect_oom_killed"] = container.attrs["State"]["OOMKilled"]
            results[step.name] = answer
        return results


def record_all(client, image: str) -> dict:
    from bench.host.assets import file_sha256, model_file

    path = model_file(MODEL)
    sha = file_sha256(path)
    with model_volume(client, image, path, sha) as volume:
        cases = run_case(client, image, LOAD, volume)
        cases |= run_case(client, image, MIDSTREAM, volume, then=MIDSTREAM_NONSTREAM)
    return {"image": image, "model": {"name": MODEL, "file": path.name, "sha256": sha},
            "host": "cgroup v1 (Ollama cannot see the limit), Docker 20.10, 2 cores",
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": cases}


def main() -> None:
    import docker

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    record = record_all(docker.from_env(), ollama_image())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    for name, case in record["cases"].items():
        tail = case.get("body") or case["lines"][-1]
        print(f"{name}: --memory {case['memory_limit']} {case['env'] or ''} → HTTP {case['status']}, "
              f"{len(case.get('lines', []))} lines, last {tail}, oom_kill={case['oom_kill']}, {case['seconds']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
