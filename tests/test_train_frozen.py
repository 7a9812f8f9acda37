"""A real (in-process, single-process) run of train.py: with the LLM frozen only the projectors and the
new token rows change; the length-grouped sampler takes lengths from the dataset."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures.tiny_adl_data import make_records, size_flags, write_features, write_records
from llavidal.model import builder
from llavidal.testing import tiny_causal_lm_dir
from llavidal.train import train as train_module

torch.set_num_threads(1)


@pytest.fixture()
def setup(tmp_path):
    llm = tiny_causal_lm_dir(tmp_path / "llm", initializer_range=0.2)
    records = make_records(6)
    data = write_records(tmp_path / "train.json", records)
    folders = write_features(tmp_path / "feats", records, fmt="safetensors")
    return llm, data, folders


def flags(llm, data, folders, output, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(llm), "--data_path", str(data), "--output_dir", str(output),
        "--video_folder", str(folders["video"]), "--pose_folder", str(folders["pose"]),
        "--object_folder", str(folders["object"]), "--per_device_train_batch_size", "2",
        "--learning_rate", "5e-2", "--weight_decay", "0.1", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "True", *size_flags(), *extra,
    ]


def test_frozen_llm_only_projectors_and_new_rows_change(setup, tmp_path, monkeypatch):
    llm, data, folders = setup
    captured = {}
    real_build = builder.build_model

    def build_and_keep(*args, **kwargs):
        model, tokenizer = real_build(*args, **kwargs)
        captured["model"] = model
        captured["before"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        return model, tokenizer

    monkeypatch.setattr(builder, "build_model", build_and_keep)
    output = tmp_path / "out"
    assert train_module.main(flags(llm, data, folders, output, "--tune_mm_mlp_adapter", "True", "--max_steps", "4",
                                   "--gradient_checkpointing", "True")) == 0

    model = captured["model"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), captured["before"][name])}
    assert changed, "nothing trained"
    assert all(name.startswith(("projectors.", "token_embeddings.")) for name in changed), sorted(changed)
    assert {name.split(".")[1] for name in changed if name.startswith("projectors.")} == {"video", "object", "pose"}
    assert {name for name in changed if name.startswith("token_embeddings.")} == {
        "token_embeddings.video", "token_embeddings.object", "token_embeddings.pose"}
    # the LLM (its embedding matrix included, so the original vocabulary rows too) is untouched
    assert not any(name.startswith("llm.") for name in changed)
    assert model.llm.get_input_embeddings().weight.requires_grad is False

    saved = json.loads((output / "llavidal_config.json").read_text())
    assert saved["freeze_llm"] is True and (output / "trainable.safetensors").is_file()
    losses = [json.loads(line)["loss"] for line in (output / "loss_history.jsonl").read_text().splitlines()]
    assert len(losses) == 4


def test_group_by_length_uses_dataset_lengths(setup, tmp_path, monkeypatch):
    llm, data, folders = setup
    seen = {}
    from llavidal.train.trainer import LlavidalTrainer

    real = LlavidalTrainer._get_train_sampler

    def spy(self, *args, **kwargs):
        sampler = real(self, *args, **kwargs)
        seen["sampler"] = sampler
        return sampler

    monkeypatch.setattr(LlavidalTrainer, "_get_train_sampler", spy)
    assert train_module.main(flags(llm, data, folders, tmp_path / "g", "--tune_mm_mlp_adapter", "True",
                                   "--max_steps", "1", "--group_by_length", "True")) == 0
    from transformers.trainer_pt_utils import LengthGroupedSampler

    assert isinstance(seen["sampler"], LengthGroupedSampler)
    assert len(seen["sampler"].lengths) == 6


def test_mm_projector_lr_keeps_a_projector_at_zero_and_gives_others_their_rate(setup, tmp_path, monkeypatch):
    """--mm_projector_lr object=0: the object projector stays as it started (an aligned one stays aligned), the
    other projectors train at --learning_rate; one value sets every projector's rate."""
    from llavidal.train.trainer import LlavidalTrainer

    llm, data, folders = setup
    captured = {}
    real_build, real_create = builder.build_model, LlavidalTrainer.create_optimizer

    def build_and_keep(*args, **kwargs):
        model, tokenizer = real_build(*args, **kwargs)
        captured["model"] = model
        captured["before"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        return model, tokenizer

    def create_and_keep(self, *args, **kwargs):
        optimizer = real_create(self, *args, **kwargs)
        captured["groups"] = [(g.get("projector"), g["lr"], len(g["params"])) for g in optimizer.param_groups]
        return optimizer

    monkeypatch.setattr(builder, "build_model", build_and_keep)
    monkeypatch.setattr(LlavidalTrainer, "create_optimizer", create_and_keep)
    assert train_module.main(flags(llm, data, folders, tmp_path / "out", "--tune_mm_mlp_adapter", "True",
                                   "--max_steps", "3", "--mm_projector_lr", "object=0")) == 0
    model = captured["model"]
    changed = {name.split(".")[1] for name, p in model.named_parameters()
               if name.startswith("projectors.") and not torch.equal(p.detach(), captured["before"][name])}
    assert changed == {"video", "pose"}
    rates = {projector: lr for projector, lr, _ in captured["groups"] if projector}
    assert rates == {"object": 0.0}
    assert sum(n for _, _, n in captured["groups"]) == sum(1 for p in model.parameters() if p.requires_grad)

    assert train_module.main(flags(llm, data, folders, tmp_path / "all", "--tune_mm_mlp_adapter", "True",
                                   "--max_steps", "1", "--mm_projector_lr", "1e-4")) == 0
    assert {projector: lr for projector, lr, _ in captured["groups"] if projector} == {
        "video": 1e-4, "pose": 1e-4, "object": 1e-4}
