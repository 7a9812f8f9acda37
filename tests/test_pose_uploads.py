"""Pose on demo uploads without MediaPipe in the environment.

No registry package ships a MediaPipe Tasks ``pose_landmarker_*.task`` model, and the last mediapipe with
a bundled pose model (0.10.21) pins numpy<2; so in the main environment the demo (1) says on the page that
pose on uploads needs the extra environment and (2) matches any clip of an ``--examples`` world folder,
held-out ones beyond the gallery too and under any file name, to the world's skeleton and tracks.
"""

from __future__ import annotations

import numpy as np
import pytest

from demo_helpers import make_skeleton_file, make_tiny_weights, make_tracks_file, make_video

pytest.importorskip("av")

CLIPS = 10  # more than the gallery shows (MAX_EXAMPLES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    for index in range(CLIPS):
        frames = 12 + index  # distinct bytes per clip
        make_video(root / "videos" / f"clip_{index:02d}.mp4", frames=frames)
        make_skeleton_file(root / "skeletons" / f"clip_{index:02d}.skeleton", frames)
        make_tracks_file(root / "tracks" / f"clip_{index:02d}.json", frames)
    return root


def test_gallery_is_limited_but_the_index_covers_every_clip(world):
    from llavidal.demo.features import ExampleIndex
    from llavidal.demo.video_demo import MAX_EXAMPLES, find_examples

    assert len(find_examples([world])) == MAX_EXAMPLES < CLIPS
    every = find_examples([world], limit=None)
    assert len(every) == CLIPS
    index = ExampleIndex(every)
    assert len(index) == CLIPS

    # The last clip is not in the gallery; uploaded under another name (as a browser upload may be), it is
    # still found by its bytes, and brings its skeleton and tracks.
    held_out = every[-1]
    upload = world.parent / "upload" / "my_kitchen_video.mp4"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(held_out.read_bytes())
    clip = index.clip(upload, num_frames=21)
    assert clip.skeleton == world / "skeletons" / f"{held_out.stem}.skeleton"
    assert clip.tracks == world / "tracks" / f"{held_out.stem}.json"
    assert clip.video == upload

    # Another video of the same name (or of an equal size) but other bytes is not a world clip.
    other = world.parent / "other" / held_out.name
    make_video(other, frames=40)
    assert index.match(other) is None
    assert index.clip(other).skeleton is None


def test_upload_of_a_held_out_clip_gets_pose_from_the_world(world, tmp_path):
    from llavidal.demo.features import DemoFeaturePipeline
    from llavidal.demo.video_demo import find_examples
    from llavidal.model.config import LlavidalConfig

    _, weights = make_tiny_weights(tmp_path)
    registry = LlavidalConfig.from_json_file(weights).registry
    pipeline = DemoFeaturePipeline.for_weights(
        weights, registry, device="cpu", examples=find_examples([world], limit=None),
    )
    upload = tmp_path / "upload" / "renamed.mp4"
    upload.parent.mkdir()
    upload.write_bytes((world / "videos" / f"clip_{CLIPS - 1:02d}.mp4").read_bytes())
    result = pipeline.extract(upload)
    assert result.outcomes["pose"].used and "skeleton file" in result.outcomes["pose"].detail
    assert result.features["pose"].shape == (256, 216) and np.isfinite(result.features["pose"]).all()
    assert result.outcomes["object"].used


def test_panel_says_pose_on_uploads_needs_the_extra_environment(monkeypatch):
    from llavidal.demo import video_demo
    from llavidal.model.modality import ModalityRegistry

    with_pose = ModalityRegistry.default(["video", "pose"], video_dim=8, video_tokens=4)
    monkeypatch.setattr(video_demo, "_mediapipe_installed", lambda: False)
    panel = video_demo.modality_panel(None, with_pose)
    assert "Pose on uploaded videos needs MediaPipe" in panel and "separate environment" in panel
    assert "--examples" in panel
    # Not said where it does not apply: weights without pose, or mediapipe installed.
    assert "needs MediaPipe" not in video_demo.modality_panel(
        None, ModalityRegistry.default(["video"], video_dim=8, video_tokens=4))
    monkeypatch.setattr(video_demo, "_mediapipe_installed", lambda: True)
    assert "needs MediaPipe" not in video_demo.modality_panel(None, with_pose)
