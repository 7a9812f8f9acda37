"""A BLIP-2 / InstructBLIP Q-Former as a video projector: learned queries read the feature tokens.

SELF-CONTAINED: imports only torch and transformers (safetensors comes with transformers), because ``llavidal
export`` copies this file beside ``modeling_llavidal.py``.

::

    tokens (B, N, D) ─[input_projection D -> encoder_hidden_size, when they differ]─┐ (cross-attention keys/values)
    query_tokens (1, Q, Hq) ──────────────────────────────── Blip2QFormerModel ─────┴─> (B, Q, Hq)
    [question (B, L, Dt) ─text_projection + text_positions─> (B, L, Hq), after the queries in self-attention]
    (B, Q, Hq) ─language_projection─> (B, Q, hidden_size)

The parameter names follow BLIP-2's (``query_tokens``, ``qformer.*``, ``language_projection.*``), so a BLIP-2
checkpoint's keys load as they are.

Instruction-aware variant (InstructBLIP): the question's tokens join the queries in the Q-Former's
self-attention; only the queries cross-attend to the features and only the queries' outputs are kept.
transformers' ``InstructBlipQFormerModel`` takes the instruction as token ids of the Q-Former's own BERT
vocabulary, but the question arrives here as the LLM's embeddings, so we use ``Blip2QFormerModel`` with
``use_qformer_text_input=True`` and ``query_length=Q``: the same layer computation as
``InstructBlipQFormerModel`` (self-attention over queries + text, cross-attention and query feed-forward for the
queries, text feed-forward for the text), fed by a learned projection of the LLM's question embeddings plus
learned positions. An InstructBLIP checkpoint loads too: its ``qformer.embeddings.layernorm`` becomes
``qformer.layernorm`` and its ``qformer.embeddings.position_embeddings`` become ``text_positions``.

``qformer``: ``None`` = a small Q-Former (:data:`DEFAULT_QFORMER`, randomly initialised); a dict = a
``Blip2QFormerConfig`` (keys not given take transformers' defaults, i.e. BLIP-2's 12-layer, 768-wide Q-Former;
``encoder_hidden_size`` defaults to ``feature_dim``); a str = the path of a folder written by
``Blip2QFormerModel.save_pretrained``, of a BLIP-2 / InstructBLIP checkpoint folder (``config.json`` +
safetensors or ``.bin``, sharded or not), or of one weights file whose keys start with ``qformer.`` and
``query_tokens`` (its configuration from a ``config.json`` beside it, else inferred from the shapes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

DEFAULT_QFORMER: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "cross_attention_frequency": 1,
}
"""The Q-Former built when ``qformer`` is None: small enough to train from scratch on ADL data."""

_CONFIG_DROP = ("model_type", "transformers_version", "architectures", "_name_or_path", "auto_map", "dtype", "torch_dtype")
_CHECKPOINT_ROOTS = ("query_tokens", "qformer.", "language_projection.")


class QFormerLoadError(ValueError):
    """A Q-Former path could not be read (the message names the path and what was expected)."""


# ---------------------------------------------------------------------------------------------------
# Reading checkpoints


def _strip_root(key: str) -> str | None:
    """``model.qformer.x`` / ``qformer.x`` -> ``qformer.x``; None when the key is not a Q-Former key."""
    for root in _CHECKPOINT_ROOTS:
        if key.startswith(root):
            return key
        marker = "." + root
        at = key.find(marker)
        if at >= 0:
            return key[at + 1 :]
    return None


def _weight_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map", {})
            shards = sorted({shard for key, shard in weight_map.items() if _strip_root(key) is not None})
            return [os.path.join(path, shard) for shard in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    raise QFormerLoadError(
        f"{path}: no weights found (expected model.safetensors, pytorch_model.bin or a sharded index)"
    )


def _read_qformer_keys(path: str) -> dict[str, Tensor]:
    """The ``query_tokens`` / ``qformer.*`` / ``language_projection.*`` tensors of a checkpoint (nothing else is
    read: a BLIP-2 checkpoint's vision tower and LLM stay on disk)."""
    state: dict[str, Tensor] = {}
    for file in _weight_files(path):
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    name = _strip_root(key)
                    if name is not None:
                        state[name] = handle.get_tensor(key)
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(loaded, Mapping):
                raise QFormerLoadError(f"{file}: expected a state dict (a mapping of tensors), got {type(loaded).__name__}")
            for key, value in loaded.items():
                name = _strip_root(str(key))
                if name is not None and isinstance(value, Tensor):
                    state[name] = value
    if "query_tokens" not in state or not any(k.startswith("qformer.") for k in state):
        raise QFormerLoadError(
            f"{path}: no Q-Former weights (keys starting with 'qformer.' and a 'query_tokens' tensor); pass a "
            "BLIP-2/InstructBLIP checkpoint or a folder written by Blip2QFormerModel.save_pretrained"
        )
    return state


def _config_from_dict(data: Mapping[str, Any]) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(**{k: v for k, v in data.items() if k not in _CONFIG_DROP})


def _infer_config(state: Mapping[str, Tensor], path: str) -> Blip2QFormerConfig:
    """A Q-Former configuration from the shapes of its weights (a weights file without ``config.json``)."""
    hidden = int(state["query_tokens"].shape[-1])
    if hidden % 64:
        raise QFormerLoadError(
            f"{path}: cannot infer the number of attention heads of a {hidden}-wide Q-Former; put its config.json "
            "(a BLIP-2 config or a Blip2QFormerConfig) beside the weights"
        )
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("qformer.encoder.layer.")})
    cross = [i for i in layers if f"qformer.encoder.layer.{i}.crossattention.attention.key.weight" in state]
    if not layers or not cross:
        raise QFormerLoadError(f"{path}: the Q-Former weights have no layers with cross-attention")
    data: dict[str, Any] = {
        "hidden_size": hidden,
        "num_attention_heads": hidden // 64,  # BLIP-2's head width
        "num_hidden_layers": layers[-1] + 1,
        "intermediate_size": int(state["qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0]),
        "encoder_hidden_size": int(state[f"qformer.encoder.layer.{cross[0]}.crossattention.attention.key.weight"].shape[1]),
        "cross_attention_frequency": cross[1] - cross[0] if len(cross) > 1 else layers[-1] + 1,
        "use_qformer_text_input": "qformer.encoder.layer.0.intermediate.dense.weight" in state,
    }
    positions = state.get("qformer.embeddings.position_embeddings.weight")
    if positions is not None:
        data["max_position_embeddings"] = int(positions.shape[0])
    return Blip2QFormerConfig(**data)


def load_qformer_source(path: str) -> tuple[Blip2QFormerConfig, dict[str, Tensor], int | None]:
    """Read a Q-Former path: (its configuration, its tensors keyed as in :class:`QFormerProjector`, the number of
    query tokens the checkpoint has, or None when it holds none)."""
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise QFormerLoadError(
            f"Q-Former path {path} does not exist; give a folder written by Blip2QFormerModel.save_pretrained, a "
            "BLIP-2/InstructBLIP checkpoint folder or a weights file"
        )
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_file = os.path.join(folder, "config.json")
    config_data: dict[str, Any] = {}
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            config_data = json.load(handle)
    model_type = str(config_data.get("model_type", ""))
    if model_type in ("blip_2_qformer", "instructblip_qformer") and os.path.isdir(path):
        # a bare Q-Former (Blip2QFormerModel.save_pretrained): its keys have no "qformer." prefix
        config = _config_from_dict(config_data)
        model = Blip2QFormerModel.from_pretrained(path, config=config)
        state = {f"qformer.{k}": v for k, v in model.state_dict().items()}
        return config, state, None
    state = _read_qformer_keys(path)
    if "qformer_config" in config_data:  # BLIP-2 / InstructBLIP checkpoint
        config = _config_from_dict(config_data["qformer_config"])
        if "qformer.encoder.layer.0.intermediate.dense.weight" in state:
            config.use_qformer_text_input = True
        key = "qformer.encoder.layer.0.crossattention.attention.key.weight"
        if key in state:  # the vision tower's width, which BLIP-2's config keeps in vision_config
            config.encoder_hidden_size = int(state[key].shape[1])
    else:
        config = _infer_config(state, path)
    # InstructBLIP names: its embedding LayerNorm is BLIP-2's Q-Former LayerNorm (both normalise queries + text)
    for suffix in ("weight", "bias"):
        old = f"qformer.embeddings.layernorm.{suffix}"
        if old in state:
            state[f"qformer.layernorm.{suffix}"] = state.pop(old)
    if "qformer.embeddings.position_embeddings.weight" in state:
        state["text_positions.weight"] = state.pop("qformer.embeddings.position_embeddings.weight")
    state.pop("qformer.embeddings.word_embeddings.weight", None)  # BERT vocabulary ids; the question comes as LLM embeddings
    state.pop("qformer.embeddings.position_ids", None)
    return config, state, int(state["query_tokens"].shape[1])


# ---------------------------------------------------------------------------------------------------
# The projector


class QFormerProjector(nn.Module):
    """Feature tokens ``(B, N, feature_dim)`` -> ``(B, num_queries, hidden_size)`` through a Q-Former.

    See the module docstring for ``qformer`` and the instruction-aware variant. After building from a path,
    :attr:`loaded_keys` / :attr:`missing_keys` say which parameters came from the checkpoint, and
    :meth:`config_dict` gives the dict that rebuilds the same architecture without the path.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden_size: int,
        num_queries: int = 32,
        qformer: Mapping[str, Any] | str | os.PathLike | None = None,
        instruction_aware: bool = False,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        if instruction_aware and not text_dim:
            raise ValueError("the instruction-aware Q-Former needs text_dim (the size of the question embeddings)")
        state: dict[str, Tensor] = {}
        source = None
        if qformer is None or isinstance(qformer, Mapping):
            data = dict(DEFAULT_QFORMER if qformer is None else qformer)
            data.setdefault("encoder_hidden_size", int(feature_dim))
            config = _config_from_dict(data)
        else:
            source = os.fspath(qformer)
            config, state, checkpoint_queries = load_qformer_source(source)
            if checkpoint_queries is not None and checkpoint_queries != num_queries:
                raise QFormerLoadError(
                    f"{source} holds {checkpoint_queries} query tokens but num_queries={num_queries}; set the design's "
                    f"num_queries to {checkpoint_queries}"
                )
        config.use_qformer_text_input = bool(instruction_aware)
        self.qformer_config = config
        self.source = source
        self.feature_dim = int(feature_dim)
        self.hidden_size = int(hidden_size)
        self.num_queries = int(num_queries)
        self.instruction_aware = bool(instruction_aware)
        self.text_dim = int(text_dim) if text_dim else None
        width = int(config.hidden_size)
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, width) * config.initializer_range)
        encoder_width = int(config.encoder_hidden_size)
        self.input_projection = nn.Linear(feature_dim, encoder_width) if encoder_width != feature_dim else None
        self.qformer = Blip2QFormerModel(config)
        if instruction_aware:
            self.text_projection = nn.Linear(int(text_dim), width)
            self.text_positions = nn.Embedding(int(config.max_position_embeddings), width)
            nn.init.normal_(self.text_positions.weight, std=config.initializer_range)
        self.language_projection = nn.Linear(width, hidden_size)
        self.loaded_keys: list[str] = []
        self.missing_keys: list[str] = []
        if state:
            self._load_checkpoint(state, source or "")

    def _load_checkpoint(self, state: dict[str, Tensor], source: str) -> None:
        own = self.state_dict()
        usable = {}
        for key, value in state.items():
            if key not in own:
                continue  # e.g. the text feed-forward of InstructBLIP in a plain Q-Former
            if tuple(own[key].shape) != tuple(value.shape):
                if key.startswith(("language_projection.", "text_positions.")):
                    continue  # another LLM's width: this projection is learnt anew
                raise QFormerLoadError(
                    f"{source}: {key} has shape {tuple(value.shape)} but this Q-Former expects {tuple(own[key].shape)}"
                )
            usable[key] = value.to(own[key].dtype)
        self.load_state_dict(usable, strict=False)
        self.loaded_keys = sorted(usable)
        self.missing_keys = sorted(k for k in own if k not in usable)
        for name, module in self.named_modules():  # a transformers parent's post_init must not re-initialise these
            keys = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if keys and all(k in usable for k in keys):
                module._is_hf_initialized = True

    def config_dict(self) -> dict[str, Any]:
        """The Q-Former configuration as a dict (``qformer=`` this dict rebuilds the same architecture)."""
        data = self.qformer_config.to_dict()
        return {k: v for k, v in data.items() if k not in _CONFIG_DROP}

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, hidden_size={self.hidden_size}, num_queries={self.num_queries}, "
                f"instruction_aware={self.instruction_aware}, source={self.source!r}")

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """tokens ``(B, N, feature_dim)``, mask ``(B, N)`` (true on real tokens); text ``(B, L, text_dim)`` and
        text_mask ``(B, L)``: the question (used by the instruction-aware variant, ignored otherwise; a question
        longer than ``max_position_embeddings`` keeps its first tokens). Returns ``(B, num_queries, hidden_size)``."""
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if tokens.dim() != 3 or tokens.shape[-1] != self.feature_dim:
            raise ValueError(f"expected tokens (B, N, {self.feature_dim}); got shape {tuple(tokens.shape)}")
        weight = self.language_projection.weight
        batch = tokens.shape[0]
        encoder_states = tokens.to(device=weight.device, dtype=self.query_tokens.dtype)
        if self.input_projection is not None:
            encoder_states = self.input_projection(encoder_states)  # (B, N, encoder_hidden_size)
        queries = self.query_tokens.expand(batch, -1, -1)  # (B, Q, Hq)
        query_embeds, attention_mask = queries, None
        if self.instruction_aware and text is not None:
            if text.dim() != 3 or text.shape[0] != batch:
                raise ValueError(f"text must be (B={batch}, L, {self.text_dim}); got shape {tuple(text.shape)}")
            length = min(text.shape[1], self.text_positions.num_embeddings)
            question = self.text_projection(text[:, :length].to(device=weight.device, dtype=queries.dtype))
            positions = torch.arange(length, device=question.device)
            question = question + self.text_positions(positions)  # (B, L, Hq)
            query_embeds = torch.cat([queries, question], dim=1)  # (B, Q + L, Hq)
            if text_mask is None:
                text_mask = torch.ones(batch, length, dtype=torch.long, device=question.device)
            attention_mask = torch.cat(
                [torch.ones(batch, self.num_queries, dtype=torch.long, device=question.device),
                 text_mask[:, :length].to(device=question.device, dtype=torch.long)],
                dim=1,
            )  # (B, Q + L)
        encoder_mask = None if mask is None else mask.to(device=weight.device, dtype=torch.long)
        if encoder_mask is not None and query_embeds.shape[1] > self.num_queries:
            # only the queries cross-attend; Blip2QFormerModel would size this mask for queries + text, so it is
            # prepared here for the queries (as InstructBlipQFormerModel does) and passed through as 4D
            from transformers.masking_utils import create_bidirectional_mask

            encoder_mask = create_bidirectional_mask(
                config=self.qformer.config, inputs_embeds=queries, attention_mask=encoder_mask,
                encoder_hidden_states=encoder_states,
            )
        output = self.qformer(
            query_embeds=query_embeds,
            query_length=self.num_queries,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=encoder_mask,
        ).last_hidden_state[:, : self.num_queries]  # (B, Q, Hq)
        return self.language_projection(output.to(weight.dtype))  # (B, Q, hidden_size)

