"""Benchmarks as data: one YAML file per benchmark (name, kind, prompt, parser, metric, version).

The built-in files live in ``llavidal/eval/benchmarks/``; any other YAML file with the same fields can be
passed by path. ``kind`` says how records are read and scored:

- ``mcq``: multiple choice, parsed deterministically (:mod:`llavidal.eval.mcq`), accuracy;
- ``open``: open-ended answers judged on ``criteria`` (0-5), means multiplied by ``scale``;
- ``zeroshot``: the judge says yes/no and gives a 0-5 score; accuracy = yes / (yes + no).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llavidal.eval.records import RECORD_KINDS, EvalRecord, load_records

BENCHMARK_DIR = Path(__file__).resolve().parent / "benchmarks"
CRITERIA = ("correctness", "detail", "context", "temporal", "consistency", "zeroshot")


@dataclass
class BenchmarkSpec:
    name: str
    version: int
    kind: str
    description: str = ""
    prompt_template: str = "{question}"
    """Text sent to the model; ``{question}`` and (MCQ) ``{choices}`` are filled in."""
    choice_template: str = "({letter}) {text}"
    choice_separator: str = " "
    parser: str = ""
    metric: str = ""
    criteria: list[str] = field(default_factory=list)
    criterion_splits: dict[str, str] = field(default_factory=dict)
    """Which prediction file each criterion reads (Video-ChatGPT: generic / temporal / consistency)."""
    scale: float = 1.0
    """Judge means (0-5) are multiplied by this (20 for ADL descriptions: 0-100)."""
    overall: str = ""
    tasks: list[str] = field(default_factory=list)
    path: str = ""

    def __post_init__(self) -> None:
        where = self.path or self.name
        if self.kind not in RECORD_KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} is not one of {RECORD_KINDS}")
        unknown = [c for c in self.criteria if c not in CRITERIA]
        if unknown:
            raise ValueError(f"{where}: unknown criteria {unknown}; known: {CRITERIA}")
        if self.kind == "mcq" and "{choices}" not in self.prompt_template:
            raise ValueError(f"{where}: an MCQ prompt_template must contain {{choices}}")
        if "{question}" not in self.prompt_template:
            raise ValueError(f"{where}: prompt_template must contain {{question}}")

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

    def load_records(self, path: str | Path, task: str = "", limit: int | None = None) -> list[EvalRecord]:
        return load_records(path, self.kind, task=task, limit=limit)


def list_benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))


def load_benchmark(name_or_path: str | Path) -> BenchmarkSpec:
    """A built-in benchmark by name (``adlmcq_forecasting``) or any benchmark YAML by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = BENCHMARK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"unknown benchmark {str(name_or_path)!r}: not a file and not one of {', '.join(list_benchmarks())}"
        )
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    known = set(BenchmarkSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown}; known: {sorted(known - {'path'})}")
    try:
        return BenchmarkSpec(**data, path=str(path))
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None
