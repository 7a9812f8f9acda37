"""The upstream training command, paths changed and --nproc_per_node=2, under torchrun (gloo, CPU).

Runs on upstream pickles, resumes from the last checkpoint on safetensors features (same values), and
checks the loss goes down and the output folder holds the trainable weights and their config.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny_adl_data import make_records, size_flags, write_features, write_records
from llavidal.testing import tiny_causal_lm_dir

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upstream_command(llm: Path, data: Path, folders: dict[str, Path], output: Path, max_steps: int) -> list[str]:
    # UPSTREAM.md's command verbatim; only paths, sizes of the tiny fixtures and step counts changed.
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
        "llavidal/train/train_mem.py",
        "--version", "v1", "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "--bf16", "True",
        "--num_train_epochs", "3", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "steps",
        "--save_steps", "4", "--save_total_limit", "3", "--learning_rate", "1e-1", "--weight_decay", "0.",
        "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--tf32", "True",
        "--model_max_length", "2048", "--gradient_checkpointing", "True", "--lazy_preprocess", "True",
        "--output_dir", str(output), "--model_name_or_path", str(llm), "--data_path", str(data),
        "--video_folder", str(folders["video"]), "--pose_folder", str(folders["pose"]),
        "--object_folder", str(folders["object"]), "--max_steps", str(max_steps), *size_flags(),
    ]


def run(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.mark.timeout(400)
def test_upstream_command_under_torchrun_with_resume(tmp_path):
    llm = tiny_causal_lm_dir(tmp_path / "llm", initializer_range=0.2)
    records = make_records(8)
    data = write_records(tmp_path / "train.json", records)
    pickles = write_features(tmp_path / "pickles", records, fmt="pickle", seed=1)
    safetensors = write_features(tmp_path / "safetensors", records, fmt="safetensors", seed=1)  # same values
    assert next(pickles["video"].iterdir()).suffix == ".pkl"
    output = tmp_path / "run"

    first = run(upstream_command(llm, data, pickles, output, max_steps=12))
    assert first.count("no CUDA device: --bf16 True, --tf32 True ignored") == 1  # one warning, rank 0 only
    # really data-parallel (gradients all-reduced over gloo), not two ranks training alone
    assert "world size 2 (DistributedType.MULTI_CPU, backend gloo)" in first
    for name in ("trainable.safetensors", "llavidal_config.json", "trainer_state.json", "loss_history.jsonl"):
        assert (output / name).is_file(), name
    for step in (4, 8, 12):
        assert (output / f"checkpoint-{step}" / "trainable.safetensors").is_file()
        assert (output / f"checkpoint-{step}" / "llavidal_config.json").is_file()
    config = json.loads((output / "llavidal_config.json").read_text())
    assert [m["name"] for m in config["modalities"]] == ["video", "object", "pose"]
    assert config["template"] == "v1" and config["base_model"] == str(llm) and config["freeze_llm"] is True
    assert {m["name"]: m["feature_dim"] for m in config["modalities"]} == {"video": 16, "object": 10, "pose": 12}

    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 12
    assert losses[0] < 8.0, losses  # ~ln(vocab): the token count is gathered across ranks, not per rank
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses

    # Same command again with more steps (now on safetensors features): resumes from checkpoint-12.
    second = run(upstream_command(llm, data, safetensors, output, max_steps=16))
    assert f"resuming from checkpoint {output / 'checkpoint-12'}" in second
    state = json.loads((output / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, 17))  # history continued from step 12, not restarted
    assert (output / "checkpoint-16" / "trainable.safetensors").is_file()
