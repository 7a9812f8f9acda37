"""Multiple-choice answers: deterministic parsing first, a judge only as an optional fallback.

Parsing rules (first rule that decides wins; ``PARSER_VERSION`` changes when a rule changes):

1. **Empty** reply -> missing (``empty``).
2. **Bare choice**: the whole reply is one choice key, optionally in brackets or followed by ``.``/``)``/``:``
   (``B``, ``(b)``, ``F.``, ``2`` for legacy numbered options) -> that choice. Lowercase is accepted here.
3. **Explicit answer phrase**: ``answer is (C)``, ``The best answer is C``, ``Answer: c)``, ``option D``,
   ``I choose E``. Letters must be capitals, or in brackets. One distinct letter -> that letter, even if
   others are mentioned elsewhere (``The answer is B, not A`` -> B). Two or more distinct letters in
   answer phrases -> ``ambiguous``. An answer phrase followed by a choice's *text* (``It ends with
   sitting down. The answer is standing up.``) -> that choice, even if other choices' texts come before
   the phrase (text after the last answer phrase, matched as in rule 7).
4. **Leading marker**: the reply starts with ``(C)``, ``C)``, ``C.`` or ``C:`` -> C, unless another
   choice letter appears in brackets later (``(A) or (B)``, or the choices read back) -> ``ambiguous``.
5. **Refusal** (``I cannot determine``, ``unable to tell``, ``none of the options``...) -> missing
   (``refusal``), unless a choice's own text is in the reply (a choice may be "None of the above").
6. **Bracketed letters** anywhere (``(B)``): one distinct valid letter -> it; several -> ``ambiguous``.
7. **Choice text** without a letter: the reply contains the text of exactly one choice (after
   lowercasing, removing punctuation and stripping common suffixes, so "drinking water" matches
   "drink water"; a matched choice whose text is inside another matched choice's
   text is dropped) -> that choice; several -> ``ambiguous``.
8. **Standalone capital letters** that are valid choices (the article "A" and pronoun "I" before a
   lowercase word are not letters): one distinct -> it; several -> ``ambiguous``.
9. Otherwise -> missing (``no_answer``). A letter that is not one of the record's choices -> missing
   (``not_a_choice``).

So "two letters mentioned" is ambiguous (missing) unless exactly one of them is named in an explicit
answer phrase or leads the reply. Missing answers count as wrong in accuracy and are reported with their
reasons.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from llavidal.eval.predictions import Prediction, as_predictions, join
from llavidal.eval.records import EvalRecord, normalise_text

if TYPE_CHECKING:
    from llavidal.eval.judges.base import Judge

PARSER_VERSION = "mcq-parser-v2"

_REFUSAL = re.compile(
    r"\b(i\s*(?:can ?not|can't|cannot|am unable|'m unable|am not able|'m not able|do not know|don't know)"
    r"|unable to (?:determine|tell|answer|identify|see)|not possible to (?:determine|tell)"
    r"|none of the (?:above|options|choices|given)|no (?:video|frames?) (?:is|was|were)? ?(?:provided|given)"
    r"|as an ai\b|cannot be determined|can't be determined|insufficient information)",
    re.IGNORECASE,
)
_ANSWER_TEXT_PHRASE = re.compile(
    r"\b(?:answer|choice|option|correct one)\s*(?:is|would be|should be|will be|=|:)\s*", re.IGNORECASE
)
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|choice|option|pick|choose|select|selected|chosen|correct one)\s*"
    r"(?:is|would be|should be|will be|=|:|-)?\s*(?:option|choice|letter)?\s*[:\-]?\s*"
    r"(?:\(([A-Za-z]|\d{1,2})\)|\b([A-Z]|\d{1,2})\b(?![\w'])|\b([a-z])\))",
    re.IGNORECASE,
)


@dataclass
class ParsedAnswer:
    letter: str | None
    status: str
    """``ok``, ``empty``, ``refusal``, ``ambiguous``, ``no_answer``, ``not_a_choice``."""
    method: str = ""
    candidates: list[str] = field(default_factory=list)


def _stem_word(word: str) -> str:
    """A crude suffix stripper so that "drinking water" matches the choice "drink water"."""
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # sitting -> sitt -> sit
    return word


def stem_text(text: str) -> str:
    return " ".join(_stem_word(w) for w in normalise_text(text).split())


def _aliases(choices: dict[str, str], original_keys: dict[str, str] | None) -> dict[str, str]:
    """Token -> letter: every choice letter, plus legacy numbered keys (``"2"`` -> ``B``)."""
    table = {letter.upper(): letter for letter in choices}
    for letter, key in (original_keys or {}).items():
        table[str(key).upper()] = letter
    return table


def _decide(found: list[str], table: dict[str, str], method: str) -> ParsedAnswer | None:
    """One distinct valid candidate -> ok; several -> ambiguous; only invalid ones -> not_a_choice."""
    if not found:
        return None
    valid = list(dict.fromkeys(table[f.upper()] for f in found if f.upper() in table))
    if len(valid) == 1:
        return ParsedAnswer(valid[0], "ok", method, valid)
    if len(valid) > 1:
        return ParsedAnswer(None, "ambiguous", method, valid)
    return ParsedAnswer(None, "not_a_choice", method, list(dict.fromkeys(found)))


def _decide_text(stemmed_reply: str, stemmed_choices: dict[str, str], method: str) -> ParsedAnswer | None:
    """Rule 7 on an already stemmed text: the one choice whose text it contains (a choice whose text lies
    inside another matched choice's text is dropped); several -> ambiguous; none -> None."""
    padded = f" {stemmed_reply.strip()} "
    hits = [letter for letter, stem in stemmed_choices.items() if stem and f" {stem} " in padded]
    if not hits:
        return None
    texts = {letter: stemmed_choices[letter] for letter in hits}
    kept = [
        letter
        for letter in hits
        if not any(
            other != letter and f" {texts[letter]} " in f" {texts[other]} " and texts[letter] != texts[other]
            for other in hits
        )
    ]
    if len(kept) == 1:
        return ParsedAnswer(kept[0], "ok", method, kept)
    return ParsedAnswer(None, "ambiguous", method, kept)


def parse_mcq_answer(
    text: str | None, choices: dict[str, str], original_keys: dict[str, str] | None = None
) -> ParsedAnswer:
    """Parse a model's reply to a multiple-choice question (rules in the module docstring)."""
    table = _aliases(choices, original_keys)
    reply = (text or "").strip()
    if not reply:
        return ParsedAnswer(None, "empty", "empty")
    # Markdown emphasis and quotes do not change the answer.
    clean = re.sub(r"[*_`\"]", "", reply).strip()

    bare = re.fullmatch(r"[\s\[\(]*([A-Za-z]|\d{1,2})[\s\]\)]*[.):]?\s*", clean)
    if bare and bare.group(1).upper() in table:
        return ParsedAnswer(table[bare.group(1).upper()], "ok", "bare", [table[bare.group(1).upper()]])

    phrases = []
    for match in _ANSWER_PHRASE.finditer(clean):
        token = next(g for g in match.groups() if g)
        if match.group(2) and not match.group(2).isdigit() and not match.group(2).isupper():
            continue  # "the answer is a person..." : a lowercase word, not a letter
        if match.group(2) and match.group(2).isdigit() and not original_keys:
            continue  # digits are choices only for legacy numbered options
        phrases.append(token)
    decided = _decide(phrases, table, "answer_phrase")
    if decided is not None and decided.status != "not_a_choice":
        return decided
    invalid_phrase = decided
    stemmed_choices = {letter: stem_text(choice) for letter, choice in choices.items()}
    phrase_ends = [m.end() for m in _ANSWER_TEXT_PHRASE.finditer(clean)]
    if phrase_ends:
        decided = _decide_text(stem_text(clean[phrase_ends[-1] :]), stemmed_choices, "answer_phrase_text")
        if decided is not None and decided.status == "ok":
            return decided

    bracketed = re.findall(r"\(([A-Za-z])\)", clean)
    if original_keys:
        bracketed += re.findall(r"\((\d{1,2})\)", clean)
    bracketed_letters = {table[b.upper()] for b in bracketed if b.upper() in table}

    lead = re.match(r"\s*(?:\(([A-Za-z]|\d{1,2})\)|([A-Za-z])\)|([A-Z]|\d{1,2})[.:](?:\s|$))", clean)
    if lead:
        token = next(g for g in lead.groups() if g)
        if token.upper() in table and (not token.isdigit() or original_keys):
            letter = table[token.upper()]
            if bracketed_letters - {letter}:  # "(A) or (B)", or the choices repeated back
                return ParsedAnswer(None, "ambiguous", "leading_marker", sorted(bracketed_letters | {letter}))
            return ParsedAnswer(letter, "ok", "leading_marker", [letter])

    normalised = f" {stem_text(clean)} "
    text_hits = [letter for letter, stem in stemmed_choices.items() if stem and f" {stem} " in normalised]
    if _REFUSAL.search(clean) and not text_hits:
        return ParsedAnswer(None, "refusal", "refusal")

    decided = _decide(bracketed, table, "bracketed")
    if decided is not None and decided.status != "not_a_choice":
        return decided

    decided = _decide_text(normalised, stemmed_choices, "choice_text")
    if decided is not None:
        return decided

    standalone = []
    for match in re.finditer(r"(?<![\w'])([A-Z])(?![\w'])", clean):
        letter = match.group(1)
        after = clean[match.end() :]
        if letter in ("A", "I") and re.match(r"\s+(?!or\b|and\b|nor\b)[a-z]", after):
            continue  # the article "A person ..." / pronoun "I think ..."
        standalone.append(letter)
    decided = _decide(standalone, table, "standalone_letter")
    if decided is not None:
        return decided
    if invalid_phrase is not None:
        return invalid_phrase
    return ParsedAnswer(None, "no_answer", "none")


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of an accuracy ``correct / n`` (fractions in [0, 1]); None when n is 0."""
    if n <= 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(base: dict[str, bool], other: dict[str, bool], z: float = 1.96) -> dict | None:
    """Accuracy of ``other`` minus that of ``base`` on the questions both answered (question id -> correct): the
    difference, its 95% interval (Wald, for paired proportions: the questions are the same, so only the
    discordant ones count) and McNemar's exact two-sided p-value. ``base_only`` / ``other_only``: questions only
    that one got right. None when they share no question."""
    common = sorted(set(base) & set(other))
    n = len(common)
    if not n:
        return None
    base_only = sum(1 for key in common if base[key] and not other[key])
    other_only = sum(1 for key in common if other[key] and not base[key])
    difference = (other_only - base_only) / n
    variance = max((base_only + other_only) - (other_only - base_only) ** 2 / n, 0.0) / (n * n)
    half = z * math.sqrt(variance)
    discordant = base_only + other_only
    tail = sum(math.comb(discordant, k) for k in range(min(base_only, other_only) + 1)) / 2.0 ** discordant
    return {"n": n, "difference": difference, "ci95": [max(-1.0, difference - half), min(1.0, difference + half)],
            "base_only": base_only, "other_only": other_only, "p_mcnemar": min(1.0, 2.0 * tail)}


def _accuracy_block(items: list[dict]) -> dict:
    n = len(items)
    correct = sum(1 for item in items if item["correct"])
    missing = sum(1 for item in items if item["missing"])
    answered = n - missing
    interval = wilson_interval(correct, n)
    return {
        "accuracy": 100.0 * correct / n if n else None,
        "n": n,
        "correct": correct,
        "missing": missing,
        "accuracy_answered": 100.0 * correct / answered if answered else None,
        "ci95": [100.0 * interval[0], 100.0 * interval[1]] if interval else None,
    }


def score_mcq(
    predictions: Iterable[Prediction] | Iterable[dict] | dict[str, str] | str | Path,
    records: Iterable[EvalRecord] | None = None,
    *,
    benchmark: str = "",
    benchmark_version: int | None = None,
    judge: "Judge | None" = None,
    parser: Callable[..., ParsedAnswer] | None = None,
) -> dict:
    """Accuracy (percent) of multiple-choice predictions, with missing answers counted wrong.

    ``predictions`` are :class:`Prediction` objects, the runner's rows (dicts), a predictions file, or a
    plain ``{id: reply text}`` dict. ``records`` are the benchmark's records (optional
    when the predictions carry their records). A ``judge`` is asked only about replies the deterministic
    parser could not decide (``no_answer`` / ``ambiguous``); its verdicts are marked ``method: judge``.
    ``parser(text, choices, original_keys) -> ParsedAnswer`` reads each reply (default
    :func:`parse_mcq_answer`; a task's ``parser:`` field names it, see :mod:`llavidal.eval.tasks`).

    Returns ``{"metrics": {accuracy, n, correct, missing, accuracy_answered}, "missing_reasons",
    "per_task", "per_class", "items", ...}``.
    """
    parse = parser or parse_mcq_answer
    pairs = join(records, as_predictions(predictions, "mcq"))
    items: list[dict] = []
    undecided: list[int] = []
    for record, prediction in pairs:
        if not record.choices:
            raise ValueError(
                f"{record.source or record.id}: record {record.id!r} has no choices; is this an MCQ benchmark?"
            )
        item = {
            "id": record.id,
            "task": record.task,
            "label": record.label,
            "video": record.video,
            "question": record.question,
            "choices": record.choices,
            "answer_letter": record.answer_letter,
            "answer": record.answer,
        }
        if prediction is None or not prediction.ok:
            status = "no_prediction" if prediction is None else prediction.status
            item.update(
                prediction=None, parsed_letter=None, parse_status=status, parse_method="", correct=False, missing=True
            )
        else:
            parsed = parse(prediction.text, record.choices, record.meta.get("original_keys"))
            item.update(
                prediction=prediction.text,
                parsed_letter=parsed.letter,
                parse_status=parsed.status,
                parse_method=parsed.method,
                candidates=parsed.candidates,
            )
            if parsed.status in ("no_answer", "ambiguous"):
                undecided.append(len(items))
        items.append(item)

    judge_info = None
    if judge is not None and undecided:
        from llavidal.eval.judges.base import JudgeItem

        queries = [
            JudgeItem(
                criterion="mcq",
                question=items[i]["question"],
                answer="",
                prediction=items[i]["prediction"],
                choices=tuple(items[i]["choices"].items()),
                item_id=items[i]["id"],
            )
            for i in undecided
        ]
        verdicts = judge.judge(queries)
        for i, verdict in zip(undecided, verdicts):
            letter = verdict.pred if verdict.ok else None
            if letter and letter in items[i]["choices"]:
                items[i].update(parsed_letter=letter, parse_status="ok", parse_method="judge")
            items[i]["judge_status"] = verdict.status
        judge_info = judge.describe()

    for item in items:
        if "correct" not in item:
            item["missing"] = item["parsed_letter"] is None
            item["correct"] = item["parsed_letter"] == item["answer_letter"]

    per_task: dict[str, list[dict]] = defaultdict(list)
    per_class: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        per_task[item["task"] or "all"].append(item)
        per_class[item["label"] or item["answer"]].append(item)
    return {
        "benchmark": benchmark,
        "benchmark_version": benchmark_version,
        "kind": "mcq",
        "parser_version": PARSER_VERSION,
        "judge": judge_info,
        "metrics": _accuracy_block(items),
        "missing_reasons": dict(Counter(item["parse_status"] for item in items if item["missing"])),
        "per_task": {task: _accuracy_block(group) for task, group in sorted(per_task.items())},
        "per_class": {label: _accuracy_block(group) for label, group in sorted(per_class.items())},
        "items": items,
    }



def add_unpredicted(result: dict, benchmark_total: int) -> int:
    """Count records of the benchmark that have no row in the predictions (a run cut short) as missing.

    Used when scoring without ``--records``: the predictions carry only their own records, and their rows'
    ``benchmark_total`` says how many the benchmark had. The unseen records count in ``metrics`` (``n``,
    ``missing``, ``accuracy``) and ``missing_reasons["no_prediction"]``, not in the per-task or per-class
    blocks (their tasks are unknown without the records). Returns how many were added.
    """
    metrics = result["metrics"]
    unseen = benchmark_total - metrics["n"]
    if unseen <= 0:
        return 0
    n = metrics["n"] + unseen
    interval = wilson_interval(metrics["correct"], n)
    metrics.update(n=n, missing=metrics["missing"] + unseen, accuracy=100.0 * metrics["correct"] / n,
                   ci95=[100.0 * interval[0], 100.0 * interval[1]])
    reasons = result.setdefault("missing_reasons", {})
    reasons["no_prediction"] = reasons.get("no_prediction", 0) + unseen
    result["unpredicted_records"] = unseen
    return unseen
