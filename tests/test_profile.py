"""Profile validation: every mistake names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.config.plan import build_plan
from bench.config.profile import builtin_profiles, load_profile, resolve_profile
from bench.core.errors import BenchError


def write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(builtin_profiles()["smoke"].read_text())
    mutate(data)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(BenchError) as err:
        load_profile(path)
    return str(err.value)


def test_builtin_profiles_validate_and_plan():
    smoke = load_profile(builtin_profiles()["smoke"]).profile
    tr116 = load_profile(builtin_profiles()["tr116"]).profile
    assert smoke.runtime.kind == "ollama" and smoke.baseline.name == "gemma3-270m"
    assert [e.port for e in smoke.runtime.endpoints] == [11434, 11435]  # the spec's ports
    assert {m.source for m in smoke.models if not m.placebo_of} == {"gguf"}
    assert [m.name for m in smoke.models if m.placebo_of] == ["gemma3-270m-aa"]  # the A/A placebo
    llamacpp = load_profile(builtin_profiles()["smoke-llamacpp"]).profile
    assert llamacpp.runtime.kind == "local" and [m.name for m in llamacpp.models] == [m.name for m in smoke.models
                                                                                  if not m.placebo_of]
    assert tr116.baseline.name == "gemma3:latest"
    assert [e.port for e in tr116.runtime.endpoints] == [11434, 11435]
    assert tr116.single.gpu_layers == [60, 80] and tr116.single.ctx == [512, 1024]
    assert tr116.single.temperature == 0.8 and tr116.single.runs == 5
    assert tr116.multi.chimera.ctx == 2048 and tr116.multi.chimera_for("rust").ctx == 512
    assert any(m.name == "qwen2.5:14b" and m.optional for m in tr116.models)
    # `--runs 5`: the spec's fixed matrix, 4 models × (single: 2 langs × 4 configs × 5 runs + multi:
    # 2 langs × 2 scenarios × 5 runs); without it each config runs 3 to 5 runs (the spec's range)
    assert build_plan(tr116, runs=5).run_count == 4 * (40 + 20)
    plan = build_plan(tr116)
    assert plan.adaptive and plan.run_count == 4 * (24 + 12)
    assert {(c.runs, c.max_runs) for c in plan.cells} == {(3, 5)}
    paths = {str(i.cell.rel_dir) for i in plan.items}
    assert "single/python/qwen2.5_7b/gpu60_ctx512_temp08" in paths
    assert "multi/rust/gemma3_latest/baseline_vs_chimera_gpu80_ctx512_temp10" in paths
    assert "multi/python/gemma3_latest/chimera_homo_gpu80_ctx2048_temp10" in paths


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, lambda d: d["single"].update(ctxx=[512]))
    msg = error_of(path)
    assert str(path) in msg
    assert "single.ctxx: unknown key" in msg
    assert "gpu_layers" in msg and "temperature" in msg  # the keys that were expected


def test_wrong_type(tmp_path):
    msg = error_of(write(tmp_path, lambda d: d["workload"].update(num_predict="many")))
    assert "workload.num_predict" in msg and "integer" in msg


def test_missing_key(tmp_path):
    msg = error_of(write(tmp_path, lambda d: d["single"].pop("runs")))
    assert "single.runs: required key is missing" in msg


def test_nested_unknown_key_in_list(tmp_path):
    msg = error_of(write(tmp_path, lambda d: d["models"][0].update(quant="q4")))
    assert "models.0.quant: unknown key" in msg and "baseline" in msg


def test_two_baselines_rejected(tmp_path):
    msg = error_of(write(tmp_path, lambda d: [m.update(baseline=True) for m in d["models"]]))
    assert "exactly one model must have baseline: true" in msg


def test_same_port_twice_rejected(tmp_path):
    msg = error_of(write(tmp_path, lambda d: d["runtime"]["endpoints"][1].update(port=11434)))
    assert "different ports" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    assert "not valid YAML" in error_of(bad)
    assert "profile file not found" in error_of(tmp_path / "nope.yaml")


def test_unknown_profile_name():
    with pytest.raises(BenchError, match="unknown profile 'nonsense'"):
        resolve_profile("nonsense")


def test_auto_picks_smoke_without_docker_and_gpu(monkeypatch):
    import bench.config.profile as prof

    monkeypatch.setattr(prof, "detect_gpu_host", lambda: (False, "no usable Docker engine (test)"))
    loaded = resolve_profile("auto")
    assert loaded.profile.study == "smoke" and "no usable Docker engine" in loaded.reason
    monkeypatch.setattr(prof, "detect_gpu_host", lambda: (True, "engine and 1 GPU (test)"))
    assert resolve_profile("auto").profile.study == "tr116"


def test_chimera_hetero_gives_each_agent_its_own_config(tmp_path):
    def hetero(d):
        d["multi"].update(enabled=True, scenarios=["chimera_hetero"], langs=["python", "rust"],
                          hetero={"collector": {"gpu_layers": 60, "ctx": 512, "temperature": 0.8},
                                  "insight": {"gpu_layers": 80, "ctx": 1024, "temperature": 1.0}})
    profile = load_profile(write(tmp_path, hetero)).profile
    cells = [c for c in build_plan(profile).cells if c.suite == "multi"]
    assert len(cells) == 2 * 2  # 2 models × 2 languages
    cell = cells[0]
    assert cell.agent_configs["collector"].ctx == 512 and cell.agent_configs["insight"].ctx == 1024
    assert cell.config_tag == "chimera_hetero_gpu80_ctx1024_temp10"  # named by the insight (chimera) config
    servers = cell.server_configs(["a", "b"])
    assert servers["a"].gpu_layers == 60 and servers["b"].ctx == 1024
    msg = error_of(write(tmp_path, lambda d: d["multi"].update(scenarios=["chimera_hetero"])))
    assert "chimera_hetero needs a 'hetero' block" in msg


def test_precision_targets_are_checked_against_the_suites_metrics(tmp_path):
    def bad_metric(d):
        d["single"]["precision"] = {"metrics": ["speedup"], "rel_half_width": 0.05}
    assert "single.precision.metrics names ['speedup']" in error_of(write(tmp_path, bad_metric))

    def bad_runs(d):
        d["multi"]["precision"] = {"metrics": ["speedup"], "rel_half_width": 0.05, "min_runs": 5, "max_runs": 4}
    assert "max_runs 4 is below min_runs 5" in error_of(write(tmp_path, bad_runs))

    def one_run(d):
        d["multi"]["precision"] = {"metrics": ["speedup"], "rel_half_width": 0.05, "min_runs": 1}
    assert "multi.precision.min_runs" in error_of(write(tmp_path, one_run))


def test_an_adaptive_suite_plans_its_min_runs_and_runs_forces_the_fixed_mode(tmp_path):
    def adaptive(d):
        d["single"]["precision"] = {"metrics": ["decode_tps", "ttft_ms"], "rel_half_width": 0.1, "min_runs": 3,
                                    "max_runs": 7}
        d["multi"].pop("precision", None)
    profile = load_profile(write(tmp_path, adaptive)).profile
    plan = build_plan(profile)
    single = [c for c in plan.cells if c.suite == "single"]
    assert plan.adaptive and all(c.runs == 3 and c.max_runs == 7 for c in single)
    assert all(c.precision is None and c.max_runs == c.runs == profile.multi.runs
               for c in plan.cells if c.suite == "multi")
    fixed = build_plan(profile, runs=5)
    assert not fixed.adaptive and all(c.runs == c.max_runs == 5 for c in fixed.cells)


def test_a_placebo_names_another_model_and_a_model_can_skip_suites(tmp_path):
    profile = load_profile(builtin_profiles()["smoke"]).profile
    cells = build_plan(profile).cells
    assert {c.suite for c in cells if c.model.name == "gemma3-270m-aa"} == {"single"}

    def unknown(d):
        d["models"].append({"name": "x", "source": "gguf", "placebo_of": "nope"})
    assert "placebo_of must name another model" in error_of(write(tmp_path, unknown))


def test_every_builtin_profile_states_a_slo_its_e2e_bound_can_meet():
    for name, path in builtin_profiles().items():
        profile = load_profile(path).profile
        slo = profile.slo
        assert slo is not None, name
        # a call at exactly the TTFT and decode bounds for num_predict tokens fits the e2e bound
        slowest_ok = slo.ttft_ms + (profile.workload.num_predict - 1) / slo.decode_tps * 1000
        assert slowest_ok <= slo.e2e_ms * 1.1, (name, slowest_ok, slo.e2e_ms)


def test_slo_bounds_and_keys_are_validated(tmp_path):
    msg = error_of(write(tmp_path, lambda d: d["slo"].update(ttft=100)))
    assert "slo.ttft: unknown key" in msg and "decode_tps" in msg
    msg = error_of(write(tmp_path, lambda d: d["slo"].update(goodput_target=1.0)))
    assert "slo.goodput_target" in msg
    msg = error_of(write(tmp_path, lambda d: d["slo"].update(decode_tps=-1)))
    assert "slo.decode_tps" in msg
    msg = error_of(write(tmp_path, lambda d: d["slo"].update(ttft_ms=5000, e2e_ms=4000)))
    assert "e2e_ms 4000.0 must exceed ttft_ms 5000.0" in msg
    msg = error_of(write(tmp_path, lambda d: d["slo"].pop("e2e_ms")))
    assert "slo.e2e_ms: required key is missing" in msg
    assert load_profile(write(tmp_path, lambda d: d.pop("slo"))).profile.slo is None  # optional


def test_steps_search_replaces_the_fixed_agent_list(tmp_path):
    steps = load_profile(write(tmp_path, lambda d: (d["steps"].pop("agents", None), d["steps"].update(search={}))))
    assert steps.profile.steps.search.max_agents == 4
    assert steps.profile.steps.agents == [1, 2, 3, 4]  # the counts the search may probe
    # a manifest's resolved profile lists both: it loads again as the same profile
    assert type(steps.profile).model_validate(steps.profile.model_dump(mode="json")) == steps.profile
    msg = error_of(write(tmp_path, lambda d: d["steps"].update(agents=[2, 3], search={"max_agents": 3})))
    assert "either `agents`" in msg and "not both" in msg
    msg = error_of(write(tmp_path, lambda d: (d["steps"].pop("agents", None), d["steps"].update(search={"max_agents": 9}))))
    assert "steps.search.max_agents" in msg
    msg = error_of(write(tmp_path, lambda d: (d["steps"].pop("agents", None), d["steps"].update(search={"max": 3}))))
    assert "steps.search.max: unknown key" in msg and "max_agents" in msg
