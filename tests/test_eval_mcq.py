"""MCQ parsing (a table of tricky replies) and scoring (missing counted wrong, per task and class)."""

from __future__ import annotations

import pytest

from llavidal.eval.mcq import parse_mcq_answer, score_mcq
from llavidal.eval.predictions import Prediction
from llavidal.eval.records import EvalRecord

SIX = {
    "A": "drink water",
    "B": "eat food",
    "C": "read a book",
    "D": "make a phone call",
    "E": "sit down",
    "F": "stand up",
}

# (reply, expected letter or None, expected status)
TABLE = [
    ("F", "F", "ok"),  # the letter upstream's regex could not see
    ("The best answer is F.", "F", "ok"),
    ("(C)", "C", "ok"),
    ("c", "C", "ok"),  # lowercase bare letter
    ("b) eat food", "B", "ok"),
    ("Answer: (E)", "E", "ok"),
    ("**D**", "D", "ok"),
    ("A. drink water", "A", "ok"),
    ("I think the person will read a book.", "C", "ok"),  # option text, no letter
    ("A person is drinking water.", "A", "ok"),  # article "A", then option text
    ("The person is sitting down.", "E", "ok"),
    ("The answer is B, not A.", "B", "ok"),  # two letters, one named as the answer
    ("It could be A or B.", None, "ambiguous"),  # two letters, neither chosen
    ("(A) or (B)", None, "ambiguous"),
    ("Choices: (A) drink water (B) eat food", None, "ambiguous"),  # the options read back
    ("sit down and then stand up", None, "ambiguous"),  # two option texts
    ("It ends with sitting down. The answer is standing up.", "F", "ok"),  # text after an answer phrase
    ("The person sits down; the answer: stand up", "F", "ok"),
    ("Eat food or drink water? The answer is a person walking.", None, "ambiguous"),  # no choice after it
    ("The answer is to sit down, then stand up.", None, "ambiguous"),
    ("I'm sorry, I cannot determine the answer from the video.", None, "refusal"),
    ("Unable to tell from these frames.", None, "refusal"),
    ("The answer is G", None, "not_a_choice"),  # a letter that is not a choice
    ("The person walks away.", None, "no_answer"),
    ("", None, "empty"),
]


@pytest.mark.parametrize("reply,letter,status", TABLE)
def test_parser_table(reply, letter, status):
    parsed = parse_mcq_answer(reply, SIX)
    assert (parsed.letter, parsed.status) == (letter, status), parsed


def test_choices_beyond_f_and_numbered_legacy_keys():
    eight = {
        letter: text
        for letter, text in zip("ABCDEFGH", ["walk", "run", "jump", "kick", "punch", "dance", "crawl", "roll"])
    }
    assert parse_mcq_answer("H", eight).letter == "H"
    assert parse_mcq_answer("The answer is (G).", eight).letter == "G"
    assert parse_mcq_answer("roll", eight).letter == "H"
    numbered = {"A": "walk", "B": "run"}
    original = {"A": "1", "B": "2"}
    assert parse_mcq_answer("2", numbered, original).letter == "B"
    assert parse_mcq_answer("The answer is 2", numbered, original).letter == "B"
    assert parse_mcq_answer("2", numbered).status != "ok"  # digits are choices only for numbered files
    # A choice whose text looks like a refusal is still a choice.
    assert parse_mcq_answer("None of the above", {"A": "None of the above", "B": "walk"}).letter == "A"


def _record(rid, task, letter, label):
    return EvalRecord(
        id=rid,
        video=f"{rid}.mp4",
        question="What next?",
        choices=dict(SIX),
        answer_letter=letter,
        answer=SIX[letter],
        task=task,
        label=label,
    )


def test_score_mcq_counts_missing_as_wrong_with_breakdowns():
    records = [
        _record("r1", "lemma_tc", "F", "stand up"),
        _record("r2", "lemma_tc", "C", "read a book"),
        _record("r3", "tsu_tc", "A", "drink water"),
        _record("r4", "tsu_tc", "B", "eat food"),
        _record("r5", "tsu_tc", "B", "eat food"),
    ]
    predictions = [
        Prediction(id="r1", outputs={"main": "The best answer is F."}),  # correct
        Prediction(id="r2", outputs={"main": "(A) or (B)"}),  # ambiguous -> missing
        Prediction(id="r3", outputs={"main": "drink water"}),  # correct by text
        Prediction(id="r4", outputs={}, status="missing_features", missing=["pose"]),
        # r5 has no prediction at all
    ]
    result = score_mcq(predictions, records, benchmark="adlmcq_forecasting", benchmark_version=1)
    m = result["metrics"]
    assert (m["n"], m["correct"], m["missing"]) == (5, 2, 3)
    assert m["accuracy"] == pytest.approx(40.0)
    assert m["accuracy_answered"] == pytest.approx(100.0)
    assert result["missing_reasons"] == {"ambiguous": 1, "missing_features": 1, "no_prediction": 1}
    assert result["per_task"]["lemma_tc"]["accuracy"] == pytest.approx(50.0)
    assert result["per_task"]["tsu_tc"]["accuracy"] == pytest.approx(100.0 / 3)
    eat = dict(result["per_class"]["eat food"])
    assert eat.pop("ci95") == pytest.approx([0.0, 65.7628], abs=1e-3)  # 95% Wilson interval of 0/2
    assert eat == {"accuracy": 0.0, "n": 2, "correct": 0, "missing": 2, "accuracy_answered": None}
    # A plain {id: text} dict works too, and stray ids are refused.
    assert score_mcq({"r1": "F"}, records[:1])["metrics"]["accuracy"] == 100.0
    with pytest.raises(ValueError, match="not in the benchmark records"):
        score_mcq({"zz": "F"}, records[:1])


class _PickingJudge:
    """A judge stub for the fallback path: always chooses 'B'."""

    judge_id = "stub"
    prompt_version = "stub-v1"

    def __init__(self):
        self.seen = []

    def judge(self, items):
        from llavidal.eval.judges.base import Judgement

        self.seen.extend(items)
        return [Judgement(score=None, pred="B", judge_id=self.judge_id) for _ in items]

    def describe(self):
        return {"judge_id": self.judge_id, "prompt_version": self.prompt_version}


def test_judge_is_only_a_fallback():
    records = [_record("r1", "t", "B", "eat food"), _record("r2", "t", "B", "eat food")]
    judge = _PickingJudge()
    result = score_mcq({"r1": "(B)", "r2": "The person walks away."}, records, judge=judge)
    assert [item.item_id for item in judge.seen] == ["r2"]  # only the undecided reply went to the judge
    assert result["items"][1]["parse_method"] == "judge"
    assert result["metrics"]["correct"] == 2


def test_paired_difference_counts_only_discordant_questions():
    from llavidal.eval.mcq import paired_difference

    # 208 questions: base right on 0-69, other right on 0-62 -> 7 discordant, all for base
    base = {str(i): i < 70 for i in range(208)}
    other = {str(i): i < 63 for i in range(208)}
    result = paired_difference(base, other)
    assert result["n"] == 208 and (result["base_only"], result["other_only"]) == (7, 0)
    assert abs(result["difference"] - (-7 / 208)) < 1e-12
    # Wald for paired proportions: var = (b + c - (c - b)^2 / n) / n^2
    half = 1.96 * ((7 - 49 / 208) ** 0.5) / 208
    assert abs(result["ci95"][0] - (-7 / 208 - half)) < 1e-12 and abs(result["ci95"][1] - (-7 / 208 + half)) < 1e-12
    assert abs(result["p_mcnemar"] - 2 / 2 ** 7) < 1e-12  # exact two-sided: 2 * P(X <= 0), X ~ Bin(7, 1/2)
    # only shared questions count; identical answers: no difference, p = 1
    same = paired_difference({"a": True, "b": False, "x": True}, {"a": True, "b": False, "y": False})
    assert same["n"] == 2 and same["difference"] == 0 and same["p_mcnemar"] == 1.0
    assert paired_difference({"a": True}, {"b": True}) is None
