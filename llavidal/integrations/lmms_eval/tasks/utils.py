"""Functions the llavidal task YAMLs name (``!function utils.NAME``): our benchmark records, read by
:func:`llavidal.eval.records.normalise_record` (any accepted upstream shape), prompted by our task specs
(:mod:`llavidal.eval.tasks`), so lmms-eval asks exactly what ``llavidal eval`` asks."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from llavidal.eval.records import normalise_record
from llavidal.eval.tasks import load_task

# lmms-eval task name -> (our task spec, record kind)
SPECS = {
    "llavidal_adlmcq_recognition": ("adlmcq_action_recognition", "mcq"),
    "llavidal_adlmcq_forecasting": ("adlmcq_forecasting", "mcq"),
    "llavidal_adl_descriptions": ("adl_descriptions", "open"),
}


@lru_cache(maxsize=None)
def _spec(name: str):
    return load_task(name)


def _without_nulls(value: Any) -> Any:
    # datasets' JSON loader gives every record every key of the file (missing ones as None): drop them again.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _record(doc: dict, kind: str):
    return normalise_record(_without_nulls(dict(doc)), kind, f"lmms-eval doc {doc.get('id', '?')}")


def doc_to_visual(doc: dict) -> list[str]:
    """The record's video file name (the model finds it in its ``video_dir`` or its feature folders)."""
    for kind in ("mcq", "open"):
        try:
            return [_record(doc, kind).video]
        except ValueError:
            continue
    raise ValueError(f"lmms-eval doc {doc.get('id', '?')}: no video field")


def _text(task: str, kind: str):
    def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
        record = _record(doc, kind)
        return _spec(task).prompts(record)["main"]
    return doc_to_text


mcq_recognition_doc_to_text = _text("adlmcq_action_recognition", "mcq")
mcq_forecasting_doc_to_text = _text("adlmcq_forecasting", "mcq")
descriptions_doc_to_text = _text("adl_descriptions", "open")


def mcq_doc_to_choice(doc: dict) -> list[str]:
    """The options as the model would answer them: ``(A) text``."""
    record = _record(doc, "mcq")
    return [f"({letter}) {text}" for letter, text in record.choices.items()]


def mcq_doc_to_target(doc: dict) -> int:
    record = _record(doc, "mcq")
    return list(record.choices).index(record.answer_letter)


def description_doc_to_target(doc: dict) -> str:
    return _record(doc, "open").answer


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def description_process_results(doc: dict, results: list[str]) -> dict:
    """Word-overlap F1 with the reference (deterministic, judge-free); the judged five criteria come from
    ``llavidal eval infer`` + ``llavidal eval judge descriptions`` (no judge runs inside lmms-eval)."""
    record = _record(doc, "open")
    prediction, reference = _words(results[0] if results else ""), _words(record.answer)
    common = sum(min(prediction.count(w), reference.count(w)) for w in set(prediction))
    f1 = 0.0 if not common else 2 * common / (len(prediction) + len(reference))
    return {"word_f1": 100.0 * f1}
