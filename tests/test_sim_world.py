"""The embedded ADL world (``llavidal synth``): layout, skeleton alignment, ground truth, determinism.

One small world is generated per session (about 10-20 s on 2 cores); every test reads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("pybullet") is None or importlib.util.find_spec("av") is None:
    pytest.skip("the world needs the 'world' extra (pybullet, av)", allow_module_level=True)

from llavidal.features.pose.ntu import read_skeleton  # noqa: E402
from llavidal.sim import ACTIVITIES, BY_NAME, generate_world  # noqa: E402
from llavidal.sim.activities import CONFUSABLE, MOCAP, PROCEDURAL, TRANSITIONS  # noqa: E402
from llavidal.sim.annotate import state_after  # noqa: E402
from llavidal.sim.plan import feasible  # noqa: E402
from llavidal.sim.render import FLOOR_RGB  # noqa: E402
from llavidal.sim.video import read_mp4  # noqa: E402

SPLITS = ("train", "val", "test")
PROTOCOLS = ("cross_subject", "cross_view")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("world") / "small"
    started = time.perf_counter()
    generate_world(root, preset="small", seed=0, workers=2, progress=False)
    return root, time.perf_counter() - started


@pytest.fixture(scope="session")
def metas(small_world) -> dict[str, dict]:
    root, _ = small_world
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "meta").glob("*.json"))}


def _load(root: Path, protocol: str, split: str, name: str) -> list[dict]:
    return json.loads((root / "annotations" / protocol / split / name).read_text())


def test_small_preset_time(small_world):
    _, elapsed = small_world
    print(f"\nsmall preset: {elapsed:.1f} s")
    assert elapsed < 120, f"the small preset took {elapsed:.0f} s"


def test_layout_and_counts(small_world, metas):
    root, _ = small_world
    world = json.loads((root / "world.json").read_text())
    assert world["preset"]["name"] == "small" and world["seed"] == 0
    assert world["counts"]["clips"] == len(metas) >= 20
    assert [a["name"] for a in world["activities"]] == [a.name for a in ACTIVITIES]
    for clip, meta in metas.items():
        for sub, suffix in (("videos", ".mp4"), ("skeletons", ".skeleton"), ("tracks", ".json")):
            assert (root / sub / f"{clip}{suffix}").stat().st_size > 0, (clip, sub)
        assert 2.0 <= meta["duration"] or meta["kind"] == "forecast", clip
        if meta["kind"] == "single":
            assert meta["duration"] <= 6.5, clip
    singles = {m["activity"] for m in metas.values() if m["kind"] == "single"}
    assert singles == {a.name for a in ACTIVITIES}  # every activity at least once
    assert any(m["kind"] == "routine" for m in metas.values())
    assert any(m["kind"] == "forecast" for m in metas.values())
    splits = json.loads((root / "annotations" / "splits.json").read_text())
    for protocol in PROTOCOLS:
        members = [c for split in SPLITS for c in splits[protocol][split]]
        assert sorted(members) == sorted(metas)  # each clip in exactly one split


def test_activity_catalogue():
    names = [a.name for a in ACTIVITIES]
    assert len(names) == len(set(names))
    assert len({a.label for a in ACTIVITIES}) == len(ACTIVITIES)
    assert len(PROCEDURAL) >= 10
    clips = {c for a in ACTIVITIES for c in a.mocap_clips}
    assert len(clips) == 15  # every bundled DeepMimic clip
    for activity in ACTIVITIES:
        assert activity.description.startswith("The person") and activity.phrases


def test_video_format(small_world, metas):
    import av

    root, _ = small_world
    clip = sorted(metas)[0]
    with av.open(str(root / "videos" / f"{clip}.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (224, 224)
        assert 10 <= float(stream.average_rate) <= 15


def _is_background(pixel: np.ndarray, meta: dict) -> bool:
    sky = np.array(meta["background"]["sky_rgb"], dtype=np.float64)
    floor = np.array(FLOOR_RGB) * 255.0
    shades = np.linspace(0.78, 1.02, 25)[:, None] * floor[None]
    near_floor = np.min(np.abs(shades - pixel[None]).max(axis=1))
    return bool(np.abs(pixel - sky).max() < 28 or near_floor < 22)


def test_skeleton_projects_onto_the_figure(small_world, metas):
    """Head and wrists, projected from the .skeleton file, land on the figure in the decoded video."""
    root, _ = small_world
    checked = hits = 0
    for clip, meta in metas.items():
        if meta["kind"] == "forecast":
            continue  # a prefix of its routine's video
        sequence = read_skeleton(root / "skeletons" / f"{clip}.skeleton")
        frames = read_mp4(root / "videos" / f"{clip}.mp4")
        assert len(sequence) == len(frames) == meta["frames"], clip
        assert all(len(f) == 1 and f[0].joints.shape == (25, 12) for f in sequence.frames)
        width, height = meta["width"], meta["height"]
        intrinsics = meta["view"]["intrinsics"]
        for t in range(0, len(frames), 3):
            body = sequence.frames[t][0]
            colour = body.color_xy
            pixels = np.stack([(colour[:, 0] - 420.0) * width / 1080.0, colour[:, 1] * height / 1080.0], axis=1)
            # the pixel coordinates agree with the camera-space points and the recorded intrinsics
            xyz = body.xyz
            u = intrinsics["cx"] - intrinsics["focal"] * xyz[:, 0] / xyz[:, 2]
            v = intrinsics["cy"] - intrinsics["focal"] * xyz[:, 1] / xyz[:, 2]
            assert np.allclose(pixels, np.stack([u, v], axis=1), atol=0.05), clip
            for joint in (3, 6, 10):  # Head, WristLeft, WristRight
                x, y = int(pixels[joint, 0]), int(pixels[joint, 1])
                if not (1 <= x < width - 1 and 1 <= y < height - 1):
                    continue
                checked += 1
                window = frames[t, y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(np.float64)
                hits += any(not _is_background(p, meta) for p in window)
    print(f"\nskeleton points on the figure: {hits}/{checked}")
    assert checked > 300
    assert hits / checked >= 0.97


def test_object_tracks(small_world, metas):
    root, _ = small_world
    with_objects = 0
    for clip, meta in metas.items():
        tracks = json.loads((root / "tracks" / f"{clip}.json").read_text())
        assert set(tracks) == {"video", "fps", "width", "height", "num_frames", "source", "objects"}
        assert tracks["video"] == f"{clip}.mp4" and tracks["num_frames"] == meta["frames"]
        assert tracks["source"] == "ground_truth"
        assert [o["class"] for o in tracks["objects"]] == [o["class"] for o in meta["objects"]]
        for obj in tracks["objects"]:
            assert set(obj) == {"object_id", "class", "frames"}
            for entry in obj["frames"]:
                x1, y1, x2, y2 = entry["box"]
                assert 0 <= x1 < x2 <= tracks["width"] and 0 <= y1 < y2 <= tracks["height"]
                assert 0 <= entry["frame"] < tracks["num_frames"] and entry["position_3d"][2] > 0
        with_objects += bool(tracks["objects"])
    assert with_objects >= 8


def test_mcq_truth_matches_metadata_and_distractors_are_wrong(small_world, metas):
    root, _ = small_world
    by_label = {a.label: a.name for a in ACTIVITIES}
    seen = {"action_recognition": 0, "action_forecasting": 0}
    for protocol in PROTOCOLS:
        for split in SPLITS:
            for name in ("mcq_action_recognition.json", "mcq_forecasting.json"):
                for question in _load(root, protocol, split, name):
                    extra = {"object_dependent"} if name == "mcq_forecasting.json" else set()
                    assert set(question) == {"video_filename", "question", "answer_choices", "ground_truth_letter",
                                             "id", "task", "label"} | extra
                    meta = metas[question["id"]]
                    assert question["video_filename"] == f"{meta['clip_id']}.mp4"
                    choices = {letter: by_label[text] for letter, text in question["answer_choices"].items()}
                    assert list(choices) == list("ABCDEF"[:len(choices)])
                    assert len(set(choices.values())) == len(choices)
                    truth = meta["activity"] if question["task"] == "action_recognition" else meta["next_activity"]
                    assert question["label"] == truth
                    assert choices[question["ground_truth_letter"]] == truth
                    distractors = [a for letter, a in choices.items() if letter != question["ground_truth_letter"]]
                    for distractor in distractors:
                        assert distractor != truth
                        assert not any({distractor, truth} <= group for group in CONFUSABLE)
                    if question["task"] == "action_recognition":
                        assert len(choices) == 4 and meta["kind"] == "single"
                    else:
                        assert 4 <= len(choices) <= 6 and meta["kind"] == "forecast"
                        # the truth is what the routine did next; no distractor is both possible and likely
                        routine = metas[question["id"].rsplit("K", 1)[0]]
                        assert routine["segments"][meta["forecast_cut"]]["activity"] == truth
                        state = state_after(meta["segments"])
                        likely = TRANSITIONS.get(meta["segments"][-1]["activity"], {})
                        for distractor in distractors:
                            assert distractor in MOCAP or not feasible(distractor, state) or distractor not in likely
                        # object-dependent: only the object in hand tells the truth from the other two
                        dependent = truth in ("drink", "read", "phone_call")
                        assert question["object_dependent"] is dependent
                        if dependent:
                            assert {"drink", "read", "phone_call"} <= set(choices.values())
                    seen[question["task"]] += 1
    assert seen["action_recognition"] >= 20 and seen["action_forecasting"] >= 2


def test_attribute_mcqs_match_metadata(small_world, metas):
    """Which hand / which object / what colour: the truth is the clip's metadata, the options distinct."""
    root, _ = small_world
    seen = {"hand": 0, "object": 0, "colour": 0}
    for split in SPLITS:
        for question in _load(root, "cross_subject", split, "mcq_attributes.json"):
            clip, task = question["id"].split(":")
            meta = metas[clip]
            assert meta["kind"] == "single" and task == question["task"]
            segment = meta["segments"][0]
            texts = list(question["answer_choices"].values())
            assert len(set(texts)) == len(texts)
            truth = question["answer_choices"][question["ground_truth_letter"]]
            if task == "hand":
                assert truth == f"the {segment['hand']} hand" and len(texts) == 2
            elif task == "object":
                kind = question["label"]
                assert kind in segment["objects"] and truth.endswith(f" {kind}") and len(texts) == 4
            else:
                colours = {o["colour"] for o in meta["objects"] if o["class"] in segment["objects"]}
                assert truth == question["label"] and truth in colours and len(texts) == 4
            seen[task] += 1
    assert all(count >= 1 for count in seen.values()), seen


def test_object_mcqs_ask_any_clip_what_its_metadata_answers(metas):
    """object_mcqs: a colour question per hand object in view (used or not), the object question only when the
    person handles exactly one, the truth from the metadata; single clips keep the world's own questions."""
    from llavidal.sim.annotate import HAND_OBJECTS, attribute_mcqs, object_mcqs

    seen = {"object": 0, "colour": 0, "kinds": set()}
    for meta in metas.values():
        questions = object_mcqs(meta, 0)
        assert object_mcqs(meta, 0) == questions  # deterministic
        in_view = {o["class"] for o in meta["objects"] if o["class"] in HAND_OBJECTS}
        used = {o["class"] for o in meta["objects"] if o["class"] in HAND_OBJECTS and o.get("used")}
        assert used == {c for s in meta["segments"] for c in s["objects"] if c in HAND_OBJECTS}
        objects = [q for q in questions if q["task"] == "object"]
        colours = [q for q in questions if q["task"] == "colour"]
        assert len(objects) == (len(used) == 1)
        for question in objects:
            assert question["id"] == f"{meta['clip_id']}:object" and question["label"] in used
            assert question["answer_choices"][question["ground_truth_letter"]].endswith(f" {question['label']}")
        assert {q["id"].split(":")[2] for q in colours} <= in_view and len(colours) == len(
            {c for c in in_view if any(o["class"] == c and o.get("colour") for o in meta["objects"])})
        for question in colours:
            kind = question["id"].split(":")[2]
            colour = next(o["colour"] for o in meta["objects"] if o["class"] == kind)
            assert question["label"] == colour == question["answer_choices"][question["ground_truth_letter"]]
            assert f" {kind} " in f" {question['question'].rstrip('?')} " and len(set(question["answer_choices"].values())) == 4
        if meta["kind"] == "single" and objects:
            world = next(q for q in attribute_mcqs(meta, 0) if q["task"] == "object")
            assert world["label"] == objects[0]["label"]
        seen["object"] += len(objects)
        seen["colour"] += len(colours)
        seen["kinds"] |= {meta["kind"] for _ in objects}
    assert seen["object"] >= 2 and seen["colour"] >= 2 and seen["kinds"] - {"single"}, seen


def test_training_records_are_valid(small_world, metas):
    root, _ = small_world
    for protocol in PROTOCOLS:
        all_ids = []
        for split in SPLITS:
            records = _load(root, protocol, split, "records.json")
            for record in records:
                clip = record["id"]
                all_ids.append(clip)
                assert clip in metas
                assert record["video"] == f"{clip}.pkl" and record["pose"] == f"{clip}_pose.pkl"
                assert (root / "videos" / f"{clip}.mp4").exists() and (root / "skeletons" / f"{clip}.skeleton").exists()
                has_objects = bool(metas[clip]["objects"])
                assert ("object" in record) == has_objects
                if has_objects:
                    assert record["object"] == f"{clip}_object.pkl"
                turns = record["conversations"]
                assert len(turns) >= 2 and len(turns) % 2 == 0
                for k, turn in enumerate(turns):
                    assert turn["from"] == ("human" if k % 2 == 0 else "gpt") and turn["value"].strip()
                expected = "<video>" + ("<object>" if has_objects else "") + "<human_pose>"
                assert expected in turns[0]["value"]
                assert sum(t["value"].count("<video>") for t in turns) == 1
        assert len(all_ids) == len(set(all_ids)) == len(metas)


def test_descriptions_and_videochatgpt_qa(small_world, metas):
    root, _ = small_world
    for split in SPLITS:
        for record in _load(root, "cross_subject", split, "descriptions.json"):
            assert set(record) == {"video_name", "Q", "A", "cons_Q1", "cons_Q2", "cons_A"}
            assert record["video_name"] in metas and record["A"] == record["cons_A"]
            assert len({record["Q"], record["cons_Q1"], record["cons_Q2"]}) == 3
        for name in ("qa_generic.json", "qa_temporal.json"):
            for qa in _load(root, "cross_subject", split, name):
                assert set(qa) == {"video_id", "q", "a"} and qa["video_id"] in metas
        for qa in _load(root, "cross_subject", split, "qa_consistency.json"):
            assert set(qa) == {"video_id", "q", "q2", "a"} and qa["q"] != qa["q2"]
    # answers come from the metadata: the recognition answer of a single clip names its activity
    generic = [qa for s in SPLITS for qa in _load(root, "cross_subject", s, "qa_generic.json")]
    for qa in generic:
        meta = metas[qa["video_id"]]
        if meta["kind"] == "single" and qa["q"].startswith("Which hand"):
            assert meta["hand"] in qa["a"]


def test_rerun_is_byte_identical_and_resumes(small_world, tmp_path):
    root, _ = small_world
    first = _hashes(root)
    other = tmp_path / "again"
    generate_world(other, preset="small", seed=0, workers=1, progress=False)  # other worker count, fresh folder
    assert _hashes(other) == first
    # resume: delete one clip's video and add a stale one; a rerun redoes only that performance, removes the
    # stale clip and ends identical
    victim = sorted((other / "videos").glob("*A001.mp4"))[0]
    victim.unlink()
    (other / "videos" / "S009C001P001R001A001.mp4").write_bytes(b"stale clip of another plan")
    started = time.perf_counter()
    generate_world(other, preset="small", seed=0, workers=1, progress=False)
    print(f"\nresume: {time.perf_counter() - started:.1f} s")
    assert _hashes(other) == first


def test_cli_tiny_is_silent_and_writes_a_preview(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run([sys.executable, "-m", "llavidal.cli", "synth", "--out", str(out), "--preset", "tiny",
                             "--workers", "2", "--quiet", "--preview"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # pybullet's C-level banner and warnings are silenced
    assert (out / "preview.png").stat().st_size > 10_000
    assert json.loads((out / "world.json").read_text())["preset"]["name"] == "tiny"


def test_activity_labels_in_mcq_are_catalogue_labels():
    assert all(BY_NAME[a.name] is a for a in ACTIVITIES)


def test_records_load_through_the_training_loader_and_mcqs_through_the_mcq_loader(small_world, tmp_path):
    """The world's annotations are usable as they are: training records through the training dataset
    (features absent here, so zeros as upstream), MCQ files through the evaluation benchmarks."""
    from llavidal.data.dataset import LazySupervisedDataset
    from llavidal.eval.tasks import load_benchmark
    from llavidal.model.builder import build_model
    from llavidal.model.modality import ModalityRegistry
    from llavidal.testing import tiny_causal_lm_dir

    root, _ = small_world
    split = root / "annotations" / "cross_subject" / "train"
    registry = ModalityRegistry.default(video_dim=8, video_tokens=4, pose_dim=6, pose_tokens=3, object_dim=5)
    _, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), registry, template="chat")
    folders = {name: tmp_path / "features" / name for name in ("video", "pose", "object")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    records = json.loads((split / "records.json").read_text())
    dataset = LazySupervisedDataset(split / "records.json", tokenizer, registry,
                                    {k: str(v) for k, v in folders.items()}, template="chat", max_length=4096)
    assert len(dataset) == len(records) and sum(dataset.summary.dropped.values()) == 0
    item = dataset[0]
    assert (item["labels"] != -100).any() and set(item["modality_features"]) <= {"video", "pose", "object"}

    for name, file in (("adlmcq_action_recognition", "mcq_action_recognition.json"),
                       ("adlmcq_forecasting", "mcq_forecasting.json")):
        raw = json.loads((split / file).read_text())
        loaded = load_benchmark(name).load_records(split / file)
        assert len(loaded) == len(raw) > 0
        for record in loaded:
            assert record.answer_letter in record.choices and record.choices[record.answer_letter] == record.answer
