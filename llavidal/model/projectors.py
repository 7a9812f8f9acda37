"""Projectors: map a modality's features (feature_dim) into the LLM's hidden size.

Module layouts follow upstream so state-dict keys line up: ``linear`` is one ``nn.Linear`` (keys
``weight``, ``bias`` as in LLaVA v1's ``mm_projector``); ``mlp2x_gelu`` is
``Sequential(Linear, GELU, Linear)`` (keys ``0.*`` and ``2.*`` as in LLaVA-1.5). A modality whose ``design``
asks for more (pooling, positional encodings, a temporal sampler, a Q-Former) gets a
:class:`~llavidal.model.hf.frontends.VideoFrontend` instead (keys ``projector.*``, ``temporal_pe.*``...).
"""

from __future__ import annotations

from torch import nn

# One definition, in the self-contained model file that exported folders carry.
from llavidal.model.hf.frontends import VideoFrontend, build_modality_projector  # noqa: F401  (re-exported)
from llavidal.model.hf.modeling_llavidal import build_projector  # noqa: F401  (re-exported)
from llavidal.model.modality import ModalityRegistry


def build_projectors(modalities: ModalityRegistry, hidden_size: int) -> nn.ModuleDict:
    """One projector (or video frontend) per modality, keyed by modality name (registry order)."""
    return nn.ModuleDict({
        spec.name: build_modality_projector(spec.projector_type, spec.feature_dim, hidden_size, spec.design,
                                            spec.num_tokens)
        for spec in modalities
    })

