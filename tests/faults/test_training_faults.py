"""Training faults found by fault injection (issue 19), each driven through the real CLI.

- NaN/Inf or integer features: skipped with a counted warning naming the file; an error with --strict_features
- a non-finite loss stops training with the step and the batch's sample ids; earlier checkpoints stay intact
- a half-written checkpoint (no trainer_state.json) is set aside; training resumes from the newest complete one
- non-UTF-8 training JSON and a corrupt trainable.safetensors: one-line errors naming the file
- loss_history.jsonl lists each step once after a resume
- shape warnings name the file actually read; truncated (overlong) samples are named
- kill -9 of the torchrun launcher: its worker exits within seconds instead of training on
- an adapter trained on features made another way: one warning per modality
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.tiny_adl_data import VIDEO_DIM, VIDEO_TOKENS, make_records, size_flags, write_features, write_records
from llavidal.cli import main
from llavidal.data.feature_store import FeatureManifest, save_features
from llavidal.testing import tiny_causal_lm_dir

REPO = Path(__file__).resolve().parents[2]

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("training_faults")
    llm = tiny_causal_lm_dir(root / "llm", initializer_range=0.2)
    records = make_records(6)
    data = write_records(root / "train.json", records)
    folders = write_features(root / "feats", records, fmt="safetensors")
    return {"root": root, "llm": llm, "records": records, "data": data, "video": folders["video"]}


def video_copy(tiny, tmp_path: Path) -> Path:
    folder = tmp_path / "video"
    shutil.copytree(tiny["video"], folder)
    return folder


def train(tiny, output: Path, *extra: str, video: Path | None = None, data: Path | None = None) -> int:
    return main([
        "train", "--model_name_or_path", str(tiny["llm"]), "--data_path", str(data or tiny["data"]),
        "--output_dir", str(output), "--video_folder", str(video or tiny["video"]),
        "--per_device_train_batch_size", "2", "--learning_rate", "5e-2", "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "True", "--tune_mm_mlp_adapter", "True", *size_flags(), *extra,
    ])


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def logged_steps(output: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output / "loss_history.jsonl").read_text().splitlines()]


def test_non_finite_and_integer_features_are_refused_naming_the_file(tiny, tmp_path, capfd):
    video = video_copy(tiny, tmp_path)
    with_nan = np.random.default_rng(0).standard_normal((VIDEO_TOKENS, VIDEO_DIM)).astype(np.float16)
    with_nan[2, 3] = np.nan
    save_features(video / "clip_001.safetensors", with_nan)
    save_features(video / "clip_004.safetensors", np.ones((VIDEO_TOKENS, VIDEO_DIM), dtype=np.int64))

    output = tmp_path / "out"
    assert train(tiny, output, "--max_steps", "3", "--save_strategy", "no", video=video) == 0
    err = capfd.readouterr().err
    assert f"{video / 'clip_001.safetensors'} (record clip_001): features hold 1 NaN" in err
    assert f"{video / 'clip_004.safetensors'} (record clip_004): features are of dtype int64" in err
    assert "bad_feature_values (replaced by the next sample) 2" in err  # the count at the end
    from llavidal.model.weights import read_weights

    assert all(torch.isfinite(t).all() for t in read_weights(output / "trainable.safetensors").values())

    assert train(tiny, tmp_path / "strict", "--max_steps", "3", "--save_strategy", "no", "--strict_features",
                 video=video) == 2
    err = capfd.readouterr().err
    assert "llavidal train: error:" in err and "(record clip_00" in err and "Traceback" not in err
    assert not (tmp_path / "strict" / "trainable.safetensors").exists()


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny, tmp_path, capfd):
    video = video_copy(tiny, tmp_path)
    output = tmp_path / "out"
    assert train(tiny, output, "--max_steps", "2", "--save_steps", "2", video=video) == 0
    before = digests(output)
    # Finite (so the feature check passes) but large enough to overflow inside the model: loss NaN.
    save_features(video / "clip_003.safetensors", np.full((VIDEO_TOKENS, VIDEO_DIM), 3e38, dtype=np.float32))
    capfd.readouterr()

    assert train(tiny, output, "--max_steps", "9", "--save_steps", "2", video=video) != 0
    err = capfd.readouterr().err
    line = next(line for line in err.splitlines() if "not finite" in line)
    step = int(line.split("step ", 1)[1].split(":", 1)[0])
    assert step >= 3 and "clip_003" in line and "the loss is nan" in line, line
    after = digests(output)
    assert all(after[name] == digest for name, digest in before.items() if name != "loss_history.jsonl")
    from llavidal.model.weights import read_weights

    for checkpoint in output.glob("checkpoint-*"):
        assert int(checkpoint.name.split("-")[1]) < step  # nothing saved from the bad state
        assert all(torch.isfinite(t).all() for t in read_weights(checkpoint / "trainable.safetensors").values())


def test_half_written_checkpoint_is_set_aside_and_training_resumes(tiny, tmp_path, capfd):
    output = tmp_path / "out"
    assert train(tiny, output, "--max_steps", "4", "--save_steps", "2") == 0
    (output / "checkpoint-4" / "trainer_state.json").unlink()  # as left by a kill during the save
    capfd.readouterr()

    assert train(tiny, output, "--max_steps", "6", "--save_steps", "2") == 0
    err = capfd.readouterr().err
    assert err.count("incomplete checkpoint") == 1
    assert f"{output / 'checkpoint-4'}: incomplete checkpoint (no trainer_state.json" in err
    assert f"resuming from checkpoint {output / 'checkpoint-2'}" in err
    assert (output / "incomplete-checkpoint-4" / "trainable.safetensors").is_file()  # kept, not deleted
    for step in (2, 4, 6):
        assert (output / f"checkpoint-{step}" / "trainer_state.json").is_file()
    state = json.loads((output / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]


def test_non_utf8_training_json_names_the_file(tiny, tmp_path, capfd):
    data = tmp_path / "latin1.json"
    data.write_bytes(tiny["data"].read_text().replace("The person drinks", "La personne b\u00e9it").encode("latin-1"))
    offset = data.read_bytes().index(b"\xe9")
    assert train(tiny, tmp_path / "out", "--max_steps", "1", data=data) == 2
    err = capfd.readouterr().err
    assert f"llavidal train: error: {data}: not UTF-8 text (byte {offset}" in err
    assert "re-save it as UTF-8" in err and "Traceback" not in err and "UnicodeDecodeError" not in err


def test_corrupt_trainable_safetensors_names_the_file(tiny, tmp_path, capfd):
    adapter = tmp_path / "adapter"
    assert train(tiny, adapter, "--max_steps", "1", "--save_strategy", "no") == 0
    weights = adapter / "trainable.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # header length: garbage ("header too large")
    capfd.readouterr()

    assert train(tiny, tmp_path / "out", "--max_steps", "1", "--pretrain_mm_mlp_adapter", str(adapter)) == 2
    err = capfd.readouterr().err
    assert f"llavidal train: error: {weights}: could not be read as safetensors" in err
    assert "re-run the training" in err and "Traceback" not in err
    from llavidal.serve.engine import InferenceEngine

    with pytest.raises(ValueError, match=f"{weights}: could not be read as safetensors"):
        InferenceEngine.from_pretrained(adapter, device="cpu")


def test_loss_history_lists_each_step_once_after_a_resume(tiny, tmp_path):
    output = tmp_path / "out"
    assert train(tiny, output, "--max_steps", "4", "--save_steps", "2") == 0
    assert logged_steps(output) == [1, 2, 3, 4]
    shutil.rmtree(output / "checkpoint-4")  # killed after logging steps 3-4, before their checkpoint
    assert train(tiny, output, "--max_steps", "4", "--save_steps", "2") == 0
    assert logged_steps(output) == [1, 2, 3, 4]


def test_shape_warning_names_the_file_read(tiny, tmp_path, capfd):
    video = video_copy(tiny, tmp_path)
    save_features(video / "clip_002.safetensors", np.zeros((VIDEO_TOKENS - 1, VIDEO_DIM), dtype=np.float16))
    assert train(tiny, tmp_path / "out", "--max_steps", "3", "--save_strategy", "no", video=video) == 0
    err = capfd.readouterr().err
    assert f"{video / 'clip_002.safetensors'} has shape (5, 16)" in err  # the record names clip_002.pkl
    assert "clip_002.pkl has shape" not in err


def test_truncated_samples_are_named(tiny, tmp_path, capfd):
    assert train(tiny, tmp_path / "out", "--max_steps", "1", "--save_strategy", "no", "--model_max_length", "110") == 0
    err = capfd.readouterr().err
    summary = next(line for line in err.splitlines() if "truncated to 110 tokens" in line)
    assert summary.strip().endswith("truncated to 110 tokens: 4 (clip_001, clip_002, clip_003, clip_005)"), summary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (whoever adopted it has not reaped it yet)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
@pytest.mark.timeout(240)
def test_kill_9_of_the_torchrun_launcher_stops_its_worker(tiny, tmp_path):
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(_free_port()),
        "-m", "llavidal.train.train", "--model_name_or_path", str(tiny["llm"]), "--data_path", str(tiny["data"]),
        "--output_dir", str(output), "--video_folder", str(tiny["video"]), "--per_device_train_batch_size", "2",
        "--learning_rate", "5e-2", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
        "--tune_mm_mlp_adapter", "True", "--max_steps", "100000", "--save_strategy", "no", *size_flags(),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "log.txt"
    workers: list[int] = []
    with open(log, "w") as handle:
        launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (output / "loss_history.jsonl").is_file():  # training is under way
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        workers = [int(pid) for pid in children]
        assert workers
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in workers), "the worker trains on after its launcher was killed"
        assert "the torchrun launcher" in log.read_text() and "is gone; this worker stops" in log.read_text()
    finally:
        if launcher.poll() is None:
            children_file = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
            workers += [int(pid) for pid in children_file.read_text().split()] if children_file.exists() else []
            launcher.kill()
            launcher.wait()
        for pid in workers:  # only the worker this test started
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_adapter_from_another_feature_recipe_warns(tiny, tmp_path, capfd):
    def folder_with_recipe(name: str, sha: str, frames: int) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny["video"], folder)
        FeatureManifest(modality="video", extractor="video", feature_dim=VIDEO_DIM, shape=[VIDEO_TOKENS, VIDEO_DIM],
                        model_id="clip", weights_sha256=sha * 64, frames=frames,
                        pooling="temporal=2 tokens, grid 2x2->2x2").save(folder)
        return folder

    made_one_way, made_another = folder_with_recipe("a", "a", 2), folder_with_recipe("b", "b", 4)
    adapter = tmp_path / "adapter"
    assert train(tiny, adapter, "--max_steps", "1", "--save_strategy", "no", video=made_one_way) == 0
    capfd.readouterr()

    assert train(tiny, tmp_path / "same", "--max_steps", "1", "--save_strategy", "no",
                 "--pretrain_mm_mlp_adapter", str(adapter), video=made_one_way) == 0
    assert "made differently" not in capfd.readouterr().err

    assert train(tiny, tmp_path / "other", "--max_steps", "1", "--save_strategy", "no",
                 "--pretrain_mm_mlp_adapter", str(adapter / "trainable.safetensors"), video=made_another) == 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if "made differently" in line]
    assert len(warnings) == 1, warnings
    assert "video projector" in warnings[0] and str(made_another) in warnings[0]
    assert "num_frames 4 instead of 2" in warnings[0] and "encoder weights (sha256) bbbbbbbbbbbb" in warnings[0]
