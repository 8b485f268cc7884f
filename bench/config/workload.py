"""The agents' workload: prompts from data/workload.yaml and the data set they analyse.

Both languages build the messages the same way (see rust-agents/src/workload.rs), and every run
records the hashes below so a reader can check that they did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from bench.core.errors import BenchError
from bench.core.paths import DATASET_DIR, WORKLOAD_FILE

STAGES = ("analysis", "report")
NONCE_HEX_CHARS = 16


def prompt_nonce(run_key: str, agent: str, stage: str, phase: str, attempt: int) -> str:
    """First 16 hex chars of sha256("run_key|agent|stage|phase|attempt").

    Engines reuse the KV cache of a matching prompt prefix (Ollama has no switch to turn that
    off), so every counted call's prompt must differ from its first bytes: the nonce opens the
    system message. It is derived, not random, so a rerun and the Rust agents (same function in
    rust-agents/src/workload.rs) send the same bytes; `attempt` makes a retried call differ from the
    attempt that may have cached its prompt before failing.
    """
    key = f"{run_key}|{agent}|{stage}|{phase}|{attempt}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:NONCE_HEX_CHARS]


def nonce_attempt(run_attempt: int, call_attempt: int, attempts: int) -> int:
    """The `attempt` a call's nonce is made from. A run can be attempted more than once (a rung of
    the fallback ladder, the retry pass) and each of its calls up to `attempts` times: each run
    attempt owns the next `attempts` numbers, so no call repeats a prompt of an earlier attempt.
    Run attempt 1 gives the call's own attempt. The same function is in rust-agents/src/workload.rs."""
    return (run_attempt - 1) * attempts + call_attempt


def prompt_role(agent: str) -> str:
    """Whose prompts an agent sends: its own, or the single agent's for the agents of an
    agent-count step (agent1 … agentN: the same work N times, each with its own nonce)."""
    return "single" if agent.startswith("agent") else agent


@dataclass(frozen=True)
class Workload:
    prompts: dict
    dataset_text: str
    prompts_sha256: str
    dataset_sha256: str

    def messages(self, agent: str, stage: str, nonce: str, previous: str = "") -> list[dict]:
        """Chat messages for one call: the system message opens with the fixed-length line
        '[run <nonce>]'; `previous` is the text the agent's first call generated."""
        spec = self.prompts["agents"][prompt_role(agent)][stage]
        user = spec["user"].replace("{{dataset}}", self.dataset_text).replace("{{previous}}", previous)
        return [{"role": "system", "content": f"[run {nonce}]\n{spec['system']}"},
                {"role": "user", "content": user}]


def dataset_text(dataset_dir: Path) -> str:
    """Every *.csv in name order, as '### <name>\\n<text>\\n' blocks."""
    files = sorted(dataset_dir.glob("*.csv"), key=lambda p: p.name)
    if not files:
        raise BenchError(f"no *.csv files in the data set folder {dataset_dir}")
    return "".join(f"### {f.name}\n{f.read_text(encoding='utf-8').rstrip(chr(10))}\n" for f in files)


@lru_cache(maxsize=4)
def load_workload(workload_file: Path = WORKLOAD_FILE, dataset_dir: Path = DATASET_DIR) -> Workload:
    raw = workload_file.read_bytes()
    prompts = yaml.safe_load(raw)
    for agent in ("single", "collector", "insight"):
        for stage in STAGES:
            if not isinstance(prompts.get("agents", {}).get(agent, {}).get(stage), dict):
                raise BenchError(f"{workload_file}: agents.{agent}.{stage} is missing")
    text = dataset_text(dataset_dir)
    return Workload(
        prompts=prompts,
        dataset_text=text,
        prompts_sha256=hashlib.sha256(raw).hexdigest(),
        dataset_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
