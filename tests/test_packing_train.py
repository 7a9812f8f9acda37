"""train.py with --packing True: runs end to end and follows the padded run step for step (same samples,
same objective), with gradient accumulation and the length-grouped sampler of the padded path."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.tiny_adl_data import (
    make_records,
    size_flags,
    write_features,
    write_records,
)
from transformers import set_seed

from llavidal.data.packing import VARLEN_SDPA, PackingCollator
from llavidal.model import builder
from llavidal.testing import tiny_causal_lm_dir
from llavidal.train import train as train_module

torch.set_num_threads(1)


@pytest.fixture()
def setup(tmp_path):
    llm = tiny_causal_lm_dir(tmp_path / "llm", initializer_range=0.2)
    records = make_records(8)
    data = write_records(tmp_path / "train.json", records)
    folders = write_features(tmp_path / "feats", records, fmt="safetensors")
    return llm, data, folders


def flags(llm, data, folders, output, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(llm), "--data_path", str(data), "--output_dir", str(output),
        "--video_folder", str(folders["video"]), "--pose_folder", str(folders["pose"]),
        "--object_folder", str(folders["object"]), "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--max_steps", "3", "--learning_rate", "1e-2",
        "--torch_dtype", "float32", "--attn_implementation", "sdpa", "--tune_mm_mlp_adapter", "True",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True",
        "--seed", "3", *size_flags(), *extra,
    ]


def losses(output) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "loss_history.jsonl").read_text().splitlines()]


def test_packing_follows_the_padded_run(setup, tmp_path, monkeypatch):
    llm, data, folders = setup
    built = {}
    real_build = builder.build_model

    def build_and_keep(*args, **kwargs):
        model, tokenizer = real_build(*args, **kwargs)
        built["model"] = model
        return model, tokenizer

    monkeypatch.setattr(builder, "build_model", build_and_keep)
    seen = {}
    real_call = PackingCollator.__call__

    def spy(self, items):
        batch = real_call(self, items)
        seen.setdefault("shapes", []).append(tuple(batch["input_ids"].shape))
        seen["padding_free"] = self.padding_free
        return batch

    monkeypatch.setattr(PackingCollator, "__call__", spy)

    padded_out, packed_out = tmp_path / "padded", tmp_path / "packed"
    # train.py builds the model before the Trainer seeds anything: seed the projector init here.
    set_seed(3)
    assert train_module.main(flags(llm, data, folders, padded_out)) == 0
    set_seed(3)
    assert train_module.main(flags(llm, data, folders, packed_out, "--packing", "True")) == 0

    assert built["model"].llm.config._attn_implementation == VARLEN_SDPA
    assert seen["padding_free"] and seen["shapes"] and all(rows == 1 for rows, _ in seen["shapes"])
    assert (packed_out / "trainable.safetensors").is_file()
    padded, packed = losses(padded_out), losses(packed_out)
    assert len(packed) == 3
    assert packed == pytest.approx(padded, rel=1e-4, abs=1e-5)


def test_packing_with_row_budget_and_group_by_length(setup, tmp_path):
    llm, data, folders = setup
    output = tmp_path / "rows"
    argv = flags(llm, data, folders, output, "--packing", "True", "--packing_max_length", "64",
                 "--group_by_length", "True")
    assert train_module.main(argv) == 0
    assert len(losses(output)) == 3
