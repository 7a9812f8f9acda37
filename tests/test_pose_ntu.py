"""NTU RGB+D ``.skeleton`` reader/writer: multi-body round trip and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from llavidal.features.pose.ntu import (
    NUM_JOINTS,
    SkeletonFormatError,
    format_skeleton,
    parse_skeleton_text,
    read_skeleton,
    sequence_from_arrays,
    write_skeleton,
)


def _two_body_sequence(frames: int = 6):
    rng = np.random.default_rng(0)
    xyz = rng.normal(0, 0.5, (frames, 2, NUM_JOINTS, 3)) + np.array([0, 0, 3.0])
    color = rng.uniform(0, 1920, (frames, 2, NUM_JOINTS, 2))
    depth = rng.uniform(0, 512, (frames, 2, NUM_JOINTS, 2))
    xyz[2, 1] = 0.0  # the second body leaves the scene for one frame
    return xyz, sequence_from_arrays(xyz, depth_xy=depth, color_xy=color, body_ids=["72057594037931101", "72057594037931102"])


def test_multi_body_round_trip(tmp_path):
    xyz, sequence = _two_body_sequence()
    assert [len(f) for f in sequence.frames] == [2, 2, 1, 2, 2, 2]
    path = tmp_path / "S001C001P001R001A050.skeleton"
    write_skeleton(path, sequence)
    again = read_skeleton(path)
    assert len(again) == len(sequence) and again.max_bodies == 2
    assert again.body_ids() == ["72057594037931101", "72057594037931102"]
    for frame_a, frame_b in zip(sequence.frames, again.frames):
        for body_a, body_b in zip(frame_a, frame_b):
            assert body_a.body_id == body_b.body_id
            np.testing.assert_allclose(body_a.joints, body_b.joints, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(body_a.info, body_b.info)
    array = again.to_array(max_bodies=2)
    assert array.shape == (6, 2, NUM_JOINTS, 3)
    np.testing.assert_allclose(array, xyz, atol=1e-6)
    # Writing what was read gives the same text (a stable format).
    assert format_skeleton(again) == path.read_text()


def test_reads_hand_written_ntu_text():
    joint = "0.1 0.2 3.0 250.5 200.25 1000.5 500.5 0.9 0.1 0.2 0.3 2"
    text = "\n".join(
        ["2"]
        + ["1", "123 0 1 1 1 1 0 0.01 -0.02 2", "25"] + [joint] * 25
        + ["2", "123 0 1 1 1 1 0 0 0 2", "25"] + [joint] * 25 + ["456 0 0 0 0 0 0 0 0 2", "25"] + [joint] * 25
    )
    sequence = parse_skeleton_text(text + "\n")
    assert [len(f) for f in sequence.frames] == [1, 2]
    body = sequence.frames[1][1]
    assert body.body_id == "456"
    np.testing.assert_allclose(body.xyz[0], [0.1, 0.2, 3.0])
    np.testing.assert_allclose(body.depth_xy[0], [250.5, 200.25])
    np.testing.assert_allclose(body.color_xy[0], [1000.5, 500.5])
    array = sequence.to_array(max_bodies=2)
    assert array.shape == (2, 2, 25, 3) and not array[0, 1].any()


def test_truncated_file_is_a_clear_error(tmp_path):
    _, sequence = _two_body_sequence()
    text = format_skeleton(sequence)
    path = tmp_path / "cut.skeleton"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(SkeletonFormatError, match="cut.skeleton"):
        read_skeleton(path)
