"""A language-guided temporal sampler (LSTP-style): keep the ``k`` frames most relevant to the question.

SELF-CONTAINED: imports only torch, because ``llavidal export`` copies this file beside ``modeling_llavidal.py``.

LSTP-Chat scores frames from their optical flow against the question and hands the chosen frames to the LLM,
training the scorer with pseudo-labels from a frozen base model. Here the scorer is a small module over each
frame's features (mean over any spatial axes), a motion signal and a summary of the question::

    frame  (B, T, D) ─LayerNorm─Linear─┐
    motion (B, T)   ─log1p─Linear──────┴─+─GELU─> h (B, T, hidden)
    score_t = prior(h_t) + <key(h_t), query(text)> / sqrt(hidden)          (B, T)

``motion``: ``"none"``; ``"diff"`` (the norm of the feature change from the previous frame, computed here, no
extra input); ``"flow"`` (per-frame optical-flow magnitude ``(B, T)`` given to ``forward``; computed at
extraction time by :func:`llavidal.features.motion.optical_flow_magnitude`).

Selection keeps the top-``k`` scores in time order. With ``hard=True`` the output frames are exactly the chosen
frames and gradients reach the scorer through a straight-through estimator: slot ``j`` holds its chosen frame
``i_j`` in the forward pass, and in the backward pass the relaxed weights ``softmax(scores / tau)`` over
``{i_j} ∪ unchosen frames`` (each slot "could have swapped" its frame for any frame not chosen). With
``hard=False`` those relaxed weights are used in the forward pass too.

Pseudo-label training (LSTP): :func:`pseudo_label_loss` is the cross-entropy between the scores' softmax over
frames and a target distribution made from per-frame relevance; :func:`relevance_targets` derives that
relevance from a base model (see its docstring for the choice).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MOTION_MODES = ("none", "diff", "flow")


@dataclass
class SamplerOutput:
    """What :class:`TemporalSampler` returns."""

    selected: Tensor
    """The chosen frames ``(B, k, ...)`` in time order (the input's trailing axes kept)."""
    indices: Tensor
    """Their frame indices ``(B, k)``, ascending (what logs and the demo show)."""
    scores: Tensor
    """Every frame's relevance logit ``(B, T)`` (``-inf`` on frames masked out by ``frame_mask``)."""


def summarize_text(text: Tensor, mask: Tensor | None = None) -> Tensor:
    """Question embeddings ``(B, L, Dt)`` (+ mask ``(B, L)``, true on question tokens) -> their mean ``(B, Dt)``.

    A ``(B, Dt)`` input is returned unchanged. A row with no question token gives zeros.
    """
    if text.dim() == 2:
        return text
    if text.dim() != 3:
        raise ValueError(f"text must be (B, Dt) or (B, L, Dt); got shape {tuple(text.shape)}")
    if mask is None:
        return text.mean(dim=1)
    weights = mask.to(device=text.device, dtype=text.dtype).unsqueeze(-1)  # (B, L, 1)
    return (text * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def frame_summaries(frames: Tensor) -> Tensor:
    """Frames ``(B, T, ..., D)`` -> one vector per frame ``(B, T, D)`` (mean over the axes between)."""
    if frames.dim() < 3:
        raise ValueError(f"frames must be (B, T, D) or (B, T, ..., D); got shape {tuple(frames.shape)}")
    if frames.dim() == 3:
        return frames
    return frames.flatten(2, -2).mean(dim=2)


def feature_difference_motion(summaries: Tensor) -> Tensor:
    """Per-frame motion from features ``(B, T, D)`` -> ``(B, T)``: ``|f_t - f_{t-1}|`` over the mean ``|f|``.

    Frame 0 takes frame 1's value (it has no predecessor; a moving start should not look still). Dividing by
    the clip's mean feature norm makes the signal independent of the encoder's scale.
    """
    if summaries.shape[1] < 2:
        return summaries.new_zeros(summaries.shape[:2])
    change = (summaries[:, 1:] - summaries[:, :-1]).norm(dim=-1)  # (B, T-1)
    change = torch.cat([change[:, :1], change], dim=1)  # (B, T)
    scale = summaries.norm(dim=-1).mean(dim=1, keepdim=True).clamp_min(1e-6)  # (B, 1)
    return change / scale


class TemporalSampler(nn.Module):
    """Scores each frame against the question and keeps the top ``k`` in time order (see the module docstring).

    ``forward(frames (B, T, ...), text (B, Dt) | (B, L, Dt), motion (B, T) | None, hard=True)`` ->
    :class:`SamplerOutput`. When a clip has ``T <= k`` frames every frame is kept (``k' = T``).
    """

    def __init__(
        self,
        feature_dim: int,
        text_dim: int,
        k: int,
        hidden: int = 256,
        motion: str = "diff",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if motion not in MOTION_MODES:
            raise ValueError(f"unknown sampler motion {motion!r}; one of {MOTION_MODES}")
        if k < 1:
            raise ValueError(f"the sampler must keep at least one frame; got k={k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        self.feature_dim = int(feature_dim)
        self.text_dim = int(text_dim)
        self.k = int(k)
        self.hidden = int(hidden)
        self.motion = motion
        self.temperature = float(temperature)
        self.frame_norm = nn.LayerNorm(feature_dim)
        self.frame_proj = nn.Linear(feature_dim, hidden)
        self.motion_proj = nn.Linear(1, hidden) if motion != "none" else None
        self.key = nn.Linear(hidden, hidden)
        self.query = nn.Linear(text_dim, hidden)
        self.prior = nn.Linear(hidden, 1)

    def extra_repr(self) -> str:
        return f"k={self.k}, motion={self.motion!r}, temperature={self.temperature}"

    def num_selected(self, num_frames: int) -> int:
        """How many frames a clip of ``num_frames`` frames keeps: ``min(k, num_frames)``."""
        return min(self.k, int(num_frames))

    # -------------------------------------------------------------- scoring
    def score(
        self, frames: Tensor, text: Tensor | None, motion: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        """Relevance logits ``(B, T)`` of frames ``(B, T, ...)`` for the question ``text``."""
        weight = self.frame_proj.weight
        summaries = frame_summaries(frames).to(dtype=weight.dtype)  # (B, T, D)
        if summaries.shape[-1] != self.feature_dim:
            raise ValueError(
                f"the sampler was built for {self.feature_dim}-d frame features but got {summaries.shape[-1]}-d "
                f"(frames of shape {tuple(frames.shape)})"
            )
        hidden = self.frame_proj(self.frame_norm(summaries))  # (B, T, hidden)
        motion_signal = self._motion(summaries, motion)
        if motion_signal is not None:
            hidden = hidden + self.motion_proj(motion_signal.unsqueeze(-1))
        hidden = F.gelu(hidden)
        scores = self.prior(hidden).squeeze(-1)  # (B, T): how informative a frame is whatever the question
        if text is not None:
            question = self.query(summarize_text(text, text_mask).to(dtype=weight.dtype))  # (B, hidden)
            if question.shape[0] != scores.shape[0]:
                raise ValueError(f"text has {question.shape[0]} rows for {scores.shape[0]} clips")
            scores = scores + torch.einsum("bth,bh->bt", self.key(hidden), question) / math.sqrt(self.hidden)
        return scores

    def _motion(self, summaries: Tensor, motion: Tensor | None) -> Tensor | None:
        if self.motion == "none" or self.motion == "diff":
            if motion is not None:
                raise ValueError(
                    f"a motion input was given to a sampler with motion={self.motion!r}; build it with "
                    "motion='flow' to use per-frame optical flow"
                )
            return None if self.motion == "none" else feature_difference_motion(summaries)
        if motion is None:
            raise ValueError(
                "this sampler uses optical flow (motion='flow') but no motion was given: pass the per-frame flow "
                "magnitude (B, T) (llavidal.features.motion.optical_flow_magnitude), or use motion='diff'"
            )
        motion = torch.as_tensor(motion, device=summaries.device, dtype=summaries.dtype)
        if motion.shape != summaries.shape[:2]:
            raise ValueError(f"motion must be (B, T) = {tuple(summaries.shape[:2])}; got {tuple(motion.shape)}")
        return torch.log1p(motion.clamp_min(0))  # flow magnitudes are heavy-tailed

    # -------------------------------------------------------------- selection
    def forward(
        self,
        frames: Tensor,
        text: Tensor | None,
        motion: Tensor | None = None,
        hard: bool = True,
        frame_mask: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> SamplerOutput:
        """Choose frames. ``frame_mask (B, T)`` (true on real frames) keeps padded frames out; ``text`` may be a
        summary ``(B, Dt)`` or token embeddings ``(B, L, Dt)`` with ``text_mask (B, L)``."""
        scores = self.score(frames, text, motion, text_mask)  # (B, T)
        if frame_mask is not None:
            frame_mask = frame_mask.to(device=scores.device, dtype=torch.bool)
            scores = scores.masked_fill(~frame_mask, float("-inf"))
        return select_frames(frames, scores, self.num_selected(frames.shape[1]), hard, self.temperature)

    @torch.no_grad()
    def select_indices(self, frames: Tensor, text: Tensor | None, motion: Tensor | None = None) -> Tensor:
        """The chosen frame indices ``(B, k)`` only (for logs and the demo)."""
        return self.forward(frames, text, motion).indices


def select_frames(frames: Tensor, scores: Tensor, k: int, hard: bool = True, temperature: float = 1.0) -> SamplerOutput:
    """Top-``k`` of ``scores (B, T)`` in time order; ``frames (B, T, ...)`` gathered with a straight-through
    gradient (``hard=True``) or mixed by the relaxed weights (``hard=False``); see the module docstring."""
    batch, num_frames = scores.shape
    k = min(int(k), num_frames)
    indices = scores.topk(k, dim=1).indices.sort(dim=1).values  # (B, k), ascending time
    chosen = F.one_hot(indices, num_frames).to(frames.dtype if frames.is_floating_point() else scores.dtype)  # (B, k, T)
    if not torch.is_grad_enabled() and hard:  # inference: a plain gather, no (B, k, T) mixing
        gather = indices.reshape(batch, k, *([1] * (frames.dim() - 2))).expand(batch, k, *frames.shape[2:])
        return SamplerOutput(selected=torch.gather(frames, 1, gather), indices=indices, scores=scores)
    # slot j may relax towards its own frame or any unchosen frame
    unchosen = chosen.sum(dim=1, keepdim=True) == 0  # (B, 1, T)
    allowed = unchosen | chosen.bool()  # (B, k, T)
    logits = (scores.unsqueeze(1) / temperature).masked_fill(~allowed, float("-inf"))  # (B, k, T)
    relaxed = torch.softmax(logits, dim=-1).to(chosen.dtype)  # (B, k, T)
    weights = chosen + (relaxed - relaxed.detach()) if hard else relaxed  # forward: exactly one-hot when hard
    # masked (-inf) frames get weight 0; keep their values out of the sum so a NaN pad cannot leak in
    selected = torch.einsum("bkt,bt...->bk...", weights, torch.nan_to_num(frames.to(weights.dtype)))
    return SamplerOutput(selected=selected.to(frames.dtype), indices=indices, scores=scores)


# ---------------------------------------------------------------------------------------------------
# Pseudo-label training (LSTP)


def pseudo_label_loss(
    scores: Tensor, target_scores: Tensor, mask: Tensor | None = None, temperature: float = 0.1
) -> Tensor:
    """Cross-entropy between ``softmax(scores)`` over frames and the target ``softmax(target_scores / temperature)``.

    scores: the sampler's logits ``(B, T)``; target_scores: per-frame relevance ``(B, T)``, higher = more relevant
    (e.g. :func:`relevance_targets`' cosine similarities, or 0/1 labels); mask ``(B, T)``: true on real frames.
    A small temperature makes the target concentrate on the most relevant frames (0/1 labels become nearly
    uniform over the 1s). Mean over the batch. LSTP trains on the best contiguous span; a per-frame distribution
    suits top-``k`` selection, which need not be contiguous.
    """
    if scores.shape != target_scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and target_scores {tuple(target_scores.shape)} differ")
    target_logits = target_scores.detach().to(scores.dtype) / temperature
    if mask is not None:
        mask = mask.to(device=scores.device, dtype=torch.bool)
        target_logits = target_logits.masked_fill(~mask, float("-inf"))
        scores = scores.masked_fill(~mask, float("-inf"))
    target = torch.softmax(target_logits, dim=-1)  # (B, T)
    log_probs = torch.log_softmax(scores, dim=-1)
    return -(target * log_probs.masked_fill(target == 0, 0.0)).sum(dim=-1).mean()


def relevance_targets(
    frames: Tensor,
    answer_embeds: Tensor,
    answer_mask: Tensor | None = None,
    projector: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Per-frame relevance ``(B, T)`` from a base model, for :func:`pseudo_label_loss`.

    The choice: LSTP answers the question from each frame alone with the frozen base model and scores the answer
    against the ground truth, which costs one LLM generation per frame. Here the base model's own projector does
    the work without the LLM: each frame's features are projected into the LLM's input-embedding space
    (``projector``, e.g. the trained linear/MLP projector of the video modality; ``None`` = features used as
    they are, when they already live in that space) and compared by cosine similarity with the mean input
    embedding of the answer's tokens. The projector was fitted (``llavidal align`` and instruction tuning) to
    land video tokens on the embeddings of the words that describe them, so a frame that shows what the answer
    says scores high.

    frames ``(B, T, ..., D)`` (spatial axes averaged after projecting); answer_embeds ``(B, L, H)`` or ``(B, H)``;
    answer_mask ``(B, L)`` true on answer tokens. Returned without gradient.
    """
    with torch.no_grad():
        projected = projector(frames) if projector is not None else frames  # (B, T, ..., H)
        projected = frame_summaries(projected).float()  # (B, T, H)
        answer = summarize_text(answer_embeds, answer_mask).float().to(projected.device)  # (B, H)
        if answer.shape[-1] != projected.shape[-1]:
            raise ValueError(
                f"projected frames are {projected.shape[-1]}-d but the answer embeddings {answer.shape[-1]}-d; "
                "pass the projector that maps frame features to the LLM's embedding size"
            )
        return F.cosine_similarity(projected, answer.unsqueeze(1), dim=-1)  # (B, T)
