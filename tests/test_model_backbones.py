"""Every supported backbone family builds through build_model and runs forward/backward/generate."""

from __future__ import annotations

import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.model.builder import best_attn_implementation, build_model
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.testing import tiny_causal_lm_dir

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_backbone_builds_and_runs(tmp_path, arch):
    base = tiny_causal_lm_dir(tmp_path / arch, arch, tie_word_embeddings=arch == "qwen2")
    registry = ModalityRegistry.default(["video", "pose"], video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4)
    model, tokenizer = build_model(base, registry, attn_implementation="sdpa", torch_dtype="float32")
    assert model.config.llm_model_type == arch
    assert model.llm.config._attn_implementation == "sdpa"
    text = expand_placeholders("What is the person doing?\n<video><human_pose>", registry, {"video": 6, "pose": 4})
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    features = {"video": [torch.randn(6, 16)], "pose": [torch.randn(4, 12)]}
    labels = input_ids.clone()
    labels[:, :-3] = IGNORE_INDEX
    out = model(input_ids, labels=labels, modality_features=features)
    assert out.logits.shape == (1, input_ids.shape[1], model.llm.get_input_embeddings().weight.shape[0])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projectors["pose"].weight.grad is not None
    new = model.generate(input_ids, modality_features=features, max_new_tokens=3, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 3


def test_best_attn_implementation_on_cpu():
    assert best_attn_implementation("cpu") == "sdpa"
