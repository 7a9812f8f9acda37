"""3D pose from raw video with MediaPipe Pose, written as NTU RGB+D 25-joint ``.skeleton`` files.

Optional extra: ``pip install 'llavidal[mediapipe]'`` (``mediapipe==0.10.21``, the only release with
both the legacy ``mp.solutions.pose`` API and its model files in the wheel; ``model_complexity=1`` runs
offline, 0 and 2 try to download). MediaPipe pins ``numpy<2``, so install it in its own environment if
the rest of yours needs numpy 2. This module imports mediapipe only when a video is processed.

Per frame, MediaPipe gives 33 landmarks: normalised image coordinates and "world" coordinates (metres,
origin between the hips, axes as the camera's: x right, y down, z away from the camera). One person per
video (MediaPipe's legacy tracker follows a single person).

Camera space. World landmarks are hip-centred, so the person's position in the scene is lost. We
recover it per frame by least squares: with a pinhole camera of ``fov_degrees`` horizontal field of
view centred on the image, find the translation t such that world + t projects onto the 2D landmarks
(linear in t; landmarks weighted by visibility). Then OpenCV camera axes (x right, y down, z forward)
become Kinect camera space (x = -x, y = -y, z = z: x towards the camera's left, y up, z away from the
camera, metres), as NTU RGB+D records it.

33 -> 25 joint mapping (MediaPipe index in brackets; "left"/"right" are the subject's own sides in both
conventions)::

    NTU joint           how                          MediaPipe landmarks
    1  SpineBase        averaged                     mean of left_hip [23], right_hip [24]
    2  SpineMid         interpolated                 halfway between SpineBase and SpineShoulder
    3  Neck             interpolated                 halfway between SpineShoulder and the mouth
                                                     centre (mean of mouth_left [9], mouth_right [10])
    4  Head             averaged                     mean of left_ear [7], right_ear [8] (skull centre)
    5  ShoulderLeft     direct                       left_shoulder [11]
    6  ElbowLeft        direct                       left_elbow [13]
    7  WristLeft        direct                       left_wrist [15]
    8  HandLeft         averaged                     mean of left_wrist [15], left_pinky [17], left_index [19]
    9  ShoulderRight    direct                       right_shoulder [12]
    10 ElbowRight       direct                       right_elbow [14]
    11 WristRight       direct                       right_wrist [16]
    12 HandRight        averaged                     mean of right_wrist [16], right_pinky [18], right_index [20]
    13 HipLeft          direct                       left_hip [23]
    14 KneeLeft         direct                       left_knee [25]
    15 AnkleLeft        direct                       left_ankle [27]
    16 FootLeft         direct                       left_foot_index [31]
    17 HipRight         direct                       right_hip [24]
    18 KneeRight        direct                       right_knee [26]
    19 AnkleRight       direct                       right_ankle [28]
    20 FootRight        direct                       right_foot_index [32]
    21 SpineShoulder    averaged                     mean of left_shoulder [11], right_shoulder [12]
    22 HandTipLeft      extrapolated                 knuckle centre (mean of [17], [19]) + 0.5 x
                                                     (knuckle centre - left_wrist [15])
    23 ThumbLeft        direct                       left_thumb [21]
    24 HandTipRight     extrapolated                 knuckle centre (mean of [18], [20]) + 0.5 x
                                                     (knuckle centre - right_wrist [16])
    25 ThumbRight       direct                       right_thumb [22]

Kinect's SpineBase sits a little above the hip joint centres and its Neck/Head are estimated from the
depth silhouette, so these joints are close to, not identical with, Kinect's. Pixel fields of the
``.skeleton`` file: colorX/colorY are pixel coordinates in the source video (not a 1920x1080 Kinect
colour image); depthX/depthY are the normalised image coordinates scaled to Kinect's 512x424 depth
image. A frame where MediaPipe finds no person has no body.

Run as part of pose extraction::

    llavidal extract pose --video_dir videos/ --out features/pose --encoder runs/pose_encoder
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from llavidal.features.pose.ntu import NUM_JOINTS, SkeletonSequence, sequence_from_arrays, write_skeleton
from llavidal.utils.optional import require

logger = logging.getLogger(__name__)

MEDIAPIPE_LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
NUM_LANDMARKS = len(MEDIAPIPE_LANDMARKS)  # 33
_M = {name: i for i, name in enumerate(MEDIAPIPE_LANDMARKS)}

# NTU joint (0-based) <- MediaPipe landmarks copied or averaged (the "direct" and "averaged" rows of
# the table in the module docstring). The interpolated and extrapolated joints are computed below.
_DIRECT_OR_MEAN: dict[int, tuple[int, ...]] = {
    0: (_M["left_hip"], _M["right_hip"]),
    3: (_M["left_ear"], _M["right_ear"]),
    4: (_M["left_shoulder"],),
    5: (_M["left_elbow"],),
    6: (_M["left_wrist"],),
    7: (_M["left_wrist"], _M["left_pinky"], _M["left_index"]),
    8: (_M["right_shoulder"],),
    9: (_M["right_elbow"],),
    10: (_M["right_wrist"],),
    11: (_M["right_wrist"], _M["right_pinky"], _M["right_index"]),
    12: (_M["left_hip"],),
    13: (_M["left_knee"],),
    14: (_M["left_ankle"],),
    15: (_M["left_foot_index"],),
    16: (_M["right_hip"],),
    17: (_M["right_knee"],),
    18: (_M["right_ankle"],),
    19: (_M["right_foot_index"],),
    20: (_M["left_shoulder"], _M["right_shoulder"]),
    22: (_M["left_thumb"],),
    24: (_M["right_thumb"],),
}
KINECT_DEPTH_SIZE = (512, 424)


def mediapipe_to_ntu(landmarks: np.ndarray) -> np.ndarray:
    """Map MediaPipe's 33 landmarks to NTU's 25 joints in the same coordinates: ``(..., 33, C) -> (..., 25, C)``."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape[-2] != NUM_LANDMARKS:
        raise ValueError(f"expected {NUM_LANDMARKS} MediaPipe landmarks on axis -2, got shape {landmarks.shape}")
    out = np.zeros(landmarks.shape[:-2] + (NUM_JOINTS, landmarks.shape[-1]))
    for joint, sources in _DIRECT_OR_MEAN.items():
        out[..., joint, :] = landmarks[..., list(sources), :].mean(axis=-2)
    spine_base, spine_shoulder = out[..., 0, :], out[..., 20, :]
    out[..., 1, :] = 0.5 * (spine_base + spine_shoulder)  # SpineMid
    mouth = landmarks[..., [_M["mouth_left"], _M["mouth_right"]], :].mean(axis=-2)
    out[..., 2, :] = 0.5 * (spine_shoulder + mouth)  # Neck
    for tip, wrist, pinky, index in ((21, "left_wrist", "left_pinky", "left_index"),
                                     (23, "right_wrist", "right_pinky", "right_index")):
        knuckles = landmarks[..., [_M[pinky], _M[index]], :].mean(axis=-2)
        out[..., tip, :] = knuckles + 0.5 * (knuckles - landmarks[..., _M[wrist], :])  # HandTip
    return out


def focal_length_pixels(width: int, fov_degrees: float) -> float:
    return 0.5 * width / math.tan(math.radians(fov_degrees) / 2)


def estimate_camera_translation(
    world: np.ndarray,
    image_xy: np.ndarray,
    width: int,
    height: int,
    fov_degrees: float = 60.0,
    weights: np.ndarray | None = None,
    default_depth: float = 3.0,
) -> np.ndarray:
    """Translation ``t`` (OpenCV camera axes, metres) such that ``world + t`` projects onto ``image_xy``.

    ``world`` (K, 3) metres; ``image_xy`` (K, 2) pixels; a pinhole camera of ``fov_degrees`` horizontal
    field of view with the principal point at the image centre. Linear least squares in t::

        f*tx - (u - cx)*tz = (u - cx)*Z - f*X,   f*ty - (v - cy)*tz = (v - cy)*Z - f*Y

    Falls back to ``(0, 0, default_depth)`` when the solution is degenerate (depth under 0.2 m).
    """
    world = np.asarray(world, dtype=np.float64)
    image_xy = np.asarray(image_xy, dtype=np.float64)
    focal = focal_length_pixels(width, fov_degrees)
    cx, cy = width / 2.0, height / 2.0
    du, dv = image_xy[:, 0] - cx, image_xy[:, 1] - cy
    rows = np.zeros((2 * len(world), 3))
    rhs = np.zeros(2 * len(world))
    rows[0::2, 0], rows[0::2, 2], rhs[0::2] = focal, -du, du * world[:, 2] - focal * world[:, 0]
    rows[1::2, 1], rows[1::2, 2], rhs[1::2] = focal, -dv, dv * world[:, 2] - focal * world[:, 1]
    if weights is not None:
        w = np.repeat(np.sqrt(np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)), 2)
        rows, rhs = rows * w[:, None], rhs * w
    solution, *_ = np.linalg.lstsq(rows, rhs, rcond=None)
    if not np.all(np.isfinite(solution)) or solution[2] < 0.2:
        return np.array([0.0, 0.0, default_depth])
    return solution


def opencv_to_kinect(points: np.ndarray) -> np.ndarray:
    """OpenCV camera axes (x right, y down, z forward) -> Kinect camera space (x left, y up, z forward)."""
    return np.asarray(points) * np.array([-1.0, -1.0, 1.0])


class MediapipePoseEstimator:
    """MediaPipe Pose (legacy ``mp.solutions.pose``, ``model_complexity=1``) on a stream of RGB frames.

    Use as a context manager; ``process(frame)`` returns ``(joints (25, 3) Kinect camera space metres,
    color_xy (25, 2) pixels, depth_xy (25, 2))`` or ``None`` when no person is found.
    """

    def __init__(self, fov_degrees: float = 60.0, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, smooth: bool = True):
        mediapipe = require("mediapipe", "pose from video")
        self._pose = mediapipe.solutions.pose.Pose(
            static_image_mode=False,
            model_complexity=1,  # the only complexity whose model ships in the wheel (offline)
            smooth_landmarks=smooth,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self.fov_degrees = fov_degrees

    def __enter__(self) -> "MediapipePoseEstimator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pose.close()

    def process(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.shape} {frame.dtype}")
        height, width = frame.shape[:2]
        result = self._pose.process(frame)
        if result.pose_world_landmarks is None or result.pose_landmarks is None:
            return None
        world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark])  # (33, 3) m
        normalised = np.array([[p.x, p.y] for p in result.pose_landmarks.landmark])  # (33, 2) in [0, 1]
        visibility = np.array([p.visibility for p in result.pose_landmarks.landmark])  # (33,)
        pixels = normalised * np.array([width, height])
        translation = estimate_camera_translation(world, pixels, width, height, self.fov_degrees, visibility)
        joints = opencv_to_kinect(mediapipe_to_ntu(world + translation))  # (25, 3)
        color_xy = mediapipe_to_ntu(pixels)  # (25, 2) video pixels
        depth_xy = mediapipe_to_ntu(normalised) * np.array(KINECT_DEPTH_SIZE)
        return joints, color_xy, depth_xy


def iter_video_frames(video_path: str | os.PathLike, frame_stride: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames ``(H, W, 3)`` of a video with PyAV, every ``frame_stride``-th, at most ``max_frames``."""
    av = require("av", "video decoding")
    try:
        container = av.open(str(video_path))
    except Exception as err:  # PyAV raises several error types for unreadable files
        raise ValueError(f"{video_path}: cannot open the video ({type(err).__name__}: {err})") from None
    kept = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index % frame_stride:
                continue
            yield frame.to_ndarray(format="rgb24")
            kept += 1
            if max_frames is not None and kept >= max_frames:
                break
    finally:
        container.close()


def skeleton_from_video(
    video_path: str | os.PathLike,
    fov_degrees: float = 60.0,
    frame_stride: int = 1,
    max_frames: int | None = None,
) -> SkeletonSequence:
    """Run MediaPipe Pose over a video: one NTU body per frame where a person is found."""
    positions, colors, depths = [], [], []
    with MediapipePoseEstimator(fov_degrees=fov_degrees) as estimator:
        for frame in iter_video_frames(video_path, frame_stride, max_frames):
            found = estimator.process(frame)
            if found is None:
                positions.append(np.zeros((NUM_JOINTS, 3)))
                colors.append(np.zeros((NUM_JOINTS, 2)))
                depths.append(np.zeros((NUM_JOINTS, 2)))
            else:
                positions.append(found[0])
                colors.append(found[1])
                depths.append(found[2])
    if not positions:
        raise ValueError(f"{video_path}: the video has no decodable frames")
    if not any(np.any(p) for p in positions):
        logger.warning("%s: MediaPipe found no person in any frame", video_path)
    xyz = np.stack(positions)[:, None]  # (T, 1, 25, 3)
    return sequence_from_arrays(xyz, depth_xy=np.stack(depths)[:, None], color_xy=np.stack(colors)[:, None])


def video_to_skeleton_file(
    video_path: str | os.PathLike, out_path: str | os.PathLike, **kwargs
) -> SkeletonSequence:
    """:func:`skeleton_from_video` and write the result as an NTU ``.skeleton`` file (atomically)."""
    sequence = skeleton_from_video(video_path, **kwargs)
    write_skeleton(Path(out_path), sequence)
    return sequence
