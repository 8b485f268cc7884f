"""Real Ollama memory failures, against the real Docker engine (.ci/run starts it): the local CPU
Ollama image in a memory-limited container fails in both shapes the fault handling must survive,
and the recorded fixture the fault tests replay has those shapes. See tests/ollama_memory.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

import ollama_memory as om
from docker_env import build_images, docker_client, unavailable


@pytest.fixture(scope="module")
def engine():
    return docker_client()


@pytest.fixture(scope="module")
def model():
    from bench.host.assets import file_sha256, model_file

    try:
        path = model_file(om.MODEL)
    except Exception as exc:  # not set up: scripts/setup.sh installs the model packages
        unavailable(f"no {om.MODEL} GGUF: {exc}")
    return path, file_sha256(path)


@pytest.fixture(scope="module")
def image(engine):
    build_images("ollama")
    tag = om.ollama_image()
    engine.images.get(tag)  # raises if the script did not make it
    return tag


@pytest.fixture(scope="module")
def volume(engine, image, model):
    with om.model_volume(engine, image, *model) as name:
        yield name
    assert not engine.volumes.list(filters={"label": "org.tr116.test=ollama-memory"})


def _no_test_containers_left(engine):
    assert not engine.containers.list(all=True, filters={"label": "org.tr116.test=ollama-memory"})


def _tokens(lines: list[dict]) -> int:
    return sum(1 for line in lines if line.get("response"))


@pytest.mark.docker
def test_killed_while_loading_is_http_500(engine, image, volume):
    result = om.run_case(engine, image, om.LOAD, volume)["load"]
    assert result["status"] == 500
    assert result["body"] == {"error": om.LOAD_KILLED}
    assert result["oom_kill"] >= 1
    assert result["inspect_oom_killed"] is False  # only the runner died: the counter is the sign
    assert result["server_alive"]
    _no_test_containers_left(engine)


@pytest.mark.docker
def test_killed_mid_generation_is_an_error_line_after_http_200(engine, image, volume):
    # Under the memory limit the kernel picks the victim: usually the runner (this case), now and
    # then the server itself, whose stream then just stops. That other shape gets one more try.
    for _ in range(2):
        results = om.run_case(engine, image, om.MIDSTREAM, volume, then=om.MIDSTREAM_NONSTREAM)
        stream = results["midstream"]
        if stream.get("lines") and "error" in stream["lines"][-1]:
            break
    assert stream["status"] == 200 and stream["content_type"] == "application/x-ndjson"
    assert _tokens(stream["lines"]) >= 1, "the runner must die after some tokens, not while loading"
    assert stream["lines"][-1] == {"error": om.MIDSTREAM_EOF}
    assert not any(line.get("done") for line in stream["lines"])
    assert stream["oom_kill"] >= 1 and stream["server_alive"]
    # The server survives and loads the model again; without streaming the same death is an HTTP 500.
    again = results["midstream_nonstream"]
    assert again["status"] == 500 and again["body"] == {"error": om.MIDSTREAM_EOF}
    assert again["oom_kill"] > stream["oom_kill"]
    _no_test_containers_left(engine)


@pytest.mark.docker
def test_container_is_removed_when_the_test_fails(engine, image):
    with pytest.raises(RuntimeError, match="boom"):
        with om.limited_ollama(engine, image, om.LOAD) as (container, url):
            assert requests.get(url + "/api/version", timeout=10).json()["version"]
            raise RuntimeError("boom")
    _no_test_containers_left(engine)


def test_recorded_fixture_has_both_shapes():
    record = json.loads(Path(om.FIXTURE).read_text())
    load, stream, nonstream = (record["cases"][k] for k in ("load", "midstream", "midstream_nonstream"))
    assert (load["status"], load["body"]["error"]) == (500, om.LOAD_KILLED)
    assert stream["status"] == 200 and _tokens(stream["lines"]) > 0
    assert stream["lines"][-1] == {"error": om.MIDSTREAM_EOF}
    assert (nonstream["status"], nonstream["body"]["error"]) == (500, om.MIDSTREAM_EOF)
    assert all(case["oom_kill"] >= 1 and not case["inspect_oom_killed"] for case in record["cases"].values())
