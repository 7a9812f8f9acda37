"""Video designs as components of one model: the frontend that turns a sample's video features into tokens.

SELF-CONTAINED: imports only torch (the sampler and Q-Former beside it, imported when a design asks for
them, use transformers), because ``llavidal export`` copies this file beside ``modeling_llavidal.py``.

A modality of the registry may carry a ``design`` dict; when it asks for anything beyond the plain
projector, a :class:`VideoFrontend` replaces that modality's projector (its weights then sit under
``projectors.<modality>.*``: ``projector.*``, ``temporal_pe.*``, ``spatial_pe.*``, ``sampler.*``). The
pipeline, each stage optional::

    features ─[temporal sampler]─[positional encoding]─[adaptive pool "before"]─ projector ─[adaptive pool "after"]─> tokens
    (T, P, D) grids or (N, D) rows                          linear | mlp2x_gelu | qformer                          (N_out, H)

Design keys (:func:`normalize_design` fills the defaults and refuses unknown keys):

``pool``            ``[T', h', w']``: PLLaVA's parameter-free ``adaptive_avg_pool3d`` of per-frame grids
                    (``(T, P, D)``, P = h*w square, or ``(T, h, w, D)``) to ``T' x h' x w'`` tokens.
``pool_position``   ``after`` (PLLaVA: the projector runs on every patch, then the pooling) or ``before``.
``positional``      ``none`` | ``learned`` | ``sinusoidal``: temporal (and, for grids, spatial) encodings added
                    to the features before the projector (the Breakfast fork). Pooled ``(T+S, D)`` rows get
                    the temporal encoding on the first ``temporal_rows`` rows and the spatial one on the rest.
``max_frames``      rows of the learned temporal table (default: the modality's rows per sample, at least 100).
``max_patches``     rows of the learned spatial table (default: ``patches``, else 256).
``temporal_rows``   T of pooled ``(T+S, D)`` rows (upstream 100 of 356).
``patches``         P of ``(T, P, D)`` grid features (0: features are pooled rows); used to count tokens
                    before the features are read.
``projector``       ``linear`` | ``mlp2x_gelu`` | ``qformer`` (default: the modality's ``projector_type``).
``qformer``         a ``Blip2QFormerConfig`` dict, or a folder (saved Q-Former / BLIP-2 checkpoint);
``num_queries``     its learned queries (32); ``instruction_aware``: the question conditions the queries.
``sampler``         ``{"k": 8, "motion": "diff", "hidden": 256, "train": "straight_through" | "pseudo"}``: LSTP's
                    question-guided temporal sampler keeps k frames (temporal rows) in time order.
``splice``          False: no tokens in the prompt (the video reaches the LLM through conditioning only).

Learned positional tables start at ZERO: at step 0 the model equals the same model without encodings
(a projector aligned or trained before keeps its meaning), and since the tables are added to the features,
their gradient is the features' gradient, so they still train from zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POSITIONAL = ("none", "learned", "sinusoidal")
POOL_POSITIONS = ("before", "after")
FRONTEND_PROJECTORS = ("linear", "mlp2x_gelu", "qformer")
SAMPLER_TRAINING = ("straight_through", "pseudo")
DESIGN_KEYS = (
    "pool", "pool_position", "positional", "max_frames", "max_patches", "temporal_rows", "patches", "projector",
    "qformer", "qformer_path", "num_queries", "instruction_aware", "sampler", "splice",
)
UPSTREAM_TEMPORAL_ROWS = {356: 100}
"""Rows per sample -> temporal rows of upstream pooled features (Video-ChatGPT: 100 temporal + 256 spatial)."""


class DesignError(ValueError):
    """A design dict that cannot be built, or features that do not fit it."""


@dataclass
class TextContext:
    """The question a sample's video is asked about: embeddings of the prompt's TEXT tokens only (no answer or
    label tokens, no modality tokens), padded to the longest row.

    embeds: (B, L, H) input embeddings; mask: (B, L) bool, True on real tokens."""

    embeds: Tensor
    mask: Tensor

    def select(self, rows: Sequence[int] | Tensor) -> TextContext:
        index = torch.as_tensor(list(rows) if not isinstance(rows, Tensor) else rows, dtype=torch.long,
                                device=self.embeds.device)
        return TextContext(self.embeds.index_select(0, index), self.mask.index_select(0, index))

    def pooled(self) -> Tensor:
        """(B, H): the mean embedding of each row's tokens (zeros for a row without any)."""
        weights = self.mask.to(self.embeds.dtype).unsqueeze(-1)  # (B, L, 1)
        return (self.embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def text_context(
    embeds: Tensor, input_ids: Tensor, modality_token_ids: Sequence[int], labels: Tensor | None = None,
    attention_mask: Tensor | None = None, ignore_index: int = -100,
) -> TextContext:
    """The :class:`TextContext` of a batch: tokens that are attended, not modality tokens and, when ``labels``
    (B, T) are given, not supervised (answers are left out in training; at generation the prompt is all there is)."""
    keep = ~torch.isin(input_ids, torch.as_tensor(list(modality_token_ids), device=input_ids.device))  # (B, T)
    if attention_mask is not None:
        keep &= attention_mask.to(device=keep.device).bool()
    if labels is not None:
        keep &= labels.to(device=keep.device) == ignore_index
    lengths = keep.sum(dim=1)  # (B,)
    width = max(int(lengths.max().item()) if lengths.numel() else 0, 1)
    slot = torch.cumsum(keep.long(), dim=1) - 1  # where each kept token goes in its row
    out = embeds.new_zeros(embeds.shape[0], width, embeds.shape[-1])
    rows = torch.arange(embeds.shape[0], device=embeds.device).unsqueeze(1).expand_as(keep)
    out[rows[keep], slot[keep]] = embeds[keep]
    mask = torch.arange(width, device=embeds.device).unsqueeze(0) < lengths.to(embeds.device).unsqueeze(1)
    return TextContext(out, mask)


# ---------------------------------------------------------------------------------------------------
# The design dict


def _int_list(value: Any, what: str, length: int) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.replace("-", ",").replace("x", ",").split(",") if v.strip()]
    try:
        items = [int(v) for v in value]
    except (TypeError, ValueError):
        raise DesignError(f"design {what}: expected {length} integers, got {value!r}") from None
    if len(items) != length or any(v <= 0 for v in items):
        raise DesignError(f"design {what}: expected {length} positive integers, got {value!r}")
    return items


def normalize_design(design: Mapping[str, Any] | None, num_tokens: int = 0,
                     projector_type: str = "linear") -> dict[str, Any] | None:
    """The design with every default written out (what is saved with the weights), or None for no design.

    ``num_tokens``: the modality's feature rows per sample (T for grids, T+S for pooled rows)."""
    if design is None:
        return None
    if not isinstance(design, Mapping):
        raise DesignError(f"a modality design must be a dict, got {type(design).__name__}")
    unknown = sorted(set(design) - set(DESIGN_KEYS))
    if unknown:
        raise DesignError(f"unknown design keys {unknown}; known: {list(DESIGN_KEYS)}")
    out: dict[str, Any] = {}
    pool = design.get("pool")
    out["pool"] = _int_list(pool, "pool", 3) if pool not in (None, "", [], "none") else None
    out["pool_position"] = str(design.get("pool_position") or "after")
    if out["pool_position"] not in POOL_POSITIONS:
        raise DesignError(f"design pool_position {out['pool_position']!r}: one of {POOL_POSITIONS}")
    out["positional"] = str(design.get("positional") or "none")
    if out["positional"] not in POSITIONAL:
        raise DesignError(f"design positional {out['positional']!r}: one of {POSITIONAL}")
    out["patches"] = int(design.get("patches") or 0)
    temporal = design.get("temporal_rows")
    out["temporal_rows"] = int(temporal) if temporal else UPSTREAM_TEMPORAL_ROWS.get(int(num_tokens or 0))
    out["max_frames"] = int(design.get("max_frames") or max(int(num_tokens or 0), 100))
    out["max_patches"] = int(design.get("max_patches") or out["patches"] or 256)
    out["projector"] = str(design.get("projector") or projector_type)
    if out["projector"] not in FRONTEND_PROJECTORS:
        raise DesignError(f"design projector {out['projector']!r}: one of {FRONTEND_PROJECTORS}")
    out["qformer"] = design.get("qformer") if out["projector"] == "qformer" else None
    if design.get("qformer_path"):
        out["qformer_path"] = str(design["qformer_path"])
    out["num_queries"] = int(design.get("num_queries") or 32)
    out["instruction_aware"] = bool(design.get("instruction_aware", False))
    sampler = design.get("sampler")
    if sampler:
        if not isinstance(sampler, Mapping):
            raise DesignError(f"design sampler must be a dict such as {{'k': 8}}, got {sampler!r}")
        unknown = sorted(set(sampler) - {"k", "motion", "hidden", "train"})
        if unknown:
            raise DesignError(f"unknown sampler keys {unknown}; known: k, motion, hidden, train")
        sampler = {"k": int(sampler.get("k", 8)), "motion": str(sampler.get("motion", "diff")),
                   "hidden": int(sampler.get("hidden", 256)), "train": str(sampler.get("train", "straight_through"))}
        if sampler["k"] <= 0:
            raise DesignError(f"design sampler k must be positive, got {sampler['k']}")
        if sampler["train"] not in SAMPLER_TRAINING:
            raise DesignError(f"design sampler train {sampler['train']!r}: one of {SAMPLER_TRAINING}")
    out["sampler"] = dict(sampler) if sampler else None
    out["splice"] = bool(design.get("splice", True))
    if out["pool"] is not None and out["pool_position"] == "after" and out["projector"] == "qformer":
        raise DesignError("design: pooling 'after' a qformer projector is impossible (its queries form no grid); "
                          "use pool_position 'before'")
    return out


def uses_frontend(design: Mapping[str, Any] | None) -> bool:
    """Whether ``design`` needs a :class:`VideoFrontend` (anything beyond the plain projector)."""
    if not design:
        return False
    return bool(design.get("pool") or design.get("sampler") or design.get("projector") == "qformer"
                or (design.get("positional") or "none") != "none")


def _grid_side(patches: int, what: str = "features") -> int:
    side = math.isqrt(int(patches))
    if side * side != patches:
        raise DesignError(f"{what}: {patches} patches per frame is not a square grid; pooling needs h x w patches")
    return side


def num_output_tokens(design: Mapping[str, Any] | None, feature_shape: Sequence[int]) -> int:
    """Tokens a sample with features of ``feature_shape`` takes in the prompt under ``design`` (a pure function
    of the two: what placeholder expansion uses). ``feature_shape``: (N, D) rows, (T, P, D) or (T, h, w, D) grids."""
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) < 2:
        raise DesignError(f"features of shape {shape}: expected (N, D) rows or (T, P, D) grids")
    if not design:
        return int(math.prod(shape[:-1]))
    design = normalize_design(design)
    if not design["splice"]:
        return 0
    grid = len(shape) >= 3
    frames = shape[0]
    patches = int(math.prod(shape[1:-1])) if grid else 1
    sampler = design.get("sampler")
    if grid:
        if sampler:
            frames = min(sampler["k"], frames)  # a clip of T <= k frames keeps them all
        count = frames * patches
    else:
        count = shape[0]
        if sampler:
            temporal = _temporal_rows(design, shape[0])
            count = min(sampler["k"], temporal) + (shape[0] - temporal)
    if design["pool"] is not None:
        if not grid:
            raise DesignError(f"design pools {design['pool']} but the features are pooled rows {shape}; extract "
                              "per-frame grids (llavidal extract video --pooling grid; the design's 'patches' says how "
                              "many per frame when no manifest does) or drop the pooling")
        count = int(math.prod(design["pool"]))
    if design["projector"] == "qformer":
        count = design["num_queries"]
    return count


def _temporal_rows(design: Mapping[str, Any], rows: int) -> int:
    temporal = design.get("temporal_rows")
    if not temporal:
        raise DesignError(f"features are {rows} pooled rows: set the design's temporal_rows (T of the T+S rows) "
                          "for positional encodings or a temporal sampler")
    if temporal > rows:
        raise DesignError(f"design temporal_rows {temporal} exceeds the {rows} rows of the features")
    return int(temporal)


# ---------------------------------------------------------------------------------------------------
# Building blocks


def sinusoidal_table(positions: Tensor, dim: int) -> Tensor:
    """Vaswani et al.'s encoding: ``pe[p, 2i] = sin(p / 10000^(2i/dim))``, ``pe[p, 2i+1] = cos(...)``.

    positions: (...) integer or float positions -> (..., dim)."""
    half = (dim + 1) // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) * 2.0 / dim)  # (half,)
    angles = positions.to(torch.float64).unsqueeze(-1) * frequencies.to(positions.device)  # (..., half)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 2*half) interleaved
    return table[..., :dim].to(torch.float32)


def sinusoidal_grid(patches: int, dim: int) -> Tensor:
    """(P, dim) spatial encoding of a square grid: rows on the first half of the channels, columns on the
    second (MAE's 2-D sin-cos); 1-D over the patch index when P is not a square."""
    side = math.isqrt(patches)
    if side * side != patches or dim < 2:
        return sinusoidal_table(torch.arange(patches), dim)
    index = torch.arange(patches)
    first = dim // 2
    return torch.cat([sinusoidal_table(index // side, first), sinusoidal_table(index % side, dim - first)], dim=-1)


def build_plain_projector(projector_type: str, feature_dim: int, hidden_size: int) -> nn.Module:
    """Linear or Linear-GELU-Linear (the upstream layouts; see ``modeling_llavidal.build_projector``)."""
    if projector_type == "linear":
        return nn.Linear(feature_dim, hidden_size)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    raise DesignError(f"unknown projector {projector_type!r}; one of {FRONTEND_PROJECTORS}")


class VideoFrontend(nn.Module):
    """Sampler -> positional encodings -> pooling -> projector -> pooling, as a modality's ``design`` says.

    ``forward(features, text)``: ``features`` one tensor per sample ((T, P, D) / (T, h, w, D) grids or (N, D)
    rows), ``text`` the :class:`TextContext` of those samples' questions (row i for sample i) or None; returns
    one (N_out, hidden_size) tensor per sample, N_out = :func:`num_output_tokens`. Samples of one shape run
    as one batch."""

    def __init__(self, design: Mapping[str, Any], feature_dim: int, hidden_size: int,
                 projector_type: str = "linear", num_tokens: int = 0) -> None:
        super().__init__()
        self.design = normalize_design(design, num_tokens, projector_type)
        self.feature_dim, self.hidden_size = int(feature_dim), int(hidden_size)
        design = self.design
        if design["positional"] == "learned":
            self.temporal_pe = nn.Embedding(design["max_frames"], feature_dim)
            self.spatial_pe = nn.Embedding(design["max_patches"], feature_dim)
            nn.init.zeros_(self.temporal_pe.weight)
            nn.init.zeros_(self.spatial_pe.weight)
        self.sampler: nn.Module | None = None
        if design["sampler"]:
            from .sampler import TemporalSampler

            sampler = design["sampler"]
            self.sampler = TemporalSampler(feature_dim, hidden_size, sampler["k"], hidden=sampler["hidden"],
                                           motion=sampler["motion"])
        if design["projector"] == "qformer":
            from .qformer import QFormerProjector

            self.projector = QFormerProjector(
                feature_dim, hidden_size, num_queries=design["num_queries"], qformer=design["qformer"],
                instruction_aware=design["instruction_aware"], text_dim=hidden_size,
            )
        else:
            self.projector = build_plain_projector(design["projector"], feature_dim, hidden_size)
        self.last_sampler_output: Any = None
        """The sampler's output of the latest forward (indices, scores), for a pseudo-label loss."""

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.design.items() if v not in (None, False, "none") or k == "splice"}
        return f"design={shown}"

    # -------------------------------------------------------------- pieces
    @staticmethod
    def as_grid(features: Tensor) -> Tensor:
        """(B, T, P, D) -> (B, T, h, w, D); (B, T, h, w, D) unchanged."""
        if features.dim() == 5:
            return features
        side = _grid_side(features.shape[2])
        return features.reshape(features.shape[0], features.shape[1], side, side, features.shape[-1])

    def pool(self, grid: Tensor) -> Tensor:
        """(B, T, h, w, C) -> (B, T' * h' * w', C): ``adaptive_avg_pool3d`` over (time, height, width)."""
        pooled = F.adaptive_avg_pool3d(grid.permute(0, 4, 1, 2, 3), tuple(self.design["pool"]))  # (B, C, T', h', w')
        return pooled.flatten(2).transpose(1, 2)

    def _temporal_encoding(self, positions: Tensor, like: Tensor) -> Tensor:
        """positions (B, T) -> (B, T, D)."""
        if self.design["positional"] == "learned":
            if int(positions.max()) >= self.temporal_pe.num_embeddings:
                raise DesignError(f"frame {int(positions.max())} is beyond the learned temporal table "
                                  f"({self.temporal_pe.num_embeddings} rows; the design's max_frames)")
            return self.temporal_pe(positions.to(self.temporal_pe.weight.device)).to(like.dtype)
        return sinusoidal_table(positions, like.shape[-1]).to(device=like.device, dtype=like.dtype)

    def _spatial_encoding(self, patches: int, like: Tensor) -> Tensor:
        """(P, D)."""
        if self.design["positional"] == "learned":
            if patches > self.spatial_pe.num_embeddings:
                raise DesignError(f"{patches} patches exceed the learned spatial table "
                                  f"({self.spatial_pe.num_embeddings} rows; the design's max_patches)")
            index = torch.arange(patches, device=self.spatial_pe.weight.device)
            return self.spatial_pe(index).to(like.dtype)
        return sinusoidal_grid(patches, like.shape[-1]).to(device=like.device, dtype=like.dtype)

    def _sample(self, frames: Tensor, text: TextContext | None) -> tuple[Tensor, Tensor]:
        """frames (B, T, ...) -> (selected (B, k, ...), time indices (B, k))."""
        question = question_mask = None
        if text is not None:
            question = text.embeds.to(device=frames.device, dtype=frames.dtype)  # (B, L, H)
            question_mask = text.mask.to(frames.device)
        output = self.sampler(frames, question, motion=None, hard=True, text_mask=question_mask)
        self.last_sampler_output = output
        return output.selected, output.indices

    # -------------------------------------------------------------- forward
    def forward_batch(self, features: Tensor, text: TextContext | None = None) -> Tensor:
        """Same-shape samples (B, T, P, D) / (B, T, h, w, D) / (B, N, D) -> (B, N_out, hidden_size)."""
        design = self.design
        batch = features.shape[0]
        grid = features.dim() >= 4
        positions = None
        if grid:
            if design["sampler"]:
                features, positions = self._sample(features, text)
            frames = features.shape[1]
            if positions is None:
                positions = torch.arange(frames, device=features.device).unsqueeze(0).expand(batch, frames)
            if design["positional"] != "none":
                patches = int(math.prod(features.shape[2:-1]))
                temporal = self._temporal_encoding(positions, features)  # (B, T, D)
                spatial = self._spatial_encoding(patches, features).reshape(*features.shape[2:])  # (..., D)
                features = features + temporal.reshape(batch, frames, *([1] * (features.dim() - 3)), -1) + spatial
            if design["pool"] is not None and design["pool_position"] == "before":
                tokens = self.pool(self.as_grid(features))  # (B, T'h'w', D)
            elif design["pool"] is not None:  # after: project every patch, keep the grid
                grid_features = self.as_grid(features)
                projected = self.projector(grid_features)  # (B, T, h, w, H)
                return self.pool(projected)
            else:
                tokens = features.reshape(batch, -1, features.shape[-1])  # (B, T*P, D)
        else:
            if design["pool"] is not None:
                raise DesignError(f"design pools {design['pool']} but the features are pooled rows "
                                  f"{tuple(features.shape[1:])}; extract per-frame grids or drop the pooling")
            rows = features.shape[1]
            if design["sampler"] or design["positional"] != "none":
                temporal_rows = _temporal_rows(design, rows)
                frames, spatial_rows = features[:, :temporal_rows], features[:, temporal_rows:]
                if design["sampler"]:
                    frames, positions = self._sample(frames, text)
                else:
                    positions = torch.arange(temporal_rows, device=features.device).unsqueeze(0).expand(batch, -1)
                if design["positional"] != "none":
                    frames = frames + self._temporal_encoding(positions, frames)
                    if spatial_rows.shape[1]:
                        spatial_rows = spatial_rows + self._spatial_encoding(spatial_rows.shape[1], spatial_rows)
                features = torch.cat([frames, spatial_rows], dim=1)
            tokens = features
        if design["projector"] == "qformer":
            question = question_mask = None
            if design["instruction_aware"] and text is not None:
                question = text.embeds.to(device=tokens.device, dtype=tokens.dtype)
                question_mask = text.mask.to(tokens.device)
            return self.projector(tokens, None, question, question_mask)
        return self.projector(tokens)

    def forward(self, features: Sequence[Tensor], text: TextContext | None = None) -> list[Tensor]:
        parameter = next(self.parameters())
        outputs: list[Tensor | None] = [None] * len(features)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, value in enumerate(features):
            if value.dim() not in (2, 3, 4) or value.shape[-1] != self.feature_dim:
                raise DesignError(f"sample {index}: features of shape {tuple(value.shape)}; expected (N, "
                                  f"{self.feature_dim}) rows or (T, P, {self.feature_dim}) grids")
            groups.setdefault(tuple(value.shape), []).append(index)
        for indices in groups.values():
            stacked = torch.stack([features[i] for i in indices]).to(device=parameter.device, dtype=parameter.dtype)
            context = text.select(indices) if text is not None else None
            result = self.forward_batch(stacked, context)
            for slot, index in enumerate(indices):
                outputs[index] = result[slot]
        return outputs  # type: ignore[return-value]


def build_modality_projector(projector_type: str, feature_dim: int, hidden_size: int,
                             design: Mapping[str, Any] | None = None, num_tokens: int = 0) -> nn.Module:
    """A :class:`VideoFrontend` when ``design`` needs one, else the plain projector (upstream weight keys)."""
    if uses_frontend(normalize_design(design, num_tokens, projector_type)):
        return VideoFrontend(design, feature_dim, hidden_size, projector_type=projector_type, num_tokens=num_tokens)
    return build_plain_projector(projector_type, feature_dim, hidden_size)


# ---------------------------------------------------------------------------------------------------
# Video conditioning inside the LLM (the model config's ``video_conditioning``)

CONDITIONING_MODES = ("inject", "xattn")
CONDITIONING_KEYS = ("mode", "layers", "splice", "num_heads", "modality", "per_layer")


def normalize_conditioning(settings: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """``video_conditioning`` with its defaults written out, or None (none).

    ``mode``: ``inject`` (the Breakfast fork's per-layer time-pooled projection, gated) or ``xattn`` (gated
    cross-attention); ``layers``: decoder layer indices (None: every layer); ``splice``: whether the video
    span stays in the prompt too; ``num_heads`` of the cross-attention; ``modality`` whose features condition
    (``video``); ``per_layer``: the features are per-layer ``(T, L, D)`` (one row of L per frame)."""
    if settings is None or settings == "" or settings == "none":
        return None
    if isinstance(settings, str):
        settings = {"mode": settings}
    if not isinstance(settings, Mapping):
        raise DesignError(f"video_conditioning must be a dict or a mode name, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(CONDITIONING_KEYS))
    if unknown:
        raise DesignError(f"unknown video_conditioning keys {unknown}; known: {list(CONDITIONING_KEYS)}")
    mode = str(settings.get("mode") or "")
    if mode not in CONDITIONING_MODES:
        raise DesignError(f"video_conditioning mode {mode!r}: one of {CONDITIONING_MODES}")
    layers = settings.get("layers")
    if isinstance(layers, str):
        layers = [int(v) for v in layers.split(",") if v.strip()]
    return {
        "mode": mode, "layers": [int(v) for v in layers] if layers else None,
        "splice": bool(settings.get("splice", True)), "num_heads": int(settings.get("num_heads") or 8),
        "modality": str(settings.get("modality") or "video"), "per_layer": bool(settings.get("per_layer", False)),
    }


def build_conditioning(settings: Mapping[str, Any] | None, llm_config: Any, feature_dim: int) -> nn.Module | None:
    """The ``VideoConditioning`` module that ``settings`` describe (not yet attached), or None."""
    settings = normalize_conditioning(settings)
    if settings is None:
        return None
    from .conditioning import VideoConditioning

    hidden = int(getattr(llm_config, "hidden_size", 0) or getattr(llm_config, "n_embd", 0) or llm_config.d_model)
    layers = int(getattr(llm_config, "num_hidden_layers", 0) or getattr(llm_config, "n_layer", 0))
    return VideoConditioning(settings["mode"], hidden, int(feature_dim), layers, layers=settings["layers"],
                             num_heads=settings["num_heads"])


def conditioning_inputs(settings: Mapping[str, Any], entries: Sequence[Any] | None, batch: int,
                        device: Any = None, dtype: Any = None) -> tuple[Tensor, Tensor] | None:
    """(video (B, N, D) or per-layer (B, L, T, D), mask (B, N) / (B, T)) from one features entry per row, or None
    when no row has any. Grids are flattened to rows; rows without video are fully masked."""
    if entries is None:
        return None
    if isinstance(entries, Tensor) and entries.dim() >= 3 and entries.shape[0] == batch:
        entries = list(entries)
    rows: list[Tensor | None] = []
    for entry in entries:
        if isinstance(entry, (list, tuple)):
            entry = torch.cat([torch.as_tensor(e) for e in entry], dim=0) if entry else None
        if entry is None:
            rows.append(None)
            continue
        entry = torch.as_tensor(entry)
        if settings.get("per_layer"):
            if entry.dim() != 3:
                raise DesignError(f"per-layer conditioning needs (T, L, D) features, got {tuple(entry.shape)}")
            entry = entry.transpose(0, 1)  # (L, T, D)
        else:
            entry = entry.reshape(-1, entry.shape[-1])  # (N, D)
        rows.append(entry)
    present = [r for r in rows if r is not None]
    if not present:
        return None
    length = max(r.shape[-2] for r in present)
    template = present[0]
    shape = (batch, *template.shape[:-2], length, template.shape[-1])
    video = torch.zeros(shape, device=device or template.device, dtype=dtype or template.dtype)
    mask = torch.zeros(batch, length, dtype=torch.bool, device=video.device)
    for row, value in enumerate(rows):
        if value is None:
            continue
        video[row, ..., : value.shape[-2], :] = value.to(device=video.device, dtype=video.dtype)
        mask[row, : value.shape[-2]] = True
    return video, mask


__all__ = [
    "CONDITIONING_MODES",
    "DesignError",
    "TextContext",
    "VideoFrontend",
    "build_conditioning",
    "build_modality_projector",
    "conditioning_inputs",
    "normalize_conditioning",
    "normalize_design",
    "num_output_tokens",
    "sinusoidal_grid",
    "sinusoidal_table",
    "text_context",
    "uses_frontend",
]
