"""Faults that were already handled when the fault suite was written, kept here so that a regression shows.

Covered elsewhere in the default suite (not repeated, to keep CI short):
- kill -9 during video extraction, then a rerun completes: tests/test_extract_video.py::test_kill_9_then_rerun_completes
- kill -9 during pose extraction: tests/test_pose_extract.py::test_kill_mid_run_then_rerun_completes_with_valid_outputs
- kill -9 during judging, then the same report without repeating committed calls:
  tests/test_eval_killrerun.py
- API keys refused on the command line: tests/test_eval_cli.py::test_keys_on_the_command_line_are_refused
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures.tiny_adl_data import make_records, size_flags, write_features, write_records
from llavidal.cli import main
from llavidal.testing import tiny_causal_lm_dir


class _RunsACommand:
    """A pickle payload that would create ``marker`` if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_known_good")
    llm = tiny_causal_lm_dir(root / "llm", initializer_range=0.2)
    records = make_records(6)
    data = write_records(root / "train.json", records)
    folders = write_features(root / "feats", records, fmt="safetensors")
    return {"root": root, "llm": llm, "records": records, "data": data, "folders": folders}


def train_flags(tiny, output: Path, *extra: str, video_folder: Path | None = None) -> list[str]:
    return [
        "--model_name_or_path", str(tiny["llm"]), "--data_path", str(tiny["data"]), "--output_dir", str(output),
        "--video_folder", str(video_folder or tiny["folders"]["video"]), "--per_device_train_batch_size", "2",
        "--learning_rate", "5e-2", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
        "--tune_mm_mlp_adapter", "True", "--dataloader_num_workers", "0", *size_flags(), *extra,
    ]


def test_kill_9_during_training_then_rerun_resumes(tiny, tmp_path):
    """A training process killed after a checkpoint resumes from it and ends with every step logged once."""
    output = tmp_path / "run"
    flags = train_flags(tiny, output, "--max_steps", "400", "--save_steps", "2", "--save_strategy", "steps")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "llavidal.cli", "train", *flags], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (output / "checkpoint-4" / "trainer_state.json").is_file():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint-4 within 120 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (output / "trainable.safetensors").exists()  # killed before the end
    torch.set_num_threads(1)
    assert main(["train", *train_flags(tiny, output, "--max_steps", "8", "--save_steps", "2",
                                       "--save_strategy", "steps")]) == 0
    state = json.loads((output / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, 9))
    assert (output / "trainable.safetensors").is_file()


def test_malicious_pickle_as_features_is_refused_and_never_run(tiny, tmp_path, capsys):
    folder = tmp_path / "video"
    folder.mkdir()
    marker = tmp_path / "features_ran"
    for record in tiny["records"]:
        (folder / Path(record["video"]).with_suffix(".pkl").name).write_bytes(pickle.dumps(_RunsACommand(marker)))
    code = main(["train", *train_flags(tiny, tmp_path / "out", "--max_steps", "1", "--strict_features", "True",
                                       video_folder=folder)])
    assert code != 0 and not marker.exists()
    assert "refused" in capsys.readouterr().err


def test_malicious_pickle_as_adapter_is_refused_and_never_run(tiny, tmp_path, capsys):
    marker = tmp_path / "adapter_ran"
    adapter = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.weight": _RunsACommand(marker)}, adapter)
    code = main(["train", *train_flags(tiny, tmp_path / "out", "--max_steps", "1",
                                       "--pretrain_mm_mlp_adapter", str(adapter))])
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert str(adapter) in err


def test_malicious_pickle_as_weights_is_refused_and_never_run(tiny, tmp_path, capsys):
    """Trained weights whose projector file is a pickle that runs code: evaluation refuses to load them."""
    weights = tmp_path / "weights"
    assert main(["train", *train_flags(tiny, weights, "--max_steps", "1", "--save_strategy", "no")]) == 0
    (weights / "trainable.safetensors").unlink()
    marker = tmp_path / "weights_ran"
    torch.save({"projectors.video.weight": _RunsACommand(marker)}, weights / "mm_projector.bin")
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"id": "v0", "video": "v0.mp4", "question": "What?", "answer": "A",
                                    "choices": {"A": "sit", "B": "stand"}, "answer_letter": "A"}]))
    code = main(["eval", "infer", "--benchmark", "adlmcq_action_recognition", "--records", str(records),
                 "--weights", str(weights), "--video_folder", str(tiny["folders"]["video"]),
                 "--output", str(tmp_path / "preds.jsonl"), "--device", "cpu"])
    assert code != 0 and not marker.exists()
    assert "mm_projector.bin" in capsys.readouterr().err


def test_api_key_is_never_written(tmp_path, monkeypatch):
    """A judged run with the key in the environment: no file it writes (results, cache, report) holds it."""
    pytest.importorskip("openai")
    from fake_openai_server import PROXY_VARIABLES, FakeOpenAIServer

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    secret = "sk-fault-suite-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    predictions = tmp_path / "preds.jsonl"
    from llavidal.eval.records import EvalRecord

    rows = []
    for i in range(3):
        record = EvalRecord(id=f"v{i}", video=f"v{i}.mp4", question="Describe.", answer="The person drinks.",
                            consistency_questions=["What happens?", "What is done?"])
        text = f"[[score={i % 5}]] answer"
        rows.append({"id": record.id, "status": "ok", "prediction": text, "record": record.to_dict(),
                     "outputs": {"main": text, "cons1": text, "cons2": text}})
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with FakeOpenAIServer() as server:
        code = main(["eval", "judge", "descriptions", "--pred_path", str(predictions), "--judge_model",
                     "judge-2024-01-01", "--base_url", server.url, "--cache", str(tmp_path / "cache.sqlite"),
                     "--output_dir", str(tmp_path / "out")])
    assert code in (0, 1)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 3
    assert not any(secret.encode() in p.read_bytes() for p in written)
