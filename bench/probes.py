"""Two measurements of the models themselves, made once per study by the runner before the matrix
(bench/runner.py); each is an event of the timeline, so the overhead table counts what it cost.
(The drift probes, a measurement of the host, are bench/instrument.py.)

- Cold start (`instrument.cold_start`): per model of the plan and per endpoint, the model is freed
  (the Runtime's `free()`: Ollama unloads it with keep_alive 0 and waits until /api/ps no longer
  lists it; llama.cpp stops its servers), served again (`switch()`, which restarts llama-server
  with the model), then one call of the single agent's analysis stage with the study's workload
  options, then one warm call right after. Each call has its own prompt nonce, so no prompt cache
  helps. One line per model × endpoint in coldstart.jsonl with the engine's load_ms and both
  calls' TTFT and e2e (cold_start_penalty_ms, bench/metrics.py). A cold call is never retried (a
  retry would be warm): a failure is a line with the error, shown in the report, never fatal.
- Answer sanity (`instrument.sanity`): the questions of bench/data/sanity.yaml, asked of each
  model on the study's first endpoint through its own client (temperature 0, the study's seed),
  judged by the rule in `judge` (no model judges another). sanity.json keeps the prompts, the
  answers and the verdicts. A model that is most likely a pretrained base (`model_kind`, from its
  GGUF header) is asked but not judged; a judged model below the bar is flagged under the
  report's title.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from bench import fmt, metrics
from bench.agents import nonced_chat, request_options, retrying
from bench.clients import CallContext, StreamingClient
from bench.errors import BenchError, RequestError
from bench.manifest import model_identities
from bench.paths import REPO_ROOT, SANITY_FILE
from bench.profile import ModelSpec, Profile
from bench.store import COLDSTART, SANITY, TIMELINE, Store, atomic_write_json
from bench.workload import Workload, prompt_nonce

log = logging.getLogger("bench")

# ---- the question set ---------------------------------------------------------------------------

RULE = ("lower-case the text (Unicode NFKC), make every run of characters other than letters and digits "
        "one space; an answer is right when it holds the expected answer as whole words and none of the "
        "wrong alternatives")


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    ask: str = Field(min_length=1)
    expect: str = Field(min_length=1)
    wrong: list[str] = []


class SanitySet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_correct: int = Field(ge=1)
    num_predict: int = Field(ge=1)
    questions: list[Question] = Field(min_length=1)


def load_sanity(path: Path = SANITY_FILE) -> tuple[SanitySet, str]:
    """The question set and its file's sha256; a malformed file is a BenchError naming the key."""
    raw = path.read_bytes()
    try:
        qs = SanitySet.model_validate(yaml.safe_load(raw))
    except yaml.YAMLError as exc:
        raise BenchError(f"{path} is not valid YAML ({exc}); fix the file") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(top level)"
        raise BenchError(f"{path}: {where}: {first['msg']}; expected min_correct, num_predict and questions "
                         f"(each with id, ask, expect and optionally wrong)") from None
    if qs.min_correct > len(qs.questions):
        raise BenchError(f"{path}: min_correct {qs.min_correct} is more than the {len(qs.questions)} questions; "
                         f"lower it")
    for q in qs.questions:
        if normalise(q.expect).strip() == "":
            raise BenchError(f"{path}: question {q.id}: expect {q.expect!r} has no letter or digit; give a word")
    return qs, hashlib.sha256(raw).hexdigest()


def normalise(text: str) -> str:
    """The rule's text: NFKC, case-folded, letters and digits only, one space between words and one
    at each end (so a phrase matches as whole words)."""
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold())
    return f" {' '.join(words)} "


def judge(response: str, question: Question) -> bool:
    """Right when the normalised response holds the expected answer and no wrong alternative."""
    text = normalise(response)
    return normalise(question.expect) in text and not any(normalise(w) in text for w in question.wrong)


INSTRUCT_WORDS = ("instruct", "chat")


def model_kind(gguf: dict | None) -> tuple[str, str]:
    """('instruct' | 'base' | 'unknown', why) from a GGUF header (bench/manifest.py gguf_metadata).
    Instruction-tuned: a chat template, a finetune tag, or 'instruct'/'chat' in the name or
    basename. None of them: most likely a pretrained base model. No header: unknown (judged)."""
    if gguf is None:
        return "unknown", "no GGUF header to read (a model pulled from a registry): judged"
    if gguf.get("has_chat_template"):
        return "instruct", "its GGUF has a chat template (tokenizer.chat_template)"
    if gguf.get("finetune"):
        return "instruct", f"its GGUF has a finetune tag (general.finetune = {gguf['finetune']!r})"
    for key in ("name", "basename"):
        value = gguf.get(key) or ""
        if any(w in value.lower() for w in INSTRUCT_WORDS):
            return "instruct", f"general.{key} = {value!r}"
    return "base", ("its GGUF has no chat template, no finetune tag and no 'instruct' or 'chat' in its name: "
                    "most likely a pretrained base model, so its answers are not judged")


def ask(client: StreamingClient, model: str, qs: SanitySet, *, seed: int, threads: int | None, key: str,
        attempts: int = 3) -> list[dict]:
    """Each question once, as a lone user message (no nonce: the question is the prompt, and no time
    is measured), with transient failures retried as the agents retry theirs."""
    options: dict = {"num_predict": qs.num_predict, "seed": seed, "temperature": 0.0}
    if client.api == "ollama" and threads is not None:
        options["num_thread"] = threads
    answers = []
    for q in qs.questions:
        messages = [{"role": "user", "content": q.ask}]
        entry = {"id": q.id, "messages": messages, "options": options, "expect": q.expect, "wrong": q.wrong}
        try:
            for attempt in retrying(attempts):
                with attempt:
                    ctx = CallContext("single", "analysis", "sanity", 0,
                                      prompt_nonce(key, "single", q.id, "sanity", attempt.retry_state.attempt_number))
                    rec = client.chat(model, messages, options, ctx)
        except RequestError as exc:
            answers.append({**entry, "response": None, "right": None, "error": f"{exc.kind}: {exc}"})
            continue
        answers.append({**entry, "response": rec.output_text, "done_reason": rec.done_reason,
                        "output_tokens": rec.output_tokens, "right": judge(rec.output_text, q), "error": None})
    return answers


def verdict(answers: list[dict], kind: str, min_correct: int) -> str:
    """'failed' (a call failed), 'not judged' (a base model), 'pass' or 'junk' (below min_correct)."""
    if any(a["error"] for a in answers):
        return "failed"
    if kind == "base":
        return "not judged"
    return "pass" if sum(bool(a["right"]) for a in answers) >= min_correct else "junk"


# ---- the runner's part --------------------------------------------------------------------------


def cold_start(runtime, client: StreamingClient, endpoint: str, model: ModelSpec, workload: Workload,
               options: dict, key: str, cold_load_ms: float) -> dict:
    """One coldstart.jsonl line: free the model, serve it again, one cold call and one warm call."""
    entry: dict = {"model": model.name, "endpoint": endpoint, "api": client.api, "runtime": runtime.kind,
                   "options": options, "cold": None, "warm": None, "error": None, "error_kind": None}
    step = "free the model"
    try:
        runtime.free()
        step = "serve it again"
        runtime.switch(model, {})
        for phase in ("cold", "warm"):
            step = f"{phase} call"
            entry[phase] = nonced_chat(client, model.name, workload, options, key=key, agent="single",
                                       stage="analysis", phase=f"coldstart-{phase}", attempt=1,
                                       cold_load_ms=cold_load_ms).to_json()
    except RequestError as exc:
        entry.update(error=f"{step}: {exc}", error_kind=exc.kind)
    return entry


def _done(entries: list[dict], model: str, endpoint: str | None = None) -> bool:
    return any(e.get("model") == model and (endpoint is None or e.get("endpoint") == endpoint)
               and not e.get("error") for e in entries)


def measure(runtime, clients: dict[str, StreamingClient], store: Store, timeline, profile: Profile,
            workload: Workload, models: list[ModelSpec], threads: int | None) -> None:
    """Cold start on every endpoint, then the sanity questions, per model; what the study has
    already measured is kept (once per study: a resumed `bench` measures only what is missing).
    A placebo copies its original's weights, so the original's measurements stand for it."""
    models = [m for m in models if m.placebo_of is None]
    spec, wl = profile.instrument, profile.workload
    endpoints = runtime.endpoints()
    if spec.sanity:
        qs, qs_sha = load_sanity()
        doc = store.read_json(SANITY) or {}
        doc.update(questions_file=str(SANITY_FILE.relative_to(REPO_ROOT)), questions_sha256=qs_sha, rule=RULE,
                   min_correct=qs.min_correct)
        doc.setdefault("models", {})
        pending = [m for m in models if (doc["models"].get(m.name) or {}).get("verdict") in (None, "failed")]
        ggufs = {e["name"]: e.get("gguf") for e in
                 model_identities(runtime, profile.model_copy(update={"models": pending}))} if pending else {}
    for model in models:
        if spec.cold_start:
            for ep in endpoints:
                earlier = store.read_jsonl(COLDSTART)
                if _done(earlier, model.name, ep.name):
                    continue
                tries = sum(e.get("model") == model.name and e.get("endpoint") == ep.name for e in earlier)
                options = request_options(wl, None, threads if ep.api == "ollama" else None)
                with timeline.event("cold_start", model=model.name, endpoint=ep.name) as event:
                    entry = cold_start(runtime, clients[ep.name], ep.name, model, workload, options,
                                       f"{profile.study}/coldstart/{model.name}/{ep.name}/{tries + 1}", wl.cold_load_ms)
                    event["ok"] = entry["error"] is None
                if entry["error"]:
                    tqdm.write(f"cold start of {model.name} on {ep.name} failed ({entry['error_kind']}): "
                               f"{entry['error']}")
                store.append_jsonl(COLDSTART, entry)
        if spec.sanity and model in pending:
            ep = endpoints[0]
            kind, why = model_kind(ggufs.get(model.name))
            with timeline.event("sanity", model=model.name, endpoint=ep.name):
                try:
                    runtime.switch(model, {})
                    answers = ask(clients[ep.name], model.name, qs, seed=wl.seed,
                                  threads=threads if ep.api == "ollama" else None,
                                  key=f"{profile.study}/sanity/{model.name}", attempts=wl.retries)
                except RequestError as exc:  # the switch failed: every question is unanswered
                    answers = [{"id": q.id, "messages": [{"role": "user", "content": q.ask}], "expect": q.expect,
                                "wrong": q.wrong, "response": None, "right": None, "error": f"{exc.kind}: {exc}"}
                               for q in qs.questions]
            right = sum(bool(a["right"]) for a in answers)
            doc["models"][model.name] = {
                "model": model.name, "endpoint": ep.name, "url": ep.url, "kind": kind, "kind_why": why,
                "judged": kind != "base", "right": right, "asked": len(answers),
                "verdict": verdict(answers, kind, qs.min_correct), "answers": answers}
            atomic_write_json(store.path(SANITY), doc)
            log.info("sanity %s: %s (%d of %d right)", model.name, doc["models"][model.name]["verdict"], right,
                     len(answers))


# ---- tables, report, validate ---------------------------------------------------------------------


def coldstart_table(entries: list[dict]) -> pd.DataFrame:
    """tables/coldstart.csv: per model and endpoint, its latest measurement that worked (else its
    latest failure): the engine's load time, cold and warm TTFT and e2e, and the penalties."""
    latest: dict[tuple[str, str], dict] = {}
    for e in entries:
        k = (e.get("model"), e.get("endpoint"))
        if k not in latest or not e.get("error") or latest[k].get("error"):
            latest[k] = e
    rows = []
    for (model, endpoint), e in latest.items():
        cold, warm = e.get("cold") or {}, e.get("warm") or {}
        rows.append({"model": model, "endpoint": endpoint, "api": e.get("api"), "runtime": e.get("runtime"),
                     "at": e.get("at"), "load_ms": cold.get("load_ms"),
                     "cold_ttft_ms": cold.get("ttft_ms"), "cold_e2e_ms": cold.get("e2e_ms"),
                     "warm_load_ms": warm.get("load_ms"), "warm_ttft_ms": warm.get("ttft_ms"),
                     "warm_e2e_ms": warm.get("e2e_ms"),
                     "ttft_penalty_ms": metrics.cold_start_penalty_ms(cold.get("ttft_ms"), warm.get("ttft_ms")),
                     "e2e_penalty_ms": metrics.cold_start_penalty_ms(cold.get("e2e_ms"), warm.get("e2e_ms")),
                     "cold_output_tokens": cold.get("output_tokens"), "warm_output_tokens": warm.get("output_tokens"),
                     "error": e.get("error") or ""})
    return pd.DataFrame(rows)


def sanity_table(doc: dict | None) -> pd.DataFrame:
    """tables/sanity.csv: per model and question, the answer and its verdict, beside the model's."""
    rows = []
    for m in (doc or {}).get("models", {}).values():
        for a in m["answers"]:
            rows.append({"model": m["model"], "endpoint": m["endpoint"], "kind": m["kind"], "judged": m["judged"],
                         "model_verdict": m["verdict"], "model_right": m["right"], "asked": m["asked"],
                         "question": a["id"], "expect": a["expect"], "wrong": ";".join(a["wrong"]),
                         "response": a["response"], "right": a["right"], "error": a["error"] or ""})
    return pd.DataFrame(rows)


def derived_tables(coldstart: list[dict], sanity: dict | None) -> dict[str, pd.DataFrame]:
    """The two tables, only where the study measured them (a study from before has neither)."""
    out = {"coldstart": coldstart_table(coldstart), "sanity": sanity_table(sanity)}
    return {k: v for k, v in out.items() if not v.empty}


def _md(rows: list[dict]) -> str | None:
    return pd.DataFrame(rows).to_markdown(index=False) if rows else None


def _short(text: str | None, n: int = 60) -> str:
    if text is None:
        return "–"
    one = " ".join(text.split()).replace("|", "\\|")
    return one if len(one) <= n else one[: n - 1] + "…"


def flags(sanity: dict | None) -> list[str]:
    """The lines under the report's title: every judged model whose answers are junk, or that could
    not be asked, with what to check."""
    out = []
    for m in (sanity or {}).get("models", {}).values():
        if m["verdict"] == "junk":
            out.append(f"**Answer sanity: {m['model']} answered {m['right']} of {m['asked']} trivial questions "
                       f"right** (at least {sanity['min_correct']} expected; `sanity.json`): its numbers may measure a "
                       f"broken setup. Check its chat template (does the user's message reach the model? the "
                       f"profile's `template`, `ollama show --template`) and its quantisation (a damaged or too "
                       f"aggressive quant); see \"Cold start and answer sanity\".")
        elif m["verdict"] == "failed":
            err = next(a["error"] for a in m["answers"] if a["error"])
            out.append(f"**Answer sanity: {m['model']} could not be asked** ({_short(err, 160)}); its answers were "
                       f"not checked.")
    return out


def report_context(results, profile: Profile) -> dict:
    """What the report's probe partials show, from the analysis (bench.analysis.Results)."""
    cs = results.derived.get("coldstart", pd.DataFrame())
    doc = results.sanity or {}
    return {
        "on": {"cold_start": profile.instrument.cold_start, "sanity": profile.instrument.sanity},
        "flags": flags(doc),
        "coldstart": _md([{"model": r["model"], "instance": f"{r['endpoint']} ({r['api']})",
                           "load ms (engine)": fmt.num(r["load_ms"]),
                           "cold TTFT / e2e ms": f"{fmt.num(r['cold_ttft_ms'])} / {fmt.num(r['cold_e2e_ms'])}",
                           "warm TTFT / e2e ms": f"{fmt.num(r['warm_ttft_ms'])} / {fmt.num(r['warm_e2e_ms'])}",
                           "cold − warm TTFT / e2e ms": f"{fmt.num(r['ttft_penalty_ms'])} / "
                                                        f"{fmt.num(r['e2e_penalty_ms'])}",
                           "failed": _short(r["error"], 120) if r["error"] else ""}
                          for _, r in cs.iterrows()]),
        "sanity_models": _md([{"model": m["model"], "kind": m["kind"], "why": m["kind_why"],
                               "right": f"{m['right']} of {m['asked']}" if m["judged"] else f"({m['right']} of "
                                                                                             f"{m['asked']})",
                               "verdict": m["verdict"]} for m in doc.get("models", {}).values()]),
        "sanity_answers": _md([{"model": m["model"], "question": a["id"], "asked": _short(a["messages"][-1]["content"]),
                                "expected / wrong": a["expect"] + (f" / {', '.join(a['wrong'])}" if a["wrong"] else ""),
                                "answer": (_short(a["response"]) if a["error"] is None
                                           else f"error: {_short(a['error'])}"),
                                "right": "–" if a["right"] is None else ("yes" if a["right"] else "no")}
                               for m in doc.get("models", {}).values() for a in m["answers"]]),
        "sanity_rule": doc.get("rule", RULE), "min_correct": doc.get("min_correct") or load_sanity()[0].min_correct,
    }


def validate_warnings(store: Store, profile: Profile) -> list[str]:
    """`invoke validate`'s warnings: a study the runner ran without these measurements (or with a
    failed one), and junk answers. Never problems: the runs stand without them."""
    if not store.read_jsonl(TIMELINE):
        return []  # the runner never ran here: nothing was expected of it
    out = []
    if profile.instrument.cold_start:
        entries = store.read_jsonl(COLDSTART)
        if not entries:
            out.append(f"no {COLDSTART}: the cold-start probe did not run (instrument.cold_start); `invoke bench` "
                       f"measures what is missing")
        for _, r in coldstart_table(entries).iterrows():
            if r["error"]:
                out.append(f"cold start of {r['model']} on {r['endpoint']} failed: {r['error']}")
    if profile.instrument.sanity:
        doc = store.read_json(SANITY)
        if doc is None:
            out.append(f"no {SANITY}: the answer sanity probe did not run (instrument.sanity); `invoke bench` "
                       f"measures what is missing")
        for m in (doc or {}).get("models", {}).values():
            if m["verdict"] in ("junk", "failed"):
                out.append(f"answer sanity of {m['model']}: {m['verdict']} ({m['right']} of {m['asked']} right)")
    return out
