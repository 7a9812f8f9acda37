"""Load LLaVA v1 checkpoints (LLaVA-7B-Lightening-v1-1, the upstream base) from a local folder as is.

Such a folder's ``config.json`` says ``model_type: "llava"`` and ``architectures:
["LlavaLlamaForCausalLM"]``: LLaVA v1's own layout, not transformers' ``llava`` class (which nests a
``text_config``). The weights are a LLaMA checkpoint (``model.*``, ``lm_head.weight``) plus
``model.mm_projector.*`` (the video projector) and sometimes ``model.vision_tower.*``, in
``pytorch_model-0000x-of-0000y.bin`` shards or safetensors. We build a ``LlamaConfig`` from its fields,
load the LLaMA weights into ``LlamaForCausalLM`` (no copied modeling code) and hand back the projector
weights so the video projector can start from them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

LLAVA_V1_ARCHITECTURES = {"LlavaLlamaForCausalLM", "LlavaLlamaModel"}
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_theta", "rope_scaling", "attention_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "head_dim", "mlp_bias",
)
_DROPPED_PREFIXES = ("model.vision_tower.", "model.vision_tower", "vision_tower.")


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


def weight_files(folder: Path) -> list[Path]:
    """Weight files of a model folder: from an index .json, else model*.safetensors / pytorch_model*.bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = sorted({folder / name for name in weight_map.values()})
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise FileNotFoundError(f"{index}: lists shard(s) that are not in the folder: {absent}")
            return files
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(
        f"{folder}: no weights found (model*.safetensors, pytorch_model*.bin or an index .json); "
        "is this the LLaVA checkpoint folder?"
    )


def read_weight_file(file: Path) -> dict[str, Tensor]:
    """One safetensors or torch (``weights_only=True``) weight file, on CPU."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) torch files cannot be memory-mapped.
        return torch.load(file, map_location="cpu", weights_only=True)


def load_llava_v1_state_dict(folder: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(LLaMA state dict, mm_projector state dict with the ``model.`` prefix removed) of a LLaVA v1 folder."""
    folder = Path(folder)
    llama_state: dict[str, Tensor] = {}
    projector_state: dict[str, Tensor] = {}
    for file in weight_files(folder):
        for key, value in read_weight_file(file).items():
            if key.startswith("model.mm_projector") or key.startswith("mm_projector"):
                projector_state[key[len("model."):] if key.startswith("model.") else key] = value
            elif key.startswith(_DROPPED_PREFIXES) or key.endswith("rotary_emb.inv_freq"):
                continue  # vision tower weights (we read features) and recomputed rotary buffers
            else:
                llama_state[key] = value
    return llama_state, projector_state


def _resolve_dtype(torch_dtype: Any, config: dict[str, Any]) -> torch.dtype:
    value = torch_dtype if torch_dtype is not None else config.get("torch_dtype") or config.get("dtype") or "float32"
    if isinstance(value, torch.dtype):
        return value
    if value == "auto":
        value = config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(value).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {value!r}")
    return dtype


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
    dtype = _resolve_dtype(torch_dtype, raw)
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
