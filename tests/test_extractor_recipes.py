"""Extractors as data: a manifest's typed recipe rebuilds an identical extractor for every modality; manifests
written before recipes existed still load; weights folders store recipe paths relative to themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from demo_helpers import make_skeleton_file, make_tracks_file, make_video

FIXTURES = Path(__file__).parent / "fixtures" / "manifests_v1"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from llavidal.features.extractor import Clip

    root = tmp_path_factory.mktemp("clip")
    return Clip(video=make_video(root / "videos" / "c.mp4", frames=16),
                skeleton=make_skeleton_file(root / "skeletons" / "c.skeleton", 16),
                tracks=make_tracks_file(root / "tracks" / "c.json", 16), num_frames=16)


@pytest.fixture(scope="module")
def vision_encoder():
    from llavidal.features.encoders import load_vision_encoder

    return load_vision_encoder("embedded", device="cpu")


def _round_trip(extractor, folder: Path, **options):
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import extractor_from_manifest

    extractor.manifest().save(folder)
    manifest = FeatureManifest.load(folder)
    assert manifest.recipe["format"] == "llavidal-recipe/1" and manifest.format == "llavidal-features/2"
    rebuilt = extractor_from_manifest(manifest, device="cpu", **options)
    assert type(rebuilt) is type(extractor) and rebuilt.recipe == extractor.recipe
    assert rebuilt.output_shape() == extractor.output_shape() and rebuilt.weights_match()
    return rebuilt


def test_video_recipe_round_trip(tmp_path, clip, vision_encoder):
    from llavidal.features.pooling import PoolingConfig
    from llavidal.features.video import VideoExtractor

    extractor = VideoExtractor.create(vision_encoder, PoolingConfig(temporal_tokens=6, spatial_grid=4), 6, "float16")
    rebuilt = _round_trip(extractor, tmp_path)
    first, second = extractor.extract(clip).features, rebuilt.extract(clip).features
    assert first.shape == (6 + 16, 256) and first.dtype == np.float32
    np.testing.assert_allclose(first, second, atol=1e-6)
    assert np.array_equal(first, first.astype(np.float16).astype(np.float32))  # rounded as training read it


def test_per_layer_video_recipe_round_trip(tmp_path, clip, vision_encoder):
    """The Breakfast fork's features: the CLS token of chosen hidden states per frame, (T, L, D)."""
    from llavidal.features.pooling import PoolingConfig
    from llavidal.features.video import VideoExtractor

    extractor = VideoExtractor.create(vision_encoder, PoolingConfig(temporal_tokens=20), 20, "float16",
                                      layers="0,-1", layer_token="cls")
    assert extractor.recipe.layers == [0, 3] and extractor.output_shape() == (20, 2, 256)
    rebuilt = _round_trip(extractor, tmp_path)
    assert rebuilt.recipe.layer_token == "cls" and rebuilt.manifest().shape == [20, 2, 256]
    first, second = extractor.extract(clip).features, rebuilt.extract(clip).features
    assert first.shape == (20, 2, 256) and not first[16:].any()  # 16 frames, zero-padded to 20 rows
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_default_video_recipe_keeps_its_earlier_form(vision_encoder):
    """Features made without --layers record the same recipe as before the per-layer fields existed, so an
    existing feature folder resumes and recorded manifests compare equal."""
    from llavidal.features.extractor import VideoRecipe, manifest_differences, recipe_from_dict, recipe_to_dict
    from llavidal.features.pooling import PoolingConfig
    from llavidal.features.video import VideoExtractor

    data = recipe_to_dict(VideoRecipe(num_frames=8, temporal_tokens=8))
    assert "layers" not in data and "layer_token" not in data
    assert recipe_from_dict(data) == VideoRecipe(num_frames=8, temporal_tokens=8)
    pooled = VideoExtractor.create(vision_encoder, PoolingConfig(temporal_tokens=8), 8).manifest()
    per_layer = VideoExtractor.create(vision_encoder, PoolingConfig(temporal_tokens=8), 8, layers="all").manifest()
    assert any(line.startswith("layers [0, 1, 2, 3] instead of None") for line in manifest_differences(pooled, per_layer))


def test_pose_recipe_round_trip_with_a_checkpoint(tmp_path, clip):
    from llavidal.features.pose.encoder import PoseEncoderConfig, load_pose_encoder, save_pose_encoder, seeded_pose_encoder
    from llavidal.features.pose.extract import PoseExtractor

    checkpoint = tmp_path / "pose_encoder"
    config = PoseEncoderConfig(num_frames=16, depth=1, hidden=32, heads=2, tokens=8, dim=24)
    save_pose_encoder(seeded_pose_encoder(config, seed=3), checkpoint, {"model_id": "test-pose"})
    encoder = load_pose_encoder(checkpoint)
    extractor = PoseExtractor.create(encoder, None, feature_dtype="float32")
    assert extractor.recipe.encoder == str(checkpoint.resolve())  # found from the loaded encoder
    rebuilt = _round_trip(extractor, tmp_path / "features")
    first, second = extractor.extract(clip), rebuilt.extract(clip)
    assert first.features.shape == (8, 24) and "skeleton file" in first.detail
    np.testing.assert_allclose(first.features, second.features, atol=1e-6)
    assert first.artifacts["skeleton"].detected()


def test_object_recipe_round_trip(tmp_path, clip, vision_encoder):
    from llavidal.features.objects.extract import ObjectExtractor

    extractor = ObjectExtractor.create(vision_encoder, tokens_per_object=4, margin=0.2, square=False)
    rebuilt = _round_trip(extractor, tmp_path)
    first, second = extractor.extract(clip), rebuilt.extract(clip)
    assert first.features.shape == (2, 4, 256) and first.detail.startswith("mug, book (2 objects")
    np.testing.assert_allclose(first.features, second.features, atol=1e-6)
    assert (rebuilt.recipe.margin, rebuilt.recipe.square) == (0.2, False)


def test_old_format_manifests_load_and_rebuild(clip):
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import ObjectRecipe, PoseRecipe, VideoRecipe, extractor_from_manifest, recipe_from_manifest

    manifests = {name: FeatureManifest.load(FIXTURES / f"{name}.json") for name in ("video", "pose", "object")}
    assert all(m.format == "llavidal-features/1" and not m.recipe for m in manifests.values())
    video = recipe_from_manifest(manifests["video"])
    assert video == VideoRecipe(encoder="embedded", model_id=manifests["video"].model_id,
                                weights_sha256=manifests["video"].weights_sha256, num_frames=8, temporal_tokens=8,
                                spatial_grid=4, decoder="pyav", feature_dtype="float16")
    assert recipe_from_manifest(manifests["pose"]) == PoseRecipe(
        encoder="seeded", model_id="llavidal-pose-seeded-untrained",
        weights_sha256=manifests["pose"].weights_sha256, skeleton_source="ntu-skeleton")
    objects = recipe_from_manifest(manifests["object"])
    assert isinstance(objects, ObjectRecipe) and (objects.margin, objects.square, objects.tokens_per_object) == (0.2, False, 8)
    for name, manifest in manifests.items():
        extractor = extractor_from_manifest(manifest, device="cpu")
        assert extractor.weights_match(), name  # the same encoder weights as when the manifest was written
    assert extractor_from_manifest(manifests["video"], device="cpu").output_shape() == (24, 256)


def test_unknown_recipe_version_is_refused():
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import RecipeError, recipe_from_manifest

    data = json.loads((FIXTURES / "video.json").read_text())
    data["recipe"] = {"format": "llavidal-recipe/99", "modality": "video"}
    with pytest.raises(RecipeError, match="upgrade llavidal or re-extract"):
        recipe_from_manifest(FeatureManifest.from_dict(data))


def test_weights_folder_keeps_encoder_paths_relative(tmp_path, clip):
    """A weights folder moved together with its pose encoder still rebuilds the extractor."""
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import extractor_from_manifest
    from llavidal.features.pose.encoder import PoseEncoderConfig, save_pose_encoder, seeded_pose_encoder
    from llavidal.features.pose.extract import PoseExtractor
    from llavidal.model.config import LlavidalConfig
    from llavidal.train.train import feature_manifests

    run = tmp_path / "run"
    config = PoseEncoderConfig(num_frames=16, depth=1, hidden=32, heads=2, tokens=8, dim=24)
    save_pose_encoder(seeded_pose_encoder(config, seed=5), run / "pose_encoder", {"model_id": "moved"})
    from llavidal.features.pose.encoder import load_pose_encoder

    PoseExtractor.create(load_pose_encoder(run / "pose_encoder"), None).manifest().save(run / "features" / "pose")
    weights = LlavidalConfig(base_model="llm", feature_manifests=feature_manifests({"pose": str(run / "features" / "pose")}))
    weights.to_json_file(run / "weights")
    stored = json.loads((run / "weights" / "llavidal_config.json").read_text())
    assert stored["feature_manifests"]["pose"]["recipe"]["encoder"] == "../pose_encoder"

    moved = tmp_path / "elsewhere"
    shutil.move(str(run), str(moved))
    manifest = LlavidalConfig.from_json_file(moved / "weights").recorded_manifests(moved / "weights")["pose"]
    assert isinstance(manifest, FeatureManifest)
    extractor = extractor_from_manifest(manifest, device="cpu")
    assert extractor.weights_match() and extractor.extract(clip).features.shape == (8, 24)


def test_manifest_differences_name_what_changed(vision_encoder):
    from llavidal.features.extractor import manifest_differences
    from llavidal.features.pooling import PoolingConfig
    from llavidal.features.video import VideoExtractor

    base = VideoExtractor.create(vision_encoder, PoolingConfig(temporal_tokens=8, spatial_grid=4), 8).manifest()
    assert manifest_differences(base, base) == []
    other = VideoExtractor.create(vision_encoder, PoolingConfig(temporal_tokens=4, spatial_grid=4), 8).manifest()
    found = manifest_differences(base, other)
    assert any("temporal_tokens 4 instead of 8" in d for d in found) and any("shape" in d for d in found)
    import dataclasses

    moved = dataclasses.replace(other, recipe={**other.recipe, "weights_sha256": "0" * 64})
    assert any(d.startswith("encoder weights") for d in manifest_differences(other, moved))
