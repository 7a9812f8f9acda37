"""The pose encoder: a skeleton transformer from NTU joints to (tokens, dim) pose features.

Input: an NTU RGB+D skeleton sequence as a ``(T, persons, 25, 3)`` array of camera-space metres
(:meth:`llavidal.features.pose.ntu.SkeletonSequence.to_array`); an absent person is all zeros.
Output: ``(tokens, dim)`` features, ``(256, 216)`` by default as upstream's PoseCLIP features.

Pipeline (one sample)::

    (T, M, 25, 3) metres, camera space
      -> normalise: centre on the main person's SpineBase, rotate about the vertical axis so that the
         hips/shoulders face a canonical direction (camera-view invariance), scale by torso length
      -> resample to F frames (linear interpolation), add velocities      (F, M, 25*6)
      -> per-(frame, person) MLP embedding + time and person embeddings  (F*M, hidden)
      -> transformer encoder (absent persons masked out)                  (F*M, hidden)
      -> mean over the persons present in each frame                      (F, dim)
      -> pool/interpolate over time to ``tokens`` rows                    (tokens, dim)

With the defaults F = 64 frames, the 64 per-frame rows are linearly interpolated to the 256 output
rows (``num_frames=256`` makes them the transformer's own outputs at a much higher attention cost; a
clip is rarely longer than a few seconds of motion). Row i of the output describes the i-th stretch of
the clip. A pooled embedding (masked mean, over the whole clip or a window of its frames) and an
optional linear projection into a text encoder's space serve contrastive pretraining
(:mod:`llavidal.features.pose.pretrain`), where pretraining a routine's segments against their own
texts keeps the rows local in time.

Checkpoints are a folder with ``pose_encoder.safetensors`` (weights) and ``pose_encoder.json``
(config and how it was trained); :func:`load_pose_encoder` reads them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from llavidal.features.pose.ntu import JOINT_INDEX, NUM_JOINTS, SkeletonSequence, read_skeleton

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "pose_encoder.safetensors"
CONFIG_NAME = "pose_encoder.json"
CHECKPOINT_FORMAT = "llavidal-pose-encoder/1"
SEEDED_MODEL_ID = "llavidal-pose-seeded-untrained"

_SPINE_BASE = JOINT_INDEX["SpineBase"]
_SPINE_SHOULDER = JOINT_INDEX["SpineShoulder"]
_HIP_LEFT, _HIP_RIGHT = JOINT_INDEX["HipLeft"], JOINT_INDEX["HipRight"]
_SHOULDER_LEFT, _SHOULDER_RIGHT = JOINT_INDEX["ShoulderLeft"], JOINT_INDEX["ShoulderRight"]
VIEW_NORMALIZATIONS = ("yaw", "none")
TOKEN_POOLINGS = ("frames", "positions")


@dataclass
class PoseEncoderConfig:
    """Shape and size of the skeleton transformer."""

    tokens: int = 256
    """Output rows per sample (upstream: 256)."""
    dim: int = 216
    """Output feature dimension (upstream: 216)."""
    hidden: int = 216
    """Transformer width."""
    depth: int = 4
    """Transformer layers."""
    heads: int = 6
    """Attention heads (must divide ``hidden``)."""
    mlp_ratio: float = 2.0
    """Feed-forward width as a multiple of ``hidden``."""
    dropout: float = 0.1
    num_frames: int = 64
    """Frames the input is resampled to (F); the sequence has F x persons positions."""
    num_persons: int = 2
    num_joints: int = NUM_JOINTS
    view_normalization: str = "yaw"
    """``yaw``: rotate about the camera's vertical axis so the body faces a canonical direction;
    ``none``: keep camera coordinates (centred and scaled only)."""
    text_dim: int = 0
    """Dimension of the text space a projection head maps pooled embeddings into (0: no head)."""
    token_pooling: str = "frames"
    """How the (F x persons) output sequence becomes ``tokens`` rows: ``frames`` averages the persons
    present in each frame, then pools/interpolates the F frames over time (absent persons never leak
    into a row); ``positions`` pools the raw time-major (frame, person) sequence (the first releases)."""

    def __post_init__(self) -> None:
        for name in ("tokens", "dim", "hidden", "depth", "heads", "num_frames", "num_persons", "num_joints"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"PoseEncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"PoseEncoderConfig: hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.token_pooling not in TOKEN_POOLINGS:
            raise ValueError(f"PoseEncoderConfig.token_pooling must be one of {TOKEN_POOLINGS}")
        if self.view_normalization not in VIEW_NORMALIZATIONS:
            raise ValueError(f"PoseEncoderConfig.view_normalization must be one of {VIEW_NORMALIZATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("PoseEncoderConfig.dropout must be in [0, 1)")

    @property
    def input_dim(self) -> int:
        return self.num_joints * 6  # position + velocity per joint

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PoseEncoderConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown pose encoder config fields {unknown}; is the checkpoint from a newer llavidal?")
        # Checkpoints saved before token_pooling existed pooled raw positions: keep their features as they were.
        return cls(**{"token_pooling": "positions", **data})


# ---------------------------------------------------------------------------------------------------
# Normalisation (numpy, one sample)


def as_skeleton_array(sample: SkeletonSequence | np.ndarray | str | os.PathLike, num_persons: int = 2) -> np.ndarray:
    """A skeleton sample as a float32 ``(T, num_persons, 25, 3)`` array.

    Accepts a :class:`SkeletonSequence`, a ``.skeleton`` path, or an array ``(T, M, 25, C>=3)`` /
    ``(T, 25, C>=3)`` (one person). Extra persons are dropped, missing ones zero-filled.
    """
    if isinstance(sample, (str, os.PathLike)):
        sample = read_skeleton(sample)
    if isinstance(sample, SkeletonSequence):
        return sample.to_array(max_bodies=num_persons).astype(np.float32)
    array = np.asarray(sample, dtype=np.float32)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[2] != NUM_JOINTS or array.shape[3] < 3:
        raise ValueError(f"expected a skeleton array (T, persons, {NUM_JOINTS}, 3), got shape {array.shape}")
    array = array[..., :3]
    if array.shape[1] >= num_persons:
        return np.ascontiguousarray(array[:, :num_persons])
    pad = np.zeros((array.shape[0], num_persons - array.shape[1], NUM_JOINTS, 3), dtype=np.float32)
    return np.concatenate([array, pad], axis=1)


def _yaw_rotation(direction: np.ndarray) -> np.ndarray:
    """Rotation about the y (up) axis taking ``direction``'s horizontal part onto +x."""
    angle = math.atan2(float(direction[2]), float(direction[0]))
    c, s = math.cos(angle), math.sin(angle)
    # R @ [cos a, *, sin a] = [1, *, 0]: a rotation by -a about y.
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float32)


def normalize_skeleton(array: np.ndarray, view_normalization: str = "yaw") -> tuple[np.ndarray, np.ndarray]:
    """Centre, rotate and scale one sample. ``(T, M, 25, 3) -> ((T, M, 25, 3), valid (T, M) bool)``.

    - Origin: the main person's (most frames present) mean SpineBase, so movement through the scene
      is kept (walking differs from standing).
    - View: with ``yaw``, a rotation about the vertical (y, up in NTU camera space) axis that puts the
      mean left-minus-right hip/shoulder direction on +x, making features invariant to the camera's
      azimuth; tilt is kept so lying down still differs from standing.
    - Scale: divided by the main person's median torso length (SpineBase to SpineShoulder).
    Absent persons (all-zero joints) stay zero.
    """
    if view_normalization not in VIEW_NORMALIZATIONS:
        raise ValueError(f"view_normalization must be one of {VIEW_NORMALIZATIONS}, got {view_normalization!r}")
    array = np.asarray(array, dtype=np.float32)
    valid = np.abs(array).reshape(array.shape[0], array.shape[1], -1).max(axis=-1) > 0  # (T, M)
    out = np.zeros_like(array)
    if not valid.any():
        return out, valid
    main = int(valid.sum(axis=0).argmax())
    main_frames = array[valid[:, main], main]  # (Tm, 25, 3)
    origin = main_frames[:, _SPINE_BASE].mean(axis=0)  # (3,)
    centred = array - origin
    rotation = np.eye(3, dtype=np.float32)
    if view_normalization == "yaw":
        across = (main_frames[:, _HIP_LEFT] - main_frames[:, _HIP_RIGHT]) + (
            main_frames[:, _SHOULDER_LEFT] - main_frames[:, _SHOULDER_RIGHT]
        )
        across = across.mean(axis=0)
        if np.hypot(across[0], across[2]) > 1e-6:
            rotation = _yaw_rotation(across)
    torso = np.linalg.norm(main_frames[:, _SPINE_SHOULDER] - main_frames[:, _SPINE_BASE], axis=-1)
    scale = float(np.median(torso))
    if not np.isfinite(scale) or scale < 1e-4:
        # No torso (e.g. partial skeletons): fall back to the spread of the joints.
        scale = float(np.linalg.norm(main_frames - main_frames.mean(axis=1, keepdims=True), axis=-1).mean()) or 1.0
    out[valid] = (centred[valid] @ rotation.T) / scale
    return out, valid


def resample_frames(array: np.ndarray, valid: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear-interpolate ``(T, ...)`` to ``(num_frames, ...)``; ``valid`` (T, M) by nearest frame."""
    length = array.shape[0]
    if length == 0:
        return (
            np.zeros((num_frames,) + array.shape[1:], dtype=np.float32),
            np.zeros((num_frames,) + valid.shape[1:], dtype=bool),
        )
    position = np.linspace(0.0, length - 1, num_frames)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, length - 1)
    weight = (position - lower).astype(np.float32).reshape((-1,) + (1,) * (array.ndim - 1))
    both = valid[lower] & valid[upper]
    # Interpolate only between two present frames; otherwise take the nearest one as is.
    nearest = np.where(position - lower < 0.5, lower, upper)
    mixed = array[lower] * (1 - weight) + array[upper] * weight
    out = np.where(both[..., None, None], mixed, array[nearest])
    return out.astype(np.float32), valid[nearest]


def skeleton_features(
    sample: SkeletonSequence | np.ndarray | str | os.PathLike,
    config: PoseEncoderConfig,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoder input for one sample: ``(F, M, 25*6)`` float32 features and ``(F, M)`` bool mask.

    With ``rng``, training augmentation is applied: a random temporal crop (70-100% of the clip), a
    small random rotation and scale, and joint jitter.
    """
    features, mask, _ = skeleton_window_features(sample, config, None, rng)
    return features, mask


def window_frame_weights(length: int, window: tuple[int, int], num_frames: int) -> np.ndarray:
    """Which of the ``num_frames`` resampled frames fall in ``window`` = ``[start, end)`` of the
    ``length`` original frames: a ``(num_frames,)`` 0/1 float32 vector (never all zero: a window
    shorter than the resampling step takes the resampled frame nearest its centre)."""
    start, end = max(0, int(window[0])), min(int(length), int(window[1]))
    if length <= 0 or end <= start:
        raise ValueError(f"window {tuple(window)} is empty for a clip of {length} frames")
    position = np.linspace(0.0, max(length - 1, 0), num_frames)
    weights = ((position >= start - 0.5) & (position < end - 0.5)).astype(np.float32)
    if not weights.any():
        weights[int(np.abs(position - (start + end - 1) / 2).argmin())] = 1.0
    return weights


def skeleton_window_features(
    sample: SkeletonSequence | np.ndarray | str | os.PathLike,
    config: PoseEncoderConfig,
    window: tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`skeleton_features` plus ``(F,)`` weights of the resampled frames inside ``window``
    (``[start_frame, end_frame)`` of the sample's own frames; ``None``: the whole clip).

    The augmentation's temporal crop never cuts into the window, so the weights always mark the
    window's frames within the (cropped) clip.
    """
    array = as_skeleton_array(sample, config.num_persons)  # (T, M, 25, 3)
    length = array.shape[0]
    if window is not None:
        window = (max(0, int(window[0])), min(length, int(window[1])))
        if window[1] <= window[0]:
            raise ValueError(f"window [{window[0]}, {window[1]}) holds no frame of a {length}-frame clip")
    if rng is not None and length > 4:
        keep = int(round(length * rng.uniform(0.7, 1.0)))
        low, high = 0, length - keep
        if window is not None:  # keep the whole window inside the crop
            low, high = max(0, window[1] - keep), min(window[0], length - keep)
        if low <= high:
            start = int(rng.integers(low, high + 1))
            array = array[start : start + keep]
            if window is not None:
                window = (window[0] - start, window[1] - start)
    weights = (
        np.ones(config.num_frames, dtype=np.float32) if window is None
        else window_frame_weights(array.shape[0], window, config.num_frames)
    )
    normalised, valid = normalize_skeleton(array, config.view_normalization)
    if rng is not None:
        yaw, tilt = rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.1)
        cy, sy, ct, st = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
        rotation = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=np.float32) @ np.array(
            [[1, 0, 0], [0, ct, -st], [0, st, ct]], dtype=np.float32
        )
        normalised = normalised @ rotation.T * rng.uniform(0.9, 1.1)
        normalised = normalised + rng.normal(0.0, 0.01, normalised.shape).astype(np.float32)
        normalised[~valid] = 0.0
    positions, mask = resample_frames(normalised, valid, config.num_frames)  # (F, M, 25, 3), (F, M)
    # Velocity in torso lengths per (resampled) clip step, scaled so that typical values are O(1).
    velocity = np.zeros_like(positions)
    velocity[1:] = (positions[1:] - positions[:-1]) * (config.num_frames / 8.0)
    velocity[1:][~(mask[1:] & mask[:-1])] = 0.0
    features = np.concatenate([positions, velocity], axis=-1)  # (F, M, 25, 6)
    features[~mask] = 0.0
    return features.reshape(config.num_frames, config.num_persons, -1).astype(np.float32), mask, weights


def collate_skeletons(
    samples: Sequence[SkeletonSequence | np.ndarray | str | os.PathLike],
    config: PoseEncoderConfig,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch encoder inputs: ``(B, F, M, 25*6)`` float and ``(B, F, M)`` bool mask."""
    pairs = [skeleton_features(sample, config, rng) for sample in samples]
    features = torch.from_numpy(np.stack([p[0] for p in pairs]))
    mask = torch.from_numpy(np.stack([p[1] for p in pairs]))
    return features, mask


def collate_skeleton_windows(
    samples: Sequence[SkeletonSequence | np.ndarray | str | os.PathLike],
    windows: Sequence[tuple[int, int] | None],
    config: PoseEncoderConfig,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`collate_skeletons` plus ``(B, F)`` window weights (see :func:`skeleton_window_features`)."""
    if len(windows) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(windows)} windows")
    triples = [skeleton_window_features(s, config, w, rng) for s, w in zip(samples, windows)]
    return tuple(torch.from_numpy(np.stack([t[i] for t in triples])) for i in range(3))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Model


class PoseEncoder(nn.Module):
    """Skeleton transformer: ``(B, F, M, 25*6)`` inputs + mask -> ``(B, tokens, dim)`` features."""

    def __init__(self, config: PoseEncoderConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden
        self.input_proj = nn.Sequential(
            nn.LayerNorm(config.input_dim), nn.Linear(config.input_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.time_embedding = nn.Parameter(torch.zeros(1, config.num_frames, 1, hidden))
        self.person_embedding = nn.Parameter(torch.zeros(1, 1, config.num_persons, hidden))
        nn.init.trunc_normal_(self.time_embedding, std=0.02)
        nn.init.trunc_normal_(self.person_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, config.heads, int(hidden * config.mlp_ratio), config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.output_proj = nn.Linear(hidden, config.dim) if hidden != config.dim else nn.Identity()
        self.text_projection = nn.Linear(config.dim, config.text_dim, bias=False) if config.text_dim else None
        # CLIP's temperature, learned (log of 1/0.07).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07))) if config.text_dim else None
        self.checkpoint_info: dict[str, Any] = {}
        self.checkpoint_folder: Path | None = None
        """The folder it was loaded from (None for a seeded or in-memory encoder)."""

    def _sequence(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, persons, _ = features.shape
        cfg = self.config
        if (frames, persons, features.shape[-1]) != (cfg.num_frames, cfg.num_persons, cfg.input_dim):
            raise ValueError(
                f"pose encoder expects inputs (B, {cfg.num_frames}, {cfg.num_persons}, {cfg.input_dim}), got "
                f"{tuple(features.shape)}; build them with collate_skeletons(..., encoder.config)"
            )
        x = self.input_proj(features) + self.time_embedding + self.person_embedding  # (B, F, M, H)
        x = x.reshape(batch, frames * persons, -1)  # (B, F*M, H), time-major
        padding = ~mask.reshape(batch, frames * persons)  # True = ignore
        empty = padding.all(dim=1)
        if empty.any():  # a sample with no person at all: attend to everything rather than produce NaN
            padding = padding & ~empty[:, None]
        x = self.transformer(x, src_key_padding_mask=padding)
        return self.output_proj(self.norm(x)), padding  # (B, F*M, dim), (B, F*M)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, F, M, 25*6)``, ``(B, F, M)`` -> ``(B, tokens, dim)``."""
        sequence, padding = self._sequence(features, mask)
        return self._to_tokens(sequence, padding)

    def _to_tokens(self, sequence: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``(B, F*M, dim)`` time-major outputs and their ``(B, F*M)`` padding -> ``(B, tokens, dim)``."""
        tokens = self.config.tokens
        if self.config.token_pooling == "frames":
            batch, length, dim = sequence.shape
            persons = self.config.num_persons
            present = (~padding).to(sequence.dtype).reshape(batch, length // persons, persons, 1)
            by_frame = sequence.reshape(batch, length // persons, persons, dim)
            # Mean over the persons present in a frame; a frame with nobody takes the plain mean.
            count = present.sum(dim=2)
            sequence = torch.where(
                count > 0, (by_frame * present).sum(dim=2) / count.clamp(min=1.0), by_frame.mean(dim=2)
            )  # (B, F, dim)
        if sequence.shape[1] == tokens:
            return sequence
        by_channel = sequence.transpose(1, 2)  # (B, dim, L)
        if sequence.shape[1] > tokens:
            pooled = nn.functional.adaptive_avg_pool1d(by_channel, tokens)
        else:
            pooled = nn.functional.interpolate(by_channel, size=tokens, mode="linear", align_corners=True)
        return pooled.transpose(1, 2)  # (B, tokens, dim)

    def encode_with_pooled(
        self, features: torch.Tensor, mask: torch.Tensor, frame_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``-> (tokens (B, tokens, dim), pooled (B, dim))``; pooled = mean over present positions.

        ``frame_weights`` ``(B, F)`` restricts the mean to a window of frames (the sequence is still
        encoded whole, so a window's embedding sees its context): pretraining a routine's segments
        against their own texts this way makes the output rows, and so the tokens, local in time.
        """
        sequence, padding = self._sequence(features, mask)
        keep = (~padding).to(sequence.dtype)  # (B, L)
        if frame_weights is not None:
            batch, frames, persons = mask.shape
            if frame_weights.shape != (batch, frames):
                raise ValueError(f"frame_weights must be (B, F) = {(batch, frames)}, got {tuple(frame_weights.shape)}")
            windowed = keep * frame_weights.to(keep).repeat_interleave(persons, dim=1)  # time-major
            # A window where no person is present falls back to the whole clip rather than to nothing.
            keep = torch.where(windowed.sum(dim=1, keepdim=True) > 0, windowed, keep)
        keep = keep.unsqueeze(-1)  # (B, L, 1)
        pooled = (sequence * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self._to_tokens(sequence, padding), pooled

    def embed_text_space(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled ``(B, dim)`` -> unit vectors ``(B, text_dim)`` in the text encoder's space."""
        if self.text_projection is None:
            raise ValueError("this pose encoder has no text projection (config.text_dim = 0)")
        return nn.functional.normalize(self.text_projection(pooled), dim=-1)

    @torch.no_grad()
    def encode(
        self,
        samples: Sequence[SkeletonSequence | np.ndarray | str | os.PathLike],
        batch_size: int = 16,
    ) -> np.ndarray:
        """Features for a list of samples: ``(B, tokens, dim)`` float32 numpy (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        outputs = []
        try:
            for start in range(0, len(samples), batch_size):
                features, mask = collate_skeletons(samples[start : start + batch_size], self.config)
                outputs.append(self(features.to(device), mask.to(device)).float().cpu().numpy())
        finally:
            self.train(was_training)
        if not outputs:
            return np.zeros((0, self.config.tokens, self.config.dim), dtype=np.float32)
        return np.concatenate(outputs)

    @property
    def model_id(self) -> str:
        return str(self.checkpoint_info.get("model_id", SEEDED_MODEL_ID))

    def weights_sha256(self) -> str:
        from llavidal.data.feature_store import weights_sha256

        return weights_sha256(state_dict=self.state_dict())


# ---------------------------------------------------------------------------------------------------
# Public helpers, saving and loading


def pose_features_for_skeleton(
    sample: SkeletonSequence | np.ndarray | str | os.PathLike, encoder: PoseEncoder
) -> np.ndarray:
    """Pose features of one skeleton sample: ``(tokens, dim)`` float32 (``(256, 216)`` by default)."""
    return encoder.encode([sample])[0]


def seeded_pose_encoder(config: PoseEncoderConfig | None = None, seed: int = 0) -> PoseEncoder:
    """A deterministically initialised, untrained encoder (a baseline; pretrain for useful features)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = PoseEncoder(config or PoseEncoderConfig())
    finally:
        torch.random.set_rng_state(generator_state)
    encoder.checkpoint_info = {"model_id": SEEDED_MODEL_ID, "seed": seed}
    return encoder.eval()


def save_pose_encoder(encoder: PoseEncoder, folder: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``pose_encoder.safetensors`` + ``pose_encoder.json`` into ``folder`` (atomically)."""
    from safetensors.torch import save_file

    from llavidal.utils.io import atomic_path, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
    record = {"format": CHECKPOINT_FORMAT, "config": encoder.config.to_dict(), **(info or {})}
    atomic_write_json(folder / CONFIG_NAME, record)
    return folder


def load_pose_encoder(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    config: PoseEncoderConfig | None = None,
) -> PoseEncoder:
    """Load a pose encoder saved by :func:`save_pose_encoder` / ``llavidal pose-pretrain``.

    ``path`` is the checkpoint folder (or its ``pose_encoder.safetensors``). ``None`` or ``"seeded"``
    gives :func:`seeded_pose_encoder` (untrained; a warning says so). Returns the model in eval mode.
    """
    if path is None or str(path) == "seeded":
        logger.warning("using an untrained, seeded pose encoder; train one with 'llavidal pose-pretrain'")
        return seeded_pose_encoder(config).to(device)
    from safetensors.torch import load_file

    path = Path(path)
    folder = path.parent if path.is_file() else path
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{path}: not a pose encoder checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "make one with 'llavidal pose-pretrain --output_dir DIR'"
        )
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if record.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{config_path}: format {record.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
    encoder = PoseEncoder(PoseEncoderConfig.from_dict(record["config"]))
    state = load_file(str(weights_path))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights_path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    info = {k: v for k, v in record.items() if k not in ("format", "config")}
    info.setdefault("model_id", str(folder))
    encoder.checkpoint_info = info
    encoder.checkpoint_folder = folder.resolve()
    return encoder.to(device).eval()
