"""Checks on a user's video before any model sees it: readable, not too large, not too long.

Every refusal is a :class:`VideoRejected` whose message is written for the person at the browser (what
was wrong and what to do), because the demo shows it as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from llavidal.utils.optional import require

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class VideoRejected(ValueError):
    """The video cannot be used; the message says why in words meant for the user."""


@dataclass(frozen=True)
class VideoLimits:
    """What the demo accepts from a user."""

    max_upload_mb: float = 200.0
    """Largest accepted file, in MiB (also passed to gradio as ``max_file_size``)."""
    max_duration_s: float = 300.0
    """Longest accepted video, in seconds."""

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive, got {self.max_duration_s}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream."""

    path: Path
    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str

    def describe(self) -> str:
        return (
            f"{self.path.name}: {self.duration_s:.1f} s, {self.num_frames} frames at {self.fps:.1f} fps, "
            f"{self.width}x{self.height}, {self.codec}"
        )


@dataclass(frozen=True)
class ImageInfo:
    """An uploaded image (answered as a 1-frame video)."""

    path: Path
    width: int
    height: int

    def describe(self) -> str:
        return f"{self.path.name}: an image, {self.width}x{self.height} (used as a 1-frame video)"


def probe_image(path: str | os.PathLike, limits: VideoLimits | None = None) -> ImageInfo:
    """Open ``path`` as an image, check its size against ``limits`` and return its facts (or :class:`VideoRejected`)."""
    from PIL import Image, UnidentifiedImageError

    limits = limits or VideoLimits()
    path = Path(path)
    if not path.is_file():
        raise VideoRejected(f"{path.name}: the file is missing (the upload may have expired); upload it again.")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise VideoRejected(f"{path.name} is {size / 2**20:.1f} MB, larger than the limit. {_limit_text(limits)} "
                            "Upload a smaller image.")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageInfo(path=path, width=int(image.width), height=int(image.height))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoRejected(f"{path.name} could not be read as an image ({type(err).__name__}). "
                            "Upload a JPEG, PNG or WebP image, or a video.") from None


def _limit_text(limits: VideoLimits) -> str:
    return f"The demo accepts videos up to {limits.max_upload_mb:g} MB and {limits.max_duration_s:g} s."


def probe_video(path: str | os.PathLike, limits: VideoLimits | None = None) -> VideoInfo:
    """Open ``path`` with PyAV, check it against ``limits`` and return its stream facts.

    The decoder is asked for one frame as well: a file whose header parses but whose frames do not
    decode is refused here rather than halfway through feature extraction.
    """
    av = require("av", "reading videos in the demo")
    limits = limits or VideoLimits()
    path = Path(path)
    if not path.is_file():
        raise VideoRejected(f"{path.name}: the file is missing (the upload may have expired); upload it again.")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise VideoRejected(
            f"{path.name} is {size / 2**20:.1f} MB, larger than the limit. {_limit_text(limits)} "
            "Trim or compress it and upload it again."
        )
    if size == 0:
        raise VideoRejected(f"{path.name} is empty; upload a video file ({', '.join(VIDEO_EXTENSIONS)}).")
    try:
        container = av.open(str(path))
    except Exception as err:  # PyAV raises several FFmpeg error classes (InvalidDataError, ...)
        raise VideoRejected(
            f"{path.name} could not be read as a video ({type(err).__name__}). "
            f"Upload a video file such as MP4 (H.264) or WebM."
        ) from None
    try:
        if not container.streams.video:
            raise VideoRejected(f"{path.name} has no video stream (audio only?). Upload a video file.")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        fps = float(rate)
        duration = _duration_seconds(container, stream)
        num_frames = int(stream.frames or 0)
        if duration <= 0 and num_frames and fps:
            duration = num_frames / fps
        if duration > limits.max_duration_s:
            raise VideoRejected(
                f"{path.name} lasts {duration:.0f} s, longer than the limit. {_limit_text(limits)} "
                "Cut a shorter clip and upload it again."
            )
        try:
            first = next(container.decode(stream), None)
        except Exception as err:
            raise VideoRejected(
                f"{path.name}: its frames could not be decoded ({type(err).__name__}); the file may be "
                "damaged or use an unsupported codec. Re-encode it as MP4 (H.264) and upload it again."
            ) from None
        if first is None:
            raise VideoRejected(f"{path.name} contains no video frames. Upload another video.")
        if num_frames <= 0 and fps > 0 and duration > 0:
            num_frames = int(round(duration * fps))
        return VideoInfo(
            path=path, duration_s=float(duration), fps=fps, num_frames=num_frames,
            width=int(first.width), height=int(first.height), codec=str(stream.codec_context.name),
        )
    finally:
        container.close()


def _duration_seconds(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # PyAV reports the container duration in microseconds
    return 0.0


def read_frame(path: str | os.PathLike, index: int) -> np.ndarray:
    """Decode frame ``index`` (0-based; clamped to the last frame) as uint8 RGB ``(H, W, 3)``."""
    av = require("av", "reading videos in the demo")
    last: np.ndarray | None = None
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            last = frame.to_ndarray(format="rgb24")
            if i >= index:
                break
    if last is None:
        raise VideoRejected(f"{Path(path).name} contains no video frames.")
    return last
