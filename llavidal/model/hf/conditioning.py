"""Video conditioning inside the LLM: per-layer injection or gated cross-attention, on any transformers causal LM.

SELF-CONTAINED: imports only torch, because ``llavidal export`` copies this file beside ``modeling_llavidal.py``.

Two modes, each a small block run on the output of chosen decoder layers through a forward hook (the LLM's
modeling code and its state dict stay untouched; the blocks' parameters live here, saved as ``conditioning.*``):

- ``inject`` (the Breakfast fork of Video-ChatGPT): the video tokens ``(T, D)`` are pooled over time (a learned
  attention pooling, ``Linear(D -> 1)`` scores + softmax, zero-initialised so it starts as the mean; the fork's
  ``Linear(1000 -> 1)`` needs a fixed frame count), projected ``Linear(D -> H)`` and added to every token's
  hidden state, scaled by a learned gate initialised to 0 (the fork uses a fixed 0.1). With per-layer video
  ``(B, L, T, D)`` (the fork's CLS token of every CLIP layer) the j-th conditioned layer receives the j-th
  video layer; conditioned layers beyond ``L`` receive nothing (the fork: 25 CLIP layers over 32 decoder layers).
- ``xattn`` (Flamingo): ``h = h + tanh(a) * CrossAttention(LayerNorm(h), video)`` then
  ``h = h + tanh(f) * FFN(LayerNorm(h))`` with gates ``a = f = 0`` at initialisation. The block runs after
  decoder layer ``i`` (i.e. before layer ``i + 1``; Flamingo's block sits before its LM layer).

With every gate at 0 the wrapped model's outputs equal the base model's exactly. The context is set per call
(:meth:`VideoConditioning.set_context` or ``with conditioning.context(video, mask): ...``) and read by the hooks
on every forward, so in KV-cache generation each new token is conditioned too; without a context the hooks
change nothing.

Decoder layers are found generically (:func:`find_decoder_layers`): LLaMA/Qwen2/Mistral ``model.layers``,
GPT-2 ``transformer.h``, GPT-NeoX ``gpt_neox.layers``, OPT ``model.decoder.layers``, T5 ``decoder.block``, ...,
through PEFT wrappers, else the ``ModuleList`` with as many modules as the config's layer count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

CONDITIONING_MODES = ("inject", "xattn")
XATTN_EVERY = 4
"""Default spacing of cross-attention blocks (Flamingo inserts one every few LM layers; each is large)."""

_LAYER_PATHS = (
    "model.layers", "model.decoder.layers", "decoder.block", "transformer.h", "gpt_neox.layers",
    "model.language_model.layers", "language_model.model.layers", "transformer.blocks", "transformer.layers",
    "model.transformer.h", "layers", "h", "blocks",
)


# ---------------------------------------------------------------------------------------------------
# Finding the decoder layers


def _unwrap(model: nn.Module) -> list[nn.Module]:
    """The model and the models it wraps (PEFT's PeftModel -> LoraModel -> base model; ``.llm`` of our wrappers)."""
    chain, seen = [model], {id(model)}
    current = model
    while True:
        inner = None
        get_base = getattr(current, "get_base_model", None)
        if callable(get_base):
            try:
                inner = get_base()
            except (AttributeError, TypeError):
                inner = None
        if inner is None or id(inner) in seen:
            for name in ("base_model", "model", "llm"):
                candidate = getattr(current, name, None)
                if isinstance(candidate, nn.Module) and id(candidate) not in seen:
                    inner = candidate
                    break
        if not isinstance(inner, nn.Module) or id(inner) in seen:
            return chain
        chain.append(inner)
        seen.add(id(inner))
        current = inner


def _layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        config = get_text_config(decoder=True) if _accepts_decoder(get_text_config) else get_text_config()
    for name in ("num_decoder_layers", "num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _accepts_decoder(function: Any) -> bool:
    import inspect

    try:
        return "decoder" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _get_path(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _homogeneous(layers: nn.ModuleList) -> bool:
    return len(layers) > 0 and len({type(layer) for layer in layers}) == 1


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``ModuleList`` of decoder layers of a transformers causal LM (also through PEFT wrappers).

    Known attribute paths first, then any ``ModuleList`` of same-class modules with as many entries as the
    config's layer count (a name with "decoder" preferred, for encoder-decoder models). Raises ``ValueError``
    naming the model's class when none is found.
    """
    chain = _unwrap(model)
    expected = next((n for n in (_layer_count(m) for m in chain) if n), None)
    for candidate in chain:
        for path in _LAYER_PATHS:
            layers = _get_path(candidate, path)
            if isinstance(layers, nn.ModuleList) and _homogeneous(layers) and (
                expected is None or len(layers) == expected
            ):
                return layers
    found: list[tuple[str, nn.ModuleList]] = [
        (name, module) for name, module in chain[-1].named_modules()
        if isinstance(module, nn.ModuleList) and _homogeneous(module) and (expected is None or len(module) == expected)
    ]
    if found:
        found.sort(key=lambda item: ("decoder" not in item[0], -len(item[1]), item[0].count(".")))
        return found[0][1]
    raise ValueError(
        f"cannot find the decoder layers of {type(chain[-1]).__name__} (looked for {', '.join(_LAYER_PATHS[:6])}, "
        f"... and for a ModuleList of {expected} same-class layers); video conditioning needs a decoder-layer list"
    )


# ---------------------------------------------------------------------------------------------------
# Blocks


def _valid_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    mask = mask.to(device=device, dtype=torch.bool)
    if mask.shape != (batch, length):
        raise ValueError(f"the video mask must be (B, T) = ({batch}, {length}); got {tuple(mask.shape)}")
    return mask


class InjectBlock(nn.Module):
    """The Breakfast fork's injection with a learned gate: ``h + gate * proj(pool_t(video))``."""

    def __init__(self, feature_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.pool = nn.Linear(feature_dim, 1)
        nn.init.zeros_(self.pool.weight)  # uniform weights over time at the start: the mean
        nn.init.zeros_(self.pool.bias)
        self.proj = nn.Linear(feature_dim, hidden_size)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, hidden: Tensor, video: Tensor, mask: Tensor | None = None) -> Tensor:
        """hidden (B, S, H), video (B, T, D), mask (B, T) -> (B, S, H)."""
        video = video.to(device=self.proj.weight.device, dtype=self.proj.weight.dtype)
        logits = self.pool(video).squeeze(-1)  # (B, T)
        mask = _valid_mask(mask, video.shape[0], video.shape[1], video.device)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, dim=-1))  # a row with no video: all zeros
        pooled = torch.einsum("bt,btd->bd", weights, video)  # (B, D)
        update = self.gate * self.proj(pooled)  # (B, H)
        return hidden + update.unsqueeze(1).to(device=hidden.device, dtype=hidden.dtype)


class CrossAttentionBlock(nn.Module):
    """Flamingo's gated cross-attention dense block (tanh gates initialised to 0)."""

    def __init__(self, feature_dim: int, hidden_size: int, num_heads: int, ff_mult: int = 1) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by num_heads={num_heads}")
        self.norm = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(
            hidden_size, num_heads, kdim=feature_dim, vdim=feature_dim, batch_first=True
        )
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.ff_norm = nn.LayerNorm(hidden_size)
        self.ff = nn.Sequential(
            nn.Linear(hidden_size, ff_mult * hidden_size), nn.GELU(), nn.Linear(ff_mult * hidden_size, hidden_size)
        )
        self.ff_gate = nn.Parameter(torch.zeros(()))

    def forward(self, hidden: Tensor, video: Tensor, mask: Tensor | None = None) -> Tensor:
        """hidden (B, S, H), video (B, T, D), mask (B, T) -> (B, S, H)."""
        weight = self.norm.weight
        x = hidden.to(device=weight.device, dtype=weight.dtype)
        video = video.to(device=weight.device, dtype=weight.dtype)
        mask = _valid_mask(mask, video.shape[0], video.shape[1], video.device)
        padding = None
        has_video = None
        if mask is not None:
            has_video = mask.any(dim=1)  # (B,) a row with no video token attends to nothing
            padding = ~(mask | ~has_video.unsqueeze(1))  # (B, T) true = ignore; such a row unmasked, zeroed below
        attended = self.attn(self.norm(x), video, video, key_padding_mask=padding, need_weights=False)[0]
        if has_video is not None:
            attended = attended * has_video.to(attended.dtype).view(-1, 1, 1)
        x = x + torch.tanh(self.attn_gate) * attended
        x = x + torch.tanh(self.ff_gate) * self.ff(self.ff_norm(x))
        return x.to(device=hidden.device, dtype=hidden.dtype)


# ---------------------------------------------------------------------------------------------------
# The conditioning module


class VideoConditioning(nn.Module):
    """Video conditioning blocks for chosen decoder layers, attached with forward hooks (see the module docstring).

    ``layers``: indices of the conditioned decoder layers (negative counts from the end); default every layer
    for ``inject`` and every :data:`XATTN_EVERY`-th layer (the last of each group) for ``xattn``.
    """

    def __init__(
        self,
        mode: str,
        hidden_size: int,
        feature_dim: int,
        num_layers: int,
        layers: Sequence[int] | None = None,
        num_heads: int = 8,
        ff_mult: int = 1,
    ) -> None:
        super().__init__()
        if mode not in CONDITIONING_MODES:
            raise ValueError(f"unknown video conditioning mode {mode!r}; one of {CONDITIONING_MODES}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1; got {num_layers}")
        if layers is None:
            layers = range(num_layers) if mode == "inject" else range(min(XATTN_EVERY, num_layers) - 1, num_layers, XATTN_EVERY)
        chosen: list[int] = []
        for layer in layers:
            index = int(layer) + num_layers if int(layer) < 0 else int(layer)
            if not 0 <= index < num_layers:
                raise ValueError(f"conditioned layer {layer} is out of range for an LLM of {num_layers} layers")
            if index not in chosen:
                chosen.append(index)
        if not chosen:
            raise ValueError("video conditioning needs at least one layer")
        self.mode = mode
        self.hidden_size = int(hidden_size)
        self.feature_dim = int(feature_dim)
        self.num_layers = int(num_layers)
        self.layers = sorted(chosen)
        self.num_heads = int(num_heads)
        if mode == "inject":
            blocks = {str(i): InjectBlock(feature_dim, hidden_size) for i in self.layers}
        else:
            blocks = {str(i): CrossAttentionBlock(feature_dim, hidden_size, num_heads, ff_mult) for i in self.layers}
        self.blocks = nn.ModuleDict(blocks)
        self._handles: list[Any] = []
        self._video: Tensor | None = None
        self._mask: Tensor | None = None

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, layers={self.layers}, attached={self.attached}"

    # -------------------------------------------------------------- gates
    def gates(self) -> dict[str, Tensor]:
        """Every gate parameter by name (``blocks.<layer>.gate`` / ``attn_gate`` / ``ff_gate``)."""
        return {name: p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1].endswith("gate")}

    # -------------------------------------------------------------- attaching
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, llm: nn.Module) -> VideoConditioning:
        """Hook the blocks onto ``llm``'s decoder layers (any transformers causal LM, PEFT-wrapped or not).
        Attaching again first removes the previous hooks."""
        self.detach()
        decoder_layers = find_decoder_layers(llm)
        if len(decoder_layers) != self.num_layers:
            raise ValueError(
                f"video conditioning was built for {self.num_layers} decoder layers but "
                f"{type(llm).__name__} has {len(decoder_layers)}; build it with num_layers={len(decoder_layers)}"
            )
        for index in self.layers:
            self._handles.append(decoder_layers[index].register_forward_hook(self._make_hook(index)))
        return self

    def detach(self) -> None:
        """Remove the hooks (the LLM is the base model again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _make_hook(self, index: int) -> Any:
        position = self.layers.index(index)

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self._video is None:
                return None
            video = self._video
            if video.dim() == 4:  # per-layer video (B, L, T, D)
                if position >= video.shape[1]:
                    return None
                video = video[:, position]
            hidden = output[0] if isinstance(output, tuple) else output
            video, mask = _match_batch(video, self._mask, hidden.shape[0])
            updated = self.blocks[str(index)](hidden, video, mask)
            return (updated, *output[1:]) if isinstance(output, tuple) else updated

        return hook

    # -------------------------------------------------------------- context
    def set_context(self, video: Tensor | None, mask: Tensor | None = None) -> None:
        """The video for the next forward calls: ``(B, N, D)`` tokens or per-layer ``(B, L, T, D)``; ``mask``
        ``(B, N)`` / ``(B, T)`` true on real tokens. ``None`` clears it."""
        if video is None:
            self.clear_context()
            return
        if video.dim() == 2:
            video = video.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if video.dim() not in (3, 4) or video.shape[-1] != self.feature_dim:
            raise ValueError(
                f"conditioning video must be (B, N, {self.feature_dim}) or per-layer (B, L, T, {self.feature_dim}); "
                f"got shape {tuple(video.shape)}"
            )
        if mask is not None and tuple(mask.shape) != (video.shape[0], video.shape[-2]):
            raise ValueError(f"the video mask must be {(video.shape[0], video.shape[-2])}; got {tuple(mask.shape)}")
        self._video = video
        self._mask = mask

    def clear_context(self) -> None:
        self._video = None
        self._mask = None

    @property
    def has_context(self) -> bool:
        return self._video is not None

    @contextlib.contextmanager
    def context(self, video: Tensor | None, mask: Tensor | None = None) -> Iterator[VideoConditioning]:
        """``with conditioning.context(video, mask): llm(...)``: the context is cleared on exit, error or not."""
        self.set_context(video, mask)
        try:
            yield self
        finally:
            self.clear_context()


def _match_batch(video: Tensor, mask: Tensor | None, batch: int) -> tuple[Tensor, Tensor | None]:
    """Repeat each video row for the rows generation made of it (``num_beams`` / ``num_return_sequences``)."""
    rows = video.shape[0]
    if rows == batch:
        return video, mask
    if rows and batch % rows == 0:
        repeat = batch // rows
        return video.repeat_interleave(repeat, dim=0), None if mask is None else mask.repeat_interleave(repeat, dim=0)
    raise ValueError(f"the conditioning video has {rows} rows but the LLM runs {batch}; set one context per batch row")
