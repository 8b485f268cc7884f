"""The TR116 report from synthetic, schema-valid studies: sections, winner rule, floors, plots.

The helpers here (make_profile, make_study, FakeRuntime) build a study in milliseconds with known
per-run values, so expected outputs can be stated exactly; test_validate*, test_reproduce* and
test_manifest* reuse them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core import metrics
from bench.core.md_table import md_table
from bench.core.records import RunDocument
from bench.core.store import ISSUE_SUMMARY, Store, atomic_write_json
from bench.report import templating
from bench.report.html_report import HTML_REPORT_NAME
from bench.report.markdown import EXPORTERS, REPORT_NAME, study_outputs, write_report
from bench.study import manifest_writer as mf

from conftest import smoke_variant

MODELS = ("gemma3:latest", "qwen2.5:7b")


class FakeRuntime:
    """Just enough of a Runtime for write_manifest: no server is contacted."""

    kind = "external"

    def __init__(self, digests: dict[str, str] | None = None, version: str = "0.12.6"):
        self.digests = digests or {}
        self.version = version

    def endpoints(self):
        return []

    def describe(self) -> dict:
        return {"kind": self.kind, "ollama_version": {"collector": self.version, "insight": self.version}}

    def model_identity(self, model) -> dict:
        return {"name": model.name, "digest": self.digests.get(model.name, "sha256:" + "ab" * 32),
                "quantization_level": "Q4_K_M", "parameter_size": "7B", "family": "test"}


def make_profile(tmp_path: Path, mutate=None) -> Path:
    """Two models, both languages, single (1 config) and multi (1 scenario), 3 runs each."""

    def base(d):
        d["runtime"] = {"kind": "external", "endpoints": [
            {"name": "collector", "url": "http://127.0.0.1:9", "api": "ollama"},
            {"name": "insight", "url": "http://127.0.0.1:10", "api": "ollama"}]}
        d["models"] = [{"name": MODELS[0], "baseline": True}, {"name": MODELS[1]}]
        d["single"].update(langs=["python", "rust"], gpu_layers=[80], ctx=[512], runs=3)
        d["multi"].update(enabled=True, langs=["python", "rust"], scenarios=["chimera_homo"], runs=3,
                          chimera={"gpu_layers": 80, "ctx": 1024, "temperature": 1.0})
        d["outliers"] = {"mad_k": 2.0, "max_extra_runs": 2}
        if mutate:
            mutate(d)
    return smoke_variant(tmp_path, base)


def _request(agent: str, stage: str, phase: str, model: str, tps: float, ttft: float) -> dict:
    eval_ms = 47 / tps * 1000
    return {"agent": agent, "stage": stage, "phase": phase, "endpoint": "http://127.0.0.1:9", "api": "ollama",
            "model": model, "prompt_nonce": hashlib.sha256(f"{agent}{stage}{phase}".encode()).hexdigest()[:16], "call_attempt": 1,
            "start_offset_ms": 0.0, "ttft_ms": ttft, "e2e_ms": ttft + eval_ms,
            "itl_ms": {"n": 47, "mean": 1000 / tps, "p50": 1000 / tps, "p95": 1000 / tps, "max": 1000 / tps},
            "content_chunks": 48, "output_tokens": 48, "output_tokens_estimated": False, "prompt_tokens": 100,
            "decode_tps_client": tps, "decode_tps_server": tps, "load_ms": 1.0, "prompt_eval_ms": 10.0,
            "eval_ms": eval_ms, "cold_load": False, "done_reason": "length", "error": None, "error_kind": None,
            "output_text": "text"}


def synthetic_doc(cell, run_index: int, value: float, study: str) -> dict:
    """A schema-valid metrics.json: `value` is decode_tps (single) or speedup (multi)."""
    model = cell.model.name
    c = cell.label_config
    config = {"gpu_layers": c.gpu_layers, "ctx": c.ctx, "temperature": c.temperature, "seed": 42,
              "num_predict": 48, "ignore_eos": False, "scenario": cell.scenario}
    doc = {"schema_version": 1, "study": study, "suite": cell.suite, "lang": cell.lang,
           "client": {"name": "synthetic", "version": "0"},
           "model": {"name": model, "slug": cell.model.slug, "baseline": cell.model.baseline},
           "config": config, "run_index": run_index, "started_at": "2025-01-01T00:00:00.000Z",
           "finished_at": "2025-01-01T00:00:10.000Z",
           "workload": {"prompts_sha256": "0" * 64, "dataset_sha256": "1" * 64}, "cold_load": False}
    if cell.suite == "single":
        reqs = [_request("single", s, "single", model, value, 200.0) for s in ("analysis", "report")]
        latency = sum(r["e2e_ms"] for r in reqs)
        doc["requests"] = reqs
        doc["metrics"] = {"decode_tps": value, "decode_tps_client": value * 0.98, "ttft_ms": 200.0,
                          "latency_ms": latency, "output_tokens": 96}
    else:
        config["agents"] = {a: cfg.model_dump() if cfg else None for a, cfg in cell.agents}
        reqs = [_request(a, s, p, model, 50.0, 100.0) for a in ("collector", "insight")
                for p in ("alone", "together") for s in ("analysis", "report")]
        seq = 4.0
        wall = seq / value
        agent = {"t_alone_s": 2.0, "t_together_s": wall, "decode_tps_alone": 50.0, "decode_tps_together": 45.0,
                 "ttft_ms_alone": 100.0, "ttft_ms_together": 120.0, "tps_ratio": 0.9, "ttft_inflation": 1.2}
        doc["requests"] = reqs
        doc["metrics"] = {"wall_s": wall, "seq_s": seq, "speedup": value, "efficiency_pct": value / 2 * 100,
                          "evenness_pct": 99.0, "contention": False, "legacy_contention": value < 1.5,
                          "agents": {"collector": agent, "insight": dict(agent)}}
    return doc


def default_value(cell, k: int) -> float:
    """gemma3 clearly faster single-agent in both languages; multi speedups overlap."""
    if cell.suite == "single":
        base = 100.0 if cell.model.name == MODELS[0] else 50.0
        return base + (k - 2) * 1.0 + (3.0 if cell.lang == "rust" else 0.0)
    return {1: 1.80, 2: 1.90, 3: 1.70}[k] if cell.model.name == MODELS[0] else {1: 1.85, 2: 1.75, 3: 1.95}[k]


def make_study(tmp_path: Path, *, value=default_value, mutate=None, overrides: dict | None = None,
               runtime: FakeRuntime | None = None):
    """A complete study under tmp_path/results: metrics.json per planned run, then the manifest.
    Returns (loaded profile, store)."""
    loaded = load_profile(make_profile(tmp_path, mutate))
    plan = build_plan(loaded.profile, **(overrides or {}))
    store = Store(loaded.profile.study, tmp_path / "results")
    for item in plan.items:
        store.write_metrics(item.rel_dir, RunDocument.model_validate(synthetic_doc(
            item.cell, item.run_index, value(item.cell, item.run_index), store.root.name)))
    mf.write_manifest(loaded, plan, runtime or FakeRuntime(), store, started_at=mf.utc_now(), overrides=overrides)
    return loaded, store


@pytest.fixture()
def study(tmp_path, results_dir):
    return make_study(tmp_path)


SECTIONS = ["## 1. Objective", "## 2. Setup", "## 3. Methodology", "### Metric definitions",
            "## 4. Results: single-agent", "### 4.1 Python", "### 4.2 Rust", "## 5. Results: multi-agent",
            "## 6. Cross-model comparison", "## 7. Winner by scenario", "## 8. Python vs Rust",
            "## 9. VRAM and quantization notes", "## 10. Power and energy efficiency",
            "## 11. Cost: tokens per dollar", "## 12. Does model choice shift multi-agent efficiency",
            "## 13. Failures and fallbacks", "## 14. Outliers", "## 15. Recommendations",
            "## 16. Precision: runs per config, the A/A placebo, tails and the prefill check", "### A/A placebo",
            "### Tails", "### Prefill verification", "## 17. Reproducibility"]


def test_report_has_every_section_and_the_winner_rule(study):
    loaded, store = study
    text = write_report(loaded, store).read_text()
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    # single: gemma3 100 vs qwen 50 tok/s, 3 runs each → a named winner in both languages
    matrix = text.split("## 7. Winner by scenario")[1].split("## 8.")[0]
    row = next(line for line in matrix.splitlines() if line.startswith("| gpu80_ctx512_temp08"))
    assert row.count("**gemma3:latest**") == 2
    # multi: speedups {1.7, 1.8, 1.9} vs {1.75, 1.85, 1.95} overlap → no winner in either language
    row = next(line for line in matrix.splitlines() if line.startswith("| chimera_homo"))
    assert row.count("no significant difference") == 2 and "**" not in row
    # cross-model table: qwen at 50 % of the baseline's 100 tok/s (python)
    assert "50 (50.0 %)" in text
    # Rust runs are +3 tok/s: a significant delta
    assert "| single  | gemma3:latest | gpu80_ctx512_temp08 | decode_tps" in text
    assert "not measured: run `invoke bench-clients`" in text
    assert "Not computed: the profile sets no price" in text
    assert "Not available: the runs carry no power data" in text or "no GPU" in text
    # the tables behind the numbers are exported
    for name in ("runs", "configs", "normalized", "winners", "lang_deltas", "variance", "outliers"):
        assert (store.root / "tables" / f"{name}.csv").is_file()


def test_plots_are_pngs_embedded_with_relative_paths(study):
    loaded, store = study
    text = write_report(loaded, store).read_text()
    for name in ("throughput", "ttft", "speedup"):
        png = store.root / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{name}.png)" in text
    assert not (store.root / "plots" / "frontier.png").exists()  # no power data


def test_client_floors_pricing_and_power_when_present(tmp_path, results_dir):
    loaded, store = make_study(tmp_path, mutate=lambda d: d.update(pricing={"gpu_hour_usd": 2.0,
                                                                           "electricity_usd_per_kwh": 0.25}))
    atomic_write_json(store.root / "client_overhead.json", {
        "measured_at": "2025-01-01T00:00:00Z",
        "client_floors": [{"client": "python", "api": "ollama", "tokens_per_s": 25000.0, "cpu_us_per_token": 40.0,
                           "skew_pct": 0.5},
                          {"client": "python", "api": "openai", "tokens_per_s": 20000.0, "cpu_us_per_token": 50.0,
                           "skew_pct": 0.7},
                          {"client": "rust", "api": "ollama", "tokens_per_s": 150000.0, "cpu_us_per_token": 6.0,
                           "skew_pct": 0.1}],
        "harness_vs_engine": [{"model": "m", "engine": "llama.cpp", "reference": "llama-bench tg", "threads": 1,
                               "reference_tps": 50.0, "harness_client_tps": 45.0, "harness_server_tps": 47.0,
                               "ratio_client_to_reference": 0.9, "ratio_server_to_reference": 0.94}]})
    # Power data as the runner records it on a GPU host (the schema's `power` block).
    for path in store.root.glob("single/*/*/*/run_*/metrics.json"):
        doc = json.loads(path.read_text())
        energy = 96 / 2.0 if doc["model"]["name"] == MODELS[0] else 96 / 4.0
        doc["power"] = {"source": "nvml_energy_counter", "n_samples": 20, "mean_power_w": 150.0, "energy_j": energy,
                        "tokens_per_j": 96 / energy, "peak_vram_used_bytes": 9 * 2**30}
        store.write_metrics(path.parent.relative_to(store.root), RunDocument.model_validate(doc))
    text = write_report(loaded, store).read_text()
    # floors table, and the client CPU share on the study's protocol (ollama, not openai's 50 µs):
    # 40 µs × 100 tok/s = 0.40 % of each second for Python, 6 µs × 103 tok/s = 0.06 % for Rust
    assert "CPU µs per token" in text and "| 0.40 % / 0.06 %" in text
    assert "| m       | llama.cpp | llama-bench tg |         1 |                50 | 45 / 47" in text  # vs engine
    # tokens per $ from the GPU-hour price: served_tps × 3600 / 2
    cost = text.split("## 11.")[1].split("## 12.")[0]
    assert "tokens per $ (GPU-hour)" in cost and "tokens per $ (electricity)" in cost
    # 96 tokens per run: gemma3 spends 48 J (2 tokens/J) and is faster, qwen 24 J (4 tokens/J):
    # neither model beats the other on both axes; within a model, the Rust config (+3 tok/s at the
    # same tokens/J) dominates the Python one, so the frontier is the two Rust configs
    frontier = pd.read_csv(store.root / "tables" / "frontier.csv")
    assert sorted(frontier["tokens_per_j_mean"].round(6).unique()) == [2.0, 4.0]
    assert (frontier["pareto"] == (frontier["lang"] == "rust")).all()
    assert "## 10. Power and energy efficiency\n\nTokens per joule" in text
    assert (store.root / "plots" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `tokens_per_j` | tok/J |" in text  # the power metrics' definitions
    assert "9 GiB" in text.split("## 9.")[1].split("## 10.")[0]  # peak VRAM in the runs


def test_failures_and_outliers_are_listed(tmp_path, results_dir):
    def value(cell, k):  # one wild run in gemma3's python single config
        v = default_value(cell, k)
        return 300.0 if (cell.suite, cell.lang, cell.model.name, k) == ("single", "python", MODELS[0], 3) else v
    loaded, store = make_study(tmp_path, value=value)
    store.log_failure({"cell": "single/rust/qwen2.5_7b/gpu80_ctx512_temp08", "run_index": 1, "suite": "single",
                       "lang": "rust", "model": MODELS[1], "error_kind": "oom", "error": "unable to allocate CUDA0 buffer",
                       "observed_vram_used_bytes": 11 * 2**30, "fallback": "config skipped"})
    text = write_report(loaded, store).read_text()
    outliers = text.split("## 14. Outliers")[1].split("## 15.")[0]
    assert "single/python/gemma3_latest/gpu80_ctx512_temp08 |     3 | decode_tps" in outliers
    failures = text.split("## 13. Failures")[1].split("## 14.")[0]
    assert "oom" in failures and "config skipped" in failures
    assert "11 GiB" in text  # VRAM observed at the failure
    recs = text.split("## 15. Recommendations")[1]
    assert "R5:" in recs and "R6:" in recs


def test_gpu_host_manifest_fills_setup_and_vram_notes(study):
    """A docker/GPU manifest (as DockerRuntime and NVML record it) renders without gaps."""
    loaded, store = study
    path = store.root / "manifest.json"
    m = json.loads(path.read_text())
    m["gpu"] = [{"index": 0, "name": "NVIDIA GeForce RTX 4080", "uuid": "GPU-1", "driver": "550.54",
                 "cuda": "12.4", "vram_total_bytes": 12 * 2**30, "power_limit_w": 320.0}]
    m["runtime"].update(kind="docker", containers=[{"service": "ollama-a", "image": "ollama/ollama:0.12.6",
                                                    "image_id": "sha256:" + "c" * 64, "ports": []}])
    m["ollama_ps"] = {"collector": [{"name": "gemma3:latest", "size_vram": 5 * 2**30}], "insight": []}
    atomic_write_json(path, m)
    text = write_report(loaded, store).read_text()
    assert "NVIDIA GeForce RTX 4080 (12 GiB, driver 550.54, CUDA 12.4, power limit 320.0 W)" in text
    assert "ollama-a: `ollama/ollama:0.12.6` (`sha256:cccccccccccc`)" in text
    notes = text.split("## 9.")[1].split("## 10.")[0]
    assert "| 5 GiB " in notes and "not loaded at manifest time" in notes  # qwen was not loaded
    assert "no GPU" not in notes
    assert "Not available: the runs carry no power data" in text


# ---- the outputs: exporters over one analysis, one environment, one table helper, one name per metric ----


# The stage order (report never imports the study) is tests/test_architecture.py's.


def test_write_report_runs_each_exporter_once_over_one_analysis(study):
    loaded, store = study
    out = study_outputs(loaded, store)
    written = [export(out) for export in EXPORTERS]
    paths = [p for ps in written for p in ps]
    assert all(p.is_file() and store.root in p.parents for p in paths)
    assert len(paths) == len(set(paths))  # no output is written by two exporters
    names = {p.name for p in paths}
    assert {REPORT_NAME, HTML_REPORT_NAME, ISSUE_SUMMARY, "findings.json", "configs.csv", "summary.json",
            "throughput.png"} <= names
    # the HTML page is made from the markdown report: it comes after it
    order = [p.name for p in paths]
    assert order.index(REPORT_NAME) < order.index(HTML_REPORT_NAME)


def test_a_run_metric_has_the_registrys_name_in_the_report(study):
    loaded, store = study
    text = write_report(loaded, store).read_text()
    single, multi = metrics.key_metrics("single"), metrics.key_metrics("multi")
    for label in (single["decode_tps"], single["ttft_ms"], single["latency_ms"], multi["speedup"],
                  multi["efficiency_pct"]):
        assert f"| {label} [95% CI]" in text
    assert "decode tok/s (server)" not in text  # the name the report once had of its own


def test_one_environment_escapes_html_templates_only_and_one_table_helper():
    env = templating.environment()
    assert env is templating.environment()
    assert env.autoescape("report.html.j2") and not env.autoescape("report.md.j2")
    assert md_table([]) is None and md_table(pd.DataFrame()) is None
    assert md_table([{"a": 1, "b": "x"}]).splitlines()[0].replace(" ", "") == "|a|b|"
