"""Per-frame motion for the temporal sampler: optical-flow magnitude with OpenCV's Farneback method.

LSTP-Chat feeds its temporal sampler the optical flow of every frame (RAFT there). Here the flow is computed at
extraction time with OpenCV's dense Farneback flow (CPU, no model weights) and reduced to one number per frame,
the mean flow magnitude in pixels of the original frame; the sampler (``motion="flow"``) takes it as a
``(B, T)`` input. OpenCV is optional (``pip install opencv-python-headless``, the ``motion`` extra); without it the sampler's
``motion="diff"`` (feature differences, computed inside the model) needs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from llavidal.utils.optional import MissingDependencyError

OPENCV_PACKAGE = "opencv-python-headless"


def _cv2() -> ModuleType:
    try:
        return importlib.import_module("cv2")
    except ImportError as err:
        raise MissingDependencyError(
            f"optical-flow motion needs OpenCV ('cv2'), which is not installed ({err}). Install it with: "
            f"pip install {OPENCV_PACKAGE} (or 'llavidal[motion]') -- or use the sampler's motion 'diff' (feature differences), which "
            "needs no extra package"
        ) from None


def flow_available() -> bool:
    """Whether OpenCV can be imported (optical-flow motion works)."""
    try:
        _cv2()
    except MissingDependencyError:
        return False
    return True


@dataclass(frozen=True)
class FarnebackParams:
    """``cv2.calcOpticalFlowFarneback`` parameters (OpenCV's tutorial values)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0


def _to_gray(cv2: ModuleType, frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[-1] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"a frame must be (H, W) gray or (H, W, 3) RGB; got shape {frame.shape}")


def optical_flow_magnitude(
    frames: np.ndarray,
    max_side: int | None = 160,
    params: FarnebackParams = FarnebackParams(),
) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` RGB or ``(T, H, W)`` gray (uint8, or any array/tensor convertible) -> ``(T,)``
    float32: entry ``t`` is the mean magnitude of the dense flow from frame ``t-1`` to frame ``t``, in pixels of
    the input frames. Frame 0 takes frame 1's value (it has no predecessor); a single frame gives ``[0]``.

    ``max_side``: frames are first resized so that their longer side is at most this (flow is costly and the
    per-frame mean needs no detail); magnitudes are scaled back to the input's pixel units.
    """
    cv2 = _cv2()
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] == 0:
        raise ValueError(f"expected frames (T, H, W, 3) or (T, H, W) with T >= 1; got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(frames, 0, 255).astype(np.uint8)
    height, width = frames.shape[1:3]
    scale = 1.0
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 sizes are (width, height)
    grays = []
    for frame in frames:
        gray = _to_gray(cv2, np.ascontiguousarray(frame))
        if scale != 1.0:
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        grays.append(gray)
    magnitudes = np.zeros(len(grays), dtype=np.float32)
    for t in range(1, len(grays)):
        flow = cv2.calcOpticalFlowFarneback(
            grays[t - 1], grays[t], None, params.pyr_scale, params.levels, params.winsize, params.iterations,
            params.poly_n, params.poly_sigma, params.flags,
        )  # (h, w, 2) pixel displacements
        magnitudes[t] = float(np.sqrt((flow.astype(np.float32) ** 2).sum(axis=-1)).mean()) / scale
    if len(grays) > 1:
        magnitudes[0] = magnitudes[1]
    return magnitudes
