"""Units of the quickstart: the curriculum's question kinds, the resumable steps runner, the evaluation's
commands and its flags. The whole pipeline runs in test_quickstart_e2e.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llavidal.quickstart import RECIPES, apply_recipe_settings
from llavidal.quickstart.curriculum import record_turns, turn_kind
from llavidal.quickstart.steps import Command, Step, StepFailed, StepRunner


# --------------------------------------------------------------------------- curriculum
def _record(*turns: tuple[str | None, str, str]) -> dict:
    conversations = []
    for kind, question, answer in turns:
        human = {"from": "human", "value": question}
        if kind is not None:
            human["type"] = kind
        conversations += [human, {"from": "gpt", "value": answer}]
    return {"id": "clip1", "video": "clip1.pkl", "conversations": conversations}


def test_question_kinds_come_from_the_type_the_world_writes_not_the_wording():
    record = _record(("recognition", "<video><human_pose>\nTell me, what is going on here?", "Reading."),
                     ("detail", "What is the person doing?", "A long description."),  # recognition's wording
                     ("next", "What does the person do after reading?", "Stands up."),
                     ("last", "Anything", "Sits down."))
    assert record_turns(record) == [
        ("recognition", "Tell me, what is going on here?", "Reading."),  # placeholders removed
        ("description", "What is the person doing?", "A long description."),  # "detail" is a recipe's description
        ("next", "What does the person do after reading?", "Stands up."),
        ("last", "Anything", "Sits down."),
    ]


def test_a_record_without_question_types_says_how_to_fix_it():
    with pytest.raises(ValueError, match=r"records.json record 'clip1'.*no 'type'.*delete .*world"):
        record_turns(_record((None, "What is the person doing?", "Reading.")), "records.json")
    assert turn_kind({"type": "forecast"}) == "forecast"


def test_every_world_question_carries_its_type_and_the_curriculum_uses_it(tmp_path):
    pytest.importorskip("pybullet")
    pytest.importorskip("av")
    from llavidal.quickstart.curriculum import build_training_records
    from llavidal.quickstart.layout import Paths, read_json
    from llavidal.sim.annotate import clip_questions
    from llavidal.sim.synth import main as synth

    assert synth(["--out", str(tmp_path / "world"), "--preset", "tiny", "--workers", "1"]) == 0
    paths = Paths(tmp_path)
    world_seed = read_json(paths.world / "world.json")["seed"]
    records = read_json(paths.annotations("train") / "records.json")
    assert records
    for record in records:
        meta = read_json(paths.world / "meta" / f"{record['id']}.json")
        expected = sorted({"detail": "description"}.get(kind, kind) for kind, _, _ in clip_questions(meta, world_seed))
        assert sorted(kind for kind, _, _ in record_turns(record)) == expected
    recipe = apply_recipe_settings(RECIPES["ci"], ['record_turns=["hand"]', "reduced_modality_copies=false",
                                                   "forecast_variants=0", "forecast_from_successors=0",
                                                   "video_only_samples=false"])
    samples, counts = build_training_records(paths, recipe)
    hands = {(record["id"], question) for record in records for kind, question, _ in record_turns(record)
             if kind == "hand"}
    assert counts["record_turns"] == len(hands) > 0 and "video_only" not in counts
    asked = {(sample["id"], turn["value"].split("\n")[0]) for sample in samples for turn in sample["conversations"][::2]}
    assert hands <= asked  # every hand question kept, and (by the count) nothing else from the records

    # the video-only set: one-turn samples with the video features alone, the same as the ablation trains on
    with_video = apply_recipe_settings(recipe, ["video_only_samples=true"])
    more, more_counts = build_training_records(paths, with_video)
    video_only = [s for s in more if "#v" in s["id"]]
    assert more_counts["video_only"] == len(video_only) == len(more) - len(samples) > 0
    assert all(len(s["conversations"]) == 2 and "video" in s and "pose" not in s and "object" not in s
               and s["conversations"][0]["value"].endswith("\n<video>") for s in video_only)

    # attribute variants: each train attribute MCQ asked again, redrawn with other seeds, alone, every modality
    from llavidal.quickstart.curriculum import placeholder_text
    from llavidal.sim.annotate import attribute_mcqs

    twice = apply_recipe_settings(recipe, ["attribute_variants=2"])
    extra, extra_counts = build_training_records(paths, twice)
    variants = [s for s in extra if "#a" in s["id"]]
    train_attributes = read_json(paths.annotations("train") / "mcq_attributes.json")
    assert extra_counts["attribute_variants"] == len(variants) == 2 * len(train_attributes) > 0
    by_clip = {r["id"]: r for r in records}
    for sample in variants:
        clip = sample["id"].split("#")[0]
        question, answer = sample["conversations"][0]["value"], sample["conversations"][1]["value"]
        assert len(sample["conversations"]) == 2
        assert all(sample.get(m) == by_clip[clip].get(m) for m in ("video", "pose", "object"))
        meta = read_json(paths.world / "meta" / f"{clip}.json")
        task = {"h": "hand", "o": "object", "c": "colour"}[sample["id"][-1]]
        truth = next(m for m in attribute_mcqs(meta, world_seed) if m["task"] == task)
        assert answer == truth["answer_choices"][truth["ground_truth_letter"]]  # the same truth, redrawn question
        shown = [m for m in ("video", "pose", "object") if by_clip[clip].get(m)]
        assert "Choices are (" in question and question.split("\n")[-1] == placeholder_text(shown)
    asked = {s["id"]: s["conversations"][0]["value"] for s in variants}
    assert any(asked[key] != asked[key.replace("#a1", "#a2")] for key in asked if "#a1" in key)  # redrawn

    # hand mirrors: each train clip whose hand is asked, its hand questions as the world writes them for the
    # mirror image, so answered with the other hand (the clip's MCQ and record question; a reduced copy of the MCQ;
    # as many redrawn hand MCQs as the original clip gets, so that the variants keep both hands as frequent)
    from llavidal.quickstart.curriculum import build_mirror_records, hand_mirror_clips

    mirrored, mirror_counts = build_mirror_records(
        paths, apply_recipe_settings(recipe, ["reduced_modality_copies=true", "attribute_variants=2"]))
    clips = hand_mirror_clips(paths)
    assert clips and mirror_counts["clips"] == len(clips) == mirror_counts["left"] + mirror_counts["right"]
    assert set(clips) <= set(read_json(paths.world / "annotations" / "splits.json")["cross_subject"]["train"])
    for sample in mirrored:
        clip = sample["id"].split("#")[0]
        original = read_json(paths.world / "meta" / f"{clip}.json")["segments"][0]["hand"]
        other = {"left": "right", "right": "left"}[original]
        answers = [turn["value"] for turn in sample["conversations"][1::2]]
        assert all(f"{other} hand" in a and f"{original} hand" not in a for a in answers), sample
        assert all(sample.get(m) == by_clip[clip].get(m) for m in ("video", "pose", "object") if m in sample)
    full = [s for s in mirrored if s["id"].endswith("#mirror")]
    assert len(full) == len(clips) and all(len(s["conversations"]) == 4 for s in full)
    redrawn = [s for s in mirrored if "#mirror#a" in s["id"]]
    assert len(redrawn) == 2 * len(clips) and all(s["id"].endswith("h") for s in redrawn)
    assert len(mirrored) == 4 * len(clips) == mirror_counts["samples"]

    # alignment labels (align_hands): a one-handed activity's pose tokens are fitted to "<hand> hand, <activity>",
    # the other modalities to the activity; the mirrored clips' pose features (by absolute path) to the other hand
    from llavidal.quickstart.curriculum import build_alignment_labels

    hands_only = apply_recipe_settings(recipe, ["align_hands=true", "hand_mirrors=false"])
    aligned, align_counts = build_alignment_labels(paths, hands_only)
    assert align_counts["mirrored"] == 0 and align_counts["hand_labels"] > 0
    for item in aligned:
        last = read_json(paths.world / "meta" / f"{item['id']}.json")["segments"][-1]
        expected = f"{last['hand']} hand, {item['label']}" if last.get("hand") in ("left", "right") else None
        assert (item.get("modality_labels") or {}).get("pose") == expected
    assert any(item.get("modality_labels") for item in aligned) and not all(item.get("modality_labels") for item in aligned)
    plain, _ = build_alignment_labels(paths, apply_recipe_settings(hands_only, ["align_hands=false"]))
    assert not any("modality_labels" in item or "modality_labels" in seg for item in plain for seg in item["segments"])

    with_mirrors = apply_recipe_settings(hands_only, ["hand_mirrors=true"])
    with pytest.raises(FileNotFoundError, match="mirrored clip.*mirror step"):
        build_alignment_labels(paths, with_mirrors)
    mirror_pose = paths.mirror_folders()["pose"]
    mirror_pose.mkdir(parents=True)
    for clip in clips:
        (mirror_pose / f"{clip}_pose.safetensors").write_bytes(b"")  # only the file's presence is read here
    aligned, align_counts = build_alignment_labels(paths, with_mirrors)
    mirrors = [item for item in aligned if item["id"].endswith("#mirror")]
    assert align_counts["mirrored"] == len(mirrors) == len(clips)
    for item in mirrors:
        clip = item["id"].split("#")[0]
        original = read_json(paths.world / "meta" / f"{clip}.json")["segments"][-1]["hand"]
        other = {"left": "right", "right": "left"}[original]
        assert item["modality_labels"]["pose"] == f"{other} hand, {item['label']}"
        assert set(item) & {"video", "pose", "object"} == {"pose"}
        assert Path(item["pose"]).is_absolute() and Path(item["pose"]).parent == mirror_pose.resolve()
    # held out from the alignment fit by performance: every camera of it and its mirror together
    performance = {item["id"]: read_json(paths.world / "meta" / f"{item['id']}.json")["performance_id"]
                   for item in aligned if not item["id"].endswith("#mirror")}
    assert all(item["holdout_group"] == performance[item["id"].split("#")[0]] for item in aligned)
    assert len(set(performance.values())) < len(performance), "the fixture world films performances more than once"
    (mirror_pose / f"{clips[0]}_pose.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"mirrored clip {clips[0]}.*mirror step"):
        build_alignment_labels(paths, with_mirrors)


def test_object_names_follow_the_object_features_order_and_leave_out_what_the_extractor_does(tmp_path):
    """``align_object_names``: each object of a clip's object features is named by its colour and class from the
    world's metadata, in the extractor's order (object_id; objects whose boxes are all empty left out)."""
    from llavidal.quickstart.curriculum import object_names
    from llavidal.quickstart.layout import Paths

    paths = Paths(tmp_path)
    (paths.world / "tracks").mkdir(parents=True)
    frame = {"frame": 0, "box": [1, 1, 9, 9]}
    empty = {"frame": 0, "box": [4, 4, 4, 9]}
    tracks = {"objects": [{"object_id": 2, "class": "bottle", "frames": [frame]},
                          {"object_id": 0, "class": "table", "frames": [frame]},
                          {"object_id": 1, "class": "chair", "frames": [empty]}]}
    (paths.world / "tracks" / "c1.json").write_text(json.dumps(tracks))
    meta = {"objects": [{"object_id": 0, "class": "table", "colour": "brown"},
                        {"object_id": 1, "class": "chair", "colour": "white"},
                        {"object_id": 2, "class": "bottle", "colour": "purple"}]}
    assert object_names(paths, "c1", meta) == ["brown table", "purple bottle"]
    assert object_names(paths, "c2", meta) is None  # no tracks file: the objects keep the clip's label
    assert object_names(paths, "c1", {"objects": meta["objects"][:1]}) is None  # an object the metadata lacks
    assert RECIPES["embedded"].align_object_names


# --------------------------------------------------------------------------- steps runner
def _touch(path: Path, text: str = "x") -> Command:
    return Command([sys.executable, "-c", f"open({str(path)!r}, 'w').write({text!r})"], {"QUICKSTART_TEST": "1"})


def _step(out: Path, settings: dict, text: str = "x") -> Step:
    target = out / "made.txt"
    return Step("make", "Make a file", lambda: target.is_file(), settings, commands=lambda: [_touch(target, text)])


def test_a_done_step_is_skipped_and_rerun_when_its_settings_change(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    first = StepRunner(out).run([_step(out, {"size": 1}, "one")])
    assert [r.status for r in first] == ["done"] and (out / "made.txt").read_text() == "one"
    record = json.loads((out / ".steps" / "make.json").read_text())
    assert record["settings"] == {"size": 1} and "QUICKSTART_TEST=1" in record["commands"][0]
    assert "  $ " in capsys.readouterr().out  # each command line is echoed

    again = StepRunner(out).run([_step(out, {"size": 1}, "two")])
    assert [r.status for r in again] == ["skipped"] and (out / "made.txt").read_text() == "one"
    assert "done already, skipped" in capsys.readouterr().out

    changed = StepRunner(out).run([_step(out, {"size": 2}, "three")])
    assert [r.status for r in changed] == ["done"] and (out / "made.txt").read_text() == "three"

    (out / "made.txt").unlink()  # the output is gone: the step no longer validates, so it runs again
    assert [r.status for r in StepRunner(out).run([_step(out, {"size": 2}, "four")])] == ["done"]


def _resume(path: Path, text: str, fail: bool = False) -> Command:
    """Writes ``path`` only when it is missing (as a feature extractor resumes), then fails if asked."""
    code = (f"import os, sys; p = {str(path)!r}; os.makedirs(os.path.dirname(p), exist_ok=True); "
            f"os.path.exists(p) or open(p, 'w').write({text!r}); sys.exit({int(fail)})")
    return Command([sys.executable, "-c", code])


def test_a_step_whose_settings_changed_clears_the_folders_its_resuming_commands_would_keep(tmp_path, capsys):
    """The video step's extractor resumes every file of the same recipe, which does not record the encoder's batch
    size: with other settings the step's ``clear_on_change`` folders are removed first, so its files are its
    settings'; a rerun for any other reason (an earlier step ran again, same settings) resumes them; a run killed
    after the removal resumes the new settings' files instead of removing them again."""
    out, folder = tmp_path / "run", tmp_path / "run" / "features"
    out.mkdir()
    made = folder / "clip.txt"

    def steps(world: str, batch: int, text: str, clear: bool = True, fail: bool = False) -> list[Step]:
        return [Step("world", "World", (out / "world.txt").is_file, {"world": world},
                     commands=lambda: [_touch(out / "world.txt", world)]),
                Step("video", "Video", made.is_file, {"batch": batch},
                     commands=lambda: [_resume(made, text, fail)], clear_on_change=(folder,) if clear else ())]

    StepRunner(out).run(steps("w1", 64, "at 64"))
    assert made.read_text() == "at 64"
    StepRunner(out).run(steps("w1", 8, "at 8", clear=False))  # what the step did without it: the old file kept
    assert made.read_text() == "at 64"
    StepRunner(out).run(steps("w1", 64, "at 64"))  # recorded 8, now 64: removed and made again
    assert made.read_text() == "at 64"
    capsys.readouterr()
    StepRunner(out).run(steps("w1", 8, "at 8"))
    assert made.read_text() == "at 8" and f"settings changed (batch): removing {folder}" in capsys.readouterr().out
    StepRunner(out).run(steps("w2", 8, "again"))  # the world ran again, the settings are the same: resumed
    assert made.read_text() == "at 8"

    with pytest.raises(Exception):  # settings changed, then the command is killed after writing its file
        StepRunner(out).run(steps("w2", 16, "at 16", fail=True))
    assert made.read_text() == "at 16" and not (out / ".steps" / "video.json").exists()
    StepRunner(out).run(steps("w2", 16, "other"))  # resumed, not removed again
    assert made.read_text() == "at 16"
    assert json.loads((out / ".steps" / "video.json").read_text())["settings"] == {"batch": 16}


def test_the_steps_after_one_that_ran_again_run_again(tmp_path):
    """A step whose own settings are unchanged still reruns when a step before it ran again (e.g. alignment and
    training after new features)."""
    out = tmp_path / "run"
    out.mkdir()

    def steps(world_size: int, tag: str) -> list[Step]:
        world, features = out / "world.txt", out / "features.txt"
        return [Step("world", "World", world.is_file, {"size": world_size}, commands=lambda: [_touch(world, tag)]),
                Step("features", "Features", features.is_file, {"encoder": "e"},
                     commands=lambda: [_touch(features, tag)])]

    assert [r.status for r in StepRunner(out).run(steps(1, "one"))] == ["done", "done"]
    assert [r.status for r in StepRunner(out).run(steps(1, "two"))] == ["skipped", "skipped"]
    assert [r.status for r in StepRunner(out).run(steps(2, "three"))] == ["done", "done"]
    assert (out / "features.txt").read_text() == "three"
    assert [r.status for r in StepRunner(out).run(steps(2, "four"))] == ["skipped", "skipped"]
    # the later step alone changed: the earlier one stays skipped
    (out / "features.txt").unlink()
    assert [r.status for r in StepRunner(out).run(steps(2, "five"))] == ["skipped", "done"]
    assert [r.status for r in StepRunner(out).run(steps(2, "six"))] == ["skipped", "skipped"]


def test_commands_sh_lists_every_steps_commands_and_reruns_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    made = out / "prepared.txt"
    steps = [_step(out, {}, "cmd"),
             Step("prep", "In-process only", made.is_file, {}, prepare=lambda: made.write_text("p"),
                  prepares=f"{made}")]
    StepRunner(out).run(steps)
    script = (out / "commands.sh").read_text()
    assert "# [1/2] make: Make a file" in script and "# in-process: " + str(made) in script
    command_lines = [line for line in script.splitlines() if line.startswith("QUICKSTART_TEST=1 ")]
    assert command_lines == [_step(out, {}, "cmd").commands()[0].shell()]
    (out / "made.txt").unlink()
    subprocess.run(["sh", str(out / "commands.sh")], check=True)  # a user reruns the commands by hand
    assert (out / "made.txt").read_text() == "cmd"
    StepRunner(out).run(steps)  # all skipped: the script still lists the recorded commands
    assert (out / "commands.sh").read_text() == script


def test_a_failing_command_stops_the_run_and_leaves_no_record(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    fail = Step("fail", "Fail", lambda: True, {}, commands=lambda: [Command([sys.executable, "-c", "raise SystemExit(3)"])])
    with pytest.raises(StepFailed, match="exit status 3.*logs/fail.log"):
        StepRunner(out).run([fail])
    assert not (out / ".steps" / "fail.json").exists()
    assert "# (this step did not finish)" in (out / "commands.sh").read_text()
    invalid = Step("invalid", "Invalid", lambda: False, {})
    with pytest.raises(StepFailed, match="does not validate"):
        StepRunner(out).run([invalid])


# --------------------------------------------------------------------------- evaluation commands and flags
def _world_with_test_files(root: Path, files: tuple[str, ...]) -> None:
    test_dir = root / "world" / "annotations" / "cross_subject" / "test"
    test_dir.mkdir(parents=True)
    for name in files:
        (test_dir / name).write_text("[]")


def test_evaluation_runs_the_eval_cli_per_task_and_modality_set(tmp_path):
    from llavidal.eval.commands import read_infer_jobs
    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.stages import (
        Quickstart,
        evaluation_commands,
        evaluation_runs,
        infer_jobs_path,
        shared_infer_flags,
        write_infer_jobs,
    )

    _world_with_test_files(tmp_path, ("mcq_action_recognition.json", "descriptions.json"))
    qs = Quickstart(paths=Paths(tmp_path), recipe=RECIPES["ci"], preset="small", llm="tiny", seed=0, workers=1)
    commands = [c.argv[3:] for c in evaluation_commands(qs)]  # after "python -m llavidal"
    words = [" ".join(argv[:2]) if argv[1] != "judge" else "eval judge " + argv[2] for argv in commands]
    sets = ("video", "pose", "object", "video+pose", "all")
    # one eval infer for every run (the model loaded once), then each modality set's scoring twice
    # (log-likelihood, then generation), the descriptions' judge and the report
    assert words == ["eval infer"] + ["eval mcq"] * 2 * len(sets) + ["eval judge descriptions", "eval report"]
    assert commands[0][2:] == shared_infer_flags(qs) + ["--jobs", str(infer_jobs_path(qs))]
    infers = {Path(a[a.index("--output") + 1]).name: a for _, a in evaluation_runs(qs)}
    # the jobs file holds exactly these runs, and eval infer reads it back as they are
    write_infer_jobs(qs)
    parsed = read_infer_jobs(infer_jobs_path(qs), shared_infer_flags(qs))
    assert [Path(job.output).name for _, job in parsed] == list(infers)
    assert all(job.weights == str(qs.paths.train) and job.device == "cpu" for _, job in parsed)
    pose_only = infers["recognition__pose.jsonl"]
    assert "--video_folder" not in pose_only and "--allow_text_only" in pose_only and "--pose_folder" in pose_only
    assert pose_only[pose_only.index("--limit") + 1] == str(RECIPES["ci"].ablation_limit)
    assert "--limit" not in infers["recognition__all.jsonl"]  # the full test set for all modalities
    assert "--mcq_scoring" not in pose_only
    for set_name in sets:  # each option's log-likelihood; every record for the full sets (video, all)
        argv = infers[f"recognition__{set_name}__loglik.jsonl"]
        assert argv[argv.index("--mcq_scoring") + 1] == "loglik_norm"
        if set_name in RECIPES["ci"].full_eval_sets:
            assert "--limit" not in argv
        else:
            assert argv[argv.index("--limit") + 1] == str(RECIPES["ci"].ablation_limit)
    judge = next(a for a in commands if a[1] == "judge")
    assert judge[judge.index("--judge") + 1] == "local"
    report = commands[-1]
    assert len(report[report.index("--results") + 1:report.index("--output_dir")]) == 2 * len(sets) + 1


def test_per_sample_extractors_and_the_evaluation_run_as_torchrun_ranks(tmp_path):
    """The pose and object extractors run one single-threaded torchrun rank per worker (each clip's features are
    those of one thread, so the same at any worker count), the evaluation ``eval_procs`` ranks with the cores
    split between them; one worker / one eval process runs the plain CLI."""
    import os
    from dataclasses import replace

    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.stages import SINGLE_THREAD, Quickstart, evaluation_commands, object_command, pose_command

    _world_with_test_files(tmp_path, ("mcq_action_recognition.json",))
    world, out = tmp_path / "world", tmp_path / "features"
    for workers in (1, 3):
        qs = Quickstart(paths=Paths(tmp_path), recipe=RECIPES["ci"], preset="small", llm="tiny", seed=0, workers=workers)
        for command, name in ((pose_command(qs, world, out), "pose"), (object_command(qs, world, out), "object")):
            assert command.env == SINGLE_THREAD
            if workers == 1:
                assert command.argv[1:5] == ["-m", "llavidal", "extract", name]
            else:
                assert command.argv[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "3"]
                at = command.argv.index("-m", 2)
                assert command.argv[at:at + 4] == ["-m", "llavidal", "extract", name]
    cores = os.cpu_count() or 1
    for procs in (1, 2):
        qs = Quickstart(paths=Paths(tmp_path), recipe=replace(RECIPES["ci"], eval_procs=procs), preset="small",
                        llm="tiny", seed=0, workers=1)
        infer = evaluation_commands(qs)[0]
        assert infer.env["OMP_NUM_THREADS"] == str(max(1, cores // procs))
        assert ("torch.distributed.run" in infer.argv) == (procs > 1)
        assert infer.argv[-2:] == ["--jobs", str(tmp_path / "eval" / "infer_jobs.txt")]
        assert "eval_procs" in qs.recipe.evaluation_fields()  # changing it reruns the evaluation, not training


def test_the_recipes_encoder_batch_and_alignment_temperature_reach_the_commands_and_the_steps_settings(tmp_path):
    """``video_batch`` is every video extraction's ``--batch_size`` (the features depend on it by float rounding, so
    it is in the video step's settings: changing it extracts again); ``align_temperature`` is the alignment's."""
    from dataclasses import replace

    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.stages import Quickstart, align_step, video_step

    _world_with_test_files(tmp_path, ("mcq_action_recognition.json",))
    steps = {}
    for batch, temperature in ((8, 0.1), (64, 1.0)):
        recipe = replace(RECIPES["ci"], video_batch=batch, align_temperature=temperature)
        qs = Quickstart(paths=Paths(tmp_path), recipe=recipe, preset="small", llm="tiny", seed=0, workers=2)
        video, align = video_step(qs), align_step(qs)
        argv = video.commands()[0].argv
        assert argv[argv.index("--batch_size") + 1] == str(batch) and "extract" in argv
        assert video.clear_on_change == (qs.paths.video,)  # the extractor would keep the other batch's files
        argv = align.commands()[0].argv
        assert argv[argv.index("--align_temperature") + 1] == str(temperature)
        steps[batch] = (video.settings, align.settings)
    assert steps[8][0] != steps[64][0] and steps[8][1] != steps[64][1]
    assert RECIPES["embedded"].video_batch == 64 and RECIPES["embedded"].align_temperature == 1.0


def test_forecasting_loglik_scores_the_choices_after_the_models_own_reasoning(tmp_path):
    """The recipe trains forecasting answers "The video ends with X. The answer is Y.": its log-likelihood
    evaluation generates up to the lead and scores the choices after it; recognition scores them at once."""
    from dataclasses import replace

    from llavidal.quickstart.curriculum import FORECAST_LEAD, forecast_answer
    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.stages import (
        Quickstart,
        evaluate_step,
        evaluation_runs,
        train_step,
    )

    _world_with_test_files(tmp_path, ("mcq_action_recognition.json", "mcq_forecasting.json"))
    recipe = RECIPES["ci"]
    assert recipe.forecast_reasoning and f"{FORECAST_LEAD} reading a book." in forecast_answer(recipe, "reading a book",
                                                                                             "sitting down")
    qs = Quickstart(paths=Paths(tmp_path), recipe=recipe, preset="small", llm="tiny", seed=0, workers=1)
    infers = {Path(a[a.index("--output") + 1]).name: a for _, a in evaluation_runs(qs)}
    for name, argv in infers.items():
        if name.startswith("forecasting__") and name.endswith("__loglik.jsonl"):
            assert argv[argv.index("--loglik_lead") + 1] == FORECAST_LEAD
        else:
            assert "--loglik_lead" not in argv, name
    plain = Quickstart(paths=Paths(tmp_path), recipe=replace(recipe, forecast_reasoning=False), preset="small",
                       llm="tiny", seed=0, workers=1)
    assert not any("--loglik_lead" in argv for _, argv in evaluation_runs(plain))
    # the lead is part of the evaluation's settings: a folder evaluated without it is evaluated again
    train = train_step(qs, None)
    assert evaluate_step(qs, train).settings["forecast_lead"] == FORECAST_LEAD
    assert evaluate_step(plain, train_step(plain, None)).settings["forecast_lead"] is None


def test_command_line_flags(tmp_path, capsys):
    from llavidal.config import parse
    from llavidal.quickstart import QuickstartArguments, main

    (args,) = parse((QuickstartArguments,), ["--out", "qs", "--train_flag", "max_steps=4", "--train-flag",
                                              "logging_steps=1", "--recipe_set", "align_steps=3", "seed=2"], prog="q")
    assert args.output_dir == "qs" and args.seed == 2 and args.recipe_set == ["align_steps=3"]
    assert args.train_flags() == {"max_steps": "4", "logging_steps": "1"}
    assert main(["--output_dir", str(tmp_path / "qs"), "--recipe", "nope"]) == 2
    assert "unknown --recipe 'nope'" in capsys.readouterr().err
    assert main(["--output_dir", str(tmp_path / "qs"), "--train_flag", "max_steps"]) == 2
    assert "expected FLAG=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()
    assert apply_recipe_settings(RECIPES["ci"], ["ablation_limit=None"]).ablation_limit is None


def test_shell_lines_quote_what_the_shell_would_split():
    line = Command(["python", "-c", "print('a b')"], {"A": "x y"}).shell()
    assert shlex.split(line) == ["A=x y", "python", "-c", "print('a b')"]


def test_evaluation_fields_rerun_evaluation_not_training(tmp_path):
    """Changing how the held-out set is evaluated must not retrain: only the evaluate step's settings move."""
    from dataclasses import replace

    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.stages import Quickstart, build_steps

    def settings(recipe):
        qs = Quickstart(paths=Paths(tmp_path), recipe=recipe, preset="small", llm="tiny", seed=0, workers=1)
        return {step.name: step.settings for step in build_steps(qs)}

    base = RECIPES["ci"]
    before = settings(base)
    after_eval = settings(replace(base, ablation_limit=7, generate_limit=9, loglik_batch_size=2))
    for name in ("data", "align", "train"):
        assert after_eval[name] == before[name], name
    assert after_eval["evaluate"] != before["evaluate"]
    after_train = settings(replace(base, forecast_variants=base.forecast_variants + 1))
    assert after_train["train"] != before["train"] and after_train["data"] != before["data"]



def test_object_questions_ask_the_clips_the_world_does_not_about_their_objects(tmp_path):
    """object_questions: the train clips that are not single activities and have object features are asked what
    colour each object in view is and which object the person handles (when exactly one), the truth from the
    metadata, every modality shown; none for single clips (the world asks those), none with object_questions=0."""
    from llavidal.quickstart.curriculum import object_questions, placeholder_text
    from llavidal.quickstart.layout import PROTOCOL, Paths

    def meta(clip, kind, objects):
        return {"clip_id": clip, "kind": kind, "segments": [], "objects": [
            {"object_id": i, "class": c, "colour": colour, "used": used} for i, (c, colour, used) in enumerate(objects)]}

    metas = [
        meta("R1", "routine", [("mug", "red", True), ("table", "brown", True)]),  # one object handled: both questions
        meta("F1", "forecast", [("book", "teal", False), ("chair", "brown", False)]),  # in view, not handled: colour
        meta("F2", "forecast", [("mug", "blue", True), ("phone", "pink", True)]),  # two handled: colours only
        meta("S1", "single", [("bottle", "green", True)]),  # the world's own attribute questions
        meta("R2", "routine", [("apple", "red", True)]),  # no object features
        meta("V1", "single", [("box", "white", True)]),  # a test clip
    ]
    world = tmp_path / "world"
    (world / "meta").mkdir(parents=True)
    (world / "annotations").mkdir()
    (world / "world.json").write_text(json.dumps({"seed": 3}))
    (world / "annotations" / "splits.json").write_text(json.dumps(
        {PROTOCOL: {"train": ["R1", "F1", "F2", "S1", "R2"], "test": ["V1"]}}))
    for m in metas:
        (world / "meta" / f"{m['clip_id']}.json").write_text(json.dumps(m))
    records = {c: {"id": c, "video": f"{c}.pkl", "pose": f"{c}_pose.pkl", **({} if c == "R2" else {"object": f"{c}_object.pkl"})}
               for c in ("R1", "F1", "F2", "S1", "R2", "V1")}
    paths = Paths(tmp_path)
    recipe = apply_recipe_settings(RECIPES["ci"], ["object_questions=2"])
    samples = object_questions(paths, recipe, records)
    asked = {}
    for sample in samples:
        clip, _, rest = sample["id"].partition("#o")
        question, answer = sample["conversations"][0]["value"], sample["conversations"][1]["value"]
        assert len(sample["conversations"]) == 2 and question.split("\n")[-1] == placeholder_text(["video", "pose", "object"])
        assert all(sample[m] == records[clip][m] for m in ("video", "pose", "object"))
        asked.setdefault((clip, rest[1:]), []).append((rest[0], question, answer))
    assert sorted(asked) == [("F1", "colour-book"), ("F2", "colour-mug"), ("F2", "colour-phone"),
                             ("R1", "colour-mug"), ("R1", "object")]
    truth = {("F1", "colour-book"): "teal", ("F2", "colour-mug"): "blue", ("F2", "colour-phone"): "pink",
             ("R1", "colour-mug"): "red", ("R1", "object"): "a mug"}
    for key, draws in asked.items():
        assert [d for d, _, _ in draws] == ["1", "2"]  # object_questions draws, each redrawn
        assert all(answer == truth[key] for _, _, answer in draws), (key, draws)
        if key[1].startswith("colour-"):
            assert all(key[1][len("colour-"):] in q.split("?")[0] for _, q, _ in draws)
    assert any(len({q for _, q, _ in draws}) == 2 for draws in asked.values())  # the draws differ
    assert object_questions(paths, apply_recipe_settings(recipe, ["object_questions=0"]), records) == []


def test_report_ranks_the_same_loglik_rows_by_their_sum_with_paired_counts(tmp_path):
    # Four recognition questions answered by per-token mean; the summed log-likelihood picks another option on
    # two of them (one right, one wrong): the report shows both rules from the same rows, paired.
    from llavidal.eval.mcq import score_mcq
    from llavidal.eval.records import EvalRecord
    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.report import _by_sum_table, collect_results, exact_mcnemar_p, COLUMNS

    paths = Paths(tmp_path)
    paths.eval.mkdir(parents=True)
    choices = {"A": "sitting down", "B": "crawling on hands and knees"}
    # (answer, per-option (loglik, tokens)); the per-token mean prefers B on q1 and q3 only, the sum A everywhere.
    questions = {"q0": ("A", {"A": (-2.0, 2), "B": (-8.0, 5)}), "q1": ("A", {"A": (-3.0, 2), "B": (-5.0, 5)}),
                 "q2": ("B", {"A": (-1.0, 2), "B": (-4.0, 5)}), "q3": ("B", {"A": (-4.0, 2), "B": (-6.0, 5)})}
    records, rows = [], []
    for qid, (answer, scores) in questions.items():
        records.append(EvalRecord(id=qid, video=f"{qid}.mp4", question="What is the person doing?",
                                  answer=choices[answer], choices=choices, answer_letter=answer,
                                  task="recognition"))
        option_scores = {k: {"text": choices[k], "loglik": v, "tokens": t, "chars": len(choices[k]), "score": v / t}
                         for k, (v, t) in scores.items()}
        chosen = max(option_scores, key=lambda k: option_scores[k]["score"])
        rows.append({"id": qid, "status": "ok", "outputs": {"main": chosen}, "prediction": chosen,
                     "option_scores": option_scores})
    predictions = paths.predictions("recognition", "video", "loglik")
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored = score_mcq(predictions, records)
    paths.scored("recognition", "video", "loglik").parent.mkdir(parents=True)
    paths.scored("recognition", "video", "loglik").write_text(json.dumps(scored))

    entry = collect_results(paths)["mcq"]["loglik"]["recognition"]["video"]
    # per-token mean: q0 A (right), q1 B (wrong), q2 A (wrong), q3 B (right) -> 2/4
    assert (entry["correct"], entry["n"]) == (2, 4)
    # sum: A everywhere -> q0, q1 right; q2, q3 wrong -> 2/4, gaining q1 and losing q3
    by_sum = entry["by_sum"]
    assert (by_sum["correct"], by_sum["n"], by_sum["gained"], by_sum["lost"]) == (2, 4, 1, 1)
    assert by_sum["p"] == 1.0
    lines = _by_sum_table({"recognition": {"video": entry}}, [c for c in COLUMNS if c[1] == "recognition"])
    assert any("0.500 (2/4;" in line and "+1/-1, p 1" in line for line in lines)
    # the exact test: 17 gained against 3 lost is p = 0.0026 (two-sided binomial at one half)
    assert abs(exact_mcnemar_p(17, 3) - 0.002577) < 1e-5
    assert exact_mcnemar_p(0, 0) == 1.0
