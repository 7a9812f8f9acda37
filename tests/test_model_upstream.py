"""The upstream base (LLaVA-7B-Lightening-v1-1 layout) loads from a local folder as is.

We build a tiny folder of that shape: LLaVA v1 config.json (model_type "llava",
LlavaLlamaForCausalLM, mm_* fields, pad_token_id -1), LLaMA weights with ``model.`` keys plus
``model.mm_projector.*`` (and a vision-tower and rotary buffer key to be dropped) in two
``pytorch_model-0000x-of-00002.bin`` shards with an index, and a tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llavidal.model.builder import build_model
from llavidal.model.modality import ModalityRegistry
from llavidal.model.upstream import is_llava_v1_folder, load_llava_v1
from llavidal.testing import tiny_config, tiny_tokenizer

torch.set_num_threads(1)

MM_HIDDEN = 16


def make_llava_v1_folder(folder: Path):
    from transformers import LlamaForCausalLM

    folder.mkdir(parents=True)
    tokenizer = tiny_tokenizer()
    config = tiny_config("llama", vocab_size=len(tokenizer))
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    hidden = config.hidden_size
    state["model.mm_projector.weight"] = torch.randn(hidden, MM_HIDDEN)
    state["model.mm_projector.bias"] = torch.randn(hidden)
    state["model.vision_tower.dummy.weight"] = torch.zeros(2)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(4)
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        torch.save({k: state[k] for k in shard_keys}, folder / name)
        weight_map.update({k: name for k in shard_keys})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    llava_config = {
        "_name_or_path": "LLaVA-7B-Lightening-v1-1", "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava", "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1,
        "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": config.intermediate_size,
        "initializer_range": 0.02, "max_position_embeddings": 2048, "max_sequence_length": 2048,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "num_hidden_layers": config.num_hidden_layers, "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.28.0.dev0",
        "use_cache": True, "vocab_size": len(tokenizer), "mm_hidden_size": MM_HIDDEN, "mm_use_im_start_end": True,
        "mm_vision_select_layer": -2, "mm_vision_tower": "openai/clip-vit-large-patch14", "use_mm_proj": True,
        "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "sep_image_conv_front": False,
    }
    (folder / "config.json").write_text(json.dumps(llava_config, indent=2))
    tokenizer.save_pretrained(folder)
    return reference, state


def test_llava_v1_folder_loads_with_equal_logits(tmp_path):
    folder = tmp_path / "LLaVA-7B-Lightening-v1-1"
    reference, state = make_llava_v1_folder(folder)
    assert is_llava_v1_folder(folder)
    llm, tokenizer, projector_state, _ = load_llava_v1(folder)
    assert type(llm).__name__ == "LlamaForCausalLM"
    assert set(projector_state) == {"mm_projector.weight", "mm_projector.bias"}
    input_ids = torch.randint(0, len(tokenizer), (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(llm(input_ids).logits, reference(input_ids).logits, atol=0, rtol=0)
    assert llm.config.eos_token_id == tokenizer.eos_token_id

    # Through the builder: the video projector starts from the checkpoint's mm_projector.
    registry = ModalityRegistry.default(["video", "pose"], video_dim=MM_HIDDEN, video_tokens=6, pose_dim=12,
                                        pose_tokens=4)
    model, tokenizer = build_model(folder, registry)
    torch.testing.assert_close(model.projectors["video"].weight, state["model.mm_projector.weight"])
    with torch.no_grad():
        ours = model(input_ids).logits[..., : reference.config.vocab_size]
        torch.testing.assert_close(ours, reference(input_ids).logits, atol=1e-6, rtol=1e-6)


def test_missing_shard_is_named(tmp_path):
    folder = tmp_path / "llava"
    make_llava_v1_folder(folder)
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        load_llava_v1(folder)
