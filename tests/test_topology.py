"""The topology control (two instances vs one instance with two slots), the agent-count steps and
server settings as matrix axes: plan, runtimes, the rules that turn them into findings, and a
real study on two `ollama serve` instances."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis import findings
from bench.analysis import tables as analysis
from bench.config.plan import build_plan
from bench.config.profile import ServerConfig, ServerSettings, load_profile
from bench.core.errors import BenchError
from bench.runtimes.external import ExternalRuntime
from bench.runtimes.llamacpp import LlamaServer

from conftest import invoke, smoke_variant

PINNED = ServerSettings()


def _profile(tmp_path, mutate, base="smoke"):
    return load_profile(smoke_variant(tmp_path, mutate, base=base)).profile


def _topology_and_steps(d):
    d["single"]["enabled"] = False
    d["multi"].update(enabled=True, scenarios=["chimera_homo", "one_instance_two_slots"])
    d["steps"] = {"enabled": True, "agents": [1, 3], "runs": 1, "models": ["smollm2-135m"]}
    d["settings_sweep"] = {"num_parallel": [1, 2], "suites": ["steps"]}


def test_plan_places_agents_and_settings(tmp_path):
    plan = build_plan(_profile(tmp_path, _topology_and_steps))
    names = ["collector", "insight"]
    by_key = {c.key: c for c in plan.cells}
    control = by_key["multi/python/smollm2-135m/one_instance_two_slots_gpu0_ctx1024_temp10"]
    dual = by_key["multi/python/smollm2-135m/chimera_homo_gpu0_ctx1024_temp10"]
    assert control.agent_endpoints(names) == {"collector": "collector", "insight": "collector"}
    assert dual.agent_endpoints(names) == {"collector": "collector", "insight": "insight"}
    assert list(control.server_configs(names)) == ["collector"]  # the second instance serves nothing
    assert control.instance_settings(names, PINNED)["collector"].num_parallel == 2  # one slot per agent
    assert control.instance_settings(names, PINNED)["insight"] == PINNED
    assert dual.instance_settings(names, PINNED) == {"collector": PINNED, "insight": PINNED}
    # steps: the sweep gives each agent count a pinned cell and an np2 cell (folder suffix only there)
    steps = sorted(c.config_tag for c in plan.cells if c.suite == "steps")
    assert steps == ["agents_1_gpu0_ctx1024_temp10", "agents_1_gpu0_ctx1024_temp10_np2",
                     "agents_3_gpu0_ctx1024_temp10", "agents_3_gpu0_ctx1024_temp10_np2"]
    three = by_key["steps/python/smollm2-135m/agents_3_gpu0_ctx1024_temp10_np2"]
    assert three.agent_endpoints(names) == {"agent1": "collector", "agent2": "insight", "agent3": "collector"}
    assert three.instance_settings(names, PINNED) == {n: ServerSettings(num_parallel=2) for n in names}
    assert not [c for c in plan.cells if c.suite == "steps" and c.model.name != "smollm2-135m"]


def test_profile_errors_name_the_key(tmp_path):
    def kv_without_fa(d):
        d["settings_sweep"] = {"kv_cache_type": ["q8_0"]}

    with pytest.raises(BenchError, match="kv_cache_type q8_0 needs flash_attention"):
        _profile(tmp_path, kv_without_fa)

    def unknown_step_model(d):
        d["steps"] = {"enabled": True, "models": ["mistral:7b"]}

    with pytest.raises(BenchError, match=r"steps.models names unknown models \['mistral:7b'\]"):
        _profile(tmp_path, unknown_step_model)


def test_llama_server_takes_the_settings_as_flags(tmp_path):
    server = LlamaServer("127.0.0.1", 8080, 1, tmp_path, 10, key_file=tmp_path / "llama-server.key")
    cmd = server.command("m", Path("/m.gguf"), ServerConfig(gpu_layers=0, ctx=1024),
                         ServerSettings(num_parallel=2, flash_attention=True, kv_cache_type="q8_0"))
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("-")}
    # two slots, each with the config's context (as Ollama gives each slot num_ctx)
    assert (flag["-np"], flag["-c"], flag["-fa"], flag["-ctk"], flag["-ctv"]) == ("2", "2048", "on", "q8_0", "q8_0")
    assert flag["--api-key-file"] == str(tmp_path / "llama-server.key")  # the study's key, never on the line


def test_an_external_runtime_refuses_settings_it_cannot_apply(tmp_path):
    def external(d):
        d["runtime"] = {"kind": "external", "endpoints": [
            {"name": "collector", "url": "http://127.0.0.1:9", "api": "ollama"},
            {"name": "insight", "url": "http://127.0.0.1:10", "api": "ollama"}]}

    rt = ExternalRuntime(_profile(tmp_path, external))
    assert rt.apply_settings({"collector": PINNED, "insight": PINNED}) is False
    with pytest.raises(BenchError, match="cannot change engine settings"):
        rt.apply_settings({"collector": ServerSettings(num_parallel=2), "insight": PINNED})


def _steps_frame(rows):
    cols = ["model", "lang", "server_settings", "n_agents", "efficiency_pct_mean", "ttft_inflation_worst",
            "tps_ratio_worst"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def test_capacity_rule_names_the_limit():
    slots = _steps_frame([("m", "python", "np1", 1, 100.0, 1.0, 1.0), ("m", "python", "np1", 2, 97.0, 1.1, 0.98),
                          ("m", "python", "np1", 3, 60.0, 3.1, 0.95), ("m", "python", "np1", 4, 50.0, 3.8, 0.9)])
    (c,) = findings.capacity(slots, 0.85, 2.0)
    assert c["scales_to"] == 2
    assert "scales to 2 agents; at 3 an agent waits for a slot" in c["finding"]
    assert "raise OLLAMA_NUM_PARALLEL or add an instance" in c["finding"]
    compute = _steps_frame([("m", "python", "np2", 1, 99.0, 1.0, 1.0), ("m", "python", "np2", 2, 70.0, 1.4, 0.6)])
    (c,) = findings.capacity(compute, 0.85, 2.0)
    assert c["scales_to"] == 1 and "the agents share compute" in c["finding"]
    fine = _steps_frame([("m", "python", "np2", 1, 99.0, 1.0, 1.0), ("m", "python", "np2", 2, 90.0, 1.2, 0.9)])
    (c,) = findings.capacity(fine, 0.85, 2.0)
    assert c["scales_to"] == 2 and "every step measured" in c["finding"]


def test_topology_table_compares_the_pair_with_the_comparison_rule():
    def run(scenario, wall, speedup, served):
        return {"suite": "multi", "scenario": scenario, "model": "m", "lang": "python", "ran_as": "",
                "wall_s": wall, "speedup": speedup, "served_tps": served, "server_settings": "np1"}

    runs = pd.DataFrame([run("chimera_homo", w, 1.9, 40.0 + w) for w in (5.0, 5.2, 5.1)]
                        + [run("one_instance_two_slots", w, 1.5, 20.0 + w) for w in (9.0, 9.4, 9.2)])
    topo = analysis.topology(runs)
    wall = topo[topo["metric"] == "wall_s"].iloc[0]
    assert wall["diff"] == pytest.approx(5.1 - 9.2)  # two − one, by hand
    assert wall["ci_high"] < 0 and wall["better"] == "two instances"  # lower wall is better
    (v,) = findings.topology_verdicts(topo)
    assert v["verdict"].startswith("two instances finish the pair 4.1 s sooner")
    assert analysis.topology(runs[runs["scenario"] == "chimera_homo"]).empty  # no pair, no table


@pytest.mark.ollama
def test_control_scenario_and_steps_on_real_ollama(tmp_path):
    """A small study on two real `ollama serve` instances: the control scenario restarts the first
    instance with two slots and restores it; steps 1 and 3 run with one and two slots."""
    def mutate(d):
        _topology_and_steps(d)
        d["models"] = [m for m in d["models"] if m["name"] == "smollm2-135m"] or d["models"]
        d["models"][0]["baseline"] = True
        d["workload"]["num_predict"] = 8
        d["multi"]["runs"] = 2  # the comparison rule needs two runs a side

    path = smoke_variant(tmp_path, mutate, base="smoke")
    results = tmp_path / "results"
    p = str(path)
    proc = invoke("up", "--profile", p, "bench", "--profile", p, "--no-progress", "report", "--profile", p,
                  "down", "--profile", p, results=results)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    study = results / "test"
    docs = {str(m.parent.parent.relative_to(study)): json.loads(m.read_text())
            for m in study.glob("*/*/*/*/run_*/metrics.json")}
    control = docs["multi/python/smollm2-135m/one_instance_two_slots_gpu0_ctx1024_temp10"]
    first_url = control["requests"][0]["endpoint"]
    assert {r["endpoint"] for r in control["requests"]} == {first_url}  # both agents, one instance
    assert control["server_settings"]["topology"] == "one_instance"
    (inst,) = control["server_settings"]["instances"].values()
    assert inst["num_parallel"] == 2 and inst["threads"] == 2  # the threads of both instances
    dual = docs["multi/python/smollm2-135m/chimera_homo_gpu0_ctx1024_temp10"]
    assert dual["server_settings"]["topology"] == "two_instances"
    assert len({r["endpoint"] for r in dual["requests"]}) == 2
    step3 = docs["steps/python/smollm2-135m/agents_3_gpu0_ctx1024_temp10"]
    assert step3["metrics"]["n_agents"] == 3 and {r["agent"] for r in step3["requests"]} == {"agent1", "agent2",
                                                                                          "agent3"}
    assert {r["phase"] for r in step3["requests"] if r["agent"] == "agent1"} == {"alone", "together"}
    assert len({r["prompt_nonce"] for r in step3["requests"]}) == len(step3["requests"])  # no shared prefix
    # the settings were applied for real: the first instance ran with two slots, then one again
    events = [json.loads(line) for line in (study / "timeline.jsonl").read_text().splitlines()]
    changes = [e["cell"] for e in events if e["event"] == "settings" and e.get("changed")]
    assert any("one_instance_two_slots" in c or "_np2" in c for c in changes)
    assert len(changes) >= 2  # set for the control or np2 cells, restored for the pinned ones after
    port = load_profile(path).profile.runtime.endpoints[0].port
    started_with = [line.split("OLLAMA_NUM_PARALLEL:")[1][:1]
                    for line in (study / "logs" / f"ollama-{port}.log").read_text().splitlines()
                    if "OLLAMA_NUM_PARALLEL:" in line]  # Ollama logs its settings at each start
    assert "2" in started_with and started_with[-1] == "1" or started_with.count("1") >= 2, started_with
    topo = pd.read_csv(study / "tables" / "topology.csv")
    assert set(topo["metric"]) == {"wall_s", "speedup", "served_tps"} and topo["diff"].notna().all()
    steps = pd.read_csv(study / "tables" / "steps.csv")
    assert sorted(steps["n_agents"]) == [1, 1, 3, 3]
    report = (study / "Technical_Report_116.md").read_text()
    assert "### Two instances, or one instance with two slots?" in report
    assert "smollm2-135m (np1" in report and "scales to" in report  # the capacity finding, per settings
