"""The Rust agent from a Docker image, for real, where a Docker engine is reachable.

No image registry is reachable here, so the image is imported from a root filesystem holding
the native binary and the libraries `ldd` names (instead of `docker build` on
docker/Dockerfile.rust-agents, whose base images would have to be pulled). What is tested is
the orchestration: bench.rust finds the image and runs jobs through `docker run --network host`
with the repository and results mounted, as on a GPU host.
"""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from bench import rust
from bench.profile import load_profile
from bench.store import schema_errors
from conftest import smoke_variant

pytestmark = [pytest.mark.docker, pytest.mark.llama]


@pytest.fixture(scope="module")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:  # no engine: this host can't run the test
        pytest.skip(f"no Docker engine reachable ({type(exc).__name__})")
    return client


@pytest.fixture(scope="module")
def imported_image(docker_client):
    if not rust.NATIVE_BINARY.is_file():
        pytest.fail("rust-agents is not built (scripts/setup.sh builds it)")
    libs = subprocess.run(["ldd", str(rust.NATIVE_BINARY)], capture_output=True, text=True).stdout
    paths = [w for w in libs.split() if w.startswith("/")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:  # copy the libraries, not links
        tar.add(rust.NATIVE_BINARY, arcname="usr/local/bin/tr116-agent")
        for p in paths:
            tar.add(p, arcname=p.lstrip("/"))
    previous = None
    try:
        previous = docker_client.images.get(rust.IMAGE)
    except Exception:
        pass
    repo, tag = rust.IMAGE.split(":")
    docker_client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag,
                                             changes=['ENTRYPOINT ["/usr/local/bin/tr116-agent"]'])
    yield docker_client.images.get(rust.IMAGE).id
    if previous is None:
        docker_client.images.remove(rust.IMAGE, force=True)


def test_rust_jobs_run_from_the_image(imported_image, tmp_path, results_dir, monkeypatch):
    from bench.plan import build_plan
    from bench.runner import run_matrix
    from bench.runtimes import create_runtime
    from bench.store import Store

    monkeypatch.delenv("TR116_AGENT_BIN", raising=False)
    agent, reason = rust.find_rust_agent()
    assert agent is not None and agent.source.startswith("docker image"), reason
    path = smoke_variant(tmp_path, lambda d: (d["single"].update(langs=["rust"]),
                                              d["multi"].update(enabled=True, langs=["rust"],
                                                                scenarios=["chimera_homo"]),
                                              d["models"].pop(1)))
    loaded = load_profile(path)
    runtime = create_runtime(loaded.profile)
    try:
        plan = build_plan(loaded.profile)
        store = Store("test")
        outcome = run_matrix(loaded, plan, runtime, store, progress=False)
    finally:
        runtime.down()
    assert outcome.done == 2 and outcome.failed == 0
    for cell in plan.cells:
        (_, doc), = store.run_docs(cell.rel_dir)
        assert doc["lang"] == "rust" and schema_errors(doc) == []
