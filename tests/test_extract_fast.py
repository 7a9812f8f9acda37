"""The fast extraction pipeline: files bitwise identical to upstream's one-video-at-a-time loop (workers 0
and 1), the decode-time resize equal to decode-then-resize, the writer thread's atomic writes and error
handling, and length-grouped batches that keep every sample's loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from video_testutils import write_synthetic_video

from llavidal.data.feature_store import load_feature_file, save_features
from llavidal.features.decode import (
    count_frames_pyav,
    decode_video,
    nearest_indices,
    resize_nearest,
    sample_frame_indices,
)
from llavidal.features.encoders import load_vision_encoder
from llavidal.features.pooling import PoolingConfig, spatio_temporal_pool
from llavidal.features.video import VideoExtractor, _Writer, extract_video_features

av = pytest.importorskip("av")
torch.set_num_threads(1)

NUM_FRAMES = 12
# (name, frames, width, height): fewer and more frames than NUM_FRAMES; down-, up- and no resize
VIDEOS = [("a", 30, 160, 120), ("b", 9, 96, 72), ("c", 17, 224, 224), ("d", 25, 250, 140)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fast_videos")
    return [write_synthetic_video(root / f"{name}.mp4", frames, width, height, seed=seed)
            for seed, (name, frames, width, height) in enumerate(VIDEOS)]


@pytest.fixture(scope="module")
def encoder():
    return load_vision_encoder("embedded", device="cpu")


def upstream_frames(path: Path, num_frames: int, size: int) -> torch.Tensor:
    """Upstream's load_video: sampled frames at full resolution, then its float nearest resize back to uint8."""
    indices = sample_frame_indices(count_frames_pyav(path), num_frames)
    kept = {}
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number in indices:
                kept[number] = frame.to_ndarray(format="rgb24")
    frames = np.stack([kept[i] for i in indices])
    if frames.shape[1:3] != (size, size):
        tensor = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(size, size))
        frames = tensor.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    return torch.from_numpy(frames)


def upstream_loop(paths: list[Path], encoder, batch_size: int) -> dict[str, np.ndarray]:
    pooling = PoolingConfig(temporal_tokens=NUM_FRAMES)
    out = {}
    for path in paths:
        features = encoder.encode(upstream_frames(path, NUM_FRAMES, encoder.image_size), batch_size=batch_size)
        out[path.stem] = spatio_temporal_pool(features, pooling).cpu().numpy().astype(np.float16)
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_files_are_bitwise_those_of_the_upstream_loop(videos, encoder, workers, tmp_path):
    expected = upstream_loop(videos, encoder, batch_size=5)
    # batches of 7 frames straddle videos: frames of several videos share a forward pass
    summary = extract_video_features(videos, tmp_path, encoder, num_frames=NUM_FRAMES, batch_size=7,
                                     workers=workers, progress=False)
    assert (summary.done, summary.failed) == (len(videos), 0)
    for path in videos:
        ours = load_feature_file(tmp_path / f"{path.stem}.safetensors")
        assert ours.dtype == np.float16 and ours.shape == expected[path.stem].shape
        assert ours.tobytes() == expected[path.stem].tobytes(), path.stem


@pytest.mark.parametrize("size", [224, 64])
def test_decode_time_resize_equals_decode_then_resize(videos, size):
    for path in videos:
        decoded = decode_video(path, NUM_FRAMES, size, "pyav", threads=0)
        assert decoded.ok, decoded.error
        assert torch.equal(decoded.frames, upstream_frames(path, NUM_FRAMES, size)), path.stem
        shared = decode_video(path, NUM_FRAMES, size, "pyav", threads=1, shared=True)
        assert shared.frames.is_shared() and torch.equal(shared.frames, decoded.frames)


def test_nearest_indices_are_the_resize_rule():
    from llavidal.features.decode import resize_frame_into

    generator = torch.Generator().manual_seed(0)
    for height, width in ((1, 1), (3, 7), (72, 96), (223, 225), (360, 640), (1080, 1920), (137, 251), (300, 2)):
        frame = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8, generator=generator)
        for size in (1, 5, 64, 224, 336):
            reference = resize_nearest(frame, size)[0]
            rows, cols = nearest_indices(height, width, size)
            assert torch.equal(torch.from_numpy(frame[0].numpy()[rows][:, cols]), reference), (height, width, size)
            out = np.empty((size, size, 3), dtype=np.uint8)
            resize_frame_into(frame[0].numpy(), out)
            assert np.array_equal(out, reference.numpy()), (height, width, size)
            upstream = torch.nn.functional.interpolate(frame.permute(0, 3, 1, 2).float(), size=(size, size))
            assert torch.equal(upstream.permute(0, 2, 3, 1).to(torch.uint8)[0], reference), (height, width, size)


def test_a_failed_write_leaves_no_partial_file_and_stops_the_run(videos, encoder, tmp_path, monkeypatch):
    import llavidal.data.feature_store as store

    real_save = store._np_save_file
    calls = []

    def disk_full_on_second(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\x00" * 100)  # half a file, then the disk is full
            raise OSError(28, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(store, "_np_save_file", disk_full_on_second)
    with pytest.raises(OSError, match="No space left"):
        extract_video_features(videos, tmp_path, encoder, num_frames=NUM_FRAMES, batch_size=NUM_FRAMES, workers=0,
                               progress=False)
    written = sorted(p.name for p in tmp_path.glob("*.safetensors") if not p.name.startswith("."))
    assert written == [f"{videos[0].stem}.safetensors"]  # the first video only, complete
    assert load_feature_file(tmp_path / written[0]).shape == (NUM_FRAMES + 256, 256)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_an_encoder_error_still_writes_the_finished_videos(videos, encoder, tmp_path, monkeypatch):
    real_encode = VideoExtractor.encode_frames
    calls = []

    def fail_third(self, frames, batch_size=None):
        calls.append(frames.shape[0])
        if len(calls) == 3:
            raise RuntimeError("encoder crashed")
        return real_encode(self, frames, batch_size=batch_size)

    monkeypatch.setattr(VideoExtractor, "encode_frames", fail_third)
    # one video per batch (at most NUM_FRAMES frames each): videos a and b are finished before the crash
    with pytest.raises(RuntimeError, match="encoder crashed"):
        extract_video_features(videos[:1] + videos[2:], tmp_path, encoder, num_frames=NUM_FRAMES,
                               batch_size=NUM_FRAMES, workers=0, progress=False)
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors") if not p.name.startswith(".")) == ["a", "c"]


def test_writer_reraises_in_the_caller_and_drains():
    written = []

    def write(value):
        if value == 2:
            raise ValueError("bad value 2")
        written.append(value)

    writer = _Writer(write, depth=1)
    writer.submit(1)
    writer.submit(2)
    with pytest.raises(ValueError, match="bad value 2"):
        for value in range(3, 50):  # the error surfaces at a later submit (or at close)
            writer.submit(value)
        writer.close()
    writer.close()  # idempotent, the error was reported once
    assert written[0] == 1 and 2 not in written


def test_save_features_is_atomic_under_a_crash(tmp_path, monkeypatch):
    import llavidal.data.feature_store as store

    target = tmp_path / "x.safetensors"
    save_features(target, np.ones((3, 2), np.float16))

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_np_save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_features(target, np.zeros((3, 2), np.float16))
    assert np.array_equal(load_feature_file(target), np.ones((3, 2), np.float16))  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


# ---- length-grouped batches ----------------------------------------------------------------------

def test_length_grouped_batches_cover_every_sample_and_group_lengths():
    from llavidal.data.packing import LengthGroupedBatchSampler, length_grouped_batches

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 1000, (400,), generator=generator).tolist()
    batches = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))
    assert sorted(i for batch in batches for i in batch) == list(range(400))
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    random_batches = torch.randperm(400, generator=generator).view(50, 8).tolist()
    random_spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in random_batches])
    assert spread < random_spread / 5
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=3)
    first = list(sampler)
    assert first == list(sampler) and len(first) == len(sampler) == 50
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(LengthGroupedBatchSampler(lengths[:13], 4, drop_last=True)) == 3 == len(
        LengthGroupedBatchSampler(lengths[:13], 4, drop_last=True).batches())


def test_length_grouped_batches_keep_every_samples_loss():
    """Padded batches of a random order and of the length-grouped order give each sample the same loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavidal.data.collator import PaddedCollator
    from llavidal.data.packing import length_grouped_batches

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=256, pad_token_id=0)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    items = []
    for index in range(24):
        length = int(torch.randint(5, 120, (1,), generator=generator))
        ids = torch.randint(1, 97, (length,), generator=generator)
        labels = ids.clone()
        labels[: length // 2] = -100
        items.append({"input_ids": ids, "labels": labels, "id": f"s{index}"})
    collator = PaddedCollator(pad_token_id=0)

    def per_sample_losses(batches):
        losses = {}
        for batch_indices in batches:
            batch = collator([items[i] for i in batch_indices])
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shifted = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                                        reduction="none", ignore_index=-100)  # (B, T-1)
            for row, index in enumerate(batch_indices):
                mask = batch["labels"][row, 1:] != -100
                losses[index] = shifted[row][mask].mean().item()
        return losses

    lengths = [int(item["input_ids"].shape[0]) for item in items]
    grouped = length_grouped_batches(lengths, 4, torch.Generator().manual_seed(0), mega_batch_mult=6)
    random_order = torch.randperm(24, generator=torch.Generator().manual_seed(0)).view(6, 4).tolist()
    grouped_losses, padded_losses = per_sample_losses(grouped), per_sample_losses(random_order)
    assert sorted(grouped_losses) == list(range(24))
    for index in range(24):
        assert grouped_losses[index] == pytest.approx(padded_losses[index], abs=1e-5), index
    padded_slots = sum(len(b) * max(lengths[i] for i in b) for b in random_order)
    grouped_slots = sum(len(b) * max(lengths[i] for i in b) for b in grouped)
    assert grouped_slots < padded_slots  # less padding for the same losses
