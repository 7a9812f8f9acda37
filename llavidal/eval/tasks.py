"""Evaluation tasks as data: one YAML file per task (name, kind, prompt, parser, metric, version).

The built-in files live in ``llavidal/eval/tasks/`` (``llavidal eval tasks`` lists them); any other YAML
file with the same fields can be passed by path (``--benchmark FILE.yaml``). ``kind`` says how records
are read; ``parser`` and ``metric`` name entries of the registries below, which score the predictions:

- ``mcq``: multiple choice; parser ``mcq_deterministic`` (:func:`llavidal.eval.mcq.parse_mcq_answer`),
  metric ``accuracy`` (missing answers counted wrong);
- ``open``: open-ended answers; parser ``judge`` (the judge reads the answer), metric ``judge_mean``
  (per criterion, 0-5 means multiplied by ``scale``);
- ``zeroshot``: parser ``judge``, metric ``yes_accuracy_and_score`` (the judge says yes/no and gives a 0-5
  score; accuracy = yes / (yes + no)).

A new parser or metric is one :func:`register_parser` / :func:`register_metric` call (as
lm-evaluation-harness registers its filters and metrics); a task YAML then names it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from llavidal.eval.records import RECORD_KINDS, EvalRecord, load_records

TASK_DIR = Path(__file__).resolve().parent / "tasks"
CRITERIA = ("correctness", "detail", "context", "temporal", "consistency", "zeroshot")


# ---------------------------------------------------------------------------------------------------
# Registries of answer parsers and metrics (targets are "module:function", imported when used)


@dataclass(frozen=True)
class Registered:
    name: str
    kinds: tuple[str, ...]
    """Task kinds it applies to."""
    target: str
    """``module:function``; empty for the ``judge`` parser (the judge reads the answer itself)."""
    description: str = ""

    def load(self) -> Callable[..., Any] | None:
        if not self.target:
            return None
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


PARSERS: dict[str, Registered] = {}
"""Answer parsers: ``parse(text, choices, original_keys) -> ParsedAnswer`` (MCQ)."""
METRICS: dict[str, Registered] = {}
"""Metrics: ``score(spec, predictions, records=None, judge=None, criteria=None) -> result dict``."""
DEFAULTS = {
    "mcq": ("mcq_deterministic", "accuracy"),
    "open": ("judge", "judge_mean"),
    "zeroshot": ("judge", "yes_accuracy_and_score"),
}
"""Parser and metric of a task whose YAML does not name them, by kind."""


def register_parser(name: str, kinds: tuple[str, ...], target: str, description: str = "") -> None:
    PARSERS[name] = Registered(name, tuple(kinds), target, description)


def register_metric(name: str, kinds: tuple[str, ...], target: str, description: str = "") -> None:
    METRICS[name] = Registered(name, tuple(kinds), target, description)


register_parser("mcq_deterministic", ("mcq",), "llavidal.eval.mcq:parse_mcq_answer",
                "letter, answer phrase, choice text: deterministic rules (llavidal.eval.mcq)")
register_parser("judge", ("open", "zeroshot"), "", "the judge reads the answer (llavidal.eval.judges)")
register_metric("accuracy", ("mcq",), "llavidal.eval.tasks:score_accuracy",
                "percent correct, missing answers counted wrong; per task and class")
register_metric("judge_mean", ("open",), "llavidal.eval.tasks:score_with_judge",
                "mean judge score (0-5) per criterion x scale; overall = mean of the criteria")
register_metric("yes_accuracy_and_score", ("zeroshot",), "llavidal.eval.tasks:score_with_judge",
                "yes / (yes + no) of the judge's verdicts, in percent, and the mean 0-5 score")
register_parser("first_letter", ("mcq",), "llavidal.eval.tasks:parse_first_letter",
                "MVBench: the reply's first token is the letter (after the answer prompt 'Best option:(')")
register_metric("accuracy_task_average", ("mcq",), "llavidal.eval.tasks:score_accuracy_task_average",
                "accuracy per task (n, 95% interval), over all records, and the mean of the task accuracies")


def score_accuracy(spec: "TaskSpec", predictions: Any, records: Any = None, judge: Any = None,
                   criteria: list[str] | None = None) -> dict:
    """Metric ``accuracy``: :func:`llavidal.eval.mcq.score_mcq` with the task's answer parser."""
    from llavidal.eval.mcq import score_mcq

    if criteria:
        raise ValueError(f"task {spec.name}: criteria apply to judged tasks, not to {spec.kind!r}")
    return score_mcq(predictions, records, benchmark=spec.name, benchmark_version=spec.version, judge=judge,
                     parser=spec.answer_parser())


def parse_first_letter(text: str | None, choices: dict[str, str], original_keys: dict[str, str] | None = None):
    """Parser ``first_letter``: MVBench's rule. The model continues the answer prompt ``Best option:(``, so
    the reply's first token is the option: ``A) ...``, ``A``, ``(A)``, ``A.``. Anything else is no answer."""
    import re

    from llavidal.eval.mcq import ParsedAnswer

    reply = (text or "").strip()
    if not reply:
        return ParsedAnswer(None, "empty", "first_letter")
    found = re.match(r"\(?([A-Za-z])(?:[).:,]|\s|$)", reply)
    if found is None:
        return ParsedAnswer(None, "no_answer", "first_letter")
    letter = found.group(1).upper()
    if letter not in choices:
        return ParsedAnswer(None, "not_a_choice", "first_letter", [letter])
    return ParsedAnswer(letter, "ok", "first_letter")


def score_accuracy_task_average(spec: "TaskSpec", predictions: Any, records: Any = None, judge: Any = None,
                                criteria: list[str] | None = None) -> dict:
    """Metric ``accuracy_task_average``: :func:`score_accuracy`, plus ``metrics["task_average"]``, the mean of the
    per-task accuracies (MVBench's average over its 20 tasks) and ``metrics["tasks"]``, how many it averages."""
    result = score_accuracy(spec, predictions, records, judge=judge, criteria=criteria)
    values = [block["accuracy"] for block in result["per_task"].values() if block.get("accuracy") is not None]
    result["metrics"]["task_average"] = sum(values) / len(values) if values else None
    result["metrics"]["tasks"] = len(values)
    return result


def _records_without_answer(predictions: Any, records: Any) -> list[str]:
    """Sources of records (given, or carried by predictions) whose reference answer is empty."""
    found: list[Any] = []
    for group in (records.values() if isinstance(records, dict) else [records or []]):
        found += list(group)
    for group in (predictions.values() if isinstance(predictions, dict) else [predictions]):
        if isinstance(group, (list, tuple)):
            found += [getattr(p, "record", None) for p in group]
    return [r.source or r.id for r in found if isinstance(r, EvalRecord) and not r.answer]


def score_with_judge(spec: "TaskSpec", predictions: Any, records: Any = None, judge: Any = None,
                     criteria: list[str] | None = None) -> dict:
    """Metrics ``judge_mean`` / ``yes_accuracy_and_score``: :func:`llavidal.eval.scoring.score_judged`."""
    from llavidal.eval.scoring import score_judged

    if judge is None:
        raise ValueError(f"task {spec.name} is scored by a judge; pass --judge openai (with --judge_model) or local")
    uncaptioned = _records_without_answer(predictions, records)
    if uncaptioned:
        raise ValueError(f"task {spec.name}: {len(uncaptioned)} records have no reference to judge against (e.g. "
                         f"{uncaptioned[0]}); add their reference text ('caption' or 'answer') to the annotations")
    result = score_judged(predictions, spec, judge, criteria=criteria, records=records)
    block = result.get("criteria", {}).get("zeroshot")
    if block is not None:  # yes / (yes + no) with its n and 95% (Wilson) interval, in percent
        from llavidal.eval.mcq import wilson_interval

        n = int(block.get("yes", 0)) + int(block.get("no", 0))
        interval = wilson_interval(int(block.get("yes", 0)), n)
        block["n"] = n
        block["ci95"] = [100.0 * interval[0], 100.0 * interval[1]] if interval else None
    return result


# ---------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class TaskSpec:
    name: str
    version: int
    kind: str
    description: str = ""
    prompt_template: str = "{question}"
    """Text sent to the model; ``{question}`` and (MCQ) ``{choices}`` are filled in."""
    choice_template: str = "({letter}) {text}"
    choice_separator: str = " "
    parser: str = ""
    """Answer parser (a name in :data:`PARSERS`); default by kind (:data:`DEFAULTS`)."""
    metric: str = ""
    """Metric (a name in :data:`METRICS`); default by kind."""
    criteria: list[str] = field(default_factory=list)
    criterion_splits: dict[str, str] = field(default_factory=dict)
    """Which prediction file each criterion reads (Video-ChatGPT: generic / temporal / consistency)."""
    scale: float = 1.0
    """Judge means (0-5) are multiplied by this (20 for ADL descriptions: 0-100)."""
    overall: str = ""
    tasks: list[str] = field(default_factory=list)
    answer_prompt: str = ""
    """Text the answer starts with, continued by the model (MVBench: ``Best option:(``)."""
    default_question: str = ""
    """The question of records that carry none (recaption: one fixed instruction per video)."""
    loglik: bool = False
    """MCQ: the task may be scored by option log-likelihood (``llavidal eval infer --mcq_scoring loglik*``)."""
    loglik_continuation: str = "{text}"
    """MCQ log-likelihood scoring: the answer whose likelihood is scored for each choice (``{letter}``, ``{text}``)."""
    path: str = ""

    def __post_init__(self) -> None:
        where = self.path or self.name
        if self.kind not in RECORD_KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} is not one of {RECORD_KINDS}")
        unknown = [c for c in self.criteria if c not in CRITERIA]
        if unknown:
            raise ValueError(f"{where}: unknown criteria {unknown}; known: {CRITERIA}")
        if self.loglik and (self.kind != "mcq" or not ("{text}" in self.loglik_continuation
                                                       or "{letter}" in self.loglik_continuation)):
            raise ValueError(f"{where}: loglik needs kind mcq and a loglik_continuation with {{text}} or {{letter}}")
        if self.kind == "mcq" and "{choices}" not in self.prompt_template:
            raise ValueError(f"{where}: an MCQ prompt_template must contain {{choices}}")
        if "{question}" not in self.prompt_template:
            raise ValueError(f"{where}: prompt_template must contain {{question}}")
        default_parser, default_metric = DEFAULTS[self.kind]
        self.parser, self.metric = self.parser or default_parser, self.metric or default_metric
        for what, registry, value in (("parser", PARSERS, self.parser), ("metric", METRICS, self.metric)):
            if value not in registry:
                raise ValueError(f"{where}: unknown {what} {value!r}; registered: {sorted(registry)}")
            if self.kind not in registry[value].kinds:
                raise ValueError(f"{where}: {what} {value!r} is for {'/'.join(registry[value].kinds)} tasks, "
                                 f"not {self.kind!r}; use one of {sorted(k for k, r in registry.items() if self.kind in r.kinds)}")

    @property
    def identity(self) -> dict:
        return {"benchmark": self.name, "benchmark_version": self.version}

    def render_choices(self, record: EvalRecord) -> str:
        return self.choice_separator.join(
            self.choice_template.replace("{letter}", letter).replace("{text}", text)
            for letter, text in record.choices.items()
        )

    def prompts(self, record: EvalRecord) -> dict[str, str]:
        """The questions to ask the model for one record: ``main`` and, when present, ``cons1``/``cons2``."""
        main = self.prompt_template.replace("{question}", record.question)
        if self.kind == "mcq":
            main = main.replace("{choices}", self.render_choices(record))
        prompts = {"main": main}
        if self.kind == "open" and len(record.consistency_questions) == 2:
            prompts["cons1"], prompts["cons2"] = record.consistency_questions
        return prompts

    def load_records(self, path: str | Path, task: str = "", limit: int | None = None,
                     answers: str | Path | None = None) -> list[EvalRecord]:
        """Records of a file, or of every ``*.json``/``*.jsonl`` of a folder (MVBench: one file per task)."""
        return load_records(path, self.kind, task=task, limit=limit, answers=answers,
                            default_question=self.default_question)

    def answer_parser(self) -> Callable[..., Any] | None:
        """The registered parser function (None for ``judge``: the judge reads answers)."""
        return PARSERS[self.parser].load()

    def score(self, predictions: Any, records: Any = None, judge: Any = None, criteria: list[str] | None = None) -> dict:
        """Score ``predictions`` with the task's metric (and ``judge``, for judged metrics or an MCQ fallback)."""
        return METRICS[self.metric].load()(self, predictions, records, judge=judge, criteria=criteria)


def list_tasks() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name (``adlmcq_forecasting``) or any task YAML by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = TASK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"unknown benchmark {str(name_or_path)!r}: not a file and not one of {', '.join(list_tasks())}"
        )
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    known = set(TaskSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown}; known: {sorted(known - {'path'})}")
    try:
        return TaskSpec(**data, path=str(path))
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None


# The user-facing word stays "benchmark" (--benchmark, results' "benchmark" key); these names keep the API.
BenchmarkSpec = TaskSpec
load_benchmark = load_task
list_benchmarks = list_tasks
