"""The one judge interface: items in, judgements out, in the same order.

A :class:`Judgement` whose ``status`` is not ``ok`` has ``score = None``: a failed or unparseable
judgement is *missing*, counted and shown in reports, never scored 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

JUDGEMENT_STATUSES = ("ok", "malformed", "failed", "skipped")


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees for one (record, criterion)."""

    criterion: str
    """``correctness``, ``detail``, ``context``, ``temporal``, ``consistency``, ``zeroshot`` or ``mcq``."""
    question: str
    answer: str
    prediction: str
    question2: str = ""
    """Consistency only: the paraphrased second question."""
    prediction2: str = ""
    """Consistency only: the prediction for ``question2``."""
    choices: tuple[tuple[str, str], ...] = ()
    """MCQ fallback only: (letter, text) pairs."""
    item_id: str = ""
    """Record id, for messages; not part of the cache key (same inputs, same judgement)."""


@dataclass
class Judgement:
    score: float | None
    """0-5, or ``None`` when the judgement is missing."""
    pred: str | None = None
    """``yes``/``no`` for zero-shot QA; the chosen letter for the MCQ fallback."""
    status: str = "ok"
    """``ok``; ``malformed`` (reply could not be parsed); ``failed`` (no reply after the retries);
    ``skipped`` (nothing to judge)."""
    error: str = ""
    reply: str = ""
    judge_id: str = ""
    prompt_version: str = ""
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Judge(Protocol):
    judge_id: str
    prompt_version: str

    def judge(self, items: list[JudgeItem]) -> list[Judgement]:
        """Judge every item; the result list is aligned with ``items``."""
        ...

    def describe(self) -> dict:
        """What identifies this judge in results (model id, prompt version, settings; never a key)."""
        ...


class JudgeConfigError(RuntimeError, ValueError):
    """The judge cannot work at all (bad key, unknown model, wrong URL): stop instead of scoring.

    Also a ``ValueError``: it is the user's setting to fix, so commands report it as ``error: ...`` (exit 2)."""
