"""Input the bundle did not make is data, never code (issue 18, items 1 and 10): a manifest someone
sent, a profile with a typo or a trap in it, `compare --out`, text from a foreign study in a CSV,
a torn log line, and secrets that must not travel in a manifest."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench import reproduce as rp
from bench.analysis.tables import build
from bench.config.profile import builtin_profiles, load_profile
from bench.core.csvsafe import csv_text
from bench.core.errors import BenchError
from bench.core.manifest import as_manifest
from bench.core.store import COMPARISON_STUDIES, Store
from bench.host import assets
from bench.report.compare import compare, output_folder
from bench.study import manifest_writer as mf

from test_compare import copy_study
from test_report import FakeRuntime, make_study


class RecordingRuntime(FakeRuntime):
    """Stands in for every runtime reproduce could create: it starts nothing and records what was
    asked, so a test sees whether the manifest's runtime got as far as `up`."""

    created: list[str] = []
    started: list[str] = []

    def __init__(self, profile=None):
        super().__init__()
        self.kind = profile.runtime.kind if profile else "external"
        RecordingRuntime.created.append(self.kind)

    def up(self):
        RecordingRuntime.started.append(self.kind)
        raise AssertionError("the manifest's runtime was started")

    def down(self):
        pass


@pytest.fixture()
def recorder(monkeypatch):
    RecordingRuntime.created, RecordingRuntime.started = [], []
    monkeypatch.setattr(rp, "create_runtime", RecordingRuntime)
    return RecordingRuntime


def tampered_manifest(tmp_path: Path, edit) -> Path:
    """A real study's manifest.json with its resolved profile edited by `edit(resolved)`."""
    _, store = make_study(tmp_path, overrides={"langs": ["python"], "runs": 1})
    path = store.root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["profile"]["resolved"])
    path.write_text(json.dumps(manifest))
    return path


def as_docker(compose_file: str, overrides: list[str] | None = None):
    def edit(resolved):
        resolved["runtime"] = {**resolved["runtime"], "kind": "docker", "compose_file": compose_file,
                               "compose_overrides": overrides or [],
                               "endpoints": [{"name": "collector", "port": 11434, "api": "ollama"},
                                             {"name": "insight", "port": 11435, "api": "ollama"}]}
    return edit


@pytest.mark.parametrize("where", ["absolute", "dotdot", "override"])
def test_a_manifest_naming_an_outside_compose_file_is_refused_before_anything_starts(tmp_path, results_dir,
                                                                                     recorder, where):
    evil = tmp_path / "evil" / "compose.yaml"
    evil.parent.mkdir()
    evil.write_text("services: {pwn: {image: busybox, command: ['sh', '-c', 'touch /tmp/pwned']}}\n")
    compose, overrides = {"absolute": (str(evil), []), "dotdot": ("../evil/compose.yaml", []),
                          "override": ("compose.yaml", [f"../../{evil}"])}[where]
    manifest = tampered_manifest(tmp_path, as_docker(compose, overrides))
    before = sorted(p.name for p in results_dir.iterdir())
    # even --allow-mismatch (models and runtime may differ) never runs a file the bundle does not own
    with pytest.raises(BenchError, match="refusing to reproduce: the manifest names the compose file") as err:
        rp.reproduce(manifest, allow_mismatch=True, progress=False)
    assert "\n" not in str(err.value)  # one clear line
    assert recorder.created == [] and recorder.started == []  # no runtime exists, none was started
    assert sorted(p.name for p in results_dir.iterdir()) == before  # no new study folder


def test_a_manifest_naming_a_model_file_outside_the_cache_is_refused(tmp_path, results_dir, recorder, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    outside = tmp_path / "elsewhere" / "model.gguf"
    outside.parent.mkdir()
    outside.write_bytes(b"GGUF" + bytes(100))
    link = tmp_path / "cache" / "models" / "link.gguf"  # a link in the cache that points out of it
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    for i, named in enumerate((str(outside), str(link), "../../elsewhere/model.gguf")):
        def edit(resolved, named=named):
            resolved["models"][0].update(source="gguf", file=named)
        (tmp_path / f"study{i}").mkdir()
        manifest = tampered_manifest(tmp_path / f"study{i}", edit)
        with pytest.raises(BenchError, match="outside the bundle's model cache"):
            rp.reproduce(manifest, allow_mismatch=True, progress=False)
    assert recorder.started == []


def test_the_bundles_own_runtime_is_accepted_and_what_will_run_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    docker = load_profile(builtin_profiles()["docker-smoke"]).profile
    lines = rp.vet_runtime(docker)
    assert "compose: compose.yaml, compose.cpu.yaml (project tr116-smoke)" in "\n".join(lines)
    cached = tmp_path / "cache" / "models" / "mine.gguf"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF")
    local = load_profile(builtin_profiles()["smoke-llamacpp"]).profile
    mine = local.models[0].model_copy(update={"file": str(cached)})
    lines = rp.vet_runtime(local.model_copy(update={"models": [mine, *local.models[1:]]}))
    assert f"model {mine.name}: file {cached}" in "\n".join(lines)


def test_fallback_tags_are_identity_checked_like_models():
    profile = load_profile(builtin_profiles()["tr116"]).profile
    tag = "qwen2.5:14b-instruct-q3_K_M"
    recorded = FakeRuntime(digests={tag: "sha256:" + "1" * 64})
    resolved = {"resolved": profile.model_dump(mode="json")}
    models = mf.model_identities(recorded, profile)
    manifest = as_manifest({"profile": resolved, "models": models,
                            "fallback_models": mf.model_identities(recorded, profile, mf.fallback_models(profile))})
    assert [m.name for m in manifest.fallback_models] == [tag]
    assert rp.model_mismatches(manifest, recorded, profile) == []
    changed = FakeRuntime(digests={tag: "sha256:" + "2" * 64})  # the registry now serves other weights
    assert rp.model_mismatches(manifest, changed, profile) == [
        f"fallback tag {tag}: digest was sha256:{'1' * 64}, is now sha256:{'2' * 64}"]
    older = as_manifest({"profile": resolved, "models": models})  # a manifest that never recorded the tag
    assert rp.model_mismatches(older, recorded, profile) == [f"fallback tag {tag}: not in the manifest"]


# ---- compare --out and CSV cells ---------------------------------------------------------------


@pytest.mark.parametrize("out", ["../outside", "/tmp/outside", "a/../../outside", "."])
def test_compare_out_stays_under_results(tmp_path, results_dir, out):
    a, b = copy_study(tmp_path, "hostA"), copy_study(tmp_path, "hostB")
    with pytest.raises(BenchError, match="--out"):
        compare([str(a), str(b)], out=out)
    assert not (tmp_path / "outside").exists() and not results_dir.exists()


def test_compare_out_refuses_a_link_out_of_results(tmp_path, results_dir):
    results_dir.mkdir()
    (results_dir / "link").symlink_to(tmp_path)
    with pytest.raises(BenchError, match="--out"):
        output_folder("link/escape")
    assert output_folder("mine/cmp") == results_dir.resolve() / "mine" / "cmp"


def test_csv_cells_never_run_as_formulas():
    text = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=1", "plain", "-3.5"]
    frame = pd.DataFrame({"text": text, "number": [-1.5, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, -8.0],
                          "flag": [True, False] * 4})
    header, *rows = list(csv.reader(io.StringIO(csv_text(frame), newline="")))
    assert header == ["text", "number", "flag"]
    assert [r[0] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\r=1",
                                    "plain", "-3.5"]  # a number written as text stays a number
    assert [float(r[1]) for r in rows] == frame["number"].tolist() and [r[2] for r in rows] == ["True", "False"] * 4


def test_a_foreign_studys_text_reaches_compares_csv_neutralised(tmp_path, results_dir):
    payload = "=cmd|' /C calc'!A0"
    a = copy_study(tmp_path, "hostA")
    b = copy_study(tmp_path, "hostB", manifest=lambda m: m.update(started_at=payload))
    result = compare([str(a), str(b)], allow_mismatch=True, out="cmp")
    studies = pd.read_csv(result.folder / COMPARISON_STUDIES)
    assert studies.loc[studies["study"] == "hostB", "started_at"].item() == "'" + payload
    assert pd.api.types.is_numeric_dtype(studies["runs"])


# ---- profiles ----------------------------------------------------------------------------------


def profile_error(tmp_path: Path, mutate=None, text: str | None = None) -> str:
    data = yaml.safe_load(builtin_profiles()["smoke"].read_text())
    if mutate:
        mutate(data)
    path = tmp_path / "profile.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    with pytest.raises(BenchError) as err:
        load_profile(path)
    return str(err.value)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["single"].update(ctx=[0]), "single.ctx.0: Input should be greater than or equal to 64"),
    (lambda d: d["single"].update(gpu_layers=[-7]), "single.gpu_layers.0: Input should be greater than or equal to -1"),
    (lambda d: d.setdefault("settings_sweep", {}).update(num_parallel=[0]), "settings_sweep.num_parallel.0"),
    (lambda d: d["workload"].update(timeout_s=float("inf")), "workload.timeout_s: Input should be a finite number"),
    (lambda d: d["multi"]["chimera"].update(temperature=float("nan")), "multi.chimera.temperature: Input should be "
                                                                        "a finite number"),
    (lambda d: d["single"].update(runs=100_000), "single.runs: Input should be less than or equal to 1000"),
    (lambda d: d["workload"].update(timeout_s=10 ** 7), "workload.timeout_s: Input should be less than or equal to "
                                                         "86400"),
    (lambda d: d["runtime"].update(startup_timeout_s=10 ** 7), "runtime.startup_timeout_s"),
    (lambda d: d["models"][0].update(template="../../../../etc/passwd"), "models.0.template: String should match"),
    (lambda d: d["models"][0].update(template="nope"), "unknown chat template 'nope'"),
    (lambda d: d["models"].append({"name": ".."}), "model name '..' gives the folder name '..'"),
    (lambda d: d["models"].extend([{"name": "qwen2.5:7b"}, {"name": "qwen2.5_7b"}]),
     "models 'qwen2.5:7b' and 'qwen2.5_7b' share the results folder 'qwen2.5_7b'"),
    (lambda d: d["runtime"].update(host="0.0.0.0"), "runtime.host '0.0.0.0' is not a loopback address"),
])
def test_bad_profile_values_get_a_clear_error(tmp_path, mutate, expected):
    msg = profile_error(tmp_path, mutate)
    assert expected in msg and "Traceback" not in msg


def test_duplicate_yaml_keys_are_refused(tmp_path):
    text = builtin_profiles()["smoke"].read_text() + "\nstudy: another\n"
    msg = profile_error(tmp_path, text=text)
    assert "duplicate key 'study' at line" in msg and "(first at line" in msg


def test_a_non_loopback_host_needs_expose(tmp_path):
    msg = profile_error(tmp_path, lambda d: d["runtime"].update(
        kind="external", endpoints=[{"name": "collector", "url": "http://10.0.0.5:11434", "api": "ollama"},
                                    {"name": "insight", "url": "http://127.0.0.1:11435", "api": "ollama"}]))
    assert "endpoint collector url '10.0.0.5' is not a loopback address" in msg and "expose: true" in msg
    data = yaml.safe_load(builtin_profiles()["smoke"].read_text())
    data["runtime"].update(host="0.0.0.0", expose=True)
    path = tmp_path / "exposed.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_profile(path).profile.runtime.expose  # said on purpose: accepted
    for host in ("localhost", "127.0.0.2", "::1"):
        data["runtime"].update(host=host, expose=False)
        path.write_text(yaml.safe_dump(data))
        assert load_profile(path).profile.runtime.host == host


# ---- logs, memos and secrets ------------------------------------------------------------------


def test_a_torn_last_log_line_is_skipped_with_a_warning(tmp_path, caplog):
    store = Store("s", tmp_path)
    store.append_jsonl("probes.jsonl", {"label": "start", "decode_tps": 10.0})
    with open(store.root / "probes.jsonl", "a") as fh:
        fh.write('{"at": "2026-01-01", "label": "betw')  # the disk filled up mid-line
    with caplog.at_level(logging.WARNING, logger="bench"):
        assert [e["label"] for e in store.read_jsonl("probes.jsonl")] == ["start"]
    assert "probes.jsonl line 2 skipped: not JSON" in caplog.text
    store.append_jsonl("probes.jsonl", {"label": "end", "decode_tps": 9.0})  # the next line is not glued on
    assert [e["label"] for e in store.read_jsonl("probes.jsonl")] == ["start", "end"]


def test_report_tables_survive_a_torn_log(tmp_path, results_dir):
    loaded, store = make_study(tmp_path)
    with open(store.root / "failures.jsonl", "a") as fh:
        fh.write('{"at": "2026-01-01", "kind": "oo')
    assert not build(store, loaded.profile).runs.empty


def test_memos_are_written_atomically_and_a_torn_one_is_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(64))
    sha = assets.file_sha256(model)
    (memo,) = (tmp_path / "cache" / "sha256").glob("*.json")
    assert [p.name for p in memo.parent.iterdir()] == [memo.name]  # no temporary file left beside it
    memo.write_text('{"path": "' + str(model) + '", "sha')  # torn by an older, non-atomic write
    assert assets.file_sha256(model) == sha and json.loads(memo.read_text())["sha256"] == sha

    reads = []
    monkeypatch.setattr(mf, "GGUFReader", lambda path: reads.append(path) or type("R", (), {"fields": {},
                                                                                           "tensors": []})())
    meta = mf.gguf_metadata(model, sha)
    (gguf_memo,) = (tmp_path / "cache" / "gguf").glob("*.json")
    gguf_memo.write_text(json.dumps(meta)[:20])
    assert mf.gguf_metadata(model, sha) == meta and len(reads) == 2  # read again, not a traceback
    assert json.loads(gguf_memo.read_text()) == meta


def test_secrets_never_reach_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-live-123456")
    monkeypatch.setenv("OLLAMA_AUTH_TOKEN", "plain-but-named-a-token")
    monkeypatch.setenv("OLLAMA_REMOTE", "hf_abcdefghijklmnop")  # a well-known token prefix
    monkeypatch.setenv("OLLAMA_HOST", "http://admin:hunter2@127.0.0.1:11434")
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "5m")

    def userinfo_urls(d):
        d["runtime"]["endpoints"][0]["url"] = "http://bench:s3cr3t-token@127.0.0.1:9"

    _, store = make_study(tmp_path, mutate=userinfo_urls, overrides={"langs": ["python"], "runs": 1})
    text = (store.root / "manifest.json").read_text()
    for secret in ("sk-live-123456", "plain-but-named-a-token", "hf_abcdefghijklmnop", "hunter2", "s3cr3t-token",
                   "admin:", "bench:"):
        assert secret not in text
    env = json.loads(text)["environment"]
    assert env["OLLAMA_API_KEY"] == env["OLLAMA_AUTH_TOKEN"] == env["OLLAMA_REMOTE"] == "<redacted>"
    assert env["OLLAMA_HOST"] == "http://<redacted>@127.0.0.1:11434" and env["OLLAMA_KEEP_ALIVE"] == "5m"
    resolved = json.loads(text)["profile"]["resolved"]
    assert resolved["runtime"]["endpoints"][0]["url"] == "http://<redacted>@127.0.0.1:9"
