"""The Breakfast fork's tools, typed as its users type them: the Q/A text converter, per-layer CLIP features
and the action-segmentation metrics (MoF, Edit, F1@{10,25,50} as MS-TCN computes them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo_helpers import make_video

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CONVERTER = "scripts/convert_instruction_txt_to_training_format_breakfast.py"
METRICS = "video_chatgpt/eval/metrics.py"

CEREALS_QA = """Q: What does the person do in frames 31-150?
A: The person takes a bowl.
Q: How many segments are there?
A: There are 3 segments:
the last one starts at frame 151.
"""
CEREALS_LABELS = "1-30 SIL  \n31-150 take_bowl\n151-400 pour_cereals\n"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _breakfast_folder(root: Path) -> Path:
    """person/camera/video.txt + .labels for P03 (two cameras) and P04 (listed in valid.txt)."""
    for camera in ("cam01", "webcam01"):
        folder = root / "P03" / camera
        folder.mkdir(parents=True)
        (folder / "P03_cereals.txt").write_text(CEREALS_QA)
        (folder / "P03_cereals.labels").write_text(CEREALS_LABELS)
    (root / "P04" / "cam01").mkdir(parents=True)
    (root / "P04" / "cam01" / "P04_tea.txt").write_text("Q: What is made?\nA: Tea.\n")
    (root / "P04" / "cam01" / "P04_tea.avi.labels").write_text("1-10 SIL\n11-100 pour_water\n")
    (root / "valid.txt").write_text("P04_tea\n")
    return root


# ---------------------------------------------------------------------------------------------------
# The converter


def test_breakfast_converter_on_a_nested_folder(tmp_path):
    qa = _breakfast_folder(tmp_path / "qa")
    out = tmp_path / "train.json"
    proc = _run(CONVERTER, "--input_json_file", str(qa), "--output_json_file", str(out), "--num_frames", "40")
    assert proc.returncode == 0, proc.stderr
    assert "32 records (24 segment lists, 8 from 4 Q/A pairs) from 2 videos" in proc.stdout
    assert "1 listed as validation videos" in proc.stdout
    records = json.loads(out.read_text())
    # per video (camera): 2 Q/A pairs x 2 copies + the segments question x 12 = 16; P04 is in valid.txt
    assert len(records) == 32
    ids = [record["id"] for record in records]
    assert ids == ["P03_cam01_P03_cereals"] * 16 + ["P03_webcam01_P03_cereals"] * 16
    assert all(record["video"] == f"{record['id']}.pkl" and set(record) == {"id", "video", "conversations"}
               for record in records)
    humans = [record["conversations"][0]["value"] for record in records]
    answers = [record["conversations"][1]["value"] for record in records]
    # <video> after the question at even positions, before it at odd ones (as llavidal convert writes)
    assert humans[0] == "What does the person do in frames 4-15?\n<video>"  # 31-150 of 400 frames -> 4-15 of 40
    assert humans[1] == "<video>\nWhat does the person do in frames 4-15?"
    assert answers[2] == "There are 3 segments:\nthe last one starts at frame 15."  # round(151 * 40 / 400)
    segments_question = "List down all the segments. action is cereals"
    assert humans.count(f"{segments_question}\n<video>") + humans.count(f"<video>\n{segments_question}") == 24
    # 1-30 -> round(0)+1 .. round(3) = 1-3; 31-150 -> 4-15; 151-400 -> 16-40: still consecutive, ends at 40
    assert answers[4:16] == ["1-3 SIL\n4-15 take_bowl\n16-40 pour_cereals"] * 12

    # The generic converter, given this folder, says what it wants and where to go.
    proc = _run("scripts/convert_instruction_json_to_training_format.py", "--input_json_file", str(qa),
                "--output_json_file", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    assert "is a folder; this converter wants a JSON file" in proc.stderr
    assert CONVERTER in proc.stderr and "does not exist" not in proc.stderr


def test_layout_repeat_and_valid_flags(tmp_path, capsys):
    from llavidal.data.breakfast import main

    qa = _breakfast_folder(tmp_path / "qa")
    out = tmp_path / "train.json"
    # Another layout: the camera folder matched by a wildcard, the id from the named fields only.
    assert main(["--input_json_file", str(qa), "--output_json_file", str(out), "--layout", "{person}/*/{video}.txt",
                 "--id_format", "{video}", "--repeat", "segments=3,default=1,how many=5", "--valid_file", "none",
                 "--no_rescale_frames"]) == 2
    # P03_cereals exists for two cameras: with only {video} as the id the converter refuses to merge them.
    assert "both give the id 'P03_cereals'" in capsys.readouterr().err

    assert main(["--input_json_file", str(qa), "--output_json_file", str(out), "--layout", "{person}/cam01/{video}.txt",
                 "--repeat", "segments=3,default=1,how many=5", "--valid_file", "none", "--no_rescale_frames"]) == 0
    records = json.loads(out.read_text())
    by_video: dict[str, list[str]] = {}
    for record in records:
        by_video.setdefault(record["id"], []).append(record["conversations"][0]["value"])
    # P03: 1 + 5 ("How many ...") + 3 segments; P04 (kept: --valid_file none): 1 + 3 segments
    assert {key: len(value) for key, value in by_video.items()} == {"P03_P03_cereals": 9, "P04_P04_tea": 4}
    assert records[-1]["conversations"][1]["value"] == "1-10 SIL\n11-100 pour_water"  # .avi.labels, not rescaled
    assert "frames 31-150" in records[0]["conversations"][0]["value"]


def test_converter_errors_name_the_file(tmp_path, capsys):
    from llavidal.data.breakfast import main

    qa = _breakfast_folder(tmp_path / "qa")
    (qa / "P03" / "cam01" / "P03_cereals.txt").write_text("A: an answer first\n")
    assert main(["--input_json_file", str(qa), "--output_json_file", str(tmp_path / "o.json")]) == 2
    assert "P03_cereals.txt:1: 'A:' before any 'Q:' line" in capsys.readouterr().err
    assert main(["--input_json_file", str(qa), "--output_json_file", str(tmp_path / "o.json"),
                 "--layout", "{video}.txt"]) == 2
    assert "no Q/A files match --layout '{video}.txt'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Per-layer features


def test_per_layer_extraction_matches_hidden_states_and_round_trips(tmp_path, capsys):
    import torch

    from llavidal.data.feature_store import FeatureManifest, load_feature_file
    from llavidal.features.decode import decode_video
    from llavidal.features.encoders import build_embedded_clip_model, load_vision_encoder
    from llavidal.features.extractor import Clip, extractor_from_manifest
    from llavidal.features.video import main

    videos = tmp_path / "videos"
    for camera in ("cam01", "cam02"):  # the same file name under each camera, as Breakfast
        make_video(videos / "P03" / camera / "P03_cereals.mp4", frames=6, size=32)
    out = tmp_path / "features"
    argv = ["--video_dir_path", str(videos), "--clip_feat_path", str(out), "--layers", "all", "--layer_token", "cls",
            "--num_frames", "8", "--format", "pickle", "--video_id", "path", "--workers", "0", "--progress", "False",
            "--device", "cpu"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*.pkl")) == ["P03_cam01_P03_cereals.pkl", "P03_cam02_P03_cereals.pkl"]
    features = load_feature_file(out / "P03_cam01_P03_cereals.pkl")
    # (T, L, D): 8 frame rows (6 decoded + 2 zero rows), the 4 hidden states of the 3-layer embedded encoder
    assert features.shape == (8, 4, 256) and features.dtype == np.float16
    assert not features[6:].any()

    encoder = load_vision_encoder("embedded", device="cpu")
    decoded = decode_video(videos / "P03" / "cam01" / "P03_cereals.mp4", 8, encoder.image_size, "pyav", threads=0)
    with torch.no_grad():
        states = build_embedded_clip_model()(pixel_values=encoder.preprocess(decoded.frames),
                                             output_hidden_states=True).hidden_states
    expected = torch.stack([state[:, 0] for state in states], dim=1).numpy()  # CLS of every hidden state, (6, 4, 256)
    np.testing.assert_allclose(features[:6].astype(np.float32), expected, atol=2e-3, rtol=2e-3)

    manifest = FeatureManifest.load(out)
    assert manifest.shape == [8, 4, 256] and manifest.recipe["layers"] == [0, 1, 2, 3]
    assert manifest.recipe["layer_token"] == "cls" and manifest.layer is None
    rebuilt = extractor_from_manifest(manifest, device="cpu")
    assert rebuilt.recipe.layers == [0, 1, 2, 3] and rebuilt.output_shape() == (8, 4, 256)
    again = rebuilt.extract(Clip(video=videos / "P03" / "cam01" / "P03_cereals.mp4")).features
    np.testing.assert_allclose(again, features.astype(np.float32), atol=1e-6)

    capsys.readouterr()
    assert main(argv) == 0  # a rerun finds both files valid (same recipe, shape and dtype) and skips them
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out


def test_layer_selection_and_mean_token():
    import torch

    from llavidal.features.encoders import build_embedded_clip_model, load_vision_encoder

    encoder = load_vision_encoder("embedded", device="cpu")
    assert encoder.resolve_layers("0,-1") == [0, 3] and encoder.resolve_layers("all") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="hidden state 9 does not exist"):
        encoder.resolve_layers("0,9")
    frames = (np.random.default_rng(0).random((2, 40, 40, 3)) * 255).astype(np.uint8)
    picked = encoder.encode_layers(frames, [0, 3], token="mean")
    with torch.no_grad():
        states = build_embedded_clip_model()(pixel_values=encoder.preprocess(frames), output_hidden_states=True).hidden_states
    expected = torch.stack([states[0][:, 1:].mean(1), states[3][:, 1:].mean(1)], dim=1)
    torch.testing.assert_close(picked, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.encode(frames), states[-2][:, 1:], atol=1e-5, rtol=1e-5)  # unchanged


# ---------------------------------------------------------------------------------------------------
# Metrics

# Video v1, 10 frames. truth AAAABBBCCC, prediction AAABBBBBCC.
#   MoF: frames 4 (A vs B) and 8 (C vs B) wrong -> 8 of 10 correct.
#   Segments (MS-TCN, 0-based, the last one ends at len-1 = 9):
#     truth A[0,4) B[4,7) C[7,9]   prediction A[0,3) B[3,8) C[8,9]
#   Edit: label sequences ABC vs ABC -> distance 0 -> 100.
#   IoU: A 3/4 = 0.75, B (7-4)/(8-3) = 0.6, C (9-8)/(9-7) = 0.5 -> at 0.10, 0.25 and 0.50: tp 3, fp 0, fn 0.
# Video v2, 10 frames. truth AAAAABBBBB, prediction AACCBBBBBB (and a line of chatter).
#   MoF: frames 3, 4 (C vs A) and 5 (B vs A) wrong -> 7 of 10.
#   Segments: truth A[0,5) B[5,9]; prediction A[0,2) C[2,4) B[4,9].
#   Edit: ACB vs AB -> distance 1 (delete C) -> (1 - 1/3) * 100 = 66.67.
#   IoU: A 2/5 = 0.4, C no true C -> 0, B (9-5)/(9-4) = 0.8.
#     at 0.10 and 0.25: tp 2 (A, B), fp 1 (C), fn 0; at 0.50: tp 1 (B), fp 2 (A, C), fn 1 (A).
# Over both: MoF = 15/20 = 75.0; Edit = (100 + 66.67) / 2 = 83.33;
#   F1@10 = F1@25: tp 5, fp 1, fn 0 -> P 5/6, R 1 -> 2PR/(P+R) = 10/11 = 90.91;
#   F1@50: tp 4, fp 2, fn 1 -> P 2/3, R 4/5 -> 2 * (8/15) / (22/15) = 8/11 = 72.73.
PREDICTIONS = [
    {"name": "v1", "truth": "1-4 A\n5-7 B\n8-10 C", "pred": "1-3 A\n4-8 B\n9-10 C"},
    {"name": "v2", "truth": "1-5 A\n6-10 B", "pred": "The segments are:\n1-2 A\n3-4 C\n5-10 B"},
]


def test_metrics_script_against_hand_computed_values(tmp_path):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    out = tmp_path / "metrics.json"
    proc = _run(METRICS, "--pred_path", str(predictions), "--output_json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "75.00    83.33    90.91    90.91    72.73" in proc.stdout
    result = json.loads(out.read_text())
    assert result["metrics"] == pytest.approx({"MoF": 75.0, "Edit": 250 / 3, "F1@10": 1000 / 11, "F1@25": 1000 / 11,
                                               "F1@50": 800 / 11})
    v2 = result["per_video"][1]
    assert v2["tp_fp_fn@50"] == [1, 2, 1] and v2["MoF"] == 70.0 and v2["unparsed_lines"] == 1


def test_metrics_background_labels_and_dot_labels_truth(tmp_path, capsys):
    from llavidal.eval.segmentation import edit_score, main

    # truth SIL SIL A A A vs prediction A A A A A: with SIL as background the segment sequences are
    # [A] and [A] (edit 100); MS-TCN's default (only "background" is background) compares [SIL, A] with [A]:
    # distance 1 of 2 -> 50.
    truth, predicted = ["SIL", "SIL", "A", "A", "A"], ["A"] * 5
    assert edit_score(predicted, truth, ["SIL"]) == 100.0 and edit_score(predicted, truth) == 50.0

    # Ground truth from a Breakfast .labels file (1-400), rescaled to the 40 rows the converter wrote.
    labels = tmp_path / "labels" / "P03" / "cam01"
    labels.mkdir(parents=True)
    (labels / "P03_cereals.labels").write_text(CEREALS_LABELS)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"name": "P03_cam01_P03_cereals",
                                       "pred": "1-3 SIL\n4-15 take_bowl\n16-40 pour_cereals"}) + "\n")
    assert main(["--pred_path", str(predictions), "--labels_dir", str(tmp_path / "labels"), "--num_frames", "40",
                 "--background", "SIL", "--output_json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics == {"MoF": 100.0, "Edit": 100.0, "F1@10": 100.0, "F1@25": 100.0, "F1@50": 100.0}

    # Every prediction unreadable: non-zero exit, said on stderr.
    predictions.write_text(json.dumps({"name": "P03_cam01_P03_cereals", "pred": "I cannot tell."}) + "\n")
    assert main(["--pred_path", str(predictions), "--labels_dir", str(tmp_path / "labels"), "--num_frames", "40"]) == 1
    assert "no row of" in capsys.readouterr().err
