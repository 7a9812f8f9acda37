"""Video, image and text-only instruction data in one training run under torchrun (2 ranks, gloo, CPU): a file
that mixes the three kinds of records plus image-only and text-only files, with sampling weights
(``--data_mixture``); per-source counts are logged at the start and both ranks train the same table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny_adl_data import (
    VIDEO_DIM,
    VIDEO_TOKENS,
    make_records,
    write_features,
    write_records,
)
from test_train_torchrun import free_port

from llavidal.data.feature_store import FeatureManifest, save_features
from llavidal.testing import tiny_causal_lm_dir

REPO = Path(__file__).resolve().parents[1]


def image_records(stems, question="What is on the table?", answer="A red mug.") -> list[dict]:
    return [{"id": stem, "image": f"{stem}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]} for stem in stems]


def text_records(count: int) -> list[dict]:
    return [{"id": f"text_{i}", "conversations": [
        {"from": "human", "value": f"Which room has the kettle, number {i}?"}, {"from": "gpt", "value": "The kitchen."}]}
        for i in range(count)]


def write_image_features(folder: Path, stems, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        save_features(folder / f"{stem}.safetensors", rng.standard_normal((VIDEO_TOKENS, VIDEO_DIM)).astype(np.float16))
    FeatureManifest(modality="video", extractor="tests.random", feature_dim=VIDEO_DIM, shape=[VIDEO_TOKENS, VIDEO_DIM],
                    frames=1, extra={"source": "image"}).save(folder)
    return folder


@pytest.mark.timeout(300)
def test_mixed_video_image_text_data_trains_under_torchrun(tmp_path):
    llm = tiny_causal_lm_dir(tmp_path / "llm", initializer_range=0.2)
    videos = make_records(4, multi_turn_every=0)
    video_folder = write_features(tmp_path / "feats", videos, fmt="safetensors")["video"]
    image_folder = write_image_features(tmp_path / "images", [f"img_{i}" for i in range(4)], seed=1)
    coco_folder = write_image_features(tmp_path / "coco", [f"coco_{i}" for i in range(6)], seed=2)
    mixed = write_records(tmp_path / "mixed.json", videos + image_records([f"img_{i}" for i in range(4)]) + text_records(4))
    images = write_records(tmp_path / "coco.json", image_records([f"coco_{i}" for i in range(6)], "What is this?", "A chair."))
    text = write_records(tmp_path / "text.json", text_records(3))
    output = tmp_path / "run"
    mixture = f"{mixed}:1,{images}:0.5:image={coco_folder},{text}:2"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
        "llavidal/train/train_mem.py", "--version", "v1", "--tune_mm_mlp_adapter", "True",
        "--model_name_or_path", str(llm), "--data_mixture", mixture, "--video_folder", str(video_folder),
        "--image_folder", str(image_folder), "--video_tokens", str(VIDEO_TOKENS), "--video_feature_dim", str(VIDEO_DIM),
        "--per_device_train_batch_size", "2", "--max_steps", "3", "--learning_rate", "1e-2", "--logging_steps", "1",
        "--save_strategy", "no", "--seed", "3", "--output_dir", str(output),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    assert "world size 2 (DistributedType.MULTI_CPU, backend gloo)" in log
    # the DDP model is gone before the process group is destroyed (else its reducer's deallocation could join
    # gloo's threads with the GIL held and hang a rank after saving, about one run in ten)
    assert "outlived training" not in log
    # per-source counts at the start (rank 0 only): each file, its weight, and the epoch's totals
    assert log.count("data mixture: 21 samples per epoch from 3 files") == 1
    assert f"{mixed}: 12 usable samples (video 4, image 4, text 4) x 1 -> 12 per epoch" in log
    assert f"{images}: 6 usable samples (image 6) x 0.5 -> 3 per epoch" in log
    assert f"{text}: 3 usable samples (text 3) x 2 -> 6 per epoch" in log
    assert "per source this epoch: video 4, image 7, text 10" in log
    assert "sources: video 4, image 4, text 4" in log  # the mixed file's own summary

    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert (output / "trainable.safetensors").is_file()
    config = json.loads((output / "llavidal_config.json").read_text())
    assert [m["name"] for m in config["modalities"]] == ["video"]
    assert config["extra"]["data_path"] == mixture
