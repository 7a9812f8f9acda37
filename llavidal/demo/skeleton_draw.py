"""Draw extracted skeletons over a video frame, so the user sees what the pose features were made from."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llavidal.features.pose.ntu import BONES as NTU_BONES

# One colour per body (RGB); bones are drawn in the body colour, joints in white with a dark rim.
BODY_COLOURS = ((255, 64, 64), (64, 160, 255), (80, 220, 100), (255, 200, 40))


def draw_skeletons(
    frame: np.ndarray,
    bodies: Sequence[np.ndarray],
    bones: Sequence[tuple[int, int]] = NTU_BONES,
    line_width: int | None = None,
) -> np.ndarray:
    """Return a copy of ``frame`` (uint8 RGB ``(H, W, 3)``) with each body's bones and joints drawn.

    ``bodies`` holds one ``(J, 2)`` array per body with pixel coordinates ``(x, y)`` in ``frame``;
    joints that are NaN or outside the image are skipped with the bones that touch them.
    """
    from PIL import Image, ImageDraw

    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) RGB, got shape {frame.shape}")
    image = Image.fromarray(np.ascontiguousarray(frame.astype(np.uint8)))
    height, width = frame.shape[:2]
    width_px = line_width or max(2, round(min(height, width) / 90))
    radius = width_px + 1
    draw = ImageDraw.Draw(image)
    for body_index, joints in enumerate(bodies):
        joints = np.asarray(joints, dtype=np.float64)
        if joints.ndim != 2 or joints.shape[1] != 2:
            raise ValueError(f"body {body_index}: joints must be (J, 2) pixel coordinates, got {joints.shape}")
        inside = (
            np.isfinite(joints).all(axis=1)
            & (joints[:, 0] >= -0.5) & (joints[:, 0] <= width - 0.5)
            & (joints[:, 1] >= -0.5) & (joints[:, 1] <= height - 0.5)
        )
        colour = BODY_COLOURS[body_index % len(BODY_COLOURS)]
        for parent, child in bones:
            if parent < len(joints) and child < len(joints) and inside[parent] and inside[child]:
                draw.line(
                    [tuple(joints[parent]), tuple(joints[child])], fill=colour, width=width_px,
                )
        for x, y in joints[inside]:
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255), outline=(20, 20, 20),
            )
    return np.asarray(image)


SKELETON_IMAGE_MIN_SIDE = 320
"""Frames smaller than this are enlarged (by a whole factor) before the skeleton is drawn, to be legible."""


def draw_skeleton_frame(video_path, skeleton, num_frames: int | None = None) -> np.ndarray | None:
    """``skeleton`` (a :class:`~llavidal.features.pose.extract.FoundSkeleton`) drawn over the middle frame
    among those where a body was found; None when no body was found."""
    from llavidal.demo.video_io import read_frame

    with_body = [t for t, frame in enumerate(skeleton.sequence.frames) if frame]
    if not with_body:
        return None
    index = with_body[len(with_body) // 2]
    frame = read_frame(video_path, index * skeleton.frame_stride)
    height, width = frame.shape[:2]
    bodies = skeleton.pixels(index, width, height)
    scale = max(1, -(-SKELETON_IMAGE_MIN_SIDE // min(height, width)))  # small videos: draw on an enlarged frame
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
        bodies = [(xy + 0.5) * scale - 0.5 for xy in bodies]  # pixel centres move with the enlargement
    return draw_skeletons(frame, bodies)
