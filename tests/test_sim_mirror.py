"""Mirror images of world clips (llavidal.sim.mirror): pixels, skeleton, boxes and metadata reflected together, so
that a mirrored clip is a consistent clip done with the other hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llavidal.features.pose.ntu import (
    JOINT_INDEX,
    Body,
    SkeletonSequence,
    read_skeleton,
    sequence_from_arrays,
    write_skeleton,
)
from llavidal.sim.mirror import (
    MIRRORED_JOINTS,
    mirror_body,
    mirror_clip,
    mirror_meta,
    mirror_skeleton,
    mirror_tracks,
)

WIDTH = HEIGHT = 64


def _body(seed: int = 0) -> Body:
    rng = np.random.default_rng(seed)
    joints = rng.normal(size=(25, 12))
    joints[:, 11] = 2
    return Body(body_id="72057594037927936", joints=joints, info=[0, 1, 1, 0.5, 2, 0, 0.25, -0.1, 2])


def test_mirrored_joints_swap_sides_and_keep_the_spine():
    assert MIRRORED_JOINTS[JOINT_INDEX["HandLeft"]] == JOINT_INDEX["HandRight"]
    assert MIRRORED_JOINTS[JOINT_INDEX["ThumbRight"]] == JOINT_INDEX["ThumbLeft"]
    for name in ("SpineBase", "SpineMid", "Neck", "Head", "SpineShoulder"):
        assert MIRRORED_JOINTS[JOINT_INDEX[name]] == JOINT_INDEX[name]
    assert sorted(MIRRORED_JOINTS) == list(range(25))


def test_a_body_mirrored_twice_is_itself_and_once_is_its_reflection():
    body = _body()
    once = mirror_body(body)
    left, right = JOINT_INDEX["HandLeft"], JOINT_INDEX["HandRight"]
    # the mirrored left hand is where the right hand's reflection is: camera x negated, y and z kept
    np.testing.assert_allclose(once.joints[left, :3], body.joints[right, :3] * [-1, 1, 1])
    # pixel columns flipped about the frame's centre (colour 1920 wide, depth 512 wide); rows kept
    np.testing.assert_allclose(once.joints[left, [3, 5]], [512 - body.joints[right, 3], 1920 - body.joints[right, 5]])
    np.testing.assert_allclose(once.joints[left, [4, 6]], body.joints[right, [4, 6]])
    # orientation (w, x, y, z) reflected: (w, x, -y, -z); tracking state kept
    np.testing.assert_allclose(once.joints[left, 7:11], body.joints[right, 7:11] * [1, 1, -1, -1])
    assert once.joints[left, 11] == body.joints[right, 11]
    # per-hand info swapped, leanX negated
    assert once.info[1:5] == [0.5, 2, 1, 1] and once.info[6] == -0.25 and once.info[7] == -0.1
    twice = mirror_body(once)
    np.testing.assert_allclose(twice.joints, body.joints)
    assert twice.info == body.info


def _write_clip(world, clip_id: str = "S001C001P001R001A003") -> dict:
    """A 3-frame clip: a white block (an object held in the right hand) left of centre, its box and the right
    hand's pixel on it."""
    from llavidal.sim.video import write_mp4

    frames = np.zeros((3, HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames[:, 20:40, 8:24] = 255
    write_mp4(world / "videos" / f"{clip_id}.mp4", frames, fps=10)
    xyz = np.zeros((3, 1, 25, 3))
    xyz[..., 2] = 2.0
    xyz[:, 0, JOINT_INDEX["HandRight"], 0] = 0.3  # x left: the right hand is left of the frame's centre
    u = np.full((3, 1, 25), WIDTH / 2)
    u[:, 0, JOINT_INDEX["HandRight"]] = 16
    colour = np.stack([420 + u * 1080 / WIDTH, np.full_like(u, 500.0)], axis=-1)
    depth = np.stack([44 + u * 424 / WIDTH, np.full_like(u, 200.0)], axis=-1)
    write_skeleton(world / "skeletons" / f"{clip_id}.skeleton", sequence_from_arrays(xyz, depth, colour))
    tracks = {"video": f"{clip_id}.mp4", "fps": 10, "width": WIDTH, "height": HEIGHT, "num_frames": 3,
              "objects": [{"object_id": 1, "class": "cup", "frames": [
                  {"frame": t, "box": [8, 20, 24, 40], "position_3d": [0.3, 0.0, 2.0], "score": 1.0} for t in range(3)]}]}
    (world / "tracks").mkdir(parents=True, exist_ok=True)
    (world / "tracks" / f"{clip_id}.json").write_text(json.dumps(tracks))
    meta = {"clip_id": clip_id, "kind": "single", "activity": "drink", "label": "drinking from a cup or bottle",
            "segments": [{"activity": "drink", "start": 0.0, "end": 0.3, "objects": ["cup"], "hand": "right",
                          "label": "drinking from a cup or bottle", "details": {}}],
            "objects": [{"object_id": 1, "class": "cup", "colour": "red", "used": True}], "hand": "right",
            "view": {"azimuth_deg": -40.0}, "facing_deg": 10.0, "fps": 10, "width": WIDTH, "height": HEIGHT,
            "files": {"video": f"videos/{clip_id}.mp4", "skeleton": f"skeletons/{clip_id}.skeleton",
                      "tracks": f"tracks/{clip_id}.json"}}
    (world / "meta").mkdir(parents=True, exist_ok=True)
    (world / "meta" / f"{clip_id}.json").write_text(json.dumps(meta))
    return meta


def test_a_mirrored_clip_flips_pixels_boxes_skeleton_and_hand_together(tmp_path):
    pytest.importorskip("av")
    from llavidal.sim.annotate import attribute_mcqs
    from llavidal.sim.video import read_mp4

    world, out = tmp_path / "world", tmp_path / "mirrored"
    meta = _write_clip(world)
    mirrored = mirror_clip(world, meta["clip_id"], out)
    clip = meta["clip_id"]

    frames = read_mp4(out / "videos" / f"{clip}.mp4").astype(float)
    original = read_mp4(world / "videos" / f"{clip}.mp4").astype(float)
    assert np.abs(frames - original[:, :, ::-1]).mean() < 3  # the same picture flipped (re-encoded once)
    tracks = json.loads((out / "tracks" / f"{clip}.json").read_text())
    x0, y0, x1, y1 = tracks["objects"][0]["frames"][0]["box"]
    assert [x0, y0, x1, y1] == [40, 20, 56, 40] and tracks["objects"][0]["frames"][0]["position_3d"][0] == -0.3
    assert frames[:, y0:y1, x0:x1].mean() > 200 and frames[:, :, :x0].mean() < 20  # the box is on the block
    skeleton = read_skeleton(out / "skeletons" / f"{clip}.skeleton")
    hand = skeleton.frames[0][0].joints[JOINT_INDEX["HandLeft"]]  # the right hand is now the left one
    u = (hand[5] - 420) * WIDTH / 1080
    assert hand[0] == pytest.approx(-0.3) and x0 <= u <= x1  # its pixel is on the mirrored block

    assert mirrored["hand"] == "left" and mirrored["segments"][0]["hand"] == "left"
    assert mirrored["view"]["azimuth_deg"] == 40.0 and mirrored["facing_deg"] == -10.0 and mirrored["mirror_of"] == clip
    assert json.loads((out / "meta" / f"{clip}.json").read_text()) == mirrored
    # the world's own question writer answers the mirror's hand
    hand_mcq = next(m for m in attribute_mcqs(mirrored, seed=0) if m["task"] == "hand")
    assert hand_mcq["answer_choices"][hand_mcq["ground_truth_letter"]] == "the left hand"
    assert mirror_meta(mirrored)["hand"] == "right"
    assert mirror_tracks(mirror_tracks(tracks)) == tracks


def test_a_clip_without_its_files_names_what_is_missing(tmp_path):
    world = tmp_path / "world"
    (world / "meta").mkdir(parents=True)
    (world / "meta" / "c1.json").write_text(json.dumps({"clip_id": "c1", "fps": 10}))
    with pytest.raises(FileNotFoundError, match=r"c1 has no .*videos/c1\.mp4.*regenerate"):
        mirror_clip(world, "c1", tmp_path / "out")


def test_mirror_skeleton_keeps_frames_and_bodies():
    sequence = SkeletonSequence(frames=[[_body(0)], [], [_body(1), _body(2)]])
    mirrored = mirror_skeleton(sequence)
    assert [len(frame) for frame in mirrored.frames] == [1, 0, 2]
