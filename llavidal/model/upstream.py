"""Load LLaVA v1 checkpoints (LLaVA-7B-Lightening-v1-1, the upstream base) from a local folder as is.

Such a folder's ``config.json`` says ``model_type: "llava"`` and ``architectures:
["LlavaLlamaForCausalLM"]``: LLaVA v1's own layout, not transformers' ``llava`` class (which nests a
``text_config``). The weights are a LLaMA checkpoint (``model.*``, ``lm_head.weight``) plus
``model.mm_projector.*`` (the video projector) and sometimes ``model.vision_tower.*``, in
``pytorch_model-0000x-of-0000y.bin`` shards or safetensors. We build a ``LlamaConfig`` from its fields,
load the LLaMA weights into ``LlamaForCausalLM`` (no copied modeling code) and hand back the projector
weights so the video projector can start from them. Files and key layouts are read by
:mod:`llavidal.model.weights`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llavidal.model.weights import read_weights, split_llava_v1_state
from llavidal.utils.device import resolve_dtype

logger = logging.getLogger(__name__)

LLAVA_V1_ARCHITECTURES = {"LlavaLlamaForCausalLM", "LlavaLlamaModel"}
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_theta", "rope_scaling", "attention_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "head_dim", "mlp_bias",
)


def read_config_json(path: str | os.PathLike) -> dict[str, Any] | None:
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err


def is_llava_v1_folder(path: str | os.PathLike) -> bool:
    """True for a local folder holding a LLaVA v1 (``LlavaLlamaForCausalLM``) checkpoint."""
    config = read_config_json(path) if Path(path).is_dir() else None
    if not config:
        return False
    architectures = set(config.get("architectures") or [])
    if architectures & LLAVA_V1_ARCHITECTURES:
        return True
    # transformers' own llava nests the LLM in text_config; LLaVA v1 is flat with mm_* fields.
    return config.get("model_type") == "llava" and "text_config" not in config and "hidden_size" in config


def llama_config_from_llava(config: dict[str, Any]):
    """A ``LlamaConfig`` from the fields of a LLaVA v1 ``config.json`` (mm_* fields dropped)."""
    from transformers import LlamaConfig

    fields = {k: config[k] for k in _LLAMA_FIELDS if k in config and config[k] is not None}
    # LLaMA-1 era configs write pad_token_id -1 (meaning none).
    if isinstance(fields.get("pad_token_id"), int) and fields["pad_token_id"] < 0:
        fields.pop("pad_token_id")
    fields.setdefault("tie_word_embeddings", False)
    return LlamaConfig(**fields)


def load_llava_v1_state_dict(folder: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(LLaMA state dict, mm_projector state dict with the ``model.`` prefix removed) of a LLaVA v1 folder."""
    return split_llava_v1_state(read_weights(folder))


def load_llava_v1(
    path: str | os.PathLike, torch_dtype: Any = None, attn_implementation: str | None = None
) -> tuple[torch.nn.Module, Any, dict[str, Tensor], dict[str, Any]]:
    """Load a LLaVA v1 folder: (LlamaForCausalLM, tokenizer, mm_projector state, raw config dict).

    The projector state has keys ``mm_projector.weight`` / ``mm_projector.bias`` (or ``.0.``/``.2.``
    for an MLP). Missing LLaMA weights raise an error listing them.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(path)
    raw = read_config_json(folder) or {}
    llama_config = llama_config_from_llava(raw)
    dtype = resolve_dtype(torch_dtype, default=raw.get("torch_dtype") or raw.get("dtype") or "float32")
    llama_state, projector_state = load_llava_v1_state_dict(folder)

    with torch.device("meta"):
        expected = set(LlamaForCausalLM(llama_config).state_dict())
    missing = sorted(expected - set(llama_state))
    if llama_config.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    unexpected = sorted(set(llama_state) - expected)
    if missing:
        raise ValueError(
            f"{folder}: LLaVA v1 checkpoint lacks {len(missing)} LLaMA weight(s): {missing[:10]}; "
            "are all shards present?"
        )
    if unexpected:
        logger.warning("%s: ignoring %d unexpected weight(s): %s", folder, len(unexpected), unexpected[:10])
        for key in unexpected:
            llama_state.pop(key)

    kwargs: dict[str, Any] = {"config": llama_config, "state_dict": llama_state, "dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    llm = LlamaForCausalLM.from_pretrained(None, **kwargs)
    del llama_state

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), config=llama_config)
    except Exception as err:  # noqa: BLE001 - re-raised with the folder named
        raise ValueError(
            f"{folder}: could not load the tokenizer of this LLaVA checkpoint ({err}); it needs tokenizer.model "
            "or tokenizer.json with tokenizer_config.json"
        ) from err
    # Keep the config's special ids in line with the tokenizer (LLaMA-1 configs carry bos 0 / eos 1).
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            setattr(llm.config, attribute, value)
            if getattr(llm, "generation_config", None) is not None:
                setattr(llm.generation_config, attribute, value)
    return llm, tokenizer, projector_state, raw
