"""The results gallery's data logic (loading result folders, aligning runs by id, filters, summaries with
intervals) and the static HTML gallery's video links. No browser: tests/test_gallery_browser.py drives the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavidal.eval.gallery import (
    ALL_TASKS,
    align,
    answers_html,
    disagree,
    filter_samples,
    find_result_folders,
    initial_selection,
    load_run,
    load_runs,
    main,
    run_names,
    summarize,
    summary_markdown,
    task_choices,
    video_for,
)
from llavidal.eval.judges.base import Judgement
from llavidal.eval.mcq import wilson_interval
from llavidal.eval.predictions import Prediction
from llavidal.eval.report import resolve_video, write_report
from llavidal.eval.tasks import load_task

CHOICES = {"A": "drinking water", "B": "reading a book", "C": "walking", "D": "eating food"}
# id -> (task, correct letter)
MCQ = {"s1": ("recognition", "A"), "s2": ("recognition", "B"), "s3": ("forecasting", "C"), "s4": ("forecasting", "D")}


def write_mcq_records(path: Path, ids=tuple(MCQ)) -> Path:
    rows = [{"id": i, "video_filename": i, "question": f"What happens in {i}?", "answer_choices": CHOICES,
             "ground_truth_letter": MCQ[i][1], "task": MCQ[i][0]} for i in ids]
    path.write_text(json.dumps(rows))
    return path


def mcq_run(folder: Path, records: Path, replies: dict[str, str]) -> Path:
    """A result folder as 'llavidal eval mcq' writes it, scored by the real task (its parser and metric)."""
    spec = load_task("adlmcq_action_recognition")
    kept = [r for r in spec.load_records(records) if r.id in replies]
    result = spec.score(replies, kept)
    write_report(result, folder)
    return folder


@pytest.fixture
def two_runs(tmp_path):
    records = write_mcq_records(tmp_path / "mcq.json")
    # run_a: s1 right, s2 right, s3 wrong (A), s4 right.  run_b: s1 right, s2 wrong (C), s3 no answer; no s4.
    a = mcq_run(tmp_path / "run_a", records, {"s1": "(A)", "s2": "B", "s3": "The answer is A", "s4": "(D) eating"})
    b = mcq_run(tmp_path / "run_b", records, {"s1": "A", "s2": "(C) walking", "s3": "I cannot tell"})
    return a, b


def test_runs_align_by_id_and_report_ids_missing_from_a_run(two_runs):
    runs = load_runs(two_runs)
    assert [r.name for r in runs] == ["run_a", "run_b"]
    samples = align(runs)
    assert [s.id for s in samples] == ["s1", "s2", "s3", "s4"]
    s3 = samples[2]
    assert s3.question == "What happens in s3?" and s3.answer_letter == "C" and s3.answer == "walking"
    assert s3.entries["run_a"].letter == "A" and s3.entries["run_a"].correct is False
    assert s3.entries["run_b"].missing and s3.entries["run_b"].correct is False
    assert samples[3].entries["run_b"] is None  # run_b has no s4
    summaries = summarize(samples, ["run_a", "run_b"])
    assert summaries[0].absent == [] and summaries[1].absent == ["s4"]
    assert "not in this run" in answers_html(samples[3])


def test_summaries_give_n_accuracy_and_its_wilson_interval(two_runs):
    samples = align(load_runs(two_runs))
    a, b = summarize(samples, ["run_a", "run_b"])
    assert (a.n, a.decided, a.correct) == (4, 4, 3) and a.ci95 == wilson_interval(3, 4)
    assert (b.n, b.decided, b.correct) == (3, 3, 1) and b.ci95 == wilson_interval(1, 3)
    # On the three samples both runs have, run_a is 2/3 right.
    assert (a.shared_decided, a.shared_correct) == (3, 2)
    low, high = wilson_interval(3, 4)
    table = summary_markdown([a, b])
    assert f"| run_a | 4 | 75.0% (3/4; {100 * low:.1f}-{100 * high:.1f}%) |" in table
    assert "| 1: s4 |" in table  # the id run_b lacks
    # Per task (the page's header follows the task filter).
    recognition = [s for s in samples if s.task == "recognition"]
    assert [s.correct for s in summarize(recognition, ["run_a", "run_b"])] == [2, 1]


def test_filters_by_task_correctness_and_disagreement(two_runs):
    samples = align(load_runs(two_runs))
    ids = lambda found: [s.id for s in found]
    assert task_choices(samples) == [ALL_TASKS, "adlmcq_action_recognition", "forecasting", "recognition"]
    assert ids(filter_samples(samples, "forecasting")) == ["s3", "s4"]
    assert ids(filter_samples(samples, "adlmcq_action_recognition")) == ["s1", "s2", "s3", "s4"]
    assert ids(filter_samples(samples, show="all right")) == ["s1", "s4"]  # s4: the one run that has it is right
    assert ids(filter_samples(samples, show="all wrong")) == ["s3"]
    assert ids(filter_samples(samples, show="any wrong")) == ["s2", "s3"]
    assert ids(filter_samples(samples, show="missing from some run")) == ["s4"]
    # Disagreement: different parsed letters (s2: B vs C; s3: A vs none); s4 is in one run only.
    assert [disagree(s) for s in samples] == [False, True, True, False]
    assert ids(filter_samples(samples, ALL_TASKS, "any wrong", only_disagreements=True)) == ["s2", "s3"]
    assert ids(filter_samples(samples, "recognition", "any wrong", only_disagreements=True)) == ["s2"]
    with pytest.raises(ValueError, match="unknown correctness filter"):
        filter_samples(samples, show="sometimes")


class _OverlapJudge:
    """A judge for tests: yes and 5 when the answer's words are all in the prediction, else no and 1;
    ``fail`` ids get no judgement."""

    judge_id, prompt_version = "overlap-test", "t1"

    def __init__(self, fail=()):
        self.fail = set(fail)

    def judge(self, items):
        out = []
        for item in items:
            if item.item_id in self.fail:
                out.append(Judgement(None, status="failed", error="timeout"))
                continue
            hit = set(item.answer.lower().split()) <= set(item.prediction.lower().split())
            out.append(Judgement(5.0 if hit else 1.0, pred="yes" if hit else "no"))
        return out

    def describe(self):
        return {"judge_id": self.judge_id, "prompt_version": self.prompt_version}


def test_judged_runs_give_verdicts_and_mean_scores(tmp_path):
    records = tmp_path / "qa.json"
    records.write_text(json.dumps([{"id": f"q{i}", "video_name": f"v{i}.mp4", "question": f"Q{i}?",
                                    "answer": answer} for i, answer in enumerate(["a cup", "a book", "the door"])]))
    spec = load_task("zeroshot_qa")
    folders = []
    for name, replies, fail in (("good", ["a red cup", "a book", "the door"], ()),
                                ("weak", ["a cup", "nothing", "door"], ("q2",))):
        predictions = [Prediction(id=f"q{i}", outputs={"main": r}) for i, r in enumerate(replies)]
        result = spec.score(predictions, spec.load_records(records), judge=_OverlapJudge(fail))
        write_report(result, tmp_path / name)
        folders.append(tmp_path / name)
    samples = align(load_runs(folders))
    good, weak = summarize(samples, ["good", "weak"])
    assert (good.decided, good.correct, good.mean_score) == (3, 3, 5.0)
    # weak: q0 yes (5), q1 no (1), q2 not judged: counted neither right nor wrong.
    assert (weak.n, weak.decided, weak.correct, weak.scored, weak.mean_score) == (3, 2, 1, 2, 3.0)
    assert samples[2].entries["weak"].correct is None
    assert [s.id for s in filter_samples(samples, show="any wrong")] == ["q1"]
    assert [disagree(s) for s in samples] == [False, True, True]  # q2: verdict unknown, the answers differ
    html = answers_html(samples[1])
    assert "nothing" in html and "a book" in html and "wrong" in html and "right" in html
    assert "mean judge score (0-5)" in summary_markdown([good, weak])


def test_a_predictions_folder_of_eval_infer_is_scored_on_the_fly(tmp_path):
    spec = load_task("adlmcq_action_recognition")
    records = spec.load_records(write_mcq_records(tmp_path / "mcq.json"))
    folder = tmp_path / "infer"
    folder.mkdir()
    rows = [{"id": r.id, "status": "ok", "prediction": reply, "outputs": {"main": reply}, "record": r.to_dict(),
             "benchmark": "adlmcq_action_recognition", "benchmark_total": 4}
            for r, reply in zip(records, ["(A)", "(D)", "C", "(B)"])]
    rows[3].update(status="missing_features", prediction="", outputs={})
    (folder / "preds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "preds.rank1.jsonl").write_text("not read: a shard of a sharded run\n")
    run = load_run(folder)
    entries = {key[1]: entry for key, entry in run.entries.items()}
    assert [entries[i].correct for i in ("s1", "s2", "s3", "s4")] == [True, False, True, False]
    assert entries["s4"].missing and entries["s4"].status == "missing_features"
    assert run.kinds == {"adlmcq_action_recognition": "mcq"}


def test_result_folders_are_found_below_a_save_folder_and_named_apart(tmp_path, two_runs):
    save = tmp_path / "save"
    records = write_mcq_records(tmp_path / "more.json")
    mcq_run(save / "x" / "results", records, {"s1": "(A)"})
    mcq_run(save / "y" / "results", records, {"s1": "(B)"})
    (save / "notes").mkdir()
    found = find_result_folders([save])
    assert found == [save / "x" / "results", save / "y" / "results"]
    assert run_names(found) == ["x/results", "y/results"]
    assert find_result_folders([two_runs[0], save]) == [two_runs[0], *found]
    # The runs shown at first: those given directly, else the first found below the save folder.
    assert initial_selection([str(save)], found, limit=1) == [found[0]]
    assert initial_selection([str(found[1])], found, limit=4) == [found[1]]
    with pytest.raises(FileNotFoundError, match="neither a result folder"):
        find_result_folders([save / "notes"])
    with pytest.raises(FileNotFoundError, match="no results here"):
        load_run(save / "notes")


def test_the_command_refuses_bad_arguments_with_a_message(tmp_path, capsys):
    assert main([]) == 2
    assert "give result folders" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path), "--video_folder", str(tmp_path / "novideos")]) == 2
    assert "--video_folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Videos: the page's player and the static gallery's links


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "world" / "videos"
    folder.mkdir(parents=True)
    (folder / "s1.webm").write_bytes(b"webm")   # records name it without an extension
    (folder / "s2.mp4").write_bytes(b"mp4")
    (folder / "s3.MKV").write_bytes(b"mkv")
    return folder


def test_videos_are_found_whatever_their_extension(videos):
    assert resolve_video("s1", videos) == videos / "s1.webm"
    assert resolve_video("s2.mp4", videos) == videos / "s2.mp4"
    assert resolve_video("s2.pkl", videos) == videos / "s2.mp4"  # a feature file's name
    assert resolve_video("s3", videos) == videos / "s3.MKV"
    assert resolve_video("s1", videos.parent) == videos / "s1.webm"  # a world folder: its videos/
    assert resolve_video("s4", videos) is None and resolve_video("", videos) is None


def test_the_page_shows_the_video_or_says_which_file_is_missing(two_runs, videos):
    samples = align(load_runs(two_runs))
    assert video_for(samples[0], videos) == (str((videos / "s1.webm").resolve()), "")
    assert video_for(samples[3], videos) == (None, f"video not found: {(videos / 's4').as_posix()}")


def test_static_gallery_links_resolve_the_extension_relative_to_the_report(tmp_path, videos):
    records = write_mcq_records(tmp_path / "mcq.json")
    spec = load_task("adlmcq_action_recognition")
    result = spec.score({"s1": "(A)", "s2": "<b>B</b>", "s3": "C", "s4": "D"}, spec.load_records(records))
    out = tmp_path / "reports" / "mcq"
    write_report(result, out, video_root=videos)
    gallery = (out / "gallery.html").read_text()
    assert "src='../../world/videos/s1.webm'" in gallery and "src='../../world/videos/s2.mp4'" in gallery
    assert "src='../../world/videos/s3.MKV'" in gallery
    assert (out / "../../world/videos/s1.webm").resolve().is_file()
    # s4 has no file: a message instead of a broken player.
    assert f"video not found: {(videos / 's4').as_posix()}" in gallery
    assert gallery.count("<video ") == 3
    # The content of the string-built gallery it replaces: escaped text, the cards, the filter.
    assert "&lt;b&gt;B&lt;/b&gt;" in gallery and "<b>B</b>" not in gallery
    assert gallery.count("<div class='card") == 4 and gallery.count("<div class='card bad'>") == 0
    assert "<b>(A) drinking water</b>" in gallery and "only wrong, low-scored or missing" in gallery
    assert "<p><b>Parsed:</b> A (" in gallery and gallery.count("<span class='ok'>correct</span>") == 4
    # The same report written twice is byte-identical.
    first = gallery
    write_report(result, out, video_root=videos)
    assert (out / "gallery.html").read_text() == first
