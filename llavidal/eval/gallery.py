r"""``llavidal gallery``: browse evaluation results of several runs side by side (a Gradio app).

Run as:

    llavidal gallery results/run_a results/run_b --video_folder world/videos
    llavidal gallery results/                      # a folder of result folders: pick the runs in the page
    bash scripts/gallery.sh [SAVE_DIR]             # PLLaVA's spelling

A result folder is what ``llavidal eval mcq``, ``eval judge ...`` or ``eval report`` write (``report.json``,
else ``*_results.json``), or what ``llavidal eval infer`` writes (predictions ``*.jsonl``: MCQ predictions
are scored on the fly with the task's deterministic parser; open answers are shown unscored). A results or
predictions file may be given instead of its folder.

The page steps through samples (previous / next, an index slider, jump to an id) showing the video (from
``--video_folder``, whatever its extension), the question, the reference answer, and each run's answer
with its score or correctness side by side. Filters: task or benchmark, correctness across runs, and
disagreement between runs. A header gives each run's accuracy with n and its 95% Wilson interval and the
mean judge score. Samples are aligned across runs by (benchmark, record id); ids that some runs lack are
counted in the header and shown as "not in this run".

Everything but the page is plain functions (:func:`load_run`, :func:`align`, :func:`filter_samples`,
:func:`summarize`), tested without a browser.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llavidal.config import ConfigError, arg, command, parse

if TYPE_CHECKING:
    import gradio as gr

logger = logging.getLogger("llavidal.gallery")

RESULT_FILE = "report.json"
"""Written by ``eval mcq``, ``eval judge`` and ``eval report``; preferred over the ``*_results.json`` beside it."""
OPEN_PASS_SCORE = 3.0
"""An open answer counts as right when every judged criterion scored at least this (0-5), as the static
report's "low-scored" filter does."""
SHOW_CHOICES = ("all samples", "all right", "all wrong", "any wrong", "missing from some run")
ALL_TASKS = "(all)"
_RANK_FILE = re.compile(r"\.rank\d+\.jsonl$")
ELEM_IDS = {
    "folders": "gallery-folders", "summary": "gallery-summary", "task": "gallery-task", "show": "gallery-show",
    "disagree": "gallery-disagree", "count": "gallery-count", "prev": "gallery-prev", "next": "gallery-next",
    "index": "gallery-index", "jump": "gallery-jump", "jump_button": "gallery-jump-button",
    "video": "gallery-video", "video_note": "gallery-video-note", "sample": "gallery-sample",
    "answers": "gallery-answers", "position": "gallery-position",
}
"""Elements the browser test (and users' own scripts) find by id."""


# ---------------------------------------------------------------------------------------------------
# Data: runs, their entries, aligned samples


@dataclass
class Entry:
    """One run's answer to one sample."""

    prediction: str | None
    """The model's reply (``None`` when it gave none: missing features, no row)."""
    correct: bool | None
    """MCQ: the parsed letter is the answer (a missing answer is wrong); zero-shot: the judge said yes;
    open: every criterion scored at least :data:`OPEN_PASS_SCORE`; ``None`` when unknown (unjudged)."""
    missing: bool = False
    letter: str | None = None
    """MCQ: the parsed letter (``None`` when none could be read)."""
    status: str = ""
    """Why an answer is missing or undecided (``no_answer``, ``missing_features``, ``failed``...)."""
    scores: dict[str, float | None] = field(default_factory=dict)
    """Judge scores per criterion (0-5), ``None`` where the judgement is missing."""

    @property
    def mean_score(self) -> float | None:
        values = [v for v in self.scores.values() if v is not None]
        return sum(values) / len(values) if values else None


@dataclass
class Run:
    """One result folder: its name in the page, where it was read, and its entries by sample key."""

    name: str
    path: Path
    kinds: dict[str, str]
    """benchmark -> result kind (``mcq``, ``open``, ``zeroshot``, ``predictions``)."""
    entries: dict[tuple[str, str], Entry]
    """(benchmark, record id) -> entry."""
    records: dict[tuple[str, str], dict]
    """(benchmark, record id) -> the record's fields (id, task, video, question, answer, choices, answer_letter)."""


@dataclass
class Sample:
    """One record, with every run's entry (``None`` for runs that lack it)."""

    benchmark: str
    id: str
    task: str
    video: str
    question: str
    answer: str
    choices: dict[str, str]
    answer_letter: str
    entries: dict[str, Entry | None]
    """run name -> entry, in run order."""

    @property
    def key(self) -> tuple[str, str]:
        return self.benchmark, self.id

    def present(self) -> dict[str, Entry]:
        return {name: entry for name, entry in self.entries.items() if entry is not None}


def _record_fields(item: dict) -> dict:
    return {
        "id": str(item.get("id", "")), "task": str(item.get("task") or ""), "video": str(item.get("video") or ""),
        "question": str(item.get("question") or ""), "answer": str(item.get("answer") or ""),
        "choices": dict(item.get("choices") or {}), "answer_letter": str(item.get("answer_letter") or ""),
    }


def entry_from_item(kind: str, item: dict) -> Entry:
    """A result item (``report.json``'s ``items``, from :func:`llavidal.eval.mcq.score_mcq` or
    :func:`llavidal.eval.scoring.score_judged`) as an :class:`Entry`."""
    if kind == "mcq":
        return Entry(prediction=item.get("prediction"), correct=bool(item.get("correct")),
                     missing=bool(item.get("missing")), letter=item.get("parsed_letter"),
                     status=str(item.get("parse_status") or ""))
    if kind == "predictions":
        return Entry(prediction=item.get("prediction"), correct=None, missing=item.get("prediction") is None,
                     status=str(item.get("status") or ""))
    scores = {str(k): (None if v is None else float(v)) for k, v in (item.get("scores") or {}).items()}
    statuses = {str(v) for v in (item.get("status") or {}).values()}
    status = next((s for s in ("missing_predictions", "failed", "malformed") if s in statuses), "")
    if kind == "zeroshot":
        pred = item.get("pred")
        correct = None if pred not in ("yes", "no") else pred == "yes"
    else:
        judged = [v for v in scores.values() if v is not None]
        correct = all(v >= OPEN_PASS_SCORE for v in judged) if judged and len(judged) == len(scores) else None
    return Entry(prediction=item.get("prediction"), correct=correct, missing=item.get("prediction") is None,
                 status=status, scores=scores)


def result_files(folder: Path) -> list[Path]:
    """The files of a result folder that :func:`load_run` reads (empty when it is not one)."""
    if (folder / RESULT_FILE).is_file():
        return [folder / RESULT_FILE]
    results = sorted(folder.glob("*_results.json"))
    if results:
        return results
    return sorted(p for p in folder.glob("*.jsonl") if p.is_file() and not _RANK_FILE.search(p.name))


def _prediction_results(path: Path) -> list[dict]:
    """A predictions file of ``llavidal eval infer`` (or an upstream one) as results: MCQ records scored
    with the deterministic parser, others as unscored predictions."""
    from llavidal.eval.mcq import score_mcq
    from llavidal.eval.predictions import predictions_from_data
    from llavidal.eval.records import RecordFormatError
    from llavidal.utils.io import load_json_or_jsonl

    data = load_json_or_jsonl(path)
    benchmark = next((str(row["benchmark"]) for row in data if isinstance(row, dict) and row.get("benchmark")),
                     "") if isinstance(data, list) else ""
    try:
        predictions = predictions_from_data(data, "open", str(path))
    except RecordFormatError:  # flat upstream MCQ rows carry choices but may lack an open answer
        predictions = predictions_from_data(data, "mcq", str(path))
    unrecorded = [p.id for p in predictions if p.record is None]
    if unrecorded:
        raise ValueError(f"{path}: prediction {unrecorded[0]!r} carries no record; score it first "
                         "('llavidal eval mcq' or 'eval judge', which take --records) and give the result folder")
    benchmark = benchmark or path.stem
    mcq = [p for p in predictions if p.record.choices]
    results = []
    if mcq:
        results.append(score_mcq(mcq, benchmark=benchmark))
    others = [p for p in predictions if not p.record.choices]
    if others:
        items = [{**p.record.to_dict(), "prediction": p.text if p.ok else None, "status": p.status} for p in others]
        results.append({"benchmark": benchmark, "kind": "predictions", "items": items})
    return results


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a result folder (or a results / predictions file) as a :class:`Run`."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = result_files(path)
        if not files:
            raise FileNotFoundError(
                f"{path}: no results here ({RESULT_FILE}, *_results.json or predictions *.jsonl); give a folder "
                "written by 'llavidal eval mcq', 'eval judge', 'eval report' or 'eval infer'"
            )
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path} does not exist; give result folders written by 'llavidal eval ...'")
    from llavidal.eval.report import load_results

    run = Run(name=name or path.name, path=path, kinds={}, entries={}, records={})
    for file in files:
        results = _prediction_results(file) if file.suffix == ".jsonl" else load_results(file)
        for result in results:
            kind = str(result.get("kind") or "open")
            benchmark = str(result.get("benchmark") or result.get("name") or "")
            run.kinds[benchmark] = kind
            for index, item in enumerate(result.get("items") or []):
                if not isinstance(item, dict) or "id" not in item:
                    raise ValueError(f"{file}: item {index} of {benchmark or 'the results'} has no 'id'; "
                                     "is this a results file of 'llavidal eval'?")
                key = (benchmark, str(item["id"]))
                run.entries[key] = entry_from_item(kind, item)
                run.records[key] = _record_fields(item)
    return run


def is_result_folder(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and bool(result_files(path)))


def find_result_folders(paths: Iterable[str | Path], depth: int = 2) -> list[Path]:
    """Result folders among ``paths``: each path that is one, and those below a path that is not (up to
    ``depth`` levels; PLLaVA's ``gallery.sh SAVE_DIR`` lists the runs of a save folder)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give result folders written by 'llavidal eval ...'")
        if is_result_folder(path):
            found.append(path)
            continue
        level = [path]
        below: list[Path] = []
        for _ in range(depth):
            level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
            below += [folder for folder in level if is_result_folder(folder)]
            level = [folder for folder in level if not is_result_folder(folder)]
        if not below:
            raise FileNotFoundError(f"{path}: neither a result folder nor a folder holding result folders "
                                    f"({RESULT_FILE}, *_results.json or predictions *.jsonl)")
        found += sorted(below)
    unique: list[Path] = []
    for path in found:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def run_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: each folder's name, with as many parent folders as it takes to tell them apart."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    for length in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-length:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    paths = [Path(p).expanduser() for p in paths]
    return [load_run(path, name) for path, name in zip(paths, run_names(paths))]


def align(runs: Sequence[Run]) -> list[Sample]:
    """One :class:`Sample` per (benchmark, id) found in any run, in the first run's order, then the ids only
    later runs have; each sample holds every run's entry, ``None`` where a run lacks it."""
    order: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for run in runs:
        for key in run.records:
            if key not in seen:
                seen.add(key)
                order.append(key)
    samples = []
    for key in order:
        fields = next(run.records[key] for run in runs if key in run.records)
        samples.append(Sample(
            benchmark=key[0], id=key[1], task=fields["task"], video=fields["video"], question=fields["question"],
            answer=fields["answer"], choices=fields["choices"], answer_letter=fields["answer_letter"],
            entries={run.name: run.entries.get(key) for run in runs},
        ))
    return samples


# ---------------------------------------------------------------------------------------------------
# Filters and summaries


def task_choices(samples: Iterable[Sample]) -> list[str]:
    """:data:`ALL_TASKS`, then every benchmark, then every task that is not also a benchmark's name."""
    samples = list(samples)
    benchmarks = sorted({s.benchmark for s in samples if s.benchmark})
    tasks = sorted({s.task for s in samples if s.task and s.task not in benchmarks})
    return [ALL_TASKS, *benchmarks, *tasks]


def in_task(sample: Sample, task: str | None) -> bool:
    return not task or task == ALL_TASKS or task in (sample.benchmark, sample.task)


def disagree(sample: Sample) -> bool:
    """Do the runs that have this sample answer it differently? MCQ: different parsed letters (a missing
    answer is its own answer); otherwise different verdicts when every run has one, else different
    answer texts (case and spacing ignored). A sample only one run has never disagrees."""
    entries = list(sample.present().values())
    if len(entries) < 2:
        return False
    if sample.choices:
        return len({entry.letter for entry in entries}) > 1
    if all(entry.correct is not None for entry in entries):
        return len({entry.correct for entry in entries}) > 1
    return len({" ".join((entry.prediction or "").lower().split()) for entry in entries}) > 1


def matches_show(sample: Sample, show: str) -> bool:
    """The correctness filter (:data:`SHOW_CHOICES`), over the runs that have the sample. ``all right`` /
    ``all wrong``: every such run has a verdict and it is right / wrong; ``any wrong``: at least one run is
    wrong; ``missing from some run``: some run lacks the sample."""
    present = sample.present()
    verdicts = [entry.correct for entry in present.values()]
    if show == "all samples":
        return True
    if show == "all right":
        return bool(verdicts) and all(v is True for v in verdicts)
    if show == "all wrong":
        return bool(verdicts) and all(v is False for v in verdicts)
    if show == "any wrong":
        return any(v is False for v in verdicts)
    if show == "missing from some run":
        return len(present) < len(sample.entries)
    raise ValueError(f"unknown correctness filter {show!r}; one of {', '.join(SHOW_CHOICES)}")


def filter_samples(samples: Iterable[Sample], task: str | None = None, show: str = "all samples",
                   only_disagreements: bool = False) -> list[Sample]:
    """The samples of ``task`` (a benchmark or task name; :data:`ALL_TASKS` or None for all) that pass the
    correctness filter ``show`` and, with ``only_disagreements``, on which the runs disagree."""
    return [s for s in samples
            if in_task(s, task) and matches_show(s, show) and (not only_disagreements or disagree(s))]


@dataclass
class RunSummary:
    """A run's figures over a set of samples."""

    name: str
    n: int
    """Samples of the set that the run has."""
    absent: list[str]
    """Ids of samples of the set that the run lacks."""
    decided: int
    """Samples with a verdict (right or wrong); MCQ answers that are missing count as wrong."""
    correct: int
    ci95: tuple[float, float] | None
    """Wilson 95% interval of ``correct / decided`` (fractions)."""
    scored: int
    """Samples with at least one judge score."""
    mean_score: float | None
    """Mean over scored samples of their mean judge score (0-5)."""
    shared_decided: int = 0
    shared_correct: int = 0
    """The same on the samples every run has (comparable across runs)."""

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.decided if self.decided else None


def summarize(samples: Iterable[Sample], run_names: Sequence[str]) -> list[RunSummary]:
    """Per run: n, accuracy with its 95% Wilson interval (:func:`llavidal.eval.mcq.wilson_interval`), mean
    judge score, the ids it lacks, and the accuracy on the samples that every run has."""
    from llavidal.eval.mcq import wilson_interval

    samples = list(samples)
    out = []
    for name in run_names:
        entries = [(s, s.entries.get(name)) for s in samples]
        present = [(s, e) for s, e in entries if e is not None]
        decided = [e for _, e in present if e.correct is not None]
        correct = sum(1 for e in decided if e.correct)
        scores = [e.mean_score for _, e in present if e.mean_score is not None]
        shared = [e for s, e in present if e.correct is not None and all(v is not None for v in s.entries.values())]
        out.append(RunSummary(
            name=name, n=len(present), absent=[s.id for s, e in entries if e is None], decided=len(decided),
            correct=correct, ci95=wilson_interval(correct, len(decided)), scored=len(scores),
            mean_score=sum(scores) / len(scores) if scores else None,
            shared_decided=len(shared), shared_correct=sum(1 for e in shared if e.correct),
        ))
    return out


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None or math.isnan(fraction) else f"{100 * fraction:.1f}%"


def summary_markdown(summaries: Sequence[RunSummary]) -> str:
    """The page's header: one table row per run."""
    if not summaries:
        return "Pick result folders above."
    any_absent = any(s.absent for s in summaries)
    header = ["run", "n", "accuracy (95% interval)", "mean judge score (0-5)"]
    if any_absent:
        header += ["accuracy on shared samples", "samples it lacks"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        if s.decided:
            low, high = s.ci95
            accuracy = f"{_percent(s.accuracy)} ({s.correct}/{s.decided}; {100 * low:.1f}-{100 * high:.1f}%)"
        else:
            accuracy = "—"
        score = f"{s.mean_score:.2f} (n={s.scored})" if s.mean_score is not None else "—"
        row = [s.name, str(s.n), accuracy, score]
        if any_absent:
            shared = (f"{_percent(s.shared_correct / s.shared_decided)} ({s.shared_correct}/{s.shared_decided})"
                      if s.shared_decided else "—")
            lacks = ", ".join(s.absent[:5]) + (f" … ({len(s.absent)})" if len(s.absent) > 5 else "")
            row += [shared, f"{len(s.absent)}" + (f": {lacks}" if s.absent else "")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# One sample as shown


_VERDICT_STYLE = {"right": "#2a7d4f", "wrong": "#c0392b", "missing": "#c0392b", "unknown": "#777777",
                  "absent": "#bbbbbb"}


def _verdict(entry: Entry | None) -> tuple[str, str]:
    """(state for styling, text)."""
    if entry is None:
        return "absent", "not in this run"
    if entry.missing and entry.correct is not True:
        return "missing", "missing" + (f" ({entry.status})" if entry.status else "")
    if entry.correct is None:
        return "unknown", "not judged" + (f" ({entry.status})" if entry.status else "")
    return ("right", "right") if entry.correct else ("wrong", "wrong")


def answers_html(sample: Sample) -> str:
    """Each run's answer, verdict and scores as cards side by side (``templates/gallery_answers.html.j2``)."""
    from llavidal.eval.report import format_value, template_environment

    cards = []
    for run, entry in sample.entries.items():
        state, verdict = _verdict(entry)
        card: dict[str, Any] = {"run": run, "state": state, "verdict": verdict, "colour": _VERDICT_STYLE[state],
                                "present": entry is not None, "mean_score": None, "scores": [], "parsed": ""}
        if entry is not None:
            card["prediction"] = entry.prediction if entry.prediction is not None else "(no answer)"
            if sample.choices:
                card["parsed"] = f"({entry.letter}) {sample.choices.get(entry.letter, '')}" if entry.letter else "none"
            card["scores"] = [{"criterion": c, "score": "—" if v is None else format_value(v), "status": ""}
                              for c, v in entry.scores.items()]
            card["mean_score"] = None if entry.mean_score is None else f"{entry.mean_score:.2f}"
        cards.append(card)
    return template_environment().get_template("gallery_answers.html.j2").render(cards=cards)


def sample_markdown(sample: Sample) -> str:
    """Id, task, question, choices (the right one in bold) and the reference answer."""
    where = " · ".join(x for x in (sample.benchmark, sample.task) if x)
    lines = [f"**{_md(sample.id)}**" + (f" · {_md(where)}" if where else ""), "", f"**Question:** {_md(sample.question)}"]
    if sample.choices:
        lines.append("")
        for letter, text in sample.choices.items():
            line = f"({letter}) {_md(text)}"
            lines.append(f"- **{line}** ✓" if letter == sample.answer_letter else f"- {line}")
    lines += ["", f"**Reference answer:** {_md(sample.answer)}" if sample.answer else "**Reference answer:** —"]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text shown literally in markdown (no markup, no HTML)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]#|])", r"\\\1", text)


def video_for(sample: Sample, video_folder: str | Path | None) -> tuple[str | None, str]:
    """(path of the sample's video, "") or (None, "video not found: PATH")."""
    from llavidal.eval.report import resolve_video

    if not sample.video:
        return None, "this record names no video"
    found = resolve_video(sample.video, video_folder)
    if found is None:
        root = Path(video_folder) if video_folder else Path(".")
        hint = "" if video_folder else " (pass --video_folder)"
        return None, f"video not found: {(root / sample.video).as_posix()}{hint}"
    return str(found.resolve()), ""


# ---------------------------------------------------------------------------------------------------
# The page


@dataclass
class Comparison:
    """The runs picked in the page and their aligned samples."""

    runs: list[Run]
    samples: list[Sample]

    @classmethod
    def load(cls, folders: Sequence[str | Path]) -> Comparison:
        runs = load_runs(folders)
        return cls(runs, align(runs))

    @property
    def names(self) -> list[str]:
        return [run.name for run in self.runs]


class GalleryData:
    """Comparisons by their folders, loaded once per server (every visitor reads the same files)."""

    def __init__(self, video_folder: str | Path | None = None):
        self.video_folder = video_folder
        self._loaded: dict[tuple[str, ...], Comparison] = {}

    def get(self, folders: Sequence[str]) -> Comparison:
        key = tuple(folders)
        if key not in self._loaded:
            self._loaded[key] = Comparison.load(folders)
        return self._loaded[key]


def build_app(candidates: Sequence[Path], selected: Sequence[Path], video_folder: str | Path | None,
              data: GalleryData | None = None) -> gr.Blocks:
    """The gradio Blocks app (not launched): ``candidates`` are the result folders offered, ``selected``
    those shown at first; ``data`` may hold comparisons already loaded."""
    from llavidal.utils.optional import require

    gr = require("gradio", "the results gallery", extra="demo")
    data = data or GalleryData(video_folder)
    choices = [(name, str(path)) for name, path in zip(run_names(candidates), candidates)]

    def view(folders: list[str], task: str, show: str, only_disagreements: bool):
        comparison = data.get(folders)
        keys = [s.key for s in filter_samples(comparison.samples, task, show, only_disagreements)]
        scoped = [s for s in comparison.samples if in_task(s, task)]
        return comparison, keys, summary_markdown(summarize(scoped, comparison.names))

    def show_sample(folders: list[str], keys: list, index: int, note: str = ""):
        comparison = data.get(folders)
        total = len(keys)
        if not total:
            return (gr.update(value=1, maximum=2, interactive=False), None, "", "No sample passes the filters.",
                    "", "no samples" + (f" · {note}" if note else ""))
        index = min(max(int(index), 1), total)
        by_key = {s.key: s for s in comparison.samples}
        sample = by_key[tuple(keys[index - 1])]
        video, missing = video_for(sample, video_folder)
        return (gr.update(value=index, maximum=max(total, 2), interactive=total > 1),  # gradio needs min < max
                video, missing, sample_markdown(sample), answers_html(sample),
                f"sample {index} of {total}" + (f" · {note}" if note else ""))

    def on_filters(folders: list[str], task: str, show: str, only_disagreements: bool):
        if not folders:
            empty = (gr.update(value=1, maximum=2, interactive=False), None, "", "", "", "no samples")
            return ([], gr.update(), summary_markdown([]), "0 samples", *empty)
        comparison, keys, summary = view(folders, task, show, only_disagreements)
        count = f"{len(keys)} of {len(comparison.samples)} samples"
        return ([list(k) for k in keys], gr.update(), summary, count, *show_sample(folders, keys, 1))

    def on_folders(folders: list[str], show: str, only_disagreements: bool):
        if not folders:
            return on_filters(folders, ALL_TASKS, show, only_disagreements)
        try:
            comparison = data.get(folders)
        except (OSError, ValueError) as err:
            raise gr.Error(str(err), title="Cannot read these results") from None
        result = list(on_filters(folders, ALL_TASKS, show, only_disagreements))
        result[1] = gr.update(choices=task_choices(comparison.samples), value=ALL_TASKS)
        return tuple(result)

    def on_step(folders: list[str], keys: list, index: int, step: int):
        return show_sample(folders, keys, int(index or 1) + step)

    def on_jump(folders: list[str], keys: list, index: int, wanted: str):
        wanted = (wanted or "").strip()
        comparison = data.get(folders) if folders else None
        for position, key in enumerate(keys, start=1):
            if key[1] == wanted:
                return show_sample(folders, keys, position)
        if comparison is not None and any(s.id == wanted for s in comparison.samples):
            note = f"id {wanted} is hidden by the filters; set them to 'all samples' / '{ALL_TASKS}' to see it"
        else:
            note = f"no sample has id {wanted!r}"
        return show_sample(folders, keys, index, note=note)

    with gr.Blocks(title="LLAVIDAL results gallery", analytics_enabled=False) as app:
        keys_state = gr.State([])
        gr.Markdown("## LLAVIDAL results gallery\nPick two or more result folders to compare their answers.")
        folders = gr.Dropdown(choices=choices, value=[str(p) for p in selected], multiselect=True,
                              label="Result folders", elem_id=ELEM_IDS["folders"])
        summary = gr.Markdown(elem_id=ELEM_IDS["summary"])
        with gr.Row():
            task = gr.Dropdown(choices=[ALL_TASKS], value=ALL_TASKS, label="Task or benchmark", elem_id=ELEM_IDS["task"])
            show = gr.Dropdown(choices=list(SHOW_CHOICES), value=SHOW_CHOICES[0], label="Correctness",
                               elem_id=ELEM_IDS["show"])
            only_disagreements = gr.Checkbox(False, label="only where the runs disagree", elem_id=ELEM_IDS["disagree"])
            count = gr.Markdown(elem_id=ELEM_IDS["count"])
        with gr.Row():
            prev = gr.Button("◀ previous", elem_id=ELEM_IDS["prev"], scale=1, min_width=100)
            index = gr.Slider(1, 2, value=1, step=1, label="sample", elem_id=ELEM_IDS["index"], scale=6)
            nxt = gr.Button("next ▶", elem_id=ELEM_IDS["next"], scale=1, min_width=100)
            jump = gr.Textbox(placeholder="jump to id", show_label=False, elem_id=ELEM_IDS["jump"], scale=2)
            jump_button = gr.Button("go", elem_id=ELEM_IDS["jump_button"], scale=1, min_width=60)
        position = gr.Markdown(elem_id=ELEM_IDS["position"])
        with gr.Row():
            with gr.Column(scale=4):
                video = gr.Video(label="Video", interactive=False, elem_id=ELEM_IDS["video"], height=300)
                video_note = gr.Markdown(elem_id=ELEM_IDS["video_note"])
            with gr.Column(scale=6):
                sample = gr.Markdown(elem_id=ELEM_IDS["sample"])
        answers = gr.HTML(elem_id=ELEM_IDS["answers"])

        shown = [index, video, video_note, sample, answers, position]
        filter_outputs = [keys_state, task, summary, count, *shown]
        folders.change(on_folders, inputs=[folders, show, only_disagreements], outputs=filter_outputs)
        for control in (task, show, only_disagreements):
            control.change(on_filters, inputs=[folders, task, show, only_disagreements], outputs=filter_outputs)
        prev.click(lambda f, k, i: on_step(f, k, i, -1), inputs=[folders, keys_state, index], outputs=shown)
        nxt.click(lambda f, k, i: on_step(f, k, i, +1), inputs=[folders, keys_state, index], outputs=shown)
        index.release(lambda f, k, i: on_step(f, k, i, 0), inputs=[folders, keys_state, index], outputs=shown)
        jump.submit(on_jump, inputs=[folders, keys_state, index, jump], outputs=shown)
        jump_button.click(on_jump, inputs=[folders, keys_state, index, jump], outputs=shown)
        app.load(on_folders, inputs=[folders, show, only_disagreements], outputs=filter_outputs)
    return app


# ---------------------------------------------------------------------------------------------------
# Command


@dataclass
class GalleryArguments:
    """Flags of ``llavidal gallery`` (result folders may also be given as positional arguments)."""

    results: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "result folders (or results / predictions files) to compare, or a folder holding result folders "
                "(its runs are offered in the page); also accepted as positional arguments", "action": "extend"})
    video_folder: str | None = arg(None, "folder of the videos (a world folder's videos/ is searched too); a record's "
                                         "video is found whatever its extension", aliases=["--video_root"])
    host: str = arg("127.0.0.1", "interface to bind; 0.0.0.0 exposes the gallery to your network")
    port: int = arg(7861, "port to serve on")
    share: bool = arg(False, "ask gradio for a public share link (needs internet)")
    max_selected: int = arg(4, "runs shown at first when a folder of result folders is given (pick others in the page)")


def parse_gallery_args(argv: Sequence[str] | None = None) -> GalleryArguments:
    args, positional = parse((GalleryArguments,), argv, prog="llavidal gallery",
                             description=__doc__.split("\n\n")[0], return_remaining=True)
    flags = [token for token in positional if token.startswith("-")]
    if flags:
        raise ConfigError(f"llavidal gallery: unknown option {flags[0]!r}; see --help for the accepted options")
    args.results = [*positional, *args.results]
    if not args.results:
        raise ConfigError("give result folders: llavidal gallery RESULT_DIR [RESULT_DIR ...] (see --help)")
    if args.video_folder and not Path(args.video_folder).expanduser().is_dir():
        raise FileNotFoundError(f"--video_folder {args.video_folder} is not a folder; give the folder of the videos")
    return args


def initial_selection(given: Sequence[str], candidates: Sequence[Path], limit: int) -> list[Path]:
    """The runs shown at first: the result folders given directly, else the first ``limit`` found below."""
    direct = [p for p in candidates if any(Path(g).expanduser().resolve() == p.resolve() for g in given)]
    return direct or list(candidates[:limit])


@command("llavidal gallery")
def main(argv: list[str] | None = None) -> int:
    args = parse_gallery_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local page
    candidates = find_result_folders(args.results)
    selected = initial_selection(args.results, candidates, args.max_selected)
    data = GalleryData(args.video_folder)
    data.get([str(p) for p in selected])  # unreadable results are a usage error now, not a message in the page
    app = build_app(candidates, selected, args.video_folder, data)
    allowed = sorted({str(Path(p).resolve().parent if Path(p).is_file() else Path(p).resolve()) for p in candidates})
    if args.video_folder:
        allowed.append(str(Path(args.video_folder).expanduser().resolve()))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: anyone who can reach this machine on port %d can browse these results",
                       args.host, args.port)
    print(f"gallery: {len(candidates)} result folder(s), {len(selected)} shown at first")
    app.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=allowed,
               show_error=True, ssr_mode=False, footer_links=[], quiet=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
