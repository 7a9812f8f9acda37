"""Projectors: map a modality's features (feature_dim) into the LLM's hidden size.

Module layouts follow upstream so state-dict keys line up: ``linear`` is one ``nn.Linear`` (keys
``weight``, ``bias`` as in LLaVA v1's ``mm_projector``); ``mlp2x_gelu`` is
``Sequential(Linear, GELU, Linear)`` (keys ``0.*`` and ``2.*`` as in LLaVA-1.5).
"""

from __future__ import annotations

from torch import nn

from llavidal.model.modality import PROJECTOR_TYPES, ModalityRegistry


def build_projector(projector_type: str, feature_dim: int, hidden_size: int) -> nn.Module:
    """A projector ``(..., feature_dim) -> (..., hidden_size)``."""
    if projector_type == "linear":
        return nn.Linear(feature_dim, hidden_size)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    raise ValueError(f"unknown projector_type {projector_type!r}; one of {PROJECTOR_TYPES}")


def build_projectors(modalities: ModalityRegistry, hidden_size: int) -> nn.ModuleDict:
    """One projector per modality, keyed by modality name (registry order)."""
    return nn.ModuleDict(
        {spec.name: build_projector(spec.projector_type, spec.feature_dim, hidden_size) for spec in modalities}
    )

