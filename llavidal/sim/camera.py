"""Cameras: NTU-like views that follow the subject, projection into the video frame and Kinect pixels.

Conventions (recorded in each clip's metadata):
- Camera space is Kinect's: metres, x to the camera's left, y up, z forward; it is (-x, y, -z) of the
  OpenGL eye space that pybullet's view matrix gives.
- Video pixels: a pinhole camera with square pixels, ``focal = (size / 2) / tan(fov / 2)`` and the
  principal point at the frame centre; ``u = cx - focal * X / Z``, ``v = cy - focal * Y / Z`` with pixel
  (i, j) covering [i, i + 1) x [j, j + 1).
- The skeleton's colour (1920x1080) and depth (512x424) pixel coordinates treat the square video frame
  as the centred square of those images: ``colour = (420 + u * 1080 / W, v * 1080 / H)``,
  ``depth = (44 + u * 424 / W, v * 424 / H)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llavidal.features.pose.ntu import COLOUR_SIZE  # the NTU format's colour image (1920x1080)
DEPTH_SIZE = (512, 424)


@dataclass(frozen=True)
class CameraRig:
    """One camera of a setup: where it stands relative to the subject it follows."""

    number: int  # 1-based, as NTU's C001..C003
    azimuth_deg: float  # direction from the subject to the camera, degrees about world z
    height: float  # metres above the floor
    distance: float  # metres from the subject (horizontal)
    fov_deg: float = 50.0
    target_height: float = 0.85

    def to_json(self) -> dict:
        return {"camera": self.number, "azimuth_deg": round(self.azimuth_deg, 3), "height": round(self.height, 4),
                "distance": round(self.distance, 4), "fov_deg": self.fov_deg,
                "target_height": round(self.target_height, 4)}


@dataclass
class View:
    """A camera placed for one frame: view matrix (world -> eye, 4x4) and intrinsics."""

    eye: np.ndarray
    target: np.ndarray
    matrix: np.ndarray  # (4, 4) world -> OpenGL eye
    width: int
    height: int
    fov_deg: float

    @property
    def focal(self) -> float:
        return (self.height / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) Kinect camera space."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
        eye = homogeneous @ self.matrix.T
        return np.stack([-eye[:, 0], eye[:, 1], -eye[:, 2]], axis=1)

    def project(self, camera_points: np.ndarray) -> np.ndarray:
        """(N, 3) Kinect camera points -> (N, 2) video pixel coordinates (u, v)."""
        z = np.maximum(camera_points[:, 2], 1e-6)
        u = self.width / 2.0 - self.focal * camera_points[:, 0] / z
        v = self.height / 2.0 - self.focal * camera_points[:, 1] / z
        return np.stack([u, v], axis=1)

    def colour_pixels(self, pixels: np.ndarray) -> np.ndarray:
        scale = COLOUR_SIZE[1] / self.height
        return np.stack([(COLOUR_SIZE[0] - COLOUR_SIZE[1]) / 2 + pixels[:, 0] * scale, pixels[:, 1] * scale], axis=1)

    def depth_pixels(self, pixels: np.ndarray) -> np.ndarray:
        scale = DEPTH_SIZE[1] / self.height
        return np.stack([(DEPTH_SIZE[0] - DEPTH_SIZE[1]) / 2 + pixels[:, 0] * scale, pixels[:, 1] * scale], axis=1)

    def intrinsics(self) -> dict:
        return {"width": self.width, "height": self.height, "fov_deg": self.fov_deg, "focal": round(self.focal, 6),
                "cx": self.width / 2.0, "cy": self.height / 2.0}


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL view matrix (the same one pybullet's ``computeViewMatrix`` builds), row-major 4x4."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    side = np.cross(forward, up)
    side = side / np.linalg.norm(side)
    true_up = np.cross(side, forward)
    matrix = np.eye(4)
    matrix[0, :3], matrix[1, :3], matrix[2, :3] = side, true_up, -forward
    matrix[:3, 3] = -matrix[:3, :3] @ eye
    return matrix


def place(rig: CameraRig, follow_xy: np.ndarray, width: int, height: int) -> View:
    """The rig's camera for a subject whose (smoothed) position is ``follow_xy``."""
    angle = math.radians(rig.azimuth_deg)
    target = np.array([follow_xy[0], follow_xy[1], rig.target_height])
    eye = np.array([follow_xy[0] + rig.distance * math.cos(angle), follow_xy[1] + rig.distance * math.sin(angle),
                    rig.height])
    return View(eye=eye, target=target, matrix=look_at(eye, target), width=width, height=height, fov_deg=rig.fov_deg)


def smooth_path(points: np.ndarray, fps: float, window_s: float = 1.0) -> np.ndarray:
    """Moving average of an (N, 2) path (edge-padded), so following cameras do not jitter."""
    half = max(1, int(round(window_s * fps / 2)))
    padded = np.concatenate([np.repeat(points[:1], half, 0), points, np.repeat(points[-1:], half, 0)])
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(points.shape[1])], axis=1)
