"""The configuration saved next to LLAVIDAL weights (``llavidal_config.json``).

It records what is needed to rebuild the model around its trainable weights: the base LLM, the modality
registry (placeholders, tokens, feature dims, projector types, video designs), the video conditioning, the
conversation template, the tokens
added to the tokenizer (and their ids, checked on reload) and how the LLM was adapted (frozen, LoRA,
full fine-tuning).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavidal.model.modality import ModalityRegistry

logger = logging.getLogger(__name__)

CONFIG_NAME = "llavidal_config.json"
TRAINABLE_NAME = "trainable.safetensors"
FULL_LLM_SUBDIR = "llm"
"""Sub-folder holding the whole LLM when it was fully fine-tuned (``freeze_llm=False`` without LoRA)."""

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA adaptation of the LLM (peft)."""

    r: int = 64
    """Rank of the low-rank update."""
    alpha: int = 16
    """Scaling numerator (``lora_alpha``); the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Names of the LLM's linear layers that get adapters (``all-linear`` is accepted too)."""
    bias: str = "none"
    """peft ``bias`` option: none, all or lora_only."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            self.target_modules = (
                [self.target_modules] if self.target_modules == "all-linear"
                else [t.strip() for t in self.target_modules.split(",") if t.strip()]
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_any(cls, value: "LoraSettings | dict | None") -> "LoraSettings | None":
        if value is None or isinstance(value, LoraSettings):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


@dataclass
class LlavidalConfig:
    """Everything needed to rebuild a :class:`~llavidal.model.llavidal_model.LlavidalModel`."""

    base_model: str
    """Path (or hub id) of the base causal LM the trainable weights sit on."""
    modalities: list[dict] = field(default_factory=list)
    """The modality registry, as :meth:`ModalityRegistry.to_list` writes it."""
    use_modality_string_prefix: bool = False
    """Whether " video: " etc. precede each span (upstream ``--use_modality_string_prefix``)."""
    template: str = "v1"
    """Conversation template used in training (``v1``, ``llavidal_v1``, ``chat``)."""
    base_vocab_size: int = 0
    """Tokenizer length before the modality tokens were added."""
    new_tokens: list[str] = field(default_factory=list)
    """Modality tokens (patch, start, end per modality, registry order)."""
    new_token_ids: list[int] = field(default_factory=list)
    """Their ids in the tokenizer (checked when the model is rebuilt)."""
    hidden_size: int = 0
    """Hidden size of the LLM (projector output dim)."""
    llm_model_type: str = ""
    """``model_type`` of the LLM config (llama, qwen2, mistral...)."""
    freeze_llm: bool = True
    """LLM frozen during training (upstream ``--tune_mm_mlp_adapter True``)."""
    lora: dict | None = None
    """:class:`LoraSettings` as a dict when the LLM carries LoRA adapters."""
    full_llm_subdir: str | None = None
    """Set when the whole LLM was fine-tuned and saved in this sub-folder of the weights folder."""
    torch_dtype: str | None = None
    """dtype the model was trained in (informational)."""
    package_version: str = ""
    feature_manifests: dict[str, dict] = field(default_factory=dict)
    """Modality -> the manifest (with its typed recipe) of the features training read; recipe paths are
    relative to the weights folder. Evaluation, the demo and servers rebuild extractors from these."""
    video_conditioning: dict | None = None
    """Video conditioning inside the LLM: None, or {"mode": "inject" | "xattn", "layers": [...] | None, "splice":
    bool, "num_heads", "modality", "per_layer"} (see :func:`llavidal.model.hf.frontends.normalize_conditioning`);
    its weights are ``conditioning.*`` in ``trainable.safetensors``."""
    extra: dict = field(default_factory=dict)
    """Free-form metadata (training arguments, feature folders...)."""

    def __post_init__(self) -> None:
        if len(self.new_tokens) != len(self.new_token_ids):
            raise ValueError("LlavidalConfig: new_tokens and new_token_ids differ in length")

    @property
    def registry(self) -> ModalityRegistry:
        return ModalityRegistry.from_list(self.modalities)

    @property
    def lora_settings(self) -> LoraSettings | None:
        return LoraSettings.from_any(self.lora)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data.get("video_conditioning") is None:
            data.pop("video_conditioning", None)  # configs without it read (and compare) as before it existed
        return data

    def recorded_manifests(self, weights_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Modality -> :class:`~llavidal.data.feature_store.FeatureManifest` of training's features.

        From ``feature_manifests``; weights saved before it existed keep them in ``extra["feature_manifests"]``
        or only name the feature folders (``extra["feature_folders"]``), whose ``manifest.json`` is read when
        the folder is still on this machine (its recipe paths rebased onto ``weights_dir``).
        """
        from llavidal.data.feature_store import FeatureManifest
        from llavidal.features.extractor import absolute_manifest

        manifests = {name: FeatureManifest.from_dict(data)
                     for name, data in {**(self.extra.get("feature_manifests") or {}), **self.feature_manifests}.items()
                     if isinstance(data, dict)}
        if weights_dir is not None:
            manifests = {name: absolute_manifest(m, weights_dir) for name, m in manifests.items()}
        for name, folder in (self.extra.get("feature_folders") or {}).items():
            if name in manifests or not folder or not Path(folder).is_dir():
                continue
            try:
                manifest = FeatureManifest.load(folder)
                if manifest is not None:
                    manifest = absolute_manifest(manifest, folder)
            except ValueError as err:  # incl. RecipeError: say so, carry on as if none were recorded
                logger.warning("%s", err)
                manifest = None
            if manifest is not None:
                manifests[name] = manifest
        return manifests

    def to_json_file(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if self.feature_manifests:  # recipe paths relative to the weights folder on disk
            from llavidal.data.feature_store import FeatureManifest
            from llavidal.features.extractor import relative_manifest

            data["feature_manifests"] = {name: relative_manifest(FeatureManifest.from_dict(m), folder).to_dict()
                                         for name, m in self.feature_manifests.items()}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LlavidalConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        if unknown:
            cfg.extra = {**cfg.extra, "unknown_fields": sorted(unknown)}
        return cfg

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LlavidalConfig":
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no {CONFIG_NAME} here; pass the folder written by LlavidalModel.save_pretrained "
                "(or a training output folder / checkpoint-* folder)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        config = cls.from_dict(data)
        if config.feature_manifests:  # in memory, recipe paths are absolute
            from llavidal.data.feature_store import FeatureManifest
            from llavidal.features.extractor import absolute_manifest

            config.feature_manifests = {
                name: absolute_manifest(FeatureManifest.from_dict(m), path.parent).to_dict()
                for name, m in config.feature_manifests.items()
            }
        return config
