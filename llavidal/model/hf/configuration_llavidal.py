"""LLAVIDAL's transformers configuration (``model_type = "llavidal"``).

SELF-CONTAINED: imports only transformers, because ``llavidal export`` copies this file beside the weights
so that ``AutoConfig.from_pretrained(folder, trust_remote_code=True)`` works where the ``llavidal`` package
is not installed. The package registers the same class with the Auto classes when it is imported.

It holds the base LLM's configuration (``text_config``), the modality registry (placeholders, tokens,
feature dims, token counts, projector types), the conversation template, the ids of the modality tokens
and the feature manifests (how training's features were made, with their typed recipes).
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers.configuration_utils import PretrainedConfig
from transformers.models.auto.configuration_auto import AutoConfig

TOKEN_ROLES = ("patch", "start", "end")


def _text_config(value: Any) -> PretrainedConfig | None:
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        data = dict(value)
        model_type = data.pop("model_type", None)
        if not model_type:
            raise ValueError("LlavidalHFConfig: text_config needs a model_type (the base LLM's, e.g. llama)")
        return AutoConfig.for_model(model_type, **data)
    raise TypeError(f"LlavidalHFConfig: text_config must be a dict or a PretrainedConfig, got {type(value).__name__}")


class LlavidalHFConfig(PretrainedConfig):
    """A causal LM (``text_config``) with modality features spliced into its token stream.

    modalities: the registry as a list of dicts (name, placeholder, patch/start/end tokens, feature_dim,
    num_tokens or group_size, projector_type, text_prefix, design (the video design, or None), ...), in span order.
    token_ids: modality name -> {"patch": id, "start": id, "end": id} in the tokenizer saved with the model.
    video_conditioning: None, or {"mode": "inject" | "xattn", "layers": [...], "splice": bool, ...}: a module
    hooked into the LLM's decoder layers that reads the video features (see ``frontends.normalize_conditioning``).
    """

    model_type = "llavidal"
    sub_configs: ClassVar[dict] = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        modalities: list[dict] | None = None,
        token_ids: dict[str, dict[str, int]] | None = None,
        template: str = "v1",
        use_modality_string_prefix: bool = False,
        base_model: str = "",
        base_vocab_size: int = 0,
        feature_manifests: dict[str, dict] | None = None,
        llavidal_version: str = "",
        video_conditioning: dict | None = None,
        **kwargs: Any,
    ) -> None:
        self.text_config = _text_config(text_config)
        self.modalities = [dict(m) for m in (modalities or [])]
        self.token_ids = {name: {role: int(i) for role, i in ids.items()} for name, ids in (token_ids or {}).items()}
        self.template = template
        self.use_modality_string_prefix = bool(use_modality_string_prefix)
        self.base_model = base_model
        self.base_vocab_size = int(base_vocab_size)
        self.feature_manifests = dict(feature_manifests or {})
        self.llavidal_version = llavidal_version
        self.video_conditioning = dict(video_conditioning) if video_conditioning else None
        if self.text_config is not None:
            # The outer model ties nothing itself; the LLM inside ties its own head (or not).
            kwargs.setdefault("tie_word_embeddings", bool(getattr(self.text_config, "tie_word_embeddings", False)))
            kwargs.setdefault("hidden_size", int(self.text_config.hidden_size))
        super().__init__(**kwargs)
        names = [m.get("name") for m in self.modalities]
        missing = [n for n in names if n not in self.token_ids]
        if self.text_config is not None and missing:
            raise ValueError(f"LlavidalHFConfig: no token_ids for modalities {missing}")

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.text_config if self.text_config is not None else super().get_text_config(*args, **kwargs)

    @property
    def modality_token_ids(self) -> list[int]:
        """Ids of every modality token (patch, start, end of each modality), sorted."""
        return sorted({int(i) for ids in self.token_ids.values() for i in ids.values()})
