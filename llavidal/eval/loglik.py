"""Multiple choice by option log-likelihood (as lm-evaluation-harness scores multiple choice).

``llavidal eval infer --mcq_scoring loglik_norm`` asks the model no free-text question: for each record,
every choice is scored as the continuation of the prompt generation would send (same template, the same
video/pose/object features spliced in), and the choice with the highest score is the prediction. There is
no answer parser and no refusal: every record gets one of its letters. The prompt runs once per record and
all its choices are scored from its KV cache (:meth:`llavidal.serve.engine.InferenceEngine.score_options`).

Scoring modes (``--mcq_scoring``):

- ``generate`` (default): free generation, the letter parsed by the task's parser (the upstream protocol);
- ``loglik_norm``: the mean log-probability per token of the choice (length-normalised by tokens);
- ``loglik_char``: the summed log-probability divided by the choice's characters (lm-eval's ``acc_norm``);
- ``loglik``: the summed log-probability (lm-eval's ``acc``).

``loglik_norm`` is the recommended log-likelihood mode: ADLMCQ choices differ in length (in SmolLM2's
tokenizer "reading a book" is 3 tokens, "crawling on hands and knees" 7), and every token adds a negative
log-probability, so for a model that has not learned the choices raw sums favour the shortest whatever the
video shows. Dividing by the tokens the model actually scored removes that bias in the unit the model
predicts in; per character depends on how long the words are written rather than on how many predictions
were made, and is offered for comparison with lm-eval's ``acc_norm``. No rule is free of length: a trained
model that has the first tokens of a long choice right predicts its remaining tokens almost surely, which
lifts that choice's mean, so the per-token mean can lean to long choices instead. Rows keep every choice's
sum and token count (``option_scores``), so any rule can be applied to the same forward passes afterwards;
the quickstart's report ranks its rows both ways, paired (``llavidal.quickstart.report``).

What is scored for a choice is the task's ``loglik_continuation`` (default ``{text}``: the choice text, a
cloze; ``({letter}) {text}`` scores the letter too). A task YAML allows log-likelihood scoring with
``loglik: true`` (both ADLMCQ tasks do). Rows keep the prediction format of generation (the chosen letter
in ``prediction``, so ``llavidal eval mcq`` scores them) plus each choice's log-likelihood in
``option_scores`` (``llavidal/eval/FORMATS.md``).

Scoring after a generated lead (``--loglik_lead "The answer is"``): a model trained to reason before it names
its choice (the quickstart's forecasting answers read "The video ends with sitting down on a chair. The answer
is reading a book.") would be scored on the bare choice text as if it answered at once, which is not the
distribution it was trained on. With a lead, the model first generates its answer greedily up to the lead
(``run_inference``'s own generation, cut by :func:`cut_at_lead`; the text before the lead is the model's own,
the lead is appended when the model did not write it), and every choice is then scored as the continuation of prompt + that lead. The generated
lead is kept in each row (``lead``). Generation is greedy and batch-independent, so the choices are the same
at any batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llavidal.eval.records import EvalRecord
from llavidal.eval.tasks import TaskSpec

MCQ_SCORING: dict[str, str | None] = {
    "generate": None,
    "loglik_norm": "token",
    "loglik_char": "char",
    "loglik": "none",
}
"""``--mcq_scoring`` value -> normalisation of :meth:`OptionScores.scores` (None: free generation)."""


def check_scoring(mode: str, spec: TaskSpec | None) -> str | None:
    """The normalisation of ``mode``; a clear error when the mode is unknown or the task does not allow it."""
    if mode not in MCQ_SCORING:
        raise ValueError(f"--mcq_scoring {mode!r} is not one of {', '.join(MCQ_SCORING)}")
    normalization = MCQ_SCORING[mode]
    if normalization is None:
        return None
    if spec is None:
        raise ValueError(f"--mcq_scoring {mode} needs a multiple-choice --benchmark")
    if spec.kind != "mcq" or not spec.loglik:
        raise ValueError(
            f"--mcq_scoring {mode}: task {spec.name} ({spec.path or 'built-in'}) does not allow log-likelihood "
            f"scoring (kind {spec.kind!r}, loglik: {str(spec.loglik).lower()}); use --mcq_scoring generate, or set "
            "'loglik: true' in the task YAML of a multiple-choice task"
        )
    return normalization


def continuations(spec: TaskSpec, record: EvalRecord) -> tuple[list[str], list[str]]:
    """(letters, the text scored for each) of a record's choices, in display order."""
    letters = list(record.choices)
    texts = [spec.loglik_continuation.replace("{letter}", letter).replace("{text}", record.choices[letter])
             for letter in letters]
    return letters, texts


def cut_at_lead(text: str, lead: str) -> str:
    """The generated ``text`` up to and including the first ``lead``; ``text`` + the lead when it has none."""
    at = text.find(lead)
    if at >= 0:
        return text[: at + len(lead)]
    text = text.rstrip()
    return f"{text} {lead}" if text else lead


def score_ready(
    engine: Any,
    make_request: Callable[..., Any],
    ready: list[tuple[EvalRecord, dict[str, Any], dict[str, str]]],
    spec: TaskSpec,
    mode: str,
    batch_size: int,
    leads: list[tuple[str, str]] | None = None,
) -> list[tuple[dict[str, str], str, dict[str, Any]]]:
    """(outputs, error, extra row fields) per ready record; a failing batch is retried record by record.

    ``leads``: per ready record, (the answer prefix the choices are scored after, error): the model's generated
    answer cut by :func:`cut_at_lead`; None scores them right after the prompt (or the task's ``answer_prompt``)."""
    normalization = check_scoring(mode, spec)
    if not ready:
        return []
    if leads is not None and len(leads) != len(ready):
        raise ValueError(f"{len(leads)} answer leads for {len(ready)} records")
    results: list[tuple[dict[str, str], str, dict[str, Any]] | None] = [None] * len(ready)
    requests, options, places = [], [], []
    for index, (record, features, prompts) in enumerate(ready):
        if not record.choices:
            error = (f"record {record.id!r}: no choices to score ({record.source or 'records file'}); fix the "
                     "record or use --mcq_scoring generate")
            results[index] = ({}, error, {})
            continue
        if leads is not None and leads[index][1]:
            results[index] = ({}, leads[index][1], {})
            continue
        # text the answer starts with (MVBench's "Best option:("), or the model's own lead
        prefix = leads[index][0] if leads is not None else getattr(spec, "answer_prompt", "")
        requests.append(make_request(question=prompts["main"], features=features, history=[], request_id=record.id,
                                     **({"answer_prefix": prefix} if prefix else {})))
        options.append(continuations(spec, record)[1])
        places.append(index)
    if requests:
        try:
            scored = engine.score_options(requests, options, batch_size=batch_size)
            if len(scored) != len(requests):
                raise RuntimeError(f"engine returned {len(scored)} scores for {len(requests)} requests")
        except Exception as err:  # noqa: BLE001 - isolate which record fails; errors are recorded per record
            if len(requests) == 1:
                record = ready[places[0]][0]
                error = f"record {record.id!r}: option scoring failed: {type(err).__name__}: {err}"
                results[places[0]] = ({}, error, {})
            else:
                for index in places:
                    one = None if leads is None else [leads[index]]
                    results[index] = score_ready(engine, make_request, [ready[index]], spec, mode, batch_size, one)[0]
            return [r for r in results if r is not None]
        for index, scores in zip(places, scored):
            record = ready[index][0]
            letters, texts = continuations(spec, record)
            values = scores.scores(normalization)
            best = letters[scores.best(normalization)]
            option_scores = {
                letter: {"text": text, "loglik": loglik, "tokens": tokens, "chars": chars, "score": value}
                for letter, text, loglik, tokens, chars, value in zip(
                    letters, texts, scores.logliks, scores.num_tokens, scores.num_chars, values)
            }
            extra: dict[str, Any] = {"option_scores": option_scores}
            if leads is not None:
                extra["lead"] = leads[index][0]
            results[index] = ({"main": best}, "", extra)
    return [r for r in results if r is not None]
