"""Judge-scored benchmarks: open-ended criteria (ADL descriptions, Video-ChatGPT) and zero-shot QA.

Missing is never 0. Per criterion the mean is over *judged* items only, and the counts say what was
left out: ``missing_predictions`` (no prediction, or its features were missing), ``judge_failed`` (no
reply after the bounded retries), ``judge_malformed`` (a reply that could not be parsed) and
``not_applicable`` (e.g. a record without the two consistency questions). ``coverage`` = judged / total.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from llavidal.eval.judges.base import Judge, JudgeItem
from llavidal.eval.predictions import Prediction, as_predictions, join
from llavidal.eval.records import EvalRecord
from llavidal.eval.tasks import TaskSpec

DEFAULT_SPLIT = "default"


def _as_splits(predictions: Any, kind: str) -> dict[str, list[Prediction]]:
    if isinstance(predictions, dict) and all(isinstance(v, (list, tuple, str, Path)) for v in predictions.values()):
        return {split: as_predictions(value, kind) for split, value in predictions.items()}
    return {DEFAULT_SPLIT: as_predictions(predictions, kind)}


def _item_for(criterion: str, record: EvalRecord, prediction: Prediction | None) -> tuple[JudgeItem | None, str]:
    if prediction is None:
        return None, "no_prediction"
    if not prediction.ok:
        return None, prediction.status
    if criterion == "consistency":
        if len(record.consistency_questions) != 2:
            return None, "not_applicable"
        first, second = prediction.outputs.get("cons1"), prediction.outputs.get("cons2")
        if first is None or second is None:
            return None, "no_prediction"
        return JudgeItem(
            criterion=criterion,
            question=record.consistency_questions[0],
            question2=record.consistency_questions[1],
            answer=record.consistency_answer or record.answer,
            prediction=first,
            prediction2=second,
            item_id=record.id,
        ), ""
    return JudgeItem(
        criterion=criterion,
        question=record.question,
        answer=record.answer,
        prediction=prediction.text,
        item_id=record.id,
    ), ""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_judged(
    predictions: Iterable[Prediction] | dict[str, list[Prediction]],
    spec: TaskSpec,
    judge: Judge,
    criteria: list[str] | None = None,
    records: dict[str, list[EvalRecord]] | list[EvalRecord] | None = None,
) -> dict:
    """Judge predictions on a benchmark's criteria (``open``) or as zero-shot QA (``zeroshot``).

    ``predictions`` is a list, or a dict split name -> list for benchmarks whose criteria read different
    files (Video-ChatGPT: ``generic``, ``temporal``, ``consistency``; see ``criterion_splits``). A
    criterion whose split was not given is skipped and listed in ``skipped_criteria``.
    """
    if spec.kind not in ("open", "zeroshot"):
        raise ValueError(f"benchmark {spec.name} is {spec.kind!r}; judge scoring is for open and zeroshot benchmarks")
    splits = _as_splits(predictions, spec.kind)
    if records is None or isinstance(records, dict):
        record_splits = dict(records or {})
    elif len(splits) == 1:
        record_splits = {next(iter(splits)): list(records)}
    else:
        raise ValueError("with several prediction splits, pass records as a dict split name -> records")
    criteria = list(criteria or spec.criteria)
    unknown = [c for c in criteria if c not in spec.criteria]
    if unknown:
        raise ValueError(f"criteria {unknown} are not part of benchmark {spec.name} ({spec.criteria})")

    plan: list[tuple[str, EvalRecord, Prediction | None, JudgeItem | None, str]] = []
    skipped: list[str] = []
    for criterion in criteria:
        split = spec.criterion_splits.get(criterion, DEFAULT_SPLIT)
        if split not in splits and DEFAULT_SPLIT in splits and len(splits) == 1:
            split = DEFAULT_SPLIT
        if split not in splits:
            skipped.append(criterion)
            continue
        pairs = join(record_splits.get(split), splits[split])
        for record, prediction in pairs:
            item, reason = _item_for(criterion, record, prediction)
            plan.append((criterion, record, prediction, item, reason))

    to_judge = [entry[3] for entry in plan if entry[3] is not None]
    verdict_list = judge.judge(to_judge) if to_judge else []
    if len(verdict_list) != len(to_judge):
        raise RuntimeError(f"judge {judge.judge_id} returned {len(verdict_list)} judgements for {len(to_judge)} items")
    verdicts = iter(verdict_list)

    per_record: dict[str, dict] = {}
    per_criterion: dict[str, dict] = {}
    for criterion, record, prediction, item, reason in plan:
        block = per_criterion.setdefault(criterion, {"scores": [], "counts": Counter(), "yes": 0, "no": 0})
        row = per_record.setdefault(
            record.id,
            {
                "id": record.id,
                "task": record.task,
                "video": record.video,
                "question": record.question,
                "answer": record.answer,
                "prediction": prediction.text if prediction is not None else None,
                "scores": {},
                "status": {},
                "errors": {},
            },
        )
        if item is None:
            block["counts"][reason if reason == "not_applicable" else "missing_predictions"] += 1
            row["scores"][criterion] = None
            row["status"][criterion] = reason
            continue
        if criterion == "consistency":
            row["consistency_predictions"] = [item.prediction, item.prediction2]
        verdict = next(verdicts)
        row["scores"][criterion] = verdict.score if verdict.ok else None
        row["status"][criterion] = verdict.status
        if verdict.error:
            row["errors"][criterion] = verdict.error
        if verdict.reply:  # the judge's own words: the GPT reply, or the local judge's signals (JSON)
            row.setdefault("reasons", {})[criterion] = verdict.reply
        if verdict.ok and verdict.score is not None:
            block["scores"].append(verdict.score)
            if criterion == "zeroshot":
                row["pred"] = verdict.pred
                block["yes" if verdict.pred == "yes" else "no"] += 1
        else:
            block["counts"]["judge_" + verdict.status] += 1

    summary: dict[str, dict] = {}
    metrics: dict[str, float | None] = {}
    for criterion, block in per_criterion.items():
        counts = block["counts"]
        judged = len(block["scores"])
        applicable = judged + sum(v for k, v in counts.items() if k != "not_applicable")
        mean = _mean(block["scores"])
        entry = {
            "mean": mean,
            "scaled": mean * spec.scale if mean is not None else None,
            "judged": judged,
            "total": applicable,
            "coverage": judged / applicable if applicable else None,
            "missing_predictions": counts.get("missing_predictions", 0),
            "judge_failed": counts.get("judge_failed", 0),
            "judge_malformed": counts.get("judge_malformed", 0),
            "judge_skipped": counts.get("judge_skipped", 0),
            "not_applicable": counts.get("not_applicable", 0),
        }
        if criterion == "zeroshot":
            decided = block["yes"] + block["no"]
            entry.update(yes=block["yes"], no=block["no"], accuracy=100.0 * block["yes"] / decided if decided else None)
            metrics["accuracy"] = entry["accuracy"]
            metrics["score"] = mean
        else:
            metrics[criterion] = entry["scaled"]
        summary[criterion] = entry
    if spec.kind == "open" and spec.overall == "mean" and set(criteria) == set(spec.criteria) and not skipped:
        # The overall score exists only for the complete set of criteria (a subset is not comparable).
        values = [metrics.get(c) for c in spec.criteria]
        metrics["overall"] = sum(values) / len(values) if all(v is not None for v in values) else None

    return {
        **spec.identity,
        "kind": spec.kind,
        "scale": spec.scale,
        "judge": judge.describe(),
        "metrics": metrics,
        "criteria": summary,
        "skipped_criteria": skipped,
        "items": list(per_record.values()),
    }
