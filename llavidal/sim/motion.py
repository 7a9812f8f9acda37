"""Motion sources: DeepMimic mocap clips and keyframe tracks, both sampled as :class:`Pose` by time.

Mocap (``pybullet_data/data/motions/humanoid3d_*.txt``): JSON with ``Loop`` and ``Frames``; a frame is
44 floats: duration, root position (Y-up), root quaternion (w, x, y, z), then chest, neck, right hip,
right knee, right ankle, right shoulder, right elbow and the same seven for the left (quaternions
w, x, y, z; knees and elbows one angle). Looping clips add the first-to-last root offset per cycle.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from llavidal.sim import quat
from llavidal.sim.body import Y_TO_Z, Pose, swap_side

_MOCAP_LAYOUT = (
    ("chest", 4), ("neck", 4), ("right_hip", 4), ("right_knee", 1), ("right_ankle", 4), ("right_shoulder", 4),
    ("right_elbow", 1), ("left_hip", 4), ("left_knee", 1), ("left_ankle", 4), ("left_shoulder", 4),
    ("left_elbow", 1),
)


def smoothstep(t: float) -> float:
    t = min(1.0, max(0.0, t))
    return t * t * (3.0 - 2.0 * t)


@dataclass
class MocapClip:
    """A parsed mocap clip in the world's Z-up frame (root at the clip's own origin)."""

    name: str
    loop: bool
    times: np.ndarray  # (N,) start time of each frame, seconds
    poses: list[Pose]

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    @property
    def cycle_offset(self) -> np.ndarray:
        offset = self.poses[-1].root_pos - self.poses[0].root_pos
        offset[2] = 0.0
        return offset

    def pose_at(self, t: float) -> Pose:
        """The pose at time ``t`` (seconds); looping clips continue cycle after cycle, others hold."""
        cycles = 0
        if self.loop:
            cycles = math.floor(t / self.duration)
            t -= cycles * self.duration
        t = min(max(t, 0.0), self.duration)
        index = min(bisect.bisect_right(self.times, t) - 1, len(self.poses) - 2)
        span = self.times[index + 1] - self.times[index]
        weight = 0.0 if span <= 0 else (t - self.times[index]) / span
        pose = self.poses[index].blend(self.poses[index + 1], weight)
        if cycles:
            pose.root_pos = pose.root_pos + cycles * self.cycle_offset
        return pose


def _wxyz_to_xyzw(values) -> np.ndarray:
    w, x, y, z = values
    return quat.normalize(np.array([x, y, z, w], dtype=np.float64))


@lru_cache(maxsize=32)
def load_mocap(path: str) -> MocapClip:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        frames = data["Frames"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a DeepMimic motion file ({err})") from None
    poses, times, clock = [], [], 0.0
    for number, frame in enumerate(frames):
        if len(frame) != 44:
            raise ValueError(f"{path}: frame {number} has {len(frame)} numbers, expected 44")
        root = np.array(frame[1:4], dtype=np.float64)
        pose = Pose(root_pos=quat.rotate(Y_TO_Z, root), root_orn=quat.multiply(Y_TO_Z, _wxyz_to_xyzw(frame[4:8])))
        cursor = 8
        for joint, width in _MOCAP_LAYOUT:
            if width == 4:
                pose.rotations[joint] = _wxyz_to_xyzw(frame[cursor:cursor + 4])
            else:
                pose.angles[joint] = float(frame[cursor])
            cursor += width
        poses.append(pose)
        times.append(clock)
        clock += float(frame[0])
    name = Path(path).stem.replace("humanoid3d_", "")
    return MocapClip(name=name, loop=data.get("Loop", "wrap") == "wrap", times=np.array(times), poses=poses)


def mirror_world_pose(pose: Pose) -> Pose:
    """Mirror a whole-body pose through the world x-z plane (y -> -y): the left-handed performance."""
    # In Z-up world, the mirror plane y = 0 contains the body's forward axis when it faces +x.
    world_mirror = np.diag([1.0, -1.0, 1.0])
    body_mirror = np.diag([1.0, 1.0, -1.0])  # the body frame's right axis is z
    position = world_mirror @ pose.root_pos
    orientation = quat.from_matrix(world_mirror @ quat.to_matrix(pose.root_orn) @ body_mirror)
    return Pose(
        position, orientation,
        {swap_side(k): quat.mirror_z(v) for k, v in pose.rotations.items()},
        {swap_side(k): v for k, v in pose.angles.items()},
    )


@dataclass
class Placement:
    """Where a motion is put in the world: scale of the root path, yaw, translation, mirror."""

    scale: float = 1.0
    yaw: float = 0.0
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    mirror: bool = False

    def apply(self, pose: Pose) -> Pose:
        if self.mirror:
            pose = mirror_world_pose(pose)
        turn = quat.axis_angle("z", self.yaw)
        root = pose.root_pos * self.scale
        return Pose(quat.rotate(turn, root) + self.offset, quat.multiply(turn, pose.root_orn),
                    pose.rotations, pose.angles)


@dataclass
class MocapTrack:
    """A mocap clip played from ``start`` at ``speed``, placed in the world."""

    clip: MocapClip
    start: float
    speed: float
    placement: Placement

    def pose_at(self, t: float) -> Pose:
        return self.placement.apply(self.clip.pose_at(self.start + self.speed * t))


@dataclass
class Key:
    """A keyframe: the pose reached at ``time``; the move into it eases in and out (smoothstep)."""

    time: float
    pose: Pose


class KeyframeTrack:
    """Poses interpolated between keyframes (slerp with smoothstep timing); holds before/after."""

    def __init__(self, keys: list[Key]) -> None:
        if not keys:
            raise ValueError("a keyframe track needs at least one key")
        self.keys = sorted(keys, key=lambda k: k.time)
        self.times = [k.time for k in self.keys]

    @property
    def duration(self) -> float:
        return self.times[-1]

    def pose_at(self, t: float) -> Pose:
        if t <= self.times[0]:
            return self.keys[0].pose.copy()
        if t >= self.times[-1]:
            return self.keys[-1].pose.copy()
        index = bisect.bisect_right(self.times, t) - 1
        a, b = self.keys[index], self.keys[index + 1]
        return a.pose.blend(b.pose, smoothstep((t - a.time) / max(b.time - a.time, 1e-9)))


__all__ = ["Key", "KeyframeTrack", "MocapClip", "MocapTrack", "Placement", "load_mocap", "smoothstep"]
