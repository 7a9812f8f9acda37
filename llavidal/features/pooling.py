"""Spatio-temporal pooling of per-frame patch features, as upstream (Video-ChatGPT / LLAVIDAL).

From ``(T, P, D)`` patch features of ``T`` sampled frames:

- temporal tokens: the mean over the ``P`` patches of each frame, ``(T, D)``, zero-padded at the end to
  ``temporal_tokens`` rows (upstream: 100);
- spatial tokens: the mean over the ``T`` frames of each patch, ``(P, D)`` (upstream: 256 for ViT-L/14);

concatenated to ``(temporal_tokens + P, D)`` (upstream: ``(356, 1024)``).

Two knobs for smaller presets, both off by default (upstream's exact result): ``temporal_tokens`` below
``T`` averages the per-frame tokens over ``temporal_tokens`` even bins of frames, and ``spatial_grid``
below the encoder's grid average-pools the ``g x g`` grid of spatial tokens down to
``spatial_grid x spatial_grid`` (e.g. 16x16 -> 4x4: 16 spatial tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PoolingConfig:
    """Token counts of the pooled video features."""

    temporal_tokens: int = 100
    """Rows of temporal tokens (zero-padded when a video has fewer sampled frames)."""
    spatial_grid: int | None = None
    """Side of the spatial token grid; ``None`` keeps the encoder's grid (16 for 224 px / 14 px patches)."""

    def __post_init__(self) -> None:
        if self.temporal_tokens < 1:
            raise ValueError(f"temporal_tokens must be at least 1, got {self.temporal_tokens}")
        if self.spatial_grid is not None and self.spatial_grid < 1:
            raise ValueError(f"spatial_grid must be at least 1, got {self.spatial_grid}")

    def spatial_tokens(self, num_patches: int) -> int:
        grid = math.isqrt(num_patches)
        if self.spatial_grid is None or self.spatial_grid == grid:
            return num_patches
        if grid * grid != num_patches:
            raise ValueError(f"cannot pool {num_patches} patches on a square grid; leave spatial_grid unset")
        if self.spatial_grid > grid:
            raise ValueError(f"spatial_grid {self.spatial_grid} is larger than the encoder's {grid}x{grid} patch grid")
        return self.spatial_grid**2

    def num_tokens(self, num_patches: int) -> int:
        """Rows of the pooled features: temporal + spatial tokens (356 upstream)."""
        return self.temporal_tokens + self.spatial_tokens(num_patches)

    def describe(self, num_patches: int) -> str:
        grid = math.isqrt(num_patches)
        side = self.spatial_grid or grid
        return (f"spatio_temporal(temporal={self.temporal_tokens} mean over patches, zero-padded; "
                f"spatial={self.spatial_tokens(num_patches)} mean over frames, grid {grid}x{grid}->{side}x{side})")


def spatio_temporal_pool(features: torch.Tensor | np.ndarray, config: PoolingConfig = PoolingConfig()) -> torch.Tensor:
    """``(T, P, D)`` patch features -> ``(temporal_tokens + spatial_tokens, D)`` float32 pooled features."""
    features = torch.as_tensor(features)
    if features.ndim != 3 or features.shape[0] == 0:
        raise ValueError(f"expected patch features of shape (T, P, D) with T >= 1, got {tuple(features.shape)}")
    features = features.float()
    frames, patches, dim = features.shape
    temporal = features.mean(dim=1)  # (T, D)
    if frames > config.temporal_tokens:
        # (1, D, T) -> (1, D, temporal_tokens): mean over even bins of frames
        temporal = F.adaptive_avg_pool1d(temporal.t().unsqueeze(0), config.temporal_tokens)[0].t()
    elif frames < config.temporal_tokens:
        temporal = torch.cat([temporal, temporal.new_zeros(config.temporal_tokens - frames, dim)])  # (T_max, D)
    spatial = features.mean(dim=0)  # (P, D)
    spatial_count = config.spatial_tokens(patches)
    if spatial_count != patches:
        grid = math.isqrt(patches)
        spatial_grid = spatial.t().reshape(1, dim, grid, grid)  # (1, D, g, g), patches are row-major
        pooled = F.adaptive_avg_pool2d(spatial_grid, config.spatial_grid)  # (1, D, s, s)
        spatial = pooled.reshape(dim, spatial_count).t()  # (s*s, D)
    return torch.cat([temporal, spatial])  # (T_max + S, D)
