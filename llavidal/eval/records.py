"""One internal evaluation record, and loaders that normalise every accepted benchmark file to it.

Upstream files come in several shapes (ADLMCQ with ``answer_choices``, legacy numbered options, LEMMA
A-F, Smarthome and TSU files, ADL descriptions, Video-ChatGPT QA, zero-shot QA). They are all read here
into :class:`EvalRecord`; nothing downstream looks at raw field names. The accepted shapes are listed in
``llavidal/eval/FORMATS.md``.
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llavidal.utils.io import load_json_or_jsonl

RECORD_KINDS = ("mcq", "open", "zeroshot")
LETTERS = string.ascii_uppercase


class RecordFormatError(ValueError):
    """A benchmark record could not be read; the message names the file and record."""


@dataclass
class EvalRecord:
    """One benchmark question, whatever file it came from."""

    id: str
    """Unique within the benchmark file; predictions are joined to records by it."""
    video: str
    """Video file name as written in the benchmark (``abc.mp4``); features are looked up by its stem."""
    question: str
    answer: str = ""
    """Reference answer text (for MCQ: the text of the correct choice)."""
    choices: dict[str, str] = field(default_factory=dict)
    """MCQ only: letter -> choice text, in display order (A, B, ... any number of letters)."""
    answer_letter: str = ""
    """MCQ only: the correct letter (a key of ``choices``)."""
    task: str = ""
    """Task / dataset name for per-task breakdowns (``charades_ar``, ``lemma_tc``)."""
    label: str = ""
    """Class for per-class breakdowns (defaults to the correct choice text or the answer)."""
    consistency_questions: list[str] = field(default_factory=list)
    """Two paraphrased questions for the consistency criterion (empty when the record has none)."""
    consistency_answer: str = ""
    source: str = ""
    """``file:index`` where the record was read, for error messages."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra fields kept from the source record (``original_keys`` maps letters to numbered keys)."""

    @property
    def video_stem(self) -> str:
        """File name without directory or extension: the key for feature files (``{stem}_pose``)."""
        name = Path(self.video).name
        for ext in (".safetensors", ".pickle", ".pkl", ".npy", ".mp4", ".avi", ".mkv", ".webm", ".mov"):
            if name.lower().endswith(ext):
                return name[: -len(ext)]
        return Path(name).stem if "." in name else name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EvalRecord":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# Field names seen in upstream and legacy files, in order of preference.
_ID_KEYS = ("id", "question_id", "qid", "sample_id")
_VIDEO_KEYS = ("video_filename", "video_name", "video", "video_id", "vid", "video_path", "clip_id", "video_file")
_QUESTION_KEYS = ("question", "Q", "q", "query", "instruction")
_ANSWER_TEXT_KEYS = ("A", "a", "answer", "gt", "ground_truth", "caption", "gt_answer")
_CHOICE_KEYS = ("answer_choices", "choices", "options", "candidates", "option")
_LETTER_KEYS = (
    "ground_truth_letter",
    "answer_letter",
    "gt_letter",
    "correct_letter",
    "correct_choice",
    "answer",
    "gt",
    "ground_truth",
    "label",
    "correct_answer",
)
_INDEX_KEYS = ("answer_index", "answer_idx", "label_index", "correct_index", "gt_index")
_TASK_KEYS = ("task", "dataset", "source_dataset", "benchmark")
_CLASS_KEYS = ("class_name", "action", "activity", "action_label", "category", "class")
_CONS_KEYS = (("cons_Q1", "cons_Q2"), ("Q1", "Q2"), ("question1", "question2"), ("question_1", "question_2"))
_CONS_ANSWER_KEYS = ("cons_A", "cons_answer")


def _first(raw: dict, keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in raw and raw[key] not in (None, ""):
            return key, raw[key]
    return None, None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return str(value).strip()


def normalise_text(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces: for matching choice texts."""
    text = re.sub(r"[^0-9a-z]+", " ", text.lower())
    return " ".join(text.split())


def split_options_from_text(text: str) -> tuple[str, dict[str, str]]:
    """Split options written inside a question (``(A) x (B) y`` / ``A. x\\nB. y`` / ``1. x 2. y``).

    Markers must run in order from the first label (A, B, C... or 1, 2, 3...); at least two are
    needed. Returns the question without the options and ``{marker: text}`` (keys as written).
    """
    for labels in (list(LETTERS), [str(i) for i in range(1, 100)]):
        spans: list[tuple[str, int, int]] = []  # (label, marker start, text start)
        position = 0
        for label in labels:
            pattern = re.compile(rf"(?:(?<=\s)|^|(?<=[:;,]))\(?{re.escape(label)}[\).:]\s+")
            found = pattern.search(text, position)
            if found is None:
                break
            spans.append((label, found.start(), found.end()))
            position = found.end()
        if len(spans) < 2:
            continue
        options: dict[str, str] = {}
        for i, (label, _, text_start) in enumerate(spans):
            end = spans[i + 1][1] if i + 1 < len(spans) else len(text)
            options[label] = text[text_start:end].strip().rstrip(",;").strip()
        stem = text[: spans[0][1]].strip()
        stem = re.sub(r"(?i)(options|choices)( are)?\s*:?\s*$", "", stem).strip()
        return stem, options
    return text, {}


def _normalise_choices(raw_choices: Any, where: str) -> tuple[dict[str, str], dict[str, str]]:
    """Return (letter -> text, letter -> original key) from a dict or list of choices."""
    if isinstance(raw_choices, str):
        _, parsed = split_options_from_text(raw_choices)
        if not parsed:
            raise RecordFormatError(f"{where}: could not read options from the string {raw_choices[:80]!r}")
        raw_choices = parsed
    if isinstance(raw_choices, (list, tuple)):
        items = [(None, _text(v)) for v in raw_choices]
    elif isinstance(raw_choices, dict):
        items = [(str(k).strip(), _text(v)) for k, v in raw_choices.items()]
    else:
        raise RecordFormatError(f"{where}: choices must be a dict or a list, got {type(raw_choices).__name__}")
    if len(items) > len(LETTERS):
        raise RecordFormatError(f"{where}: {len(items)} choices; at most {len(LETTERS)} are supported")
    keys = [k for k, _ in items]
    letters_as_keys = all(k is not None and len(k) == 1 and k.isalpha() for k in keys)
    if letters_as_keys:
        # 'a'..'f' keys (some LEMMA files) are the same letters.
        choices = {k.upper(): v for k, v in items}
        if len(choices) != len(items):
            raise RecordFormatError(f"{where}: choice letters repeat ignoring case: {keys}")
        return choices, {}
    choices, original = {}, {}
    for i, (key, value) in enumerate(items):
        letter = LETTERS[i]
        choices[letter] = value
        original[letter] = key if key is not None else str(i + 1)
    return choices, original


def _resolve_letter(value: Any, choices: dict[str, str], original: dict[str, str], where: str) -> str:
    if isinstance(value, bool):
        raise RecordFormatError(f"{where}: answer {value!r} is not a choice")
    if isinstance(value, int):
        if 0 <= value < len(choices):  # integers are 0-based list indices
            return list(choices)[value]
        raise RecordFormatError(f"{where}: answer index {value} is out of range for {len(choices)} choices")
    text = _text(value)
    bare = text.strip().strip("()[].:").strip()
    if bare.upper() in choices and len(bare) == 1 and not original:
        return bare.upper()
    for letter, key in original.items():
        if bare == key:
            return letter
    if bare.upper() in choices and len(bare) == 1:
        return bare.upper()
    wanted = normalise_text(text)
    matches = [letter for letter, choice in choices.items() if normalise_text(choice) == wanted]
    if len(matches) == 1:
        return matches[0]
    raise RecordFormatError(
        f"{where}: the correct answer {text!r} is neither a choice key ({', '.join(original.values() or choices)}) "
        "nor the text of exactly one choice"
    )


def normalise_record(
    raw: dict, kind: str, where: str, default_task: str = "", video_optional: bool = False,
    default_question: str = "",
) -> EvalRecord:
    """Read one raw record of any accepted shape as an :class:`EvalRecord` of ``kind``.

    ``video_optional``: a record without a video field takes its id as the video (prediction files of
    Video-ChatGPT's ActivityNet-QA inference carry only ``id, question, answer, pred``; judging needs no
    features).
    """
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; one of {RECORD_KINDS}")
    if not isinstance(raw, dict):
        raise RecordFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    _, video = _first(raw, _VIDEO_KEYS)
    if video is None and video_optional:
        _, video = _first(raw, _ID_KEYS)
    if video is None:
        raise RecordFormatError(f"{where}: no video field (one of {', '.join(_VIDEO_KEYS)}); fields are {sorted(raw)}")
    video = _text(video)
    _, question = _first(raw, _QUESTION_KEYS)
    cons_questions: list[str] = []
    for first_key, second_key in _CONS_KEYS:
        if raw.get(first_key) and raw.get(second_key):
            cons_questions = [_text(raw[first_key]), _text(raw[second_key])]
            break
    question = _text(question) or default_question  # recaption records: {video_name[, caption]}
    if not question and cons_questions:
        question = cons_questions[0]  # Video-ChatGPT consistency records carry only Q1/Q2
    if not question:
        raise RecordFormatError(f"{where}: no question field (one of {', '.join(_QUESTION_KEYS)})")
    _, task = _first(raw, _TASK_KEYS)
    _, record_id = _first(raw, _ID_KEYS)
    _, class_name = _first(raw, _CLASS_KEYS)
    record = EvalRecord(
        id=_text(record_id),
        video=video,
        question=question,
        task=_text(task) or default_task,
        label=_text(class_name),
        consistency_questions=cons_questions,
        source=where,
    )
    _, cons_answer = _first(raw, _CONS_ANSWER_KEYS)
    record.consistency_answer = _text(cons_answer)
    if kind == "mcq":
        choice_key, raw_choices = _first(raw, _CHOICE_KEYS)
        original: dict[str, str] = {}
        if raw_choices is None:
            stem, parsed = split_options_from_text(question)
            if not parsed:
                raise RecordFormatError(
                    f"{where}: no choices (one of {', '.join(_CHOICE_KEYS)}) and none written in the question"
                )
            record.question = stem
            raw_choices = parsed
        choices, original = _normalise_choices(raw_choices, where)
        if len(choices) < 2:
            raise RecordFormatError(f"{where}: an MCQ record needs at least two choices, got {len(choices)}")
        record.choices = choices
        _, index_value = _first(raw, _INDEX_KEYS)
        if index_value is not None:
            record.answer_letter = _resolve_letter(int(index_value), choices, original, where)
        else:
            letter_key, letter_value = None, None
            for key in _LETTER_KEYS:
                if key in raw and raw[key] not in (None, "") and key != choice_key:
                    letter_key, letter_value = key, raw[key]
                    break
            if letter_value is None:
                raise RecordFormatError(f"{where}: no correct answer (one of {', '.join(_LETTER_KEYS + _INDEX_KEYS)})")
            by_text = [k for k, v in choices.items() if v == _text(letter_value)]
            if choice_key == "candidates" and len(by_text) == 1:
                # MVBench: the answer is a candidate's text, even when candidates are letters (character_order)
                record.answer_letter = by_text[0]
            else:
                record.answer_letter = _resolve_letter(letter_value, choices, original,
                                                       f"{where} field {letter_key!r}")
        record.answer = choices[record.answer_letter]
        record.label = record.label or record.answer
        if original:
            record.meta["original_keys"] = original
    else:
        _, answer = _first(raw, _ANSWER_TEXT_KEYS)
        record.answer = _text(answer)
        if not record.answer and not default_question:  # recaption videos may come without a caption
            raise RecordFormatError(f"{where}: no reference answer (one of {', '.join(_ANSWER_TEXT_KEYS)})")
        record.label = record.label or (record.answer if kind == "zeroshot" and len(record.answer) < 40 else "")
    # Segment bounds and subject/view are kept for cross-subject / cross-view breakdowns; ActivityNet-QA's
    # answer 'type' for per-type ones.
    record.meta.update({k: raw[k] for k in ("start", "end", "subject", "view", "type") if k in raw})
    return record


def _iter_raw(data: Any, path: Path) -> list[tuple[str, dict]]:
    """(fallback id, raw record) pairs from a list, a dict keyed by id, or ``{"data": [...]}``."""
    if isinstance(data, dict):
        for key in ("data", "records", "questions", "annotations"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if isinstance(data, list):
        return [("", item) for item in data]
    if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        out = []
        for key, value in data.items():
            value = dict(value)
            if not any(k in value for k in _VIDEO_KEYS):
                value["video"] = key
            out.append((str(key), value))
        return out
    raise RecordFormatError(f"{path}: expected a list of records or a dict of records keyed by id")


def assign_ids(records: list[EvalRecord]) -> None:
    """Give id-less records ``stem`` (video appears once) or ``stem#n``; refuse duplicate ids."""
    stems: dict[str, int] = {}
    for record in records:
        if not record.id:
            stems[record.video_stem] = stems.get(record.video_stem, 0) + 1
    seen_stem: dict[str, int] = {}
    for record in records:
        if not record.id:
            n = seen_stem.get(record.video_stem, 0)
            seen_stem[record.video_stem] = n + 1
            record.id = record.video_stem if stems[record.video_stem] == 1 else f"{record.video_stem}#{n}"
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise RecordFormatError(f"{record.source}: id {record.id!r} repeats {seen[record.id]}; ids must be unique")
        seen[record.id] = record.source


def iter_raw_records(data: Any, path: str | Path) -> list[tuple[str, dict]]:
    return _iter_raw(data, Path(path))


def load_records(
    path: str | Path, kind: str, task: str = "", limit: int | None = None, answers: str | Path | None = None,
    default_question: str = "",
) -> list[EvalRecord]:
    """Load and normalise a benchmark file (``.json`` or ``.jsonl``), or a folder of them.

    A folder (MVBench's ``json/``: one file per task) gives the records of every ``*.json``/``*.jsonl`` in it,
    in name order, each file's stem as the task and ids prefixed ``{task}/`` (a video may appear in several
    tasks). ``default_question`` is the question of records without one (recaption).

    Records without an id get one from the video stem (``stem`` when the video appears once in the
    file, else ``stem#n``). Duplicate explicit ids are an error naming them. With ``answers``, ``path``
    holds only the questions and ``answers`` the reference answers (the ActivityNet-QA pair of files,
    :func:`join_question_answer_files`).
    """
    path = Path(path)
    if path.is_dir():
        if answers is not None:
            raise ValueError(f"{path} is a folder; --answers goes with one questions file")
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise FileNotFoundError(f"benchmark folder {path} holds no .json or .jsonl files")
        records = []
        for file in files:
            for record in load_records(file, kind, task=file.stem, default_question=default_question):
                record.id = f"{file.stem}/{record.id}"
                records.append(record)
        assign_ids(records)
        return records[:limit] if limit else records
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    data = load_json_or_jsonl(path)
    raw_items = _iter_raw(data, path)
    if answers is not None:
        raw_items = join_question_answer_files(raw_items, path, answers)
    default_task = task or path.stem
    records = []
    for index, (fallback_id, raw) in enumerate(raw_items):
        record = normalise_record(raw, kind, f"{path}:{index}", default_task=default_task,
                                  default_question=default_question)
        if not record.id and fallback_id:
            record.id = fallback_id
        if answers is not None:
            record.meta["answers_file"] = str(answers)  # written back as {id, question, answer, pred}
        records.append(record)
    assign_ids(records)
    return records[:limit] if limit else records


def join_question_answer_files(
    questions: list[tuple[str, dict]], questions_path: Path, answers_path: str | Path
) -> list[tuple[str, dict]]:
    """Questions ``[{video_name, question, question_id}]`` + answers ``[{answer, type, question_id}]`` (the
    ActivityNet-QA ``test_q.json`` / ``test_a.json`` pair that Video-ChatGPT's ``--gt_file_question`` and
    ``--gt_file_answers`` take) -> one raw record per question, its answer's fields added.

    Joined by ``question_id`` when both files carry it; otherwise by position, as Video-ChatGPT does, which
    needs the two files to have the same length.
    """
    answers_path = Path(answers_path)
    if not answers_path.is_file():
        raise FileNotFoundError(f"answers file {answers_path} does not exist")
    answers = _iter_raw(load_json_or_jsonl(answers_path), answers_path)
    for index, (_, answer) in enumerate(answers):
        if not isinstance(answer, dict) or _first(answer, _ANSWER_TEXT_KEYS)[0] is None:
            raise RecordFormatError(
                f"{answers_path}:{index}: no answer field (one of {', '.join(_ANSWER_TEXT_KEYS)}); is this the "
                "answers file of the pair?"
            )
    question_ids = [str(raw["question_id"]) if isinstance(raw, dict) and "question_id" in raw else None
                    for _, raw in questions]
    answer_ids = {str(answer["question_id"]): answer for _, answer in answers if "question_id" in answer}
    if all(qid is not None for qid in question_ids) and len(answer_ids) == len(answers):
        missing = [qid for qid in question_ids if qid not in answer_ids]
        if missing:
            raise RecordFormatError(
                f"{len(missing)} questions of {questions_path} have no answer in {answers_path} (question_id "
                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); check that the two files belong "
                "together"
            )
        pairs = [answer_ids[qid] for qid in question_ids]
    elif len(answers) == len(questions):
        pairs = [answer for _, answer in answers]
    else:
        raise RecordFormatError(
            f"{questions_path} has {len(questions)} questions and {answers_path} {len(answers)} answers, and they "
            "cannot be joined by question_id; pass the matching questions and answers files"
        )
    joined = []
    for (fallback_id, question), answer in zip(questions, pairs):
        if not isinstance(question, dict):
            joined.append((fallback_id, question))  # normalise_record names the file and index
            continue
        extra = {k: v for k, v in answer.items() if k not in question}
        joined.append((fallback_id, {**question, **extra}))
    return joined
