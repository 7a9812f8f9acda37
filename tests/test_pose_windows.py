"""Segment windows in pose pretraining, and per-frame token pooling.

A routine clip ("sit down, then drink") is pretrained one segment at a time: the whole clip is encoded
and the segment's frames are pooled against that segment's text, so the output rows (and the tokens
cut from them) say what happens when.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llavidal.features.pose.encoder import (
    PoseEncoderConfig,
    collate_skeleton_windows,
    seeded_pose_encoder,
    skeleton_window_features,
    window_frame_weights,
)
from llavidal.features.pose.pretrain import (
    PosePretrainArguments,
    PoseTextSample,
    evaluate_contrastive,
    load_pair_file,
    pretrain_pose_encoder,
)
from llavidal.sim.readers import segment_windows
from test_pose_pretrain import ACTIVITIES, ACTIVITY_TEXTS, SMALL, minilm, synthetic_motion  # noqa: F401


def test_window_frame_weights_mark_the_window_frames():
    # 10 frames resampled to 10: the identity.
    np.testing.assert_array_equal(window_frame_weights(10, (3, 7), 10), [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    # 100 frames to 5 resampled frames at 0, 24.75, 49.5, 74.25, 99: the last half holds the last two or three.
    np.testing.assert_array_equal(window_frame_weights(100, (50, 100), 5), [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(window_frame_weights(100, (0, 50), 5), [1, 1, 0, 0, 0])
    # A window shorter than the resampling step still marks the nearest frame.
    np.testing.assert_array_equal(window_frame_weights(100, (70, 72), 5), [0, 0, 0, 1, 0])
    with pytest.raises(ValueError, match="empty"):
        window_frame_weights(10, (7, 7), 5)


def test_augmentation_crop_never_cuts_into_the_window():
    from llavidal.features.pose.ntu import JOINT_INDEX

    config = PoseEncoderConfig(**{**SMALL, "num_frames": 60})
    sample = synthetic_motion("clap", np.random.default_rng(0))[:60]  # (60, 1, 25, 3)
    window = (35, 52)
    # Mark the window's frames: the head raised by a metre (camera y is up).
    head = JOINT_INDEX["Head"]
    marked = sample.copy()
    marked[window[0] : window[1], :, head, 1] += 1.0

    def head_height(features):
        joints = features[:, 0].reshape(config.num_frames, 25, 6)
        return joints[:, head, 1] - joints[:, JOINT_INDEX["SpineBase"], 1]

    for seed in range(40):
        features, _, weights = skeleton_window_features(marked, config, window, np.random.default_rng(seed))
        inside = weights > 0
        # The whole window survives the crop (17 of >= 42 frames, resampled to 60), contiguous ...
        assert 16 <= inside.sum() <= 26
        assert np.all(np.diff(np.flatnonzero(inside)) == 1)
        # ... and the weights mark exactly the raised-head frames.
        height = head_height(features)
        assert height[inside].min() > height[~inside].max()
    # No augmentation: exactly the window's frames.
    _, _, weights = skeleton_window_features(sample, config, window)
    assert np.flatnonzero(weights).tolist() == list(range(35, 52))
    with pytest.raises(ValueError, match="holds no frame"):
        skeleton_window_features(sample, config, (70, 80))


def test_windowed_pooling_is_the_mean_over_the_window_and_tokens_ignore_absent_persons():
    torch.manual_seed(0)
    config = PoseEncoderConfig(**{**SMALL, "tokens": 6, "num_frames": 12, "num_persons": 2})
    encoder = seeded_pose_encoder(config)
    sample = synthetic_motion("wave_left", np.random.default_rng(3))  # one person; the second slot is absent
    features, mask, weights = collate_skeleton_windows([sample], [(0, len(sample) // 2)], config)
    with torch.no_grad():
        sequence, padding = encoder._sequence(features, mask)
        tokens, pooled = encoder.encode_with_pooled(features, mask, weights)
        _, whole = encoder.encode_with_pooled(features, mask)
    by_frame = sequence.reshape(1, 12, 2, -1)[:, :, 0]  # person 0, every frame present
    expected = by_frame[0, weights[0] > 0].mean(dim=0)
    torch.testing.assert_close(pooled[0], expected)
    torch.testing.assert_close(whole[0], by_frame[0].mean(dim=0))
    assert not torch.allclose(pooled, whole)
    # Each token is the mean of two frames of the present person; the absent person's rows never leak in.
    torch.testing.assert_close(tokens[0], by_frame[0].reshape(6, 2, -1).mean(dim=1))
    noisy = sequence.clone()
    noisy[padding] = torch.randn_like(noisy[padding]) * 100
    torch.testing.assert_close(encoder._to_tokens(noisy, padding), tokens)
    # The first releases' pooling over raw (frame, person) positions is still available.
    legacy = seeded_pose_encoder(PoseEncoderConfig(**{**config.to_dict(), "token_pooling": "positions"}))
    legacy.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        assert not torch.allclose(legacy(features, mask), tokens)
    with pytest.raises(ValueError, match="token_pooling"):
        PoseEncoderConfig(token_pooling="max")
    # A checkpoint config saved before the field existed keeps its original (positions) pooling.
    old = {k: v for k, v in config.to_dict().items() if k != "token_pooling"}
    assert PoseEncoderConfig.from_dict(old).token_pooling == "positions"
    assert PoseEncoderConfig.from_dict(config.to_dict()).token_pooling == "frames"


def test_pair_file_windows_and_their_errors(tmp_path):
    from llavidal.features.pose.ntu import sequence_from_arrays, write_skeleton

    skeleton = tmp_path / "clip.skeleton"
    write_skeleton(skeleton, sequence_from_arrays(synthetic_motion("squat", np.random.default_rng(0))[:40]))
    rows = [{"skeleton": "clip.skeleton", "text": "A person squats.", "start_frame": 0, "end_frame": 20},
            {"skeleton": "clip.skeleton", "text": "A person claps."}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    samples = load_pair_file(tmp_path / "pairs.jsonl")
    assert [s.window for s in samples] == [(0, 20), None]
    for bad, message in (({"start_frame": 5}, "both 'start_frame' and 'end_frame'"),
                         ({"start_frame": 9, "end_frame": 9}, "empty or negative"),
                         ({"start_frame": "x", "end_frame": 3}, "as integers")):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"skeleton": "clip.skeleton", "text": "t", **bad}))
        with pytest.raises(ValueError, match=message) as info:
            load_pair_file(tmp_path / "bad.jsonl")
        assert "bad.jsonl: record 1" in str(info.value)


def test_pretraining_rejects_a_window_past_the_clip(tmp_path, minilm):
    clip = synthetic_motion("jump", np.random.default_rng(0))[:40]
    samples = [PoseTextSample("a", clip, "A person jumps."), PoseTextSample("b#1", clip, "A person claps.", (50, 60))]
    with pytest.raises(ValueError, match=r"sample b#1: window \[50, 60\) holds no frame of its 40-frame skeleton"):
        pretrain_pose_encoder(samples, PosePretrainArguments(output_dir=str(tmp_path / "p"), max_steps=1,
                                                             batch_size=2, eval_fraction=0, device="cpu"),
                              PoseEncoderConfig(**SMALL), text_encoder=minilm, progress=False)


def test_segment_windows_from_world_meta():
    meta = {"fps": 10, "frames": 52, "segments": [
        {"activity": "sit_down", "start": 0.0, "end": 2.44, "label": "sitting down on a chair"},
        {"activity": "drink", "start": 2.44, "end": 5.3, "label": "drinking"}]}
    windows = segment_windows(meta)
    assert [w for w, _ in windows] == [(0, 24), (24, 52)]  # clipped to the clip's 52 frames
    assert windows[0][1].startswith("The person") and windows[0][1] != windows[1][1]
    with pytest.raises(ValueError, match="fps"):
        segment_windows({"segments": meta["segments"]})


def _routine(first: str, second: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Two activities in a row by one person (the second clip moved onto the first's last position)."""
    a, b = synthetic_motion(first, rng), synthetic_motion(second, rng)
    a, b = a[: min(len(a), 45)], b[: min(len(b), 45)]
    b = b - b[0, 0, 0] + a[-1, 0, 0]
    return np.concatenate([a, b]).astype(np.float32), len(a)


def test_segment_pretraining_makes_the_output_rows_say_what_happens_when(tmp_path, minilm):
    """Trained on single clips plus two-activity routines, once with a routine's segments as windows
    and once with the routine as a whole ("A, then B"): on held-out routines, only the windowed
    encoder names each activity from its own frames."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    singles = [PoseTextSample(f"s{i}", synthetic_motion(a, rng), ACTIVITY_TEXTS[a])
               for i, a in enumerate(ACTIVITIES * 8)]
    pairs = [(ACTIVITIES[i], ACTIVITIES[j]) for i in range(8) for j in range(8) if i != j]
    train_routines = [(*_routine(a, b, rng), a, b) for a, b in pairs[::2] * 2]
    test_routines = [(*_routine(a, b, rng), a, b) for a, b in pairs[1::2]]
    windowed = singles + [
        PoseTextSample(f"r{k}#{part}", clip, ACTIVITY_TEXTS[name], window)
        for k, (clip, cut, a, b) in enumerate(train_routines)
        for part, (name, window) in enumerate(((a, (0, cut)), (b, (cut, len(clip)))))
    ]
    whole = singles + [PoseTextSample(f"r{k}", clip, f"{ACTIVITY_TEXTS[a][:-1]}, then {ACTIVITY_TEXTS[b][0].lower()}"
                                      f"{ACTIVITY_TEXTS[b][1:]}") for k, (clip, _, a, b) in enumerate(train_routines)]
    texts = [ACTIVITY_TEXTS[a] for a in ACTIVITIES]
    text_embeddings = minilm.encode(texts)
    arrays = [clip for clip, *_ in test_routines for _ in range(2)]
    windows = [w for clip, cut, *_ in test_routines for w in ((0, cut), (cut, len(clip)))]
    labels = [ACTIVITIES.index(n) for *_, a, b in test_routines for n in (a, b)]
    accuracy = {}
    for name, samples in (("windowed", windowed), ("whole", whole)):
        args = PosePretrainArguments(output_dir=str(tmp_path / name), max_steps=120, batch_size=32, learning_rate=2e-3,
                                     warmup_steps=10, eval_fraction=0.0, save_steps=1000, device="cpu", seed=0)
        encoder = pretrain_pose_encoder(samples, args, PoseEncoderConfig(**SMALL), text_encoder=minilm,
                                        progress=False).encoder
        _, accuracy[name] = evaluate_contrastive(encoder, arrays, labels, text_embeddings, windows=windows)
    print(f"\nheld-out routine segments named from their windows: windowed {accuracy['windowed']:.3f}, "
          f"whole-clip {accuracy['whole']:.3f}")
    assert accuracy["windowed"] >= 0.75
    assert accuracy["windowed"] > accuracy["whole"] + 0.15
