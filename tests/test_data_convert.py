"""Video-ChatGPT QA -> training records (upstream converter behaviour), through the script path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from llavidal.data.convert import main
from llavidal.data.feature_store import save_features, save_pickle_features

REPO = Path(__file__).resolve().parents[1]
QA = [
    {"video_id": "v_a", "q": "What is the person doing?", "a": "Drinking."},
    {"video_id": "v_b", "q": "Which hand?", "a": "The left hand."},
    {"video_id": "v_c", "q": "What happens next?", "a": "The person sits down."},
    {"video_id": 7, "q": "Which object?", "a": "A mug."},
]


def test_video_chatgpt_records_alternate_placeholder(tmp_path, capsys):
    source = tmp_path / "qa.json"
    source.write_text(json.dumps(QA))
    out = tmp_path / "train.json"
    assert main(["--input_json_file", str(source), "--output_json_file", str(out)]) == 0
    records = json.loads(out.read_text())
    assert records[0] == {
        "id": "v_a", "video": "v_a.pkl",
        "conversations": [{"from": "human", "value": "What is the person doing?\n<video>"},
                          {"from": "gpt", "value": "Drinking."}],
    }
    assert records[1]["conversations"][0]["value"] == "<video>\nWhich hand?"
    assert records[3]["id"] == "7" and records[3]["video"] == "7.pkl"
    assert "Total annotations retained: 4" in capsys.readouterr().out


def test_drops_ids_without_features_any_extension(tmp_path):
    features = tmp_path / "clip"
    features.mkdir()
    save_pickle_features(features / "v_a.pkl", np.zeros((2, 2), np.float16))
    save_features(features / "v_c.safetensors", np.zeros((2, 2), np.float16))
    source = tmp_path / "qa.json"
    source.write_text(json.dumps(QA))
    out = tmp_path / "train.json"
    assert main(["--input_json_file", str(source), "--output_json_file", str(out), "--clip_feature_path", str(features)]) == 0
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["v_a", "v_c"]
    # placeholder position follows the input index, as upstream
    assert records[1]["conversations"][0]["value"] == "What happens next?\n<video>"


def test_llavidal_records_with_pose_and_object_via_script(tmp_path):
    source = tmp_path / "qa.json"
    source.write_text(json.dumps(QA[:2]))
    out = tmp_path / "train.json"
    result = subprocess.run(
        [sys.executable, "scripts/convert_instruction_json_to_training_format.py", "--input_json_file", str(source),
         "--output_json_file", str(out), "--with_pose_object"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert records[0]["pose"] == "v_a_pose.pkl" and records[0]["object"] == "v_a_object.pkl"
    assert records[0]["conversations"][0]["value"] == "What is the person doing?\n<video><object><human_pose>"
    assert records[1]["conversations"][0]["value"] == "<video><object><human_pose>\nWhich hand?"


def test_bad_input_is_reported_with_its_position(tmp_path, capsys):
    source = tmp_path / "qa.json"
    source.write_text(json.dumps([{"video_id": "x", "q": "q"}]))
    assert main(["--input_json_file", str(source), "--output_json_file", str(tmp_path / "o.json")]) == 2
    assert "item 0 lacks a" in capsys.readouterr().err  # the command's one error line names the record
    assert main(["--input_json_file", str(tmp_path / "none.json"), "--output_json_file", str(tmp_path / "o.json")]) == 2
