"""Projectors: map a modality's features (feature_dim) into the LLM's hidden size.

Module layouts follow upstream so state-dict keys line up: ``linear`` is one ``nn.Linear`` (keys
``weight``, ``bias`` as in LLaVA v1's ``mm_projector``); ``mlp2x_gelu`` is
``Sequential(Linear, GELU, Linear)`` (keys ``0.*`` and ``2.*`` as in LLaVA-1.5).
"""

from __future__ import annotations

from torch import nn

# One definition, in the self-contained model file that exported folders carry.
from llavidal.model.hf.modeling_llavidal import build_projector  # noqa: F401  (re-exported)
from llavidal.model.modality import ModalityRegistry


def build_projectors(modalities: ModalityRegistry, hidden_size: int) -> nn.ModuleDict:
    """One projector per modality, keyed by modality name (registry order)."""
    return nn.ModuleDict(
        {spec.name: build_projector(spec.projector_type, spec.feature_dim, hidden_size) for spec in modalities}
    )

