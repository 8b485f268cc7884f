"""The answer sanity probe's question set (bench/data/sanity.yaml) and its rule: what a right
answer is. The probe asks (bench/study/probes.py, study); the tables and the report state the rule."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.core.errors import BenchError
from bench.core.paths import SANITY_FILE

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
