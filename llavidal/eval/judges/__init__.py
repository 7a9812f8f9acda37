"""Judges: one interface (:class:`Judge`), an OpenAI-compatible backend and an offline judge (MiniLM
similarity relative to the other references, plus fact checks).

``make_judge("openai", model=..., base_url=...)`` / ``make_judge("local")``. Heavy imports (``openai``,
sentence-transformers) happen only when a judge is used.
"""

from __future__ import annotations

from typing import Any

from llavidal.eval.judges.base import Judge, JudgeConfigError, JudgeItem, Judgement

JUDGE_TYPES = ("openai", "local")


def make_judge(kind: str, **options: Any) -> Judge:
    """Build a judge by type name: ``openai`` (OpenAI-compatible endpoint) or ``local`` (MiniLM)."""
    if kind == "openai":
        from llavidal.eval.judges.openai_judge import OpenAIJudge

        return OpenAIJudge(**options)
    if kind == "local":
        from llavidal.eval.judges.local import LocalJudge

        return LocalJudge(**{k: v for k, v in options.items() if k in ("model_path", "device", "batch_size")})
    raise ValueError(f"unknown judge {kind!r}; one of {JUDGE_TYPES}")


__all__ = ["Judge", "JudgeConfigError", "Judgement", "JudgeItem", "make_judge", "JUDGE_TYPES"]
