"""Video-token designs by name: the one table of presets behind ``llavidal train --video_design NAME``.

Each upstream system turns video into LLM input its own way; here each is a component of one model (see
:mod:`llavidal.model.hf.frontends` and :mod:`llavidal.model.hf.conditioning`), chosen per run and recorded in
``llavidal_config.json`` with the weights, so evaluation, the demo and the engine need no flag to reload it.

=========  ===============================================================================================
preset     what it does
=========  ===============================================================================================
upstream   Video-ChatGPT / LLAVIDAL: pooled (T+S, D) rows through the plain linear/MLP projector (no design)
pllava     PLLaVA: per-frame grids (``extract video --pooling grid``), 2-layer MLP on every patch, then
           ``adaptive_avg_pool3d`` to 16 x 12 x 12 tokens (``--video_pool`` to change)
pe         the Breakfast fork: learned temporal (and spatial) positional encodings added before the projector
sampler    LSTP: a question-guided temporal sampler keeps 8 frames (straight-through top-k)
qformer    BLIP-2 / InstructBLIP: a Q-Former with 32 learned queries reading the features, question-aware
xattn      Flamingo-style gated cross-attention to the video inside the LLM (every 4th decoder layer), span kept
inject     the Breakfast fork's per-layer injection of the time-pooled video into every decoder layer (gated)
=========  ===============================================================================================

Flags given with a preset override its values (``--video_design pllava --video_pool 8,6,6``); flags alone
build a design from nothing (``--video_pe sinusoidal``).
"""

from __future__ import annotations

import copy
from typing import Any

DESIGN_PRESETS: dict[str, dict[str, Any]] = {
    "upstream": {"design": None, "conditioning": None},
    "pllava": {"design": {"pool": [16, 12, 12], "pool_position": "after", "projector": "mlp2x_gelu"},
               "conditioning": None},
    "pe": {"design": {"positional": "learned"}, "conditioning": None},
    "sampler": {"design": {"sampler": {"k": 8, "motion": "diff", "train": "straight_through"}}, "conditioning": None},
    "qformer": {"design": {"projector": "qformer", "num_queries": 32, "instruction_aware": True}, "conditioning": None},
    "xattn": {"design": None, "conditioning": {"mode": "xattn", "splice": True}},
    "inject": {"design": None, "conditioning": {"mode": "inject", "splice": True}},
}
"""Preset name -> the video modality's ``design`` dict and the model's ``video_conditioning`` (None: none)."""


def design_names() -> list[str]:
    return list(DESIGN_PRESETS)


def parse_triple(value: str | list | tuple | None, flag: str) -> list[int] | None:
    """``"16,12,12"`` / ``"16-12-12"`` / ``"16x12x12"`` / a list -> [16, 12, 12]."""
    if value is None or value == "":
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).replace("-", ",").replace("x", ",").split(",")
    try:
        numbers = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        numbers = []
    if len(numbers) != 3 or any(n <= 0 for n in numbers):
        raise ValueError(f"{flag} {value!r}: give three positive integers T,h,w (e.g. 16,12,12)")
    return numbers


def resolve_design(
    preset: str | None = None,
    *,
    pool: str | list | None = None,
    pool_position: str | None = None,
    positional: str | None = None,
    projector: str | None = None,
    qformer_path: str | None = None,
    num_queries: int | None = None,
    sampler_k: int | None = None,
    sampler_motion: str | None = None,
    conditioning: str | None = None,
    conditioning_layers: str | list | None = None,
    conditioning_splice: bool | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(video design dict or None, video_conditioning dict or None) for a preset plus overrides.

    The dicts are checked by :func:`llavidal.model.hf.frontends.normalize_design` /
    :func:`~llavidal.model.hf.frontends.normalize_conditioning` when the model is built (unknown values are
    refused there with the list of choices)."""
    name = (preset or "upstream").strip().lower()
    if name not in DESIGN_PRESETS:
        raise ValueError(f"--video_design {preset!r}: one of {design_names()}")
    entry = copy.deepcopy(DESIGN_PRESETS[name])
    design: dict[str, Any] = entry["design"] or {}
    settings: dict[str, Any] | None = entry["conditioning"]
    if pool is not None:
        design["pool"] = parse_triple(pool, "--video_pool")
    if pool_position:
        design["pool_position"] = pool_position
    if positional:
        design["positional"] = positional
    if projector:
        design["projector"] = projector
    if qformer_path:
        design["projector"] = "qformer"
        design["qformer"] = str(qformer_path)
    if num_queries:
        design["num_queries"] = int(num_queries)
    if sampler_motion == "flow":
        # the module takes per-frame flow (llavidal.features.motion) as an input, but feature files do not carry it:
        # a model trained with it could neither train nor answer from this command line
        raise ValueError("--sampler_motion flow: per-frame optical flow is not carried from extraction into training "
                         "and inference yet; use --sampler_motion diff (feature differences, computed inside the "
                         "model: the preset) or none. The sampler module itself takes flow as an input "
                         "(llavidal.model.hf.sampler.TemporalSampler(motion='flow'), "
                         "llavidal.features.motion.optical_flow_magnitude) for code that computes it.")
    if sampler_k or sampler_motion:
        sampler = dict(design.get("sampler") or {"k": 8, "motion": "diff", "train": "straight_through"})
        if sampler_k:
            sampler["k"] = int(sampler_k)
        if sampler_motion:
            sampler["motion"] = sampler_motion
        design["sampler"] = sampler
    if conditioning is not None:
        settings = None if conditioning in ("", "none") else {"mode": conditioning, "splice": True}
    if settings is not None:
        if conditioning_layers:
            layers = conditioning_layers
            if isinstance(layers, str):
                layers = [int(v) for v in layers.split(",") if v.strip()]
            settings["layers"] = [int(v) for v in layers]
        if conditioning_splice is not None:
            settings["splice"] = bool(conditioning_splice)
    elif conditioning_layers or conditioning_splice is not None:
        raise ValueError("--conditioning_layers / --video_conditioning_splice need video conditioning: add "
                         "--video_conditioning xattn|inject (or --video_design xattn|inject)")
    return (design or None), settings


__all__ = ["DESIGN_PRESETS", "design_names", "parse_triple", "resolve_design"]
