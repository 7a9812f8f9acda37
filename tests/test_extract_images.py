"""``llavidal extract video`` on a folder of images: 1-frame video features with the video recipe, a manifest
that says so, failures listed, resumable; the demo's on-the-fly image features are the same values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llavidal.data.feature_store import FeatureManifest, load_feature_file
from llavidal.features.decode import resize_nearest
from llavidal.features.encoders import load_vision_encoder
from llavidal.features.extractor import manifest_differences
from llavidal.features.images import image_features
from llavidal.features.pooling import PoolingConfig
from llavidal.features.video import VideoExtractor, main

torch.set_num_threads(1)

FLAGS = ["--num_frames", "8", "--spatial_grid", "4", "--workers", "0", "--progress", "False", "--device", "cpu"]


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    pixels = {}
    for name, size in (("000123.jpg", (40, 30)), ("sub/000124.png", (64, 64)), ("000125.webp", (50, 70))):
        array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / name, quality=100) if name.endswith(".jpg") else Image.fromarray(array).save(folder / name)
        pixels[name] = np.array(Image.open(folder / name).convert("RGB"))
    (folder / "broken.png").write_bytes(b"not an image at all" * 10)
    return folder, pixels


def test_image_folder_gives_one_frame_features_and_a_manifest_saying_so(image_folder, tmp_path, capsys):
    folder, pixels = image_folder
    out = tmp_path / "feats"
    assert main(["--video_dir_path", str(folder), "--clip_feat_path", str(out), *FLAGS]) == 1  # broken.png failed
    printed = capsys.readouterr()
    assert "4 images under" in printed.err and "image features: 3 done, 0 skipped, 1 failed of 4" in printed.out
    failures = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["video_id"] for f in failures] == ["broken"] and "cannot read as an image" in failures[0]["reason"]

    encoder = load_vision_encoder("embedded", device="cpu")
    video = VideoExtractor.create(encoder, PoolingConfig(temporal_tokens=8, spatial_grid=4), 8, "float16",
                                  encoder_ref="embedded")
    manifest = FeatureManifest.load(out)
    assert manifest.frames == 1 and manifest.extra["source"] == "image"
    assert manifest.shape == [8 + 16, encoder.feature_dim]
    # the video recipe of the same flags: the model sees images and videos through the same pooling
    assert manifest_differences(video.manifest(), manifest) == []

    for name, array in pixels.items():
        stem = name.split("/")[-1].rsplit(".", 1)[0]
        features = load_feature_file(out / f"{stem}.safetensors")
        assert features.shape == (24, encoder.feature_dim) and features.dtype == np.float16
        patches = encoder.encode(resize_nearest(array[None], encoder.image_size))  # (1, P, D)
        np.testing.assert_allclose(features[0].astype(np.float32), patches[0].mean(0).numpy(), atol=2e-3, rtol=2e-3)
        assert not features[1:8].any()  # the temporal rows of the frames an image does not have
        grid = patches[0].t().reshape(1, -1, 16, 16)
        spatial = torch.nn.functional.adaptive_avg_pool2d(grid, 4).reshape(encoder.feature_dim, 16).t()
        np.testing.assert_allclose(features[8:].astype(np.float32), spatial.numpy(), atol=2e-3, rtol=2e-3)
        # the demo and the server compute the same values on the fly
        np.testing.assert_array_equal(image_features(video, folder / name), features.astype(np.float32))

    (folder / "broken.png").unlink()
    assert main(["--video_dir_path", str(folder), "--clip_feat_path", str(out), *FLAGS]) == 0
    assert "0 done, 3 skipped, 0 failed of 3" in capsys.readouterr().out
