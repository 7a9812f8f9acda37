"""Object features from tracks: crop regions, (n, 8, D) shapes, manifest, resumable/atomic runs, CLI.

Synthetic videos are written losslessly (FFV1 in Matroska) on a blue background with objects of
distinct colours at known boxes, so the crops handed to the encoder can be checked pixel by pixel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llavidal.data.feature_store import FeatureManifest, load_feature_file
from llavidal.features.objects.extract import (
    TracksError,
    crop_region,
    extract_object_features,
    main as extract_main,
    object_features_for_video,
)

av = pytest.importorskip("av")

BLUE, RED, GREEN = (0, 0, 255), (255, 0, 0), (0, 255, 0)
WIDTH, HEIGHT, FRAMES = 160, 120, 12


def red_box(t: int) -> list[int]:
    return [10 + 3 * t, 20, 40 + 3 * t, 50]  # 30 x 30, moving right


def green_box(t: int) -> list[int]:
    return [100, 60 + t, 120, 100 + t]  # 20 x 40, moving down


def write_video(path: Path, frames: int = FRAMES) -> Path:
    """Lossless video: blue background, a red and a green rectangle at red_box(t) / green_box(t)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=15)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
        for t in range(frames):
            image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
            image[:] = BLUE
            for box, colour in ((red_box(t), RED), (green_box(t), GREEN)):
                x1, y1, x2, y2 = box
                image[y1:y2, x1:x2] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tracks_for(video: Path, green_frames: range = range(0, 3)) -> dict:
    """Red tracked in every frame; green only in ``green_frames`` (fewer than 8: crops repeat)."""
    return {
        "video": video.name, "fps": 15, "width": WIDTH, "height": HEIGHT, "num_frames": FRAMES,
        "source": "ground_truth",
        "objects": [
            {"object_id": 1, "class": "book",
             "frames": [{"frame": t, "box": green_box(t), "position_3d": None, "score": 1.0} for t in green_frames]},
            {"object_id": 0, "class": "mug",
             "frames": [{"frame": t, "box": red_box(t), "position_3d": None, "score": 1.0} for t in range(FRAMES)]},
        ],
    }


class RecordingEncoder:
    """A stand-in vision encoder: patch features are the mean colour of 8x8 patches; keeps the inputs."""

    image_size = 32
    feature_dim = 3
    num_patches = 16
    model_id = "test/recording-encoder"
    weights_sha256 = "0" * 64
    layer = -2
    name = "recording"

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        assert frames.dtype == np.uint8 and frames.shape[1:] == (32, 32, 3)
        self.inputs.append(frames.copy())
        patches = frames.reshape(len(frames), 4, 8, 4, 8, 3).mean(axis=(2, 4))  # (N, 4, 4, 3)
        return patches.reshape(len(frames), 16, 3) / 255.0  # (N, P, D)


def test_crop_region_margin_square_and_clipping():
    assert crop_region([10, 20, 40, 50], 160, 120, margin=0.0, square=False) == (10, 20, 40, 50)
    assert crop_region([10, 20, 40, 50], 160, 120, margin=0.1, square=False) == (7, 17, 43, 53)
    # Square around a tall box, centred on it.
    assert crop_region([100, 60, 120, 100], 160, 120, margin=0.0, square=True) == (90, 60, 130, 100)
    # Near the edge the square slides inside the frame and still contains the box.
    left, top, right, bottom = crop_region([0, 0, 10, 40], 160, 120, margin=0.0, square=True)
    assert (left, top) == (0, 0) and right - left == 40 and bottom == 40
    assert crop_region([150, 110, 170, 130], 160, 120, margin=0.0, square=False) == (150, 110, 160, 120)
    assert crop_region([5, 5, 5, 9], 160, 120) is None


def test_crops_are_the_objects_pixels(tmp_path):
    video = write_video(tmp_path / "clip.mkv")
    encoder = RecordingEncoder()
    features = object_features_for_video(video, tracks_for(video), encoder, margin=0.0, square=False)
    assert features.shape == (2, 8, 3) and features.dtype == np.float32
    crops = np.concatenate(encoder.inputs)  # (16, 32, 32, 3): object 0's 8 crops, then object 1's
    assert crops.shape == (16, 32, 32, 3)
    # Without margin every crop is the object alone: pure red (object 0), pure green (object 1).
    assert np.abs(crops[:8].astype(int) - RED).max() <= 1
    assert np.abs(crops[8:].astype(int) - GREEN).max() <= 1
    np.testing.assert_allclose(features[0], np.tile([1.0, 0.0, 0.0], (8, 1)), atol=0.01)
    np.testing.assert_allclose(features[1], np.tile([0.0, 1.0, 0.0], (8, 1)), atol=0.01)


def test_margin_crops_include_context_in_the_right_place(tmp_path):
    video = write_video(tmp_path / "clip.mkv")
    encoder = RecordingEncoder()
    object_features_for_video(video, tracks_for(video), encoder, margin=0.25, square=False)
    crop = np.concatenate(encoder.inputs)[0].astype(int)  # red object, frame 0: 45 x 45 region
    red = (np.abs(crop - RED).max(axis=-1) <= 40)
    blue = (np.abs(crop - BLUE).max(axis=-1) <= 40)
    assert red[8:24, 8:24].all(), "the object fills the centre of the crop"
    assert blue[:3].all() and blue[-3:].all() and blue[:, :3].all() and blue[:, -3:].all(), "the margin is background"
    assert 0.35 < red.mean() < 0.55  # (30/45)^2 = 0.44 of the area


def test_tracks_that_do_not_fit_the_video_are_clear_errors(tmp_path):
    video = write_video(tmp_path / "clip.mkv")
    tracks = tracks_for(video)
    tracks["objects"][1]["frames"][0]["frame"] = 99
    with pytest.raises(TracksError, match="frame 99"):
        object_features_for_video(video, tracks, RecordingEncoder())
    with pytest.raises(TracksError, match="box"):
        object_features_for_video(video, {"objects": [{"object_id": 0, "frames": [{"frame": 0}]}]}, RecordingEncoder())
    empty = object_features_for_video(video, {"objects": []}, RecordingEncoder())
    assert empty.shape == (0, 8, 3)


def _world(tmp_path: Path) -> tuple[Path, Path]:
    videos, tracks = tmp_path / "videos", tmp_path / "tracks"
    for name in ("a", "b", "c"):
        video = write_video(videos / f"{name}.mkv")
        if name != "c":  # c has no tracks file: a recorded failure
            tracks.mkdir(parents=True, exist_ok=True)
            (tracks / f"{name}.json").write_text(json.dumps(tracks_for(video)))
    (videos / "broken.mkv").write_bytes(b"")
    (tracks / "broken.json").write_text(json.dumps(tracks_for(videos / "broken.mkv")))
    return videos, tracks


def test_folder_extraction_is_resumable_and_records_failures(tmp_path):
    videos, tracks = _world(tmp_path)
    out = tmp_path / "features"
    encoder = RecordingEncoder()
    summary = extract_object_features(videos, out, encoder, tracks_dir=tracks, progress=False)
    assert (summary.done, summary.failed) == (2, 2)
    for name in ("a", "b"):
        array = load_feature_file(out / f"{name}_object.safetensors")
        assert array.shape == (2, 8, 3) and array.dtype == np.float16
    failed = {json.loads(line)["id"]: json.loads(line)["error"] for line in (out / "failed.jsonl").read_text().splitlines()}
    assert set(failed) == {"c", "broken"} and "no tracks file" in failed["c"] and "empty" in failed["broken"]
    manifest = FeatureManifest.load(out)
    assert manifest.modality == "object" and manifest.shape == [-1, 8, 3] and manifest.model_id == encoder.model_id
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files are left"

    # A second run does no work for the valid outputs; a deleted or corrupt output is redone.
    calls = len(encoder.inputs)
    again = extract_object_features(videos, out, encoder, tracks_dir=tracks, progress=False)
    assert (again.done, again.skipped) == (0, 2) and len(encoder.inputs) == calls
    (out / "a_object.safetensors").write_bytes(b"half a file")
    third = extract_object_features(videos, out, encoder, tracks_dir=tracks, progress=False)
    assert (third.done, third.skipped) == (1, 1)

    # Tracks (or the video) replaced under the same name: that clip is extracted again, the others kept.
    boxes = json.loads((tracks / "b.json").read_text())
    boxes["objects"] = boxes["objects"][:1]
    (tracks / "b.json").write_text(json.dumps(boxes))
    fourth = extract_object_features(videos, out, encoder, tracks_dir=tracks, progress=False)
    assert (fourth.done, fourth.changed, fourth.skipped) == (1, 1, 1)
    assert load_feature_file(out / "b_object.safetensors").shape == (1, 8, 3)

    # A different recipe in the same folder is refused.
    with pytest.raises(ValueError, match="made differently"):
        extract_object_features(videos, out, encoder, tracks_dir=tracks, margin=0.3, progress=False)


def test_cli_with_the_embedded_vision_encoder(tmp_path, capsys):
    pytest.importorskip("llavidal.features.encoders")
    videos, tracks = _world(tmp_path)
    out = tmp_path / "object"
    code = extract_main(["--video_dir", str(videos), "--tracks_dir", str(tracks), "--out", str(out),
                         "--encoder", "embedded", "--no_progress"])
    assert code == 1  # two inputs failed, and the exit status says so
    assert "2 extracted" in capsys.readouterr().out
    array = load_feature_file(out / "a_object.safetensors")
    manifest = FeatureManifest.load(out)
    assert array.shape == (2, 8, manifest.feature_dim) == (2, 8, 256)
    assert manifest.model_id.startswith("llavidal/embedded") and manifest.weights_sha256
    assert np.isfinite(array.astype(np.float32)).all()
    # The two objects (red, green) get different features.
    assert np.abs(array[0].astype(np.float32) - array[1].astype(np.float32)).mean() > 1e-3
