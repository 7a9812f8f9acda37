"""Deterministic H.264 mp4 writing (PyAV) and reading.

Byte-identical reruns need: one encoder thread (x264's threaded lookahead and slices depend on timing),
no wall-clock metadata, a fixed encoder configuration, and x264's macroblock-tree rate control off:
with ``mbtree`` on, encoding the same frames twice in one process gave different files (the second
encode depends on what the first left in memory), which made the world's files depend on the order and
number of clips each process had rendered before. The container's muxer writes no creation
time unless asked to.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from llavidal.utils.io import atomic_path
from llavidal.utils.optional import require

X264_OPTIONS = {"threads": "1", "preset": "veryfast", "crf": "20", "tune": "animation",
                "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0"}


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) mp4, atomically."""
    av = require("av", "writing world videos", extra="world")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(int(fps), 1), options=dict(X264_OPTIONS))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
            for index, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video as (T, H, W, 3) uint8 RGB."""
    av = require("av", "reading world videos", extra="world")
    with av.open(str(Path(path))) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
