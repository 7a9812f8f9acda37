"""Benchmark files of every accepted shape normalise to one record; benchmarks load as data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavidal.eval.predictions import load_predictions
from llavidal.eval.records import (
    EvalRecord,
    RecordFormatError,
    load_records,
    split_options_from_text,
)
from llavidal.eval.tasks import list_benchmarks, load_benchmark


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_adlmcq_and_legacy_mcq_shapes(tmp_path):
    data = [
        # ADLMCQ (upstream)
        {
            "video_filename": "c1.mp4",
            "question": "What is the person doing?",
            "answer_choices": {"A": "drinking", "B": "eating", "C": "reading", "D": "walking"},
            "ground_truth_letter": "B",
        },
        # LEMMA A-F with lowercase keys and a task field
        {
            "video_name": "lemma_7.mp4",
            "question": "What comes next?",
            "task": "lemma_tc",
            "answer_choices": {k: f"step {k}" for k in "abcdef"},
            "ground_truth_letter": "f",
        },
        # legacy numbered options with the answer given as the number
        {
            "video": "s1.mp4",
            "question": "Which action?",
            "options": {"1": "Drink.Frombottle", "2": "Cook.Stir"},
            "answer": "2",
        },
        # a list of options and the answer as text
        {"video": "tsu_3.mp4", "question": "Then?", "options": ["sit", "stand", "walk", "eat"], "answer": "Walk"},
        # options written inside the question, 0-based index
        {"video": "t4.mp4", "question": "What happens? (A) sit (B) stand (C) lie", "answer_index": 2},
    ]
    records = load_records(_write(tmp_path, "charades_mcq.json", data), "mcq")
    assert [r.answer_letter for r in records] == ["B", "F", "B", "C", "C"]
    assert [r.id for r in records] == ["c1", "lemma_7", "s1", "tsu_3", "t4"]
    assert records[0].task == "charades_mcq" and records[1].task == "lemma_tc"
    assert list(records[1].choices) == list("ABCDEF")
    assert records[2].choices == {"A": "Drink.Frombottle", "B": "Cook.Stir"}
    assert records[2].meta["original_keys"] == {"A": "1", "B": "2"}
    assert records[2].label == "Cook.Stir"
    assert records[4].question == "What happens?" and records[4].choices["C"] == "lie"

    spec = load_benchmark("adlmcq_forecasting")
    prompt = spec.prompts(records[1])["main"]
    assert prompt.startswith("What comes next? The output should be the choice among one of the following choices.")
    assert prompt.endswith("(E) step e (F) step f")


def test_mcq_errors_name_file_and_record(tmp_path):
    bad = _write(
        tmp_path,
        "bad.json",
        [{"video": "x.mp4", "question": "q", "answer_choices": {"A": "a", "B": "b"}, "ground_truth_letter": "Z"}],
    )
    with pytest.raises(RecordFormatError, match=r"bad.json:0.*'Z'"):
        load_records(bad, "mcq")
    dup = _write(
        tmp_path,
        "dup.json",
        [{"id": "1", "video": "a.mp4", "Q": "q", "A": "a"}, {"id": "1", "video": "b.mp4", "Q": "q", "A": "a"}],
    )
    with pytest.raises(RecordFormatError, match="repeats"):
        load_records(dup, "open")


def test_descriptions_videochatgpt_and_zeroshot_shapes(tmp_path):
    desc = load_records(
        _write(
            tmp_path,
            "desc.json",
            [
                {
                    "video_name": "v1.mp4",
                    "Q": "Describe the video.",
                    "A": "The person drinks.",
                    "cons_Q1": "What happens?",
                    "cons_Q2": "What does the person do?",
                    "cons_A": "Drinks.",
                },
                {"video_name": "v1.mp4", "Q": "Describe again.", "A": "Same."},
            ],
        ),
        "open",
    )
    assert [r.id for r in desc] == ["v1#0", "v1#1"]  # the same video twice
    assert desc[0].consistency_questions == ["What happens?", "What does the person do?"]
    assert desc[0].consistency_answer == "Drinks."
    assert load_benchmark("adl_descriptions").prompts(desc[0]) == {
        "main": "Describe the video.",
        "cons1": "What happens?",
        "cons2": "What does the person do?",
    }
    consistency = load_records(_write(tmp_path, "cons.json", {"v9": {"Q1": "a?", "Q2": "b?", "A": "c"}}), "open")
    assert consistency[0].id == "v9" and consistency[0].question == "a?"
    (tmp_path / "zs.jsonl").write_text(
        '{"question_id": "q1", "video_name": "m.avi", "question": "is it a dog?", "answer": "yes"}\n'
    )
    assert load_records(tmp_path / "zs.jsonl", "zeroshot")[0].answer == "yes"


def test_upstream_flat_prediction_files(tmp_path):
    path = _write(
        tmp_path,
        "pred.json",
        [
            {"video_name": "v1", "Q1": "a?", "Q2": "b?", "A": "c", "pred1": "x", "pred2": "y"},
            {"video_name": "v2", "Q": "q?", "A": "ans", "pred": "p"},
        ],
    )
    predictions = load_predictions(path, "open")
    assert predictions[0].outputs == {"cons1": "x", "cons2": "y", "main": "x"}
    assert predictions[1].text == "p" and predictions[1].record.answer == "ans"


def test_builtin_benchmarks_load_and_split_options():
    names = list_benchmarks()
    assert {
        "adlmcq_action_recognition",
        "adlmcq_forecasting",
        "adl_descriptions",
        "videochatgpt",
        "zeroshot_qa",
    } <= set(names)
    for name in names:
        spec = load_benchmark(name)
        assert spec.version >= 1 and spec.kind in ("mcq", "open", "zeroshot")
    assert split_options_from_text("Pick one: 1. walk 2. run 3. jump")[1] == {"1": "walk", "2": "run", "3": "jump"}
    with pytest.raises(FileNotFoundError, match="unknown benchmark"):
        load_benchmark("nope")


def test_task_parser_and_metric_are_read_from_the_yaml(tmp_path):
    from llavidal.eval.mcq import ParsedAnswer
    from llavidal.eval.tasks import PARSERS, load_task, register_parser

    spec = load_task("adlmcq_forecasting")
    assert (spec.parser, spec.metric) == ("mcq_deterministic", "accuracy")
    assert load_task("zeroshot_qa").metric == "yes_accuracy_and_score"
    record = EvalRecord(id="r0", video="v.mp4", question="Next?", choices={"A": "sit", "B": "stand"},
                        answer_letter="B", answer="stand")
    assert spec.score({"r0": "(B)"}, [record])["metrics"]["correct"] == 1

    # A task file names a registered parser; the score goes through it.
    register_parser("always_a", ("mcq",), f"{__name__}:_always_a")
    try:
        path = tmp_path / "custom.yaml"
        path.write_text(Path(spec.path).read_text().replace("parser: mcq_deterministic", "parser: always_a"))
        custom = load_task(path)
        result = custom.score({"r0": "(B)"}, [record])
        assert result["metrics"]["correct"] == 0 and result["items"][0]["parse_method"] == "always_a"
        assert isinstance(_always_a("x", {}), ParsedAnswer)
    finally:
        PARSERS.pop("always_a")
    for field_name, value, message in (("metric", "nope", "unknown metric"), ("parser", "judge", "is for open/zeroshot")):
        bad = tmp_path / f"bad_{field_name}.yaml"
        bad.write_text(Path(spec.path).read_text().replace(
            "metric: accuracy" if field_name == "metric" else "parser: mcq_deterministic", f"{field_name}: {value}"))
        with pytest.raises(ValueError, match=message):
            load_task(bad)


def _always_a(text, choices, original_keys=None):
    from llavidal.eval.mcq import ParsedAnswer

    return ParsedAnswer("A", "ok", "always_a", ["A"])
