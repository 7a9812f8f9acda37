"""What trains: frozen LLM (only projectors + new token rows move, even under weight decay), LoRA,
zero-gradient touch of absent modalities, gradient checkpointing with a frozen LLM."""

from __future__ import annotations

import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.model.config import LoraSettings
from llavidal.model.llavidal_model import LlavidalModel
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.testing import tiny_config, tiny_tokenizer

torch.set_num_threads(1)


def build(tie: bool = False, lora: LoraSettings | None = None, freeze_llm: bool = True):
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=len(tokenizer), tie_word_embeddings=tie)
    llm = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    registry = ModalityRegistry.default(video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4, object_dim=10)
    model = LlavidalModel(llm, tokenizer, registry)
    model.setup_training(freeze_llm=freeze_llm, lora=lora)
    return model, tokenizer


def video_batch(tokenizer, with_pose: bool = False):
    registry = ModalityRegistry.default(video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4, object_dim=10)
    rows = {"video": 6, **({"pose": 4} if with_pose else {})}
    text = expand_placeholders("Describe it.\n<video><human_pose> The person drinks from a mug.", registry, rows)
    input_ids = tokenizer([text, text], return_tensors="pt").input_ids
    labels = input_ids.clone()
    labels[:, :10] = IGNORE_INDEX
    features = {"video": [torch.randn(6, 16), torch.randn(6, 16)]}
    if with_pose:
        features["pose"] = [torch.randn(4, 12), None]
        features["pose"][1] = torch.randn(4, 12)
    return input_ids, labels, features


def train_steps(model, tokenizer, steps: int = 3):
    input_ids, labels, features = video_batch(tokenizer, with_pose=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        loss = model(input_ids, labels=labels, modality_features=features).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def changed_parameters(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_frozen_llm_only_projectors_and_new_rows_change(tie):
    model, tokenizer = build(tie=tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, tokenizer)
    changed = changed_parameters(model, before)
    assert changed, "nothing trained"
    assert all(name.startswith(("projectors.", "token_embeddings.")) for name in changed), sorted(changed)
    # The projectors that saw data and the start/end rows moved; the LLM (all its rows) did not.
    assert {"projectors.video.weight", "projectors.pose.weight", "token_embeddings.video"} <= changed
    start_end = before["token_embeddings.video"][1:]
    assert not torch.equal(start_end, model.token_embeddings["video"].detach()[1:])
    assert not any(name.startswith("llm.") for name in changed)


def test_lora_only_adapters_projectors_and_new_rows_change():
    model, tokenizer = build(lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # peft starts B at zero; make the adapters active so both matrices train
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, tokenizer)
    changed = changed_parameters(model, before)
    lora_changed = {n for n in changed if "lora_" in n}
    assert lora_changed, "LoRA adapters did not train"
    others = changed - lora_changed
    assert all(name.startswith(("projectors.", "token_embeddings.")) for name in others), sorted(others)


def test_full_finetune_trains_llm():
    model, tokenizer = build(freeze_llm=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, tokenizer, steps=1)
    assert any(name.startswith("llm.") for name in changed_parameters(model, before))


def test_absent_modality_projector_gets_zero_gradient():
    model, tokenizer = build()
    input_ids, labels, features = video_batch(tokenizer, with_pose=False)  # no pose, no object in the batch
    model.train()
    model(input_ids, labels=labels, modality_features=features).loss.backward()
    for name in ("pose", "object"):
        for param in model.projectors[name].parameters():
            assert param.grad is not None, f"{name} projector has no gradient (DDP would hang)"
            assert torch.count_nonzero(param.grad) == 0
    assert torch.count_nonzero(model.projectors["video"].weight.grad) > 0


def test_gradient_checkpointing_with_frozen_llm():
    model, tokenizer = build()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    input_ids, labels, features = video_batch(tokenizer)
    model.train()
    model(input_ids, labels=labels, modality_features=features).loss.backward()
    assert torch.count_nonzero(model.projectors["video"].weight.grad) > 0
    assert torch.count_nonzero(model.token_embeddings["video"].grad) > 0
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
