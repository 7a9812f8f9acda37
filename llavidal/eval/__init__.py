"""Evaluation: tasks (benchmarks) as data, the inference runner, MCQ scoring, judges and reports.

Python API (imports are lazy, so ``import llavidal.eval`` stays cheap)::

    from llavidal.eval import (load_task, run_inference, load_predictions, score_mcq, score_judged,
                               OpenAIJudge, LocalJudge, write_report)

    spec = load_task("adlmcq_forecasting")          # llavidal/eval/tasks/adlmcq_forecasting.yaml
    records = spec.load_records("lemma_mcq.json")
    run_inference(engine, records, {"video": "feats/video", "pose": "feats/pose"}, "preds.jsonl", benchmark=spec)
    result = spec.score(load_predictions("preds.jsonl", "mcq"), records)   # the task's parser and metric
    write_report([result], "report/")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TaskSpec": "llavidal.eval.tasks",
    "load_task": "llavidal.eval.tasks",
    "list_tasks": "llavidal.eval.tasks",
    "register_parser": "llavidal.eval.tasks",
    "register_metric": "llavidal.eval.tasks",
    "BenchmarkSpec": "llavidal.eval.tasks",
    "load_benchmark": "llavidal.eval.tasks",
    "list_benchmarks": "llavidal.eval.tasks",
    "EvalRecord": "llavidal.eval.records",
    "load_records": "llavidal.eval.records",
    "RecordFormatError": "llavidal.eval.records",
    "Prediction": "llavidal.eval.predictions",
    "load_predictions": "llavidal.eval.predictions",
    "run_inference": "llavidal.eval.run_inference",
    "merge_predictions": "llavidal.eval.run_inference",
    "parse_mcq_answer": "llavidal.eval.mcq",
    "score_mcq": "llavidal.eval.mcq",
    "score_judged": "llavidal.eval.scoring",
    "JudgeItem": "llavidal.eval.judges.base",
    "Judgement": "llavidal.eval.judges.base",
    "JudgeConfigError": "llavidal.eval.judges.base",
    "make_judge": "llavidal.eval.judges",
    "OpenAIJudge": "llavidal.eval.judges.openai_judge",
    "LocalJudge": "llavidal.eval.judges.local",
    "write_report": "llavidal.eval.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llavidal.eval' has no attribute {name!r}")
