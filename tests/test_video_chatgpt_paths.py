"""Video-ChatGPT's commands at its paths, typed as its README and scripts have them (paths changed, tiny sizes).

Train with ``video_chatgpt/train/train_mem.py`` under torchrun (2 ranks, gloo); answer ActivityNet-QA style
question + answer files with ``video_chatgpt/eval/run_inference.py`` on those weights, checking its
Video-ChatGPT prediction file; judge that file with ``evaluate_activitynet_qa.py --judge local``; and check
that the descriptions shell script fails when its judge is unreachable.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny_adl_data import VIDEO_DIM, VIDEO_TOKENS, make_records, write_features, write_records
from llavidal.eval.predictions import predictions_from_data, videochatgpt_rows
from llavidal.eval.records import RecordFormatError, load_records
from llavidal.testing import tiny_causal_lm_dir

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], expect: int = 0, env: dict | None = None) -> str:
    result = subprocess.run(command, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == expect, output[-6000:]
    return output


def videochatgpt_records(count: int) -> list[dict]:
    """Video-ChatGPT's training records: video only, ``<video>`` before or after the question."""
    records = make_records(count, multi_turn_every=0)
    for record in records:
        del record["pose"], record["object"]
        human = record["conversations"][0]
        human["value"] = human["value"].replace("<video><object><human_pose>", "<video>")
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Video-ChatGPT's README training command at video_chatgpt/train/train_mem.py, 2 ranks, a few steps."""
    root = tmp_path_factory.mktemp("vcgpt")
    llm = tiny_causal_lm_dir(root / "llm", initializer_range=0.2)
    records = videochatgpt_records(8)
    data = write_records(root / "video_chatgpt_training.json", records)
    features = write_features(root / "features", records, fmt="pickle", seed=1)["video"]
    output = root / "Video-ChatGPT_Finetuned"
    log = run([
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
        "video_chatgpt/train/train_mem.py",
        "--model_name_or_path", str(llm), "--version", "v1", "--data_path", str(data),
        "--video_folder", str(features), "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end",
        "--bf16", "True", "--output_dir", str(output), "--num_train_epochs", "3",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "steps",
        "--save_steps", "3000", "--save_total_limit", "3", "--learning_rate", "1e-1", "--weight_decay", "0.",
        "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--tf32", "True",
        "--model_max_length", "2048", "--gradient_checkpointing", "True", "--lazy_preprocess", "True",
        # tiny sizes and a short run
        "--video_tokens", str(VIDEO_TOKENS), "--video_feature_dim", str(VIDEO_DIM), "--max_steps", "3",
    ])
    return {"llm": llm, "weights": output, "features": features, "log": log}


@pytest.mark.timeout(400)
def test_train_mem_at_video_chatgpt_path_under_torchrun(trained):
    output, log = trained["weights"], trained["log"]
    assert "world size 2 (DistributedType.MULTI_CPU, backend gloo)" in log
    for name in ("trainable.safetensors", "llavidal_config.json", "trainer_state.json"):
        assert (output / name).is_file(), name
    config = json.loads((output / "llavidal_config.json").read_text())
    assert [m["name"] for m in config["modalities"]] == ["video"]  # only --video_folder was passed
    assert config["template"] == "v1" and config["freeze_llm"] is True
    state = json.loads((output / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]


@pytest.mark.timeout(400)
def test_run_inference_on_question_and_answer_files_then_judge(trained, tmp_path):
    # ActivityNet-QA's pair: questions {video_name, question, question_id}, answers {answer, type, question_id}.
    videos = sorted(p.stem for p in trained["features"].glob("*.pkl"))[:3] + ["clip_missing"]
    questions = [{"video_name": name, "question": f"is the person cooking in {name}?", "question_id": f"v_{name}_{i}"}
                 for i, name in enumerate(videos)]
    answers = [{"answer": "yes" if i % 2 else "no", "type": 3, "question_id": q["question_id"]}
               for i, q in enumerate(questions)]
    random.Random(0).shuffle(answers)  # joined by question_id, not by position
    (tmp_path / "test_q.json").write_text(json.dumps(questions))
    (tmp_path / "test_a.json").write_text(json.dumps(answers))
    out = tmp_path / "results"
    command = [
        sys.executable, "video_chatgpt/eval/run_inference.py", "--video_dir", str(trained["features"]),
        "--gt_file_question", str(tmp_path / "test_q.json"), "--gt_file_answers", str(tmp_path / "test_a.json"),
        "--output_dir", str(out), "--output_name", "activitynet_qa", "--model-name", str(trained["llm"]),
        "--projection_path", str(trained["weights"]), "--conv-mode", "video-chatgpt_v1",
        "--max_new_tokens", "4", "--device", "cpu",
    ]
    log = run(command)
    assert "1 missing features" in log  # clip_missing has no feature file: recorded, not generated
    rows = json.loads((out / "activitynet_qa.json").read_text())
    assert [set(row) for row in rows] == [{"id", "question", "answer", "pred"}] * 3  # Video-ChatGPT's fields
    assert [row["id"] for row in rows] == [q["question_id"] for q in questions[:3]]
    assert [row["answer"] for row in rows] == ["no", "yes", "no"]
    assert [row["question"] for row in rows] == [q["question"] for q in questions[:3]]
    assert all(isinstance(row["pred"], str) for row in rows)
    ours = [json.loads(line) for line in (out / "activitynet_qa.jsonl").read_text().splitlines()]
    assert {row["id"]: row["status"] for row in ours}["v_clip_missing_3"] == "missing_features"
    assert all(row["benchmark"] == "zeroshot_qa" for row in ours)

    # Upstream's zero-shot judge script on the Video-ChatGPT prediction file (offline judge).
    judged = tmp_path / "judged"
    log = run([sys.executable, "evaluation/quantitative_evaluation/evaluate_activitynet_qa.py",
               "--pred_path", str(out / "activitynet_qa.json"), "--output_dir", str(judged), "--judge", "local",
               "--output_json", str(tmp_path / "activitynet_qa_results.json")])
    result = json.loads((tmp_path / "activitynet_qa_results.json").read_text())
    block = result["criteria"]["zeroshot"]
    assert (block["judged"], block["total"], block["judge_failed"]) == (3, 3, 0), log
    assert (judged / "report.md").is_file()

    # A folder of videos (what upstream's --video_dir held) is refused, naming the extraction script.
    videos_dir = tmp_path / "videos"
    videos_dir.mkdir()
    (videos_dir / "clip_000.mp4").write_bytes(b"\0")
    command[command.index("--video_dir") + 1] = str(videos_dir)
    log = run(command, expect=2)
    assert "holds videos (clip_000.mp4)" in log and "scripts/save_spatio_temporal_clip_features.py" in log


def test_gt_file_rows_keep_the_benchmark_record(tmp_path):
    """--gt_file (benchmark general / consistency): Video-ChatGPT's rows are the ground-truth dict + pred."""
    general = [{"video_name": "v1", "Q": "What happens?", "A": "A person cooks."}]
    consistency = [{"video_name": "v2", "Q1": "What is made?", "Q2": "What does the person make?", "A": "Tea."}]
    (tmp_path / "generic.json").write_text(json.dumps(general))
    (tmp_path / "consistency.json").write_text(json.dumps(consistency))
    rows = []
    for name, outputs in (("generic", {"main": "cooking"}), ("consistency", {"main": "tea", "cons1": "tea",
                                                                            "cons2": "some tea"})):
        record = load_records(tmp_path / f"{name}.json", "open")[0]
        rows.append({"id": record.id, "status": "ok", "outputs": outputs, "record": record.to_dict()})
    written = videochatgpt_rows(predictions_from_data(rows, "open", "<rows>"))
    assert written == [
        {"video_name": "v1", "Q": "What happens?", "A": "A person cooks.", "pred": "cooking"},
        {"video_name": "v2", "Q1": "What is made?", "Q2": "What does the person make?", "A": "Tea.", "pred": "tea",
         "pred1": "tea", "pred2": "some tea"},
    ]


def test_question_answer_files_that_do_not_belong_together(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"video_name": "a", "question": "q?", "question_id": "a_0"}]))
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "yes", "question_id": "b_0"}]))
    with pytest.raises(RecordFormatError, match=r"have no answer in .*a\.json \(question_id a_0\)"):
        load_records(tmp_path / "q.json", "zeroshot", answers=tmp_path / "a.json")
    # no question_id: by position, as Video-ChatGPT does; lengths must agree
    (tmp_path / "q2.json").write_text(json.dumps([{"video_name": "a", "question": "q?"}] * 2))
    (tmp_path / "a2.json").write_text(json.dumps([{"answer": "yes"}]))
    with pytest.raises(RecordFormatError, match="2 questions and .* 1 answers"):
        load_records(tmp_path / "q2.json", "zeroshot", answers=tmp_path / "a2.json")


def test_activitynet_prediction_rows_without_a_video_field():
    """Video-ChatGPT's ActivityNet rows {id, question, answer, pred} and its judge's {video_name, Q, A, pred}."""
    data = [{"id": "v_x_0", "question": "is it red?", "answer": "no", "pred": "No."},
            {"video_name": "v_y", "Q": "what is held?", "A": "a cup", "pred": "A cup."}]
    first, second = predictions_from_data(data, "zeroshot", "anet.json")
    assert (first.id, first.record.video, first.record.question, first.record.answer, first.text) == (
        "v_x_0", "v_x_0", "is it red?", "no", "No.")
    assert (second.id, second.record.question, second.record.answer, second.text) == (
        "v_y", "what is held?", "a cup", "A cup.")


@pytest.mark.timeout(120)
def test_descriptions_script_fails_when_every_judgement_failed(tmp_path):
    predictions = [{"video_name": "a.mp4", "Q": "What happens?", "A": "A person drinks water.",
                    "pred": "Someone drinks.", "cons_Q1": "What?", "cons_Q2": "What is done?", "cons_A": "drinks",
                    "pred1": "drinks", "pred2": "drinks"}]
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    env = {**ENV, "PYTHON": sys.executable, "BASE_URL": "http://127.0.0.1:9/v1", "MAX_RETRIES": "0",
           "CACHE": str(tmp_path / "cache.sqlite"), "OPENAI_API_KEY": "unused"}
    log = run(["bash", "evaluation/ADL-Descriptions/eval/evaluate_all_benchmark_descriptions.sh",
               str(tmp_path / "pred.json"), str(tmp_path / "out"), "gpt-4o-2024-08-06", "--timeout", "5"],
              expect=1, env=env)
    assert "5 judgements failed" in log
    result = json.loads((tmp_path / "out" / "adl_descriptions_results.json").read_text())
    assert all(block["judge_failed"] == 1 and block["judged"] == 0 for block in result["criteria"].values())
    assert result["metrics"]["overall"] is None  # no score from failed judgements (never 0)


def test_scripts_at_video_chatgpt_paths_take_its_flags():
    """--help (answered from the argument dataclasses, without loading a model) lists upstream's flags
    (train_mem.py's are typed by the torchrun test)."""
    expected = {
        "video_chatgpt/eval/run_inference.py": ["--video_dir", "--gt_file_question", "--gt_file_answers", "--gt_file",
                                                "--output_dir", "--output_name", "--model-name", "--projection_path",
                                                "--conv_mode"],
        "video_chatgpt/eval/run_inference_activitynet_qa.py": ["--gt_file_question", "--gt_file_answers"],
        "video_chatgpt/demo/video_demo.py": ["--model_name", "--projection_path", "--vision_tower_name",
                                             "--conv_mode", "--host", "--port"],
    }
    for script, flags in expected.items():
        text = run([sys.executable, script, "--help"])
        missing = [flag for flag in flags if flag not in text]
        assert not missing, f"{script}: {missing}"
