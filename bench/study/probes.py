"""Two measurements of the models themselves, made once per study by the runner before the matrix
(bench/study/runner.py); each is an event of the timeline, so the overhead table counts what it cost.
(The drift probes, a measurement of the host, are bench/study/instrument.py. The question set and its rule
are bench/config/sanity_set.py; the tables bench/analysis/probe_tables.py; the report's section bench/report/report_sections.py.)

- Cold start (`instrument.cold_start`): per model of the plan and per endpoint, the model is freed
  (the Runtime's `free()`: Ollama unloads it with keep_alive 0 and waits until /api/ps no longer
  lists it; llama.cpp stops its servers), served again (`switch()`, which restarts llama-server
  with the model), then one call of the single agent's analysis stage with the study's workload
  options, then one warm call right after. Each call has its own prompt nonce, so no prompt cache
  helps. One line per model × endpoint in coldstart.jsonl with the engine's load_ms and both
  calls' TTFT and e2e (cold_start_penalty_ms, bench/core/metrics.py). A cold call is never retried (a
  retry would be warm): a failure is a line with the error, shown in the report, never fatal.
- Answer sanity (`instrument.sanity`): the questions of bench/data/sanity.yaml, asked of each
  model on the study's first endpoint through its own client (temperature 0, the study's seed),
  judged by the rule in `judge` (no model judges another). sanity.json keeps the prompts, the
  answers and the verdicts. A model that is most likely a pretrained base (`model_kind`, from its
  GGUF header) is asked but not judged; a judged model below the bar is flagged under the
  report's title.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from bench.clients.agents import nonced_chat, request_options, retrying
from bench.clients.streaming import CallContext, StreamingClient
from bench.config.profile import ModelSpec, Profile
from bench.config.sanity_set import RULE, SanitySet, judge, load_sanity
from bench.config.workload import Workload, prompt_nonce
from bench.core.errors import RequestError
from bench.core.paths import REPO_ROOT, SANITY_FILE
from bench.core.store import COLDSTART, SANITY, Store, atomic_write_json
from bench.study.manifest_writer import model_identities

log = logging.getLogger("bench")

INSTRUCT_WORDS = ("instruct", "chat")


def model_kind(gguf: dict | None) -> tuple[str, str]:
    """('instruct' | 'base' | 'unknown', why) from a GGUF header (bench/study/manifest_writer.py gguf_metadata).
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
