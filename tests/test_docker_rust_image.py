"""The Rust agent from its Docker image, for real (.ci/run starts the engine): the image that
`scripts/build-images.sh rust` builds with `docker build` (docker/Dockerfile.rust-agents, target
`prebuilt`, on the local Debian base: no registry), found by bench.clients.rust and run through
`docker run --network host` with the repository and the results mounted, as on a GPU host.
"""

from __future__ import annotations

import pytest

from bench.clients import rust
from bench.config.profile import load_profile
from bench.core.store import schema_errors

from conftest import smoke_variant
from docker_env import build_images, docker_client

pytestmark = [pytest.mark.docker, pytest.mark.llama]


@pytest.fixture(scope="module")
def built_image():
    client = docker_client()
    if not rust.NATIVE_BINARY.is_file():
        pytest.fail(f"{rust.NATIVE_BINARY} is missing (scripts/setup.sh builds it)")
    build_images("rust")  # cached by content: a real build the first time, a label check after
    image = client.images.get(rust.IMAGE)
    assert image.attrs["Config"]["Entrypoint"] == ["tr116-agent"]
    assert len(image.labels["org.tr116.inputs"]) == 64
    return image.id


def test_rust_jobs_run_from_the_image(built_image, tmp_path, results_dir, monkeypatch):
    from bench.config.plan import build_plan
    from bench.core.store import Store
    from bench.runtimes import create_runtime
    from bench.study.runner import run_matrix

    monkeypatch.delenv("TR116_AGENT_BIN", raising=False)
    agent, reason = rust.find_rust_agent()
    assert agent is not None and agent.source == f"docker image {built_image}", reason
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
        (run,) = store.iter_runs(cell.rel_dir)
        doc = run.doc.to_json()
        assert doc["lang"] == "rust" and schema_errors(doc) == []
