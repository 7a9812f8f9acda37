"""Build a :class:`LlavidalModel` around a base LLM, or rebuild one from saved weights.

    model, tokenizer = build_model("path/to/llm", ModalityRegistry.default(["video", "pose"]))
    model, tokenizer = load_pretrained("runs/stage3")  # reads llavidal_config.json
    model, tokenizer = load_pretrained("mm_projector.bin", base_model="LLaVA-7B-Lightening-v1-1")  # upstream

Upstream weights (a file, or a folder without ``llavidal_config.json``: Video-ChatGPT's ``mm_projector.bin``
or ``video_chatgpt-7B.bin``, LLAVIDAL's per-modality or merged projectors, the Breakfast fork's ``model.bin``,
safetensors) get their configuration from their keys and shapes (:func:`config_from_upstream_weights`).

The base may be any transformers causal LM folder (or hub id when a hub is reachable), an encoder-decoder
folder (Flan-T5: its config says ``is_encoder_decoder``; see :mod:`llavidal.model.seq2seq`) or an upstream
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

from llavidal.model.config import CONFIG_NAME, TRAINABLE_NAME, LlavidalConfig, LoraSettings
from llavidal.model.llavidal_model import LlavidalModel
from llavidal.model.modality import ModalityRegistry, default_modalities
from llavidal.model.upstream import is_llava_v1_folder, load_llava_v1
from llavidal.model.weights import (
    ADAPTER_CONFIG_NAME,
    OTHER,
    canonicalize,
    infer_layout,
    key_role,
    read_weights,
    resolve_trainable_file,
    upstream_heads,
)
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


def base_llm_class(path: str | os.PathLike) -> Any:
    """The transformers auto class for the base model at ``path``: ``AutoModelForSeq2SeqLM`` when its config
    says ``is_encoder_decoder`` (Flan-T5, BART: features are spliced into the encoder's input, answers are
    decoder labels; see :mod:`llavidal.model.seq2seq`), else ``AutoModelForCausalLM``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError):  # the model loader reports what is wrong with the folder
        return AutoModelForCausalLM
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def load_base_llm(
    model_name_or_path: str | os.PathLike,
    torch_dtype: Any = None,
    attn_implementation: str | None = None,
    tokenizer_path: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, Any, dict[str, torch.Tensor]]:
    """(LLM, tokenizer, upstream video-projector state or {}) for a base model path or id.

    The LLM is a causal LM, or an encoder-decoder (``AutoModelForSeq2SeqLM``) when the folder's config says
    ``is_encoder_decoder`` (:func:`base_llm_class`).

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
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            llm = base_llm_class(path).from_pretrained(path, **kwargs)
        except OSError as err:
            raise FileNotFoundError(
                f"could not load the base LLM {path!r} ({err}). Pass a local folder with config.json, weights "
                "and tokenizer files (no model hub is reachable here); for the embedded default run "
                "`python -m llavidal.model.embedded`"
            ) from err
        if getattr(llm.config, "model_type", "") == "llavidal":  # an exported folder: the LLM inside it
            llm = llm.llm
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
    video_conditioning: dict | str | None = None,
) -> tuple[LlavidalModel, Any]:
    """Load the base LLM, add the modality tokens and projectors, choose what trains.

    ``video_conditioning``: see :class:`LlavidalModel` (attached after LoRA wrapping).

    ``freeze_llm=True`` is upstream's ``--tune_mm_mlp_adapter True`` (projectors + new token rows
    train); ``lora`` adds peft adapters; ``freeze_llm=False`` without LoRA trains everything.
    ``pretrain_mm_mlp_adapter`` loads projector/token weights (ours or an upstream ``mm_projector.bin``).
    Returns (model, tokenizer); the tokenizer now holds the modality tokens.
    """
    llm, tokenizer, projector_state = load_base_llm(model_name_or_path, torch_dtype, attn_implementation)
    model = LlavidalModel(
        llm, tokenizer, modalities, base_model=str(model_name_or_path),
        use_modality_string_prefix=use_modality_string_prefix, template=template,
        video_conditioning=video_conditioning,
    )
    _init_from_upstream_projector(model, projector_state)
    model.setup_training(freeze_llm=freeze_llm, lora=lora)
    if pretrain_mm_mlp_adapter:
        model.load_trainable(pretrain_mm_mlp_adapter)
    if device is not None:
        model.to(device)
    return model, tokenizer


UPSTREAM_TEMPLATE = "v1"
"""Conversation template of Video-ChatGPT / LLAVIDAL training (answers use its ``llavidal_v1`` form)."""


def llavidal_weights_dir(path: str | os.PathLike) -> Path | None:
    """The folder written by ``save_pretrained`` that ``path`` names (the folder, or its
    ``trainable.safetensors``), or None for upstream weights (no ``llavidal_config.json``)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return path
    if path.is_file() and path.name == TRAINABLE_NAME and (path.parent / CONFIG_NAME).is_file():
        return path.parent
    return None


def config_from_upstream_weights(
    path: str | os.PathLike, base_model: str | os.PathLike | None, state: dict[str, torch.Tensor] | None = None,
) -> LlavidalConfig:
    """A :class:`LlavidalConfig` for weights that have none: a file, or a folder with only ``mm_projector.bin``
    (or ``model.bin``, ``video_chatgpt-7B.bin``, safetensors...).

    Modalities, feature dims, projector types and the hidden size come from the weight keys and shapes
    (:func:`llavidal.model.weights.infer_layout`); token counts are upstream's (video 356 = 100 temporal +
    256 spatial, pose 256, objects 8 each); the template is ``v1``; the base LLM is ``base_model``
    (``--model-name`` / ``--base_model``), which upstream weights do not record. ``state`` is the file's
    content when already read.
    """
    file = resolve_trainable_file(path)
    if not base_model:
        raise ValueError(
            f"{file}: upstream weights (no {CONFIG_NAME}) do not say which base LLM they sit on; pass its folder "
            "with --model-name (or --base_model), e.g. LLaVA-7B-Lightening-v1-1"
        )
    layout = infer_layout(read_weights(file) if state is None else state, source=str(file))
    upstream = default_modalities()
    specs = {}
    for name, spec in upstream.items():  # registry order = upstream span order (video, object, pose)
        found = layout.projectors.get(name)
        if found is not None:
            spec.feature_dim, spec.projector_type = found.feature_dim, found.projector_type
            specs[name] = spec
    registry = ModalityRegistry(specs)
    return LlavidalConfig(
        base_model=str(base_model), modalities=registry.to_list(), template=UPSTREAM_TEMPLATE,
        hidden_size=layout.hidden_size, freeze_llm=True,
        extra={"upstream_weights": str(file),
               "inferred": {name: f"{p.projector_type} {p.feature_dim} -> {p.hidden_size}"
                            for name, p in layout.projectors.items()},
               "ignored_keys": layout.ignored},
    )


def weights_config(path: str | os.PathLike, base_model: str | os.PathLike | None = None) -> LlavidalConfig:
    """The configuration of any weights ``path`` (ours: ``llavidal_config.json``; upstream: inferred)."""
    folder = llavidal_weights_dir(path)
    if folder is not None:
        return LlavidalConfig.from_json_file(folder)
    return config_from_upstream_weights(path, base_model)


def recorded_manifests(path: str | os.PathLike) -> dict[str, Any]:
    """Modality -> the feature manifest the weights ``path`` record (empty for upstream weights, which record
    none: extractors then fall back to the upstream recipe, :func:`llavidal.features.extractor.unrecorded_manifest`)."""
    folder = llavidal_weights_dir(path)
    if folder is None:
        return {}
    return LlavidalConfig.from_json_file(folder).recorded_manifests(folder)


def load_upstream_pretrained(
    path: str | os.PathLike,
    base_model: str | os.PathLike | None,
    torch_dtype: Any = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[LlavidalModel, Any]:
    """(model, tokenizer) from upstream weights (see :func:`config_from_upstream_weights`), in eval mode.

    Modality token rows the file lacks (a bare ``mm_projector.bin``) start at the mean of the base's rows,
    as upstream initialises them; keys of no known layout (a fork's own modules) are left out with a warning.
    """
    file = resolve_trainable_file(path)
    state = read_weights(file)
    config = config_from_upstream_weights(file, base_model, state=state)
    llm, tokenizer, _ = load_base_llm(config.base_model, torch_dtype, attn_implementation)
    llm_hidden = int(llm.get_input_embeddings().weight.shape[1])
    if llm_hidden != config.hidden_size:
        raise ValueError(
            f"{file}: the projectors output {config.hidden_size}-d embeddings, but the base LLM {config.base_model!r} "
            f"has hidden size {llm_hidden}; pass the base LLM these weights were trained on (--model-name)"
        )
    ignored = config.extra.get("ignored_keys") or []
    if ignored:
        logger.warning(
            "%s: %d key(s) of no known layout are not used (this model has no such modules; e.g. a fork's "
            "positional encodings or extra layers): %s", file, len(ignored), ignored[:10],
        )
        heads = upstream_heads()
        state = {k: v for k, v in state.items() if key_role(k, heads).kind != OTHER}
    model = LlavidalModel(llm, tokenizer, config.registry, base_model=config.base_model, template=config.template)
    model.setup_training(freeze_llm=True)
    report = model.load_trainable_state_dict(state, source=str(file), strict=False)
    logger.info("%s: upstream weights, inferred %s; loaded %d tensors", file, config.extra["inferred"], len(report.loaded))
    model.config.extra = dict(config.extra)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def load_pretrained(
    weights_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    torch_dtype: Any = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[LlavidalModel, Any]:
    """Rebuild (model, tokenizer) from a folder written by ``save_pretrained`` (or ``export``), or from
    upstream weights (a file, or a folder without ``llavidal_config.json``; then ``base_model`` is needed,
    see :func:`load_upstream_pretrained`).

    ``base_model`` overrides the base recorded in ``llavidal_config.json`` (a checkpoint moved to
    another machine). The model is returned in eval mode.
    """
    folder = llavidal_weights_dir(weights_dir)
    if folder is None:
        return load_upstream_pretrained(weights_dir, base_model, torch_dtype, device, attn_implementation)
    weights_dir = folder
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
        initialize_new_rows=not config.full_llm_subdir, video_conditioning=config.video_conditioning,
    )
    if list(model.config.new_token_ids) != list(config.new_token_ids):
        raise ValueError(
            f"{weights_dir}: the tokenizer of {base!r} gives the modality tokens ids {model.config.new_token_ids}, "
            f"but the weights were trained with {config.new_token_ids}; use the same base model as in training"
        )
    model.setup_training(freeze_llm=config.freeze_llm, lora=lora_settings_of(weights_dir, config))
    model.load_trainable(weights_dir, strict=True)  # LoRA from adapter_model.safetensors, or old lora.* keys
    model.config.base_model = config.base_model if base_model is None else str(base_model)
    model.config.extra = dict(config.extra)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def lora_settings_of(weights_dir: str | os.PathLike, config: LlavidalConfig) -> LoraSettings | None:
    """The LoRA settings of a weights folder: its peft ``adapter_config.json`` when it has one (the standard
    file, which may be an adapter trained or edited elsewhere), else what ``llavidal_config.json`` records
    (folders written before adapters were saved the peft way)."""
    recorded = config.lora_settings
    file = Path(weights_dir) / ADAPTER_CONFIG_NAME
    if not file.is_file():
        return recorded
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable peft adapter config ({err}); restore it from the training output") from err
    if not isinstance(data, dict) or str(data.get("peft_type", "LORA")).upper() != "LORA" or "r" not in data:
        raise ValueError(f"{file}: not a LoRA adapter config (peft_type {data.get('peft_type') if isinstance(data, dict) else data!r}); only LoRA "
                         "adapters can sit beside LLAVIDAL weights")
    targets = data.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    settings = LoraSettings(r=int(data["r"]), alpha=data.get("lora_alpha", 8), dropout=float(data.get("lora_dropout") or 0.0),
                            target_modules=targets, bias=str(data.get("bias") or "none"))
    if recorded is not None and (recorded.r, recorded.alpha, sorted(recorded.target_modules)) != (
            settings.r, settings.alpha, sorted(settings.target_modules)):
        logger.warning("%s: LoRA r=%s alpha=%s targets %s differ from %s (r=%s alpha=%s targets %s); the adapter's "
                       "own config is used", file, settings.r, settings.alpha, settings.target_modules,
                       Path(weights_dir) / CONFIG_NAME, recorded.r, recorded.alpha, recorded.target_modules)
    return settings


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
