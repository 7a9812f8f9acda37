"""MediaPipe pose -> NTU skeletons: the 33 -> 25 mapping, camera translation, and a real video.

The real-video test needs the optional ``mediapipe`` extra (it pins numpy<2, so it usually lives in its
own environment) and a video of a person: the sports2d package's ``Demo/demo.mp4`` (VP9, a person
walking) or a file named by ``LLAVIDAL_TEST_PERSON_VIDEO``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from llavidal.features.pose.mediapipe_pose import (
    MEDIAPIPE_LANDMARKS,
    estimate_camera_translation,
    focal_length_pixels,
    mediapipe_to_ntu,
    opencv_to_kinect,
)
from llavidal.features.pose.ntu import JOINT_INDEX, read_skeleton


def test_mapping_direct_and_averaged_joints():
    landmarks = np.random.default_rng(0).normal(size=(4, 33, 3))
    m = {name: i for i, name in enumerate(MEDIAPIPE_LANDMARKS)}
    ntu = mediapipe_to_ntu(landmarks)
    assert ntu.shape == (4, 25, 3)
    np.testing.assert_allclose(ntu[:, JOINT_INDEX["ElbowLeft"]], landmarks[:, m["left_elbow"]])
    np.testing.assert_allclose(ntu[:, JOINT_INDEX["KneeRight"]], landmarks[:, m["right_knee"]])
    np.testing.assert_allclose(ntu[:, JOINT_INDEX["ThumbRight"]], landmarks[:, m["right_thumb"]])
    np.testing.assert_allclose(
        ntu[:, JOINT_INDEX["SpineBase"]], (landmarks[:, m["left_hip"]] + landmarks[:, m["right_hip"]]) / 2
    )
    np.testing.assert_allclose(
        ntu[:, JOINT_INDEX["SpineMid"]],
        (ntu[:, JOINT_INDEX["SpineBase"]] + ntu[:, JOINT_INDEX["SpineShoulder"]]) / 2,
    )
    # 2D pixel coordinates map with the same table.
    assert mediapipe_to_ntu(landmarks[..., :2]).shape == (4, 25, 2)
    with pytest.raises(ValueError, match="33"):
        mediapipe_to_ntu(np.zeros((25, 3)))


def test_camera_translation_recovers_the_projection():
    rng = np.random.default_rng(1)
    world = rng.normal(0, 0.4, (33, 3))  # hip-centred body, OpenCV axes
    truth = np.array([0.4, -0.2, 3.5])
    width, height = 640, 480
    focal = focal_length_pixels(width, 60.0)
    camera = world + truth
    pixels = np.stack([focal * camera[:, 0] / camera[:, 2] + width / 2, focal * camera[:, 1] / camera[:, 2] + height / 2], 1)
    np.testing.assert_allclose(estimate_camera_translation(world, pixels, width, height, 60.0), truth, atol=1e-6)
    # Kinect axes: x to the camera's left, y up, z forward.
    np.testing.assert_allclose(opencv_to_kinect(np.array([[1.0, 2.0, 3.0]])), [[-1.0, -2.0, 3.0]])


def _person_video() -> Path | None:
    named = os.environ.get("LLAVIDAL_TEST_PERSON_VIDEO")
    if named:
        return Path(named)
    spec = importlib.util.find_spec("Sports2D")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / "Demo" / "demo.mp4"
    return candidate if candidate.is_file() else None


def test_real_video_head_above_hips(tmp_path):
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed (optional extra llavidal[mediapipe]; it pins numpy<2, so it "
                    "is usually installed in a separate environment)")
    video = _person_video()
    if video is None:
        pytest.skip("no real video of a person: pip install --no-deps sports2d (Demo/demo.mp4) or set "
                    "LLAVIDAL_TEST_PERSON_VIDEO")
    from llavidal.features.pose.mediapipe_pose import video_to_skeleton_file

    path = tmp_path / "person.skeleton"
    video_to_skeleton_file(video, path, max_frames=45)
    array = read_skeleton(path).to_array(max_bodies=1)[:, 0]  # (T, 25, 3) Kinect camera space
    present = np.abs(array).reshape(len(array), -1).max(axis=1) > 0
    assert present.mean() > 0.7, "MediaPipe should find the person in most frames"
    head_y = array[present, JOINT_INDEX["Head"], 1]
    hip_y = array[present, JOINT_INDEX["SpineBase"], 1]
    assert (head_y > hip_y).mean() > 0.9, "y is up in NTU camera space: the head must be above the hips"
    torso = np.linalg.norm(array[present, JOINT_INDEX["SpineShoulder"]] - array[present, JOINT_INDEX["SpineBase"]], axis=1)
    assert 0.25 < np.median(torso) < 0.8, f"torso length {np.median(torso):.2f} m is not human"
    assert (array[present, JOINT_INDEX["SpineBase"], 2] > 0.5).all(), "the person is in front of the camera"
