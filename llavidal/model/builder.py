"""Build a :class:`LlavidalModel` around a base LLM, or rebuild one from saved weights.

    model, tokenizer = build_model("path/to/llm", ModalityRegistry.default(["video", "pose"]))
    model, tokenizer = load_pretrained("runs/stage3")  # reads llavidal_config.json

The base may be any transformers causal LM folder (or hub id when a hub is reachable) or an upstream
LLaVA v1 folder (``LlavaLlamaForCausalLM``, see :mod:`llavidal.model.upstream`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from llavidal.model.config import LlavidalConfig, LoraSettings
from llavidal.model.llavidal_model import LlavidalModel
from llavidal.model.modality import ModalityRegistry
from llavidal.model.upstream import is_llava_v1_folder, load_llava_v1
from llavidal.model.weights import canonicalize
from llavidal.utils.device import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


def best_attn_implementation(device: str | torch.device | None = None, torch_dtype: Any = None) -> str:
    """The fastest EXACT attention available: flash_attention_2, else sdpa, else eager.

    flash_attention_2 needs the ``flash_attn`` package, a CUDA device and a 16-bit dtype (``torch_dtype``;
    when not given, bf16 support of the device is assumed to be what training will use).
    """
    device = resolve_device(device)
    dtype = resolve_dtype(torch_dtype, default=None)
    if device.type == "cuda" and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        if isinstance(dtype, torch.dtype):
            half = dtype in (torch.bfloat16, torch.float16)
        else:
            half = torch.cuda.is_bf16_supported()
        if half:
            return "flash_attention_2"
    if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return "sdpa"
    return "eager"


def _check_local(path: str, what: str) -> None:
    looks_local = os.path.isabs(path) or path.startswith((".", "~"))
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{what} {path!r} does not exist; pass the folder of the base LLM")


def load_base_llm(
    model_name_or_path: str | os.PathLike,
    torch_dtype: Any = None,
    attn_implementation: str | None = None,
    tokenizer_path: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, Any, dict[str, torch.Tensor]]:
    """(causal LM, tokenizer, upstream video-projector state or {}) for a base model path or id.

    The tokenizer comes from ``tokenizer_path`` when given (a fully fine-tuned LLM saved without one),
    else from the model folder; see :func:`load_tokenizer`.
    """
    path = str(model_name_or_path)
    _check_local(path, "base model")
    dtype = resolve_dtype(torch_dtype, default=None)  # None/"auto": the checkpoint's own dtype
    projector_state: dict[str, torch.Tensor] = {}
    if is_llava_v1_folder(path):
        llm, _, projector_state, _ = load_llava_v1(path, dtype, attn_implementation)
    else:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            llm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as err:
            raise FileNotFoundError(
                f"could not load the base LLM {path!r} ({err}). Pass a local folder with config.json, weights "
                "and tokenizer files (no model hub is reachable here); for the embedded default run "
                "`python -m llavidal.model.embedded`"
            ) from err
    tokenizer = load_tokenizer(tokenizer_path if tokenizer_path is not None else path)
    return llm, tokenizer, projector_state


def _init_from_upstream_projector(model: LlavidalModel, projector_state: dict[str, torch.Tensor]) -> None:
    """Start projectors from a LLaVA base's ``mm_projector`` (the video one) when the shapes match."""
    for name, mapped in canonicalize(projector_state, model.modalities).projectors.items():
        ours = model.projectors[name].state_dict()
        if set(mapped) == set(ours) and all(tuple(mapped[k].shape) == tuple(ours[k].shape) for k in ours):
            with torch.no_grad():
                for key, value in mapped.items():
                    ours[key].copy_(value.to(ours[key].dtype))
            logger.info("%s projector initialised from the base checkpoint's mm_projector", name)
        else:
            logger.info(
                "base checkpoint's mm_projector (%s) does not fit the %s projector (%s); left at random init",
                {k: tuple(v.shape) for k, v in mapped.items()}, name, {k: tuple(v.shape) for k, v in ours.items()},
            )


def build_model(
    model_name_or_path: str | os.PathLike,
    modalities: ModalityRegistry,
    *,
    torch_dtype: Any = None,
    attn_implementation: str | None = None,
    use_modality_string_prefix: bool = False,
    freeze_llm: bool = True,
    lora: LoraSettings | dict | None = None,
    pretrain_mm_mlp_adapter: str | os.PathLike | None = None,
    template: str = "v1",
    device: str | torch.device | None = None,
) -> tuple[LlavidalModel, Any]:
    """Load the base LLM, add the modality tokens and projectors, choose what trains.

    ``freeze_llm=True`` is upstream's ``--tune_mm_mlp_adapter True`` (projectors + new token rows
    train); ``lora`` adds peft adapters; ``freeze_llm=False`` without LoRA trains everything.
    ``pretrain_mm_mlp_adapter`` loads projector/token weights (ours or an upstream ``mm_projector.bin``).
    Returns (model, tokenizer); the tokenizer now holds the modality tokens.
    """
    llm, tokenizer, projector_state = load_base_llm(model_name_or_path, torch_dtype, attn_implementation)
    model = LlavidalModel(
        llm, tokenizer, modalities, base_model=str(model_name_or_path),
        use_modality_string_prefix=use_modality_string_prefix, template=template,
    )
    _init_from_upstream_projector(model, projector_state)
    model.setup_training(freeze_llm=freeze_llm, lora=lora)
    if pretrain_mm_mlp_adapter:
        model.load_trainable(pretrain_mm_mlp_adapter)
    if device is not None:
        model.to(device)
    return model, tokenizer


def load_pretrained(
    weights_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    torch_dtype: Any = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[LlavidalModel, Any]:
    """Rebuild (model, tokenizer) from a folder written by ``save_pretrained`` (or ``export``).

    ``base_model`` overrides the base recorded in ``llavidal_config.json`` (a checkpoint moved to
    another machine). The model is returned in eval mode.
    """
    weights_dir = Path(weights_dir)
    config = LlavidalConfig.from_json_file(weights_dir)
    base = str(base_model) if base_model is not None else config.base_model
    if not os.path.isabs(base) and (weights_dir / base).exists() and base_model is None:
        base = str((weights_dir / base).resolve())  # exported folders record "." (themselves)
    llm_path = str(weights_dir / config.full_llm_subdir) if config.full_llm_subdir else base
    if not Path(llm_path).expanduser().exists() and (os.path.isabs(llm_path) or llm_path.startswith((".", "~"))):
        raise FileNotFoundError(
            f"{weights_dir / 'llavidal_config.json'}: base model {llm_path!r} not found; pass base_model= "
            "(--model-name / --base_model) with the folder of the base LLM on this machine"
        )
    llm, tokenizer, _ = load_base_llm(llm_path, torch_dtype, attn_implementation, tokenizer_path=base)
    model = LlavidalModel(
        llm, tokenizer, config.registry, base_model=config.base_model,
        use_modality_string_prefix=config.use_modality_string_prefix, template=config.template,
        initialize_new_rows=not config.full_llm_subdir,
    )
    if list(model.config.new_token_ids) != list(config.new_token_ids):
        raise ValueError(
            f"{weights_dir}: the tokenizer of {base!r} gives the modality tokens ids {model.config.new_token_ids}, "
            f"but the weights were trained with {config.new_token_ids}; use the same base model as in training"
        )
    model.setup_training(freeze_llm=config.freeze_llm, lora=config.lora_settings)
    model.load_trainable(weights_dir, strict=True)
    model.config.base_model = config.base_model if base_model is None else str(base_model)
    model.config.extra = dict(config.extra)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def _legacy_sentencepiece_kwargs(path: str) -> dict:
    """LLaMA SentencePiece folders whose tokenizer_config.json has no ``legacy`` key (upstream
    Vicuna/LLaVA checkpoints) were trained with the legacy behaviour; recent transformers would
    default to ``legacy=False``, which changes how text after special tokens is split and breaks the
    upstream ``v1`` label masking. Keep the behaviour they were trained with."""
    folder = Path(path)
    if not (folder / "tokenizer.model").is_file():
        return {}
    config_file = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return {} if "legacy" in config else {"legacy": True}


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer of a model folder (LLaVA v1 folders included), given a pad token if it has none
    (unk, as upstream LLaVA does, else eos)."""
    from transformers import AutoTokenizer

    path = str(path)
    _check_local(path, "tokenizer folder")
    kwargs = _legacy_sentencepiece_kwargs(path)
    try:
        if is_llava_v1_folder(path):
            from llavidal.model.upstream import llama_config_from_llava, read_config_json

            config = llama_config_from_llava(read_config_json(path) or {})
            tokenizer = AutoTokenizer.from_pretrained(path, config=config, **kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"could not load a tokenizer from {path!r} ({err})") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer
