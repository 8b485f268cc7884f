"""The per-study model probes (bench/study/probes.py): cold start per model and instance, and the answer
sanity probe. The rule, the base-model test and the tables on their own; the runner's wiring on
protocol-faithful test servers; and on real Ollama with the real models: SmolLM2 135M Instruct
passes, the Gemma 3 270M file is a likely base model, a broken chat template is flagged."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.analysis import probe_tables
from bench.analysis.tables import load_tables
from bench.clients.streaming import StreamingClient
from bench.config import sanity_set
from bench.config.plan import build_plan
from bench.config.profile import InstrumentSpec, ModelSpec, load_profile
from bench.config.workload import load_workload
from bench.core.errors import BenchError
from bench.core.store import COLDSTART, SANITY, TIMELINE, Store, atomic_write_json, utc_now
from bench.host import assets
from bench.report.markdown import write_report
from bench.report.report_sections import sanity_flags
from bench.report.validate import probe_warnings, validate_study
from bench.runtimes import create_runtime
from bench.study import probes
from bench.study.instrument import Timeline
from bench.study.manifest_writer import gguf_metadata
from bench.study.runner import run_matrix

from conftest import smoke_variant
from ollama_server import FakeOllama
from test_manifest import _gguf
from test_report import make_study

QS, _ = sanity_set.load_sanity()


def question(qid: str) -> sanity_set.Question:
    return next(q for q in QS.questions if q.id == qid)


# ---- the rule, the question set, the base-model test ------------------------------------------------


def test_the_rule_wants_the_answer_as_whole_words_and_no_wrong_alternative():
    larger = question("larger")
    assert sanity_set.judge("800", larger) and sanity_set.judge("The larger number is **800**.", larger)
    assert not sanity_set.judge("3", larger) and not sanity_set.judge("800 is not larger than 3", larger)
    assert not sanity_set.judge("8000", larger)  # whole words: 8000 is not 800
    echo = question("echo")
    assert sanity_set.judge("PINEAPPLE!", echo) and sanity_set.judge("Ｐｉｎｅａｐｐｌｅ", echo)  # NFKC, case-folded
    assert not sanity_set.judge("pineapples are fruit", echo) and not sanity_set.judge("", echo)
    fact = question("stated_fact")
    assert sanity_set.judge("The cat is called Toby.", fact) and not sanity_set.judge("Tobyx", fact)
    two = sanity_set.Question(id="two", ask="?", expect="green sky", wrong=["blue", "red"])
    assert sanity_set.judge("A GREEN  sky!", two) and not sanity_set.judge("green sky, not blue", two)
    assert not sanity_set.judge("sky green", two)  # a phrase in its order


def test_the_question_set_is_checked_and_a_bad_file_says_what_to_fix(tmp_path):
    assert QS.min_correct <= len(QS.questions) and len({q.id for q in QS.questions}) == len(QS.questions)
    bad = tmp_path / "sanity.yaml"
    bad.write_text("min_correct: 2\nnum_predict: 32\nquestions:\n  - {id: echo, ask: say hi}\n")
    with pytest.raises(BenchError, match=r"questions\.0\.expect: Field required"):
        sanity_set.load_sanity(bad)
    bad.write_text("min_correct: 3\nnum_predict: 32\nquestions:\n  - {id: echo, ask: say hi, expect: hi}\n")
    with pytest.raises(BenchError, match="min_correct 3 is more than the 1 questions"):
        sanity_set.load_sanity(bad)
    bad.write_text("min_correct: 1\nnum_predict: 32\nquestions:\n  - {id: echo, ask: say hi, expect: '?!'}\n")
    with pytest.raises(BenchError, match="has no letter or digit"):
        sanity_set.load_sanity(bad)
    bad.write_text("questions: [")
    with pytest.raises(BenchError, match="not valid YAML"):
        sanity_set.load_sanity(bad)


def test_a_gguf_without_template_finetune_or_instruct_name_is_a_likely_base(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    cases = {
        "base": [("general.name", "Tiny 1B"), ("general.basename", "tiny")],
        "template": [("general.name", "Tiny 1B"), ("tokenizer.chat_template", "{{ messages }}")],
        "finetune": [("general.name", "Tiny 1B"), ("general.finetune", "sft-mix")],
        "named": [("general.name", "Tiny 1B Chat"), ("general.basename", "tiny")],
    }
    kinds = {}
    for i, (case, kvs) in enumerate(cases.items()):
        path = tmp_path / f"{case}.gguf"
        _gguf(path, "llama", kvs)
        kinds[case] = probes.model_kind(gguf_metadata(path, f"{i}" * 64))
    assert kinds["base"][0] == "base" and "most likely a pretrained base" in kinds["base"][1]
    assert kinds["template"] == ("instruct", "its GGUF has a chat template (tokenizer.chat_template)")
    assert kinds["finetune"][0] == "instruct" and "sft-mix" in kinds["finetune"][1]
    assert kinds["named"] == ("instruct", "general.name = 'Tiny 1B Chat'")
    assert probes.model_kind(None)[0] == "unknown"  # a pulled model: no header here, so it is judged


def test_the_embedded_files_are_read_as_the_default_profile_needs():
    kinds = {}
    for name in ("gemma3-270m", "smollm2-135m"):
        path = assets.model_file(name)
        kinds[name] = probes.model_kind(gguf_metadata(path, assets.file_sha256(path)))[0]
    assert kinds == {"gemma3-270m": "base", "smollm2-135m": "instruct"}


# ---- tables, report, validate ------------------------------------------------------------------------


def _record(load_ms, ttft_ms, e2e_ms):
    return {"load_ms": load_ms, "ttft_ms": ttft_ms, "e2e_ms": e2e_ms, "output_tokens": 8}


def _answers(rights):
    return [{"id": q.id, "messages": [{"role": "user", "content": q.ask}], "expect": q.expect, "wrong": q.wrong,
             "response": q.expect if right else "hello", "right": right, "error": None}
            for q, right in zip(QS.questions, rights)]


def _probes_on(d):
    d["instrument"].update(cold_start=True, sanity=True)


def test_the_report_shows_both_tables_and_flags_junk_under_the_title(tmp_path):
    loaded, store = make_study(tmp_path, mutate=_probes_on)
    store.append_jsonl(TIMELINE, {"event": "run", "invocation": "x", "t_s": 0.0, "duration_s": 1.0})
    store.append_jsonl(COLDSTART, {"model": "gemma3:latest", "endpoint": "collector", "api": "ollama",
                                   "runtime": "external", "error": "cold call: HTTP 500: boom", "error_kind": "http",
                                   "cold": None, "warm": None})
    store.append_jsonl(COLDSTART, {"model": "gemma3:latest", "endpoint": "collector", "api": "ollama",
                                   "runtime": "external", "error": None, "cold": _record(900.0, 1500.0, 2500.0),
                                   "warm": _record(20.0, 300.0, 1250.0)})
    store.append_jsonl(COLDSTART, {"model": "qwen2.5:7b", "endpoint": "insight", "api": "ollama",
                                   "runtime": "external", "error": "warm call: timeout", "error_kind": "timeout",
                                   "cold": _record(800.0, 1000.0, 2000.0), "warm": None})
    models = {"gemma3:latest": {"kind": "base", "judged": False, "verdict": "not judged", "rights": [False] * 3},
              "qwen2.5:7b": {"kind": "instruct", "judged": True, "verdict": "junk", "rights": [True, False, False]}}
    atomic_write_json(store.path(SANITY), {"rule": sanity_set.RULE, "min_correct": 2, "models": {
        m: {"model": m, "endpoint": "collector", "url": "u", "kind": v["kind"], "kind_why": "why",
            "judged": v["judged"], "right": sum(v["rights"]), "asked": 3, "verdict": v["verdict"],
            "answers": _answers(v["rights"])} for m, v in models.items()}})
    text = write_report(loaded, store).read_text()
    head = text.split("\n## 1.")[0].splitlines()
    assert head[0].startswith("# Technical Report 116") and head[2].startswith("**Answer sanity: qwen2.5:7b "
                                                                                "answered 1 of 3")
    assert "chat template" in head[2] and "quantisation" in head[2] and "gemma3" not in "\n".join(head)
    cs = pd.read_csv(store.root / "tables" / "coldstart.csv")
    ok = cs[cs["model"] == "gemma3:latest"].iloc[0]  # the measurement that worked, not the failure before it
    assert (ok["ttft_penalty_ms"], ok["e2e_penalty_ms"], ok["load_ms"]) == (1200.0, 1250.0, 900.0)
    assert cs[cs["model"] == "qwen2.5:7b"].iloc[0]["error"] == "warm call: timeout"
    section = text.split("### Cold start and answer sanity")[1].split("## 9.")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| ") and "collector (ollama)" in line
            or "insight (ollama)" in line}
    assert rows["gemma3:latest"] == ["collector (ollama)", "900", "1,500 / 2,500", "300 / 1,250", "1,200 / 1,250", ""]
    assert rows["qwen2.5:7b"][-1] == "warm call: timeout" and rows["qwen2.5:7b"][3] == "– / –"
    verdicts = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in section.splitlines()
                if line.startswith("| ") and ("| base " in line or "| instruct " in line)}
    assert verdicts == {"gemma3:latest": "not judged", "qwen2.5:7b": "junk"}
    sanity = pd.read_csv(store.root / "tables" / "sanity.csv")
    assert len(sanity) == 6 and set(sanity["model_verdict"]) == {"not judged", "junk"}
    assert "| `cold_start_penalty_ms` | ms |" in text  # the methodology lists the metric
    warnings = validate_study(loaded, store).warnings
    assert "cold start of qwen2.5:7b on insight failed: warm call: timeout" in warnings
    assert "answer sanity of qwen2.5:7b: junk (1 of 3 right)" in warnings


def test_validate_warns_when_the_runner_ran_without_them(tmp_path):
    loaded, store = make_study(tmp_path, mutate=_probes_on)
    assert probe_warnings(store, loaded.profile) == []  # no runner here: nothing expected
    store.append_jsonl(TIMELINE, {"event": "run", "invocation": "x", "t_s": 0.0, "duration_s": 1.0})
    assert [w.split(":")[0] for w in validate_study(loaded, store).warnings] == ["no coldstart.jsonl",
                                                                                  "no sanity.json"]
    off = loaded.profile.model_copy(update={"instrument": InstrumentSpec(cold_start=False, sanity=False)})
    assert probe_warnings(store, off) == []


# ---- the runner's wiring, on two protocol-faithful Ollama test servers --------------------------------


def test_the_runner_measures_each_model_once_per_study_and_counts_the_cost(tmp_path, results_dir):
    with FakeOllama(token_s=0.002, load_s=0.05) as a, FakeOllama(token_s=0.002, load_s=0.05) as b:
        def mutate(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "collector", "url": a.url, "api": "ollama"},
                                                              {"name": "insight", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "gemma3:latest", "baseline": True}, {"name": "qwen2.5:7b"}]
            d["workload"].update(ignore_eos=False)
            d["instrument"].update(cold_start=True, sanity=True, drift_probes=False)
        loaded = load_profile(smoke_variant(tmp_path, mutate))
        store = Store(loaded.profile.study)
        run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store, progress=False)
        entries = store.read_jsonl(COLDSTART)
        assert [(e["model"], e["endpoint"]) for e in entries] == [
            ("gemma3:latest", "collector"), ("gemma3:latest", "insight"),
            ("qwen2.5:7b", "collector"), ("qwen2.5:7b", "insight")]
        for e in entries:
            assert e["error"] is None and e["cold"]["phase"] == "coldstart-cold"
            assert e["cold"]["load_ms"] > e["warm"]["load_ms"] + 20  # the cold call loaded the freed model
            assert e["cold"]["prompt_nonce"] != e["warm"]["prompt_nonce"]
            assert e["options"] == {"num_predict": 8, "seed": 42}  # the study's workload options
        chats = [r for r in a.requests if r["path"] == "/api/chat"]
        asked = [r for r in chats if r["options"].get("temperature") == 0.0]
        assert len(asked) == 2 * len(QS.questions) and {r["options"]["num_predict"] for r in asked} == {QS.num_predict}
        doc = store.read_json(SANITY)
        # the test servers answer with fixed words, and a pulled model has no GGUF header here: judged, junk
        assert {m: (v["kind"], v["verdict"]) for m, v in doc["models"].items()} == {
            "gemma3:latest": ("unknown", "junk"), "qwen2.5:7b": ("unknown", "junk")}
        # (the runner first puts the instances on their pinned settings: a "settings" event)
        events = [e["event"] for e in store.read_jsonl(TIMELINE) if e["event"] != "settings"]
        assert events[:6] == ["cold_start", "cold_start", "sanity", "cold_start", "cold_start", "sanity"]
        overhead = load_tables(store).events
        assert {e["event"] for e in overhead} >= {"cold_start", "sanity", "run"}
        # a second `bench` in the same study: nothing is measured again
        n_chats = len(a.requests)
        run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store, progress=False)
        assert len(store.read_jsonl(COLDSTART)) == 4
        assert not [r for r in a.requests[n_chats:] if r["path"] == "/api/chat"]


# ---- real Ollama, real models -------------------------------------------------------------------------


def _measure(runtime, store, profile, models, *, cold_start: bool):
    profile = profile.model_copy(update={"instrument": InstrumentSpec(cold_start=cold_start, sanity=True)})
    clients = {ep.name: StreamingClient(ep.url, ep.api, profile.workload.timeout_s)
               for ep in runtime.endpoints()}
    probes.measure(runtime, clients, store, Timeline(store, utc_now()), profile, load_workload(), models,
                   runtime.threads)


@pytest.mark.ollama
def test_smollm2_passes_and_the_gemma_file_is_a_likely_base_on_real_ollama(ollama_runtime, results_dir):
    store = Store("real-probes")
    profile = ollama_runtime.profile
    _measure(ollama_runtime, store, profile, list(profile.models), cold_start=True)
    doc = store.read_json(SANITY)
    smol, gemma = doc["models"]["smollm2-135m"], doc["models"]["gemma3-270m"]
    assert smol["kind"] == "instruct" and smol["verdict"] == "pass", smol
    assert smol["right"] >= doc["min_correct"]
    assert gemma["kind"] == "base" and gemma["verdict"] == "not judged" and not gemma["judged"]
    assert all(a["response"] and a["error"] is None for m in (smol, gemma) for a in m["answers"])
    assert sanity_flags(doc) == []
    entries = store.read_jsonl(COLDSTART)
    assert sorted((e["model"], e["endpoint"]) for e in entries) == [
        (m, ep) for m in ("gemma3-270m", "smollm2-135m") for ep in ("collector", "insight")]
    for e in entries:
        assert e["error"] is None, e["error"]
        # the cold call loaded the freed model; the warm one found it loaded
        assert e["cold"]["load_ms"] > e["warm"]["load_ms"], e
        assert e["cold"]["ttft_ms"] is not None and e["warm"]["ttft_ms"] is not None
    table = probe_tables.coldstart_table(entries)
    assert (table["e2e_penalty_ms"] == table["cold_e2e_ms"] - table["warm_e2e_ms"]).all()


BROKEN = "smollm2-broken-template"
# The user's message never reaches the model: only an empty assistant turn is sent.
BROKEN_TEMPLATE = "<|im_start|>assistant\n"


@pytest.mark.ollama
def test_a_chat_template_that_drops_the_users_message_is_flagged_on_real_ollama(ollama_runtime, results_dir):
    api = ollama_runtime.first_api
    path = assets.model_file("smollm2-135m")
    sha = assets.file_sha256(path)
    if not api.has_blob(sha):
        api.push_blob(path, sha)
    api.create(BROKEN, path, sha, BROKEN_TEMPLATE, {"stop": ["<|im_end|>"]})
    try:
        store = Store("real-broken")
        model = ModelSpec(name=BROKEN, source="gguf", file=str(path))
        _measure(ollama_runtime, store, ollama_runtime.profile, [model], cold_start=False)
        entry = store.read_json(SANITY)["models"][BROKEN]
        assert entry["kind"] == "instruct"  # the GGUF has its own template: judged
        assert entry["verdict"] == "junk" and entry["right"] < store.read_json(SANITY)["min_correct"], entry
        (flag,) = sanity_flags(store.read_json(SANITY))
        assert flag.startswith(f"**Answer sanity: {BROKEN} answered") and "chat template" in flag
    finally:
        for ep_api in ollama_runtime.apis.values():
            ep_api.unload(BROKEN)
        api.delete(BROKEN)
    assert api.tag(BROKEN) is None  # nothing of the broken model is left in the shared store
