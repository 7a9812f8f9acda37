"""NTU RGB+D ``.skeleton`` files: reader and writer (multi-body, 25 joints).

Format (text, one file per clip)::

    <frame count>
    per frame:
      <body count>
      per body:
        <bodyID> <clipedEdges> <handLeftConfidence> <handLeftState> <handRightConfidence>
        <handRightState> <isRestricted> <leanX> <leanY> <trackingState>
        <joint count = 25>
        per joint: <x> <y> <z> <depthX> <depthY> <colorX> <colorY>
                   <orientationW> <orientationX> <orientationY> <orientationZ> <trackingState>

x, y, z are camera-space metres; depth/colour are pixel coordinates in the 512x424 depth and
1920x1080 colour images. Joint order (1-based in NTU's papers)::

    1 SpineBase 2 SpineMid 3 Neck 4 Head 5 ShoulderLeft 6 ElbowLeft 7 WristLeft 8 HandLeft
    9 ShoulderRight 10 ElbowRight 11 WristRight 12 HandRight 13 HipLeft 14 KneeLeft 15 AnkleLeft
    16 FootLeft 17 HipRight 18 KneeRight 19 AnkleRight 20 FootRight 21 SpineShoulder
    22 HandTipLeft 23 ThumbLeft 24 HandTipRight 25 ThumbRight
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llavidal.utils.io import atomic_write_text

NUM_JOINTS = 25
JOINT_NAMES = (
    "SpineBase", "SpineMid", "Neck", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HipLeft", "KneeLeft", "AnkleLeft",
    "FootLeft", "HipRight", "KneeRight", "AnkleRight", "FootRight", "SpineShoulder", "HandTipLeft",
    "ThumbLeft", "HandTipRight", "ThumbRight",
)
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}  # 0-based
# Bones (0-based parent, child) for drawing.
BONES = (
    (0, 1), (1, 20), (20, 2), (2, 3), (20, 4), (4, 5), (5, 6), (6, 7), (7, 21), (7, 22),
    (20, 8), (8, 9), (9, 10), (10, 11), (11, 23), (11, 24), (0, 12), (12, 13), (13, 14),
    (14, 15), (0, 16), (16, 17), (17, 18), (18, 19),
)
COLOUR_SIZE = (1920, 1080)
"""Width and height of the Kinect colour image that ``colorX``/``colorY`` refer to."""
JOINT_FIELDS = 12  # x y z depthX depthY colorX colorY oW oX oY oZ trackingState


class SkeletonFormatError(ValueError):
    pass


@dataclass
class Body:
    """One tracked body in one frame. ``joints`` is (25, 12): the per-joint fields in file order."""

    body_id: str
    joints: np.ndarray
    info: list[float] = field(default_factory=lambda: [0, 0, 0, 0, 0, 0, 0, 0, 2])
    """The 9 numbers after bodyID: clipedEdges, handLeftConfidence, handLeftState, handRightConfidence,
    handRightState, isRestricted, leanX, leanY, trackingState."""

    @property
    def xyz(self) -> np.ndarray:
        return self.joints[:, 0:3]

    @property
    def depth_xy(self) -> np.ndarray:
        return self.joints[:, 3:5]

    @property
    def color_xy(self) -> np.ndarray:
        return self.joints[:, 5:7]


@dataclass
class SkeletonSequence:
    frames: list[list[Body]]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def max_bodies(self) -> int:
        return max((len(f) for f in self.frames), default=0)

    def body_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for frame in self.frames:
            for body in frame:
                seen.setdefault(body.body_id, None)
        return list(seen)

    def to_array(self, max_bodies: int = 2, field_slice: slice = slice(0, 3)) -> np.ndarray:
        """(T, max_bodies, 25, C) array, bodies assigned to slots by body id in order of first
        appearance (the most persistent ``max_bodies`` ids kept); absent bodies are zeros."""
        counts: dict[str, int] = {}
        for frame in self.frames:
            for body in frame:
                counts[body.body_id] = counts.get(body.body_id, 0) + 1
        order = self.body_ids()
        keep = sorted(order, key=lambda b: (-counts[b], order.index(b)))[:max_bodies]
        keep = [b for b in order if b in keep]
        slot = {b: i for i, b in enumerate(keep)}
        channels = len(range(*field_slice.indices(JOINT_FIELDS)))
        out = np.zeros((len(self.frames), max_bodies, NUM_JOINTS, channels), dtype=np.float32)
        for t, frame in enumerate(self.frames):
            for body in frame:
                if body.body_id in slot:
                    out[t, slot[body.body_id]] = body.joints[:, field_slice]
        return out


def _format_number(value: float) -> str:
    text = f"{value:.7g}"
    return "0" if text in ("-0", "0") else text


def parse_skeleton_text(text: str, source: str = "<text>") -> SkeletonSequence:
    tokens = text.split("\n")
    lines = [line.strip() for line in tokens]
    position = 0

    def next_line() -> str:
        nonlocal position
        while position < len(lines) and lines[position] == "":
            position += 1
        if position >= len(lines):
            raise SkeletonFormatError(f"{source}: file ends early at line {position + 1}; the file is truncated")
        line = lines[position]
        position += 1
        return line

    def ints(line: str, what: str) -> int:
        try:
            return int(line.split()[0])
        except (ValueError, IndexError):
            raise SkeletonFormatError(f"{source}:{position}: expected {what}, got {line!r}") from None

    frame_count = ints(next_line(), "the frame count")
    frames: list[list[Body]] = []
    for t in range(frame_count):
        body_count = ints(next_line(), f"the body count of frame {t}")
        bodies = []
        for _ in range(body_count):
            parts = next_line().split()
            if len(parts) < 10:
                raise SkeletonFormatError(f"{source}:{position}: body line needs 10 fields, got {len(parts)}")
            body_id = parts[0]
            info = [float(p) for p in parts[1:10]]
            joint_count = ints(next_line(), "the joint count")
            joints = np.zeros((joint_count, JOINT_FIELDS), dtype=np.float64)
            for j in range(joint_count):
                values = next_line().split()
                if len(values) < JOINT_FIELDS:
                    raise SkeletonFormatError(
                        f"{source}:{position}: joint line needs {JOINT_FIELDS} fields, got {len(values)}"
                    )
                try:
                    joints[j] = [float(v) for v in values[:JOINT_FIELDS]]
                except ValueError:
                    raise SkeletonFormatError(f"{source}:{position}: non-numeric joint value in {values!r}") from None
            bodies.append(Body(body_id=body_id, joints=joints, info=info))
        frames.append(bodies)
    return SkeletonSequence(frames=frames)


def read_skeleton(path: str | os.PathLike) -> SkeletonSequence:
    path = Path(path)
    return parse_skeleton_text(path.read_text(encoding="utf-8", errors="replace"), source=str(path))


def format_skeleton(sequence: SkeletonSequence) -> str:
    out = [str(len(sequence.frames))]
    for frame in sequence.frames:
        out.append(str(len(frame)))
        for body in frame:
            info = " ".join(_format_number(v) if i not in (0, 1, 2, 3, 4, 5, 8) else str(int(v)) for i, v in enumerate(body.info))
            out.append(f"{body.body_id} {info}")
            out.append(str(len(body.joints)))
            for joint in body.joints:
                values = [_format_number(v) for v in joint[:11]] + [str(int(joint[11]))]
                out.append(" ".join(values))
    return "\n".join(out) + "\n"


def write_skeleton(path: str | os.PathLike, sequence: SkeletonSequence) -> None:
    atomic_write_text(path, format_skeleton(sequence))


def sequence_from_arrays(
    xyz: np.ndarray,
    depth_xy: np.ndarray | None = None,
    color_xy: np.ndarray | None = None,
    body_ids: list[str] | None = None,
) -> SkeletonSequence:
    """Build a sequence from (T, B, 25, 3) positions (+ optional (T, B, 25, 2) pixel coordinates).

    A body whose joints are all zero in a frame is treated as absent in that frame.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim == 3:
        xyz = xyz[:, None]
    frames_n, bodies_n = xyz.shape[:2]
    ids = body_ids or [str(72057594037900000 + b) for b in range(bodies_n)]
    frames = []
    for t in range(frames_n):
        bodies = []
        for b in range(bodies_n):
            if not np.any(xyz[t, b]):
                continue
            joints = np.zeros((NUM_JOINTS, JOINT_FIELDS))
            joints[:, 0:3] = xyz[t, b]
            if depth_xy is not None:
                joints[:, 3:5] = np.asarray(depth_xy).reshape(frames_n, bodies_n, NUM_JOINTS, 2)[t, b]
            if color_xy is not None:
                joints[:, 5:7] = np.asarray(color_xy).reshape(frames_n, bodies_n, NUM_JOINTS, 2)[t, b]
            joints[:, 7] = 1.0  # identity orientation quaternion (w)
            joints[:, 11] = 2  # tracked
            bodies.append(Body(body_id=ids[b], joints=joints))
        frames.append(bodies)
    return SkeletonSequence(frames=frames)
