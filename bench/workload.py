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

from bench.errors import BenchError
from bench.paths import DATASET_DIR, WORKLOAD_FILE

STAGES = ("analysis", "report")


@dataclass(frozen=True)
class Workload:
    prompts: dict
    dataset_text: str
    prompts_sha256: str
    dataset_sha256: str

    def messages(self, agent: str, stage: str, previous: str = "") -> list[dict]:
        """Chat messages for one call; `previous` is the text the agent's first call generated."""
        spec = self.prompts["agents"][agent][stage]
        user = spec["user"].replace("{{dataset}}", self.dataset_text).replace("{{previous}}", previous)
        return [{"role": "system", "content": spec["system"]}, {"role": "user", "content": user}]


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
