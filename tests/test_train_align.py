"""`llavidal align`: projectors fitted to the LLM's embeddings of label texts, no LLM pass.

Features whose class is planted in them (plus noise) must, after alignment, land nearest to their
label's token embeddings on held-out samples (and not before); the saved weights must be what
train_mem.py's --pretrain_mm_mlp_adapter loads; bad records get errors that name them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llavidal.data.feature_store import FeatureManifest, save_features
from llavidal.model.builder import build_model
from llavidal.model.modality import ModalityRegistry
from llavidal.testing import tiny_causal_lm_dir
from llavidal.train import align

torch.set_num_threads(1)

LABELS = ["drinking water", "reading a book", "sitting down", "waving a hand"]
POSE_DIM, POSE_TOKENS, OBJ_DIM = 12, 3, 10


def _world(tmp_path: Path, clips: int = 96, seed: int = 0):
    """Pose features = class prototype + noise; objects: 0-2 per clip, class-dependent too."""
    rng = np.random.default_rng(seed)
    proto = rng.normal(size=(len(LABELS), POSE_TOKENS, POSE_DIM)).astype(np.float32)
    obj_proto = rng.normal(size=(len(LABELS), 8, OBJ_DIM)).astype(np.float32)
    pose_dir, obj_dir = tmp_path / "pose", tmp_path / "object"
    pose_dir.mkdir()
    obj_dir.mkdir()
    records = []
    for index in range(clips):
        label = index % len(LABELS)
        clip = f"clip{index:03d}"
        save_features(pose_dir / f"{clip}_pose.safetensors", proto[label] + 0.3 * rng.normal(size=proto[label].shape))
        count = index % 3
        objects = np.stack([obj_proto[label] + 0.3 * rng.normal(size=obj_proto[label].shape) for _ in range(count)]) \
            if count else np.zeros((0, 8, OBJ_DIM), np.float32)
        save_features(obj_dir / f"{clip}_object.safetensors", objects)
        records.append({"id": clip, "pose": f"{clip}_pose.pkl", "object": f"{clip}_object.pkl", "label": LABELS[label]})
    FeatureManifest("pose", "test", POSE_DIM, [POSE_TOKENS, POSE_DIM]).save(pose_dir)
    FeatureManifest("object", "test", OBJ_DIM, [-1, 8, OBJ_DIM]).save(obj_dir)
    data = tmp_path / "labels.json"
    data.write_text(json.dumps(records))
    return records, {"pose": pose_dir, "object": obj_dir}, data


def _registry():
    return ModalityRegistry.default(["pose", "object"], pose_dim=POSE_DIM, pose_tokens=POSE_TOKENS, object_dim=OBJ_DIM,
                                    projector_type="mlp2x_gelu")


def test_alignment_makes_tokens_spell_their_label(tmp_path):
    records, folders, _ = _world(tmp_path)
    torch.manual_seed(0)
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), _registry(), template="chat")
    from llavidal.data.feature_store import FeatureFolder

    args = align.AlignArguments(output_dir=str(tmp_path / "out"), align_steps=300, align_val_fraction=0.25, seed=0)
    report = align.align_model(model, tokenizer, records, {n: FeatureFolder(p, n) for n, p in folders.items()}, args)
    pose = report["modalities"]["pose"]
    assert pose["labels"] == len(LABELS) and pose["held_out_samples"] > 10
    assert pose["samples"] + pose["held_out_samples"] == len(records)
    assert pose["accuracy_before"]["held_out"] < 0.6
    assert pose["accuracy_after"]["held_out"] >= 0.95
    # objects: one aligned row group per object; clips without objects contribute nothing
    objects = report["modalities"]["object"]
    assert objects["samples"] + objects["held_out_samples"] == sum(i % 3 for i in range(len(records)))
    assert objects["accuracy_after"]["held_out"] >= 0.9

    # the projected tokens of a held-out clip are closest to its own label's token embeddings
    emb = model.llm.get_input_embeddings().weight.detach()
    targets = align.label_targets(tokenizer, emb, sorted(LABELS), POSE_TOKENS)
    held = [r for r in records if align._held_out(r["id"], 0.25)]
    from llavidal.data.feature_store import load_feature_file

    hits = 0
    for record in held:
        feats = torch.as_tensor(load_feature_file(folders["pose"] / f"{record['id']}_pose.safetensors")).float()
        with torch.no_grad():
            tokens = model.projectors["pose"](feats)
        distance = ((tokens[None] - targets) ** 2).sum(-1).mean(-1)
        hits += sorted(LABELS)[int(distance.argmin())] == record["label"]
    assert hits / len(held) >= 0.95


def test_label_targets_cycle_the_label_tokens(tmp_path):
    _, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), _registry(), template="chat")
    emb = torch.randn(len(tokenizer), 8)
    ids = tokenizer.encode(" sitting down", add_special_tokens=False)
    targets = align.label_targets(tokenizer, emb, ["sitting down"], len(ids) + 2)
    assert targets.shape == (1, len(ids) + 2, 8)
    assert torch.equal(targets[0, : len(ids)], emb[ids])
    assert torch.equal(targets[0, len(ids):], emb[ids[:2]])


def test_cli_writes_weights_that_training_starts_from(tmp_path):
    records, folders, data = _world(tmp_path, clips=48)
    llm = tiny_causal_lm_dir(tmp_path / "llm")
    out = tmp_path / "aligned"
    code = align.main([
        "--model_name_or_path", str(llm), "--version", "chat", "--data_path", str(data),
        "--pose_folder", str(folders["pose"]), "--object_folder", str(folders["object"]),
        "--mm_projector_type", "mlp2x_gelu", "--align_steps", "40", "--output_dir", str(out),
    ])
    assert code == 0
    report = json.loads((out / align.REPORT_NAME).read_text())
    assert set(report["modalities"]) == {"pose", "object"} and report["labels"] == sorted(LABELS)
    assert (out / "trainable.safetensors").is_file() and (out / "llavidal_config.json").is_file()

    # train_mem.py's --pretrain_mm_mlp_adapter path: the projectors are exactly the aligned ones
    from safetensors.torch import load_file

    saved = load_file(str(out / "trainable.safetensors"))
    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    model, _ = build_model(str(llm), _registry(), template="chat", pretrain_mm_mlp_adapter=str(out),
                           lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "q_proj,v_proj"})
    for key, value in model.projectors["pose"].state_dict().items():
        assert torch.equal(value, saved[f"projectors.pose.{key}"])


def test_records_without_a_label_are_refused_by_name(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps([{"id": "ok", "pose": "a.pkl", "label": "x"}, {"id": "clip_7", "pose": "b.pkl"}]))
    with pytest.raises(ValueError, match="clip_7.*label"):
        align.load_label_records(path)


def test_wrong_token_count_names_the_record(tmp_path):
    records, folders, _ = _world(tmp_path, clips=8)
    save_features(folders["pose"] / "clip003_pose.safetensors", np.zeros((POSE_TOKENS + 1, POSE_DIM), np.float32))
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), _registry(), template="chat")
    from llavidal.data.feature_store import FeatureFolder

    with pytest.raises(ValueError, match="clip003"):
        align.align_model(model, tokenizer, records, {"pose": FeatureFolder(folders["pose"], "pose")},
                          align.AlignArguments(output_dir=str(tmp_path / "o"), align_steps=2))


def test_token_labels_follow_the_segments_in_time():
    record = {"label": "c", "duration": 8.0, "segments": [
        {"start": 0.0, "end": 2.0, "label": "a"}, {"start": 2.0, "end": 6.0, "label": "b"}, {"start": 6.0, "end": 8.0, "label": "c"}]}
    assert align.token_labels(record, 4, temporal=True) == ["a", "b", "b", "c"]
    assert align.token_labels(record, 4, temporal=False) == ["c"] * 4
    assert align.token_labels({"label": "x"}, 3, temporal=True) == ["x"] * 3


def test_temporal_alignment_spells_a_routine_in_order(tmp_path):
    """Clips of two activities (first half, second half): after alignment the first tokens name the first
    activity and the last tokens the second, on held-out clips."""
    rng = np.random.default_rng(1)
    proto = rng.normal(size=(len(LABELS), 4, POSE_DIM)).astype(np.float32)  # per activity and time position
    pose_dir = tmp_path / "pose"
    pose_dir.mkdir()
    records = []
    for index in range(120):
        first, second = rng.choice(len(LABELS), 2, replace=False)
        rows = [proto[first, 0], proto[first, 1], proto[second, 2], proto[second, 3]]  # 4 time-ordered tokens
        save_features(pose_dir / f"r{index}_pose.safetensors", np.stack(rows) + 0.3 * rng.normal(size=(4, POSE_DIM)))
        records.append({"id": f"r{index}", "pose": f"r{index}_pose.pkl", "label": LABELS[second], "duration": 4.0,
                        "segments": [{"start": 0, "end": 2, "label": LABELS[first]},
                                     {"start": 2, "end": 4, "label": LABELS[second]}]})
    FeatureManifest("pose", "test", POSE_DIM, [4, POSE_DIM]).save(pose_dir)
    registry = ModalityRegistry.default(["pose"], pose_dim=POSE_DIM, pose_tokens=4, projector_type="mlp2x_gelu")
    torch.manual_seed(0)
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), registry, template="chat")
    from llavidal.data.feature_store import FeatureFolder

    args = align.AlignArguments(output_dir=str(tmp_path / "o"), align_steps=300, align_val_fraction=0.25, seed=0)
    report = align.align_model(model, tokenizer, records, {"pose": FeatureFolder(pose_dir, "pose")}, args)
    pose = report["modalities"]["pose"]
    assert pose["multi_label_samples"] == pose["samples"] + pose["held_out_samples"] == len(records)
    assert pose["accuracy_after"]["held_out"] >= 0.9

    def first_half_accuracy(model, tokenizer) -> float:
        """Held-out clips whose first two tokens are nearest to the FIRST activity's targets."""
        from llavidal.data.feature_store import load_feature_file

        labels = sorted(LABELS)
        targets = align.label_targets(tokenizer, model.llm.get_input_embeddings().weight.detach(), labels, 4)
        held = [r for r in records if align._held_out(r["id"], 0.25)]
        hits = 0
        for record in held:
            feats = torch.as_tensor(load_feature_file(pose_dir / f"{record['id']}_pose.safetensors")).float()
            with torch.no_grad():
                distances = align._distances(model.projectors["pose"](feats)[None], targets)[0]  # (4, L)
            hits += labels[int(distances[:2].sum(0).argmin())] == record["segments"][0]["label"]
        return hits / len(held)

    assert first_half_accuracy(model, tokenizer) >= 0.9
    # without the segments every token is fitted to the last activity: the first tokens do not name the first
    plain = [{k: v for k, v in r.items() if k not in ("segments", "duration")} for r in records]
    torch.manual_seed(0)
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm2")), registry, template="chat")
    align.align_model(model, tokenizer, plain, {"pose": FeatureFolder(pose_dir, "pose")}, args)
    assert first_half_accuracy(model, tokenizer) < 0.6


def test_wrong_feature_dim_names_the_record(tmp_path):
    records, folders, _ = _world(tmp_path, clips=8)
    save_features(folders["pose"] / "clip005_pose.safetensors", np.zeros((POSE_TOKENS, POSE_DIM + 2), np.float32))
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), _registry(), template="chat")
    from llavidal.data.feature_store import FeatureFolder

    with pytest.raises(ValueError, match=f"clip005.*{POSE_DIM}-d"):
        align.align_model(model, tokenizer, records, {"pose": FeatureFolder(folders["pose"], "pose")},
                          align.AlignArguments(output_dir=str(tmp_path / "o"), align_steps=2))


def test_group_labels_fit_each_object_to_its_own_name(tmp_path):
    """Object features planted by the object's class (not the clip's activity): with ``group_labels`` the
    object tokens of held-out clips land nearest to their own object's name; a count that does not match the
    feature file's groups is refused by record."""
    rng = np.random.default_rng(2)
    names = ["red cup", "blue book", "green phone"]
    proto = rng.normal(size=(len(names), 8, OBJ_DIM)).astype(np.float32)
    obj_dir = tmp_path / "object"
    obj_dir.mkdir()
    records = []
    for index in range(90):
        chosen = rng.choice(len(names), 1 + index % 2, replace=False)
        save_features(obj_dir / f"c{index}_object.safetensors",
                      np.stack([proto[c] + 0.3 * rng.normal(size=proto[c].shape) for c in chosen]))
        records.append({"id": f"c{index}", "object": f"c{index}_object.pkl", "label": LABELS[index % len(LABELS)],
                        "group_labels": {"object": [names[c] for c in chosen]}})
    FeatureManifest("object", "test", OBJ_DIM, [-1, 8, OBJ_DIM]).save(obj_dir)
    registry = ModalityRegistry.default(["object"], object_dim=OBJ_DIM, projector_type="mlp2x_gelu")
    from llavidal.data.feature_store import FeatureFolder, load_feature_file

    torch.manual_seed(0)
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), registry, template="chat")
    args = align.AlignArguments(output_dir=str(tmp_path / "o"), align_steps=300, align_val_fraction=0.25, seed=0)
    report = align.align_model(model, tokenizer, records, {"object": FeatureFolder(obj_dir, "object")}, args)
    objects = report["modalities"]["object"]
    assert objects["labels"] == len(names) and objects["chance"] == pytest.approx(1 / len(names))
    assert objects["accuracy_after"]["held_out"] >= 0.95

    targets = align.label_targets(tokenizer, model.llm.get_input_embeddings().weight.detach(), sorted(names), 8)
    hits = total = 0
    for record in (r for r in records if align._held_out(r["id"], 0.25)):
        feats = torch.as_tensor(load_feature_file(obj_dir / f"{record['id']}_object.safetensors")).float()
        with torch.no_grad():
            distances = align._distances(model.projectors["object"](feats), targets).sum(1)  # (objects, L)
        for row, name in zip(distances, record["group_labels"]["object"]):
            hits += sorted(names)[int(row.argmin())] == name
            total += 1
    assert total > 10 and hits / total >= 0.95

    bad = [dict(records[0], group_labels={"object": names[:1] * 3})] + records[1:]
    with pytest.raises(ValueError, match="c0.*group_labels.*1 group"):
        align.align_model(model, tokenizer, bad, {"object": FeatureFolder(obj_dir, "object")}, args)


def test_modality_labels_fit_one_modality_to_its_own_text(tmp_path):
    """``modality_labels``: pose features that carry the hand as well as the activity, with the pose fitted to
    "<hand> hand, <activity>" (16 tokens: the tiny tokenizer spells words in pieces) and the objects to the activity: held-out pose tokens land nearest to their own
    hand's text (the contrast is over the pose texts: activity x hand), the objects' labels stay the activities;
    segments take their own; a malformed entry is refused by record."""
    rng = np.random.default_rng(3)
    tokens = 16
    proto = rng.normal(size=(len(LABELS), tokens, POSE_DIM)).astype(np.float32)
    hand_proto = rng.normal(size=(2, tokens, POSE_DIM)).astype(np.float32)
    obj_proto = rng.normal(size=(len(LABELS), 8, OBJ_DIM)).astype(np.float32)
    pose_dir, obj_dir = tmp_path / "pose", tmp_path / "object"
    pose_dir.mkdir()
    obj_dir.mkdir()
    records, hands = [], ("left", "right")
    for index in range(160):
        label, hand = index % len(LABELS), (index // len(LABELS)) % 2
        clip = f"h{index:03d}"
        save_features(pose_dir / f"{clip}_pose.safetensors",
                      proto[label] + hand_proto[hand] + 0.3 * rng.normal(size=proto[label].shape))
        save_features(obj_dir / f"{clip}_object.safetensors", obj_proto[label][None] + 0.3 * rng.normal(size=(1, 8, OBJ_DIM)))
        records.append({"id": clip, "pose": f"{clip}_pose.pkl", "object": f"{clip}_object.pkl", "label": LABELS[label],
                        "modality_labels": {"pose": f"{hands[hand]} hand, {LABELS[label]}"}})
    FeatureManifest("pose", "test", POSE_DIM, [tokens, POSE_DIM]).save(pose_dir)
    FeatureManifest("object", "test", OBJ_DIM, [-1, 8, OBJ_DIM]).save(obj_dir)
    data = tmp_path / "labels.json"
    data.write_text(json.dumps(records))
    assert align.load_label_records(data) == records

    from llavidal.data.feature_store import FeatureFolder, load_feature_file

    torch.manual_seed(0)
    registry = ModalityRegistry.default(["pose", "object"], pose_dim=POSE_DIM, pose_tokens=tokens, object_dim=OBJ_DIM,
                                        projector_type="mlp2x_gelu")
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), registry, template="chat")
    args = align.AlignArguments(output_dir=str(tmp_path / "o"), align_steps=400, align_learning_rate=3e-3, align_val_fraction=0.25, seed=0)
    folders = {"pose": FeatureFolder(pose_dir, "pose"), "object": FeatureFolder(obj_dir, "object")}
    report = align.align_model(model, tokenizer, records, folders, args)
    pose_texts = sorted({r["modality_labels"]["pose"] for r in records})
    assert report["modalities"]["pose"]["labels"] == len(pose_texts) == 2 * len(LABELS)
    assert report["modalities"]["object"]["labels"] == len(LABELS)
    assert report["modalities"]["pose"]["accuracy_after"]["held_out"] >= 0.9

    # the hand, read from the tokens: nearer to their own hand's text than to the other hand's, same activity
    emb = model.llm.get_input_embeddings().weight.detach()
    hits = total = 0
    for record in (r for r in records if align._held_out(r["id"], 0.25)):
        texts = [f"{hand} hand, {record['label']}" for hand in hands]
        targets = align.label_targets(tokenizer, emb, texts, tokens)
        feats = torch.as_tensor(load_feature_file(pose_dir / f"{record['id']}_pose.safetensors")).float()
        with torch.no_grad():
            distances = align._distances(model.projectors["pose"](feats)[None], targets)[0].sum(0)
        hits += texts[int(distances.argmin())] == record["modality_labels"]["pose"]
        total += 1
    assert total > 20 and hits / total >= 0.9

    # segments: each token takes its segment's text for its modality, the label for the others
    routine = {"label": "b", "duration": 2.0, "segments": [
        {"start": 0.0, "end": 1.0, "label": "a", "modality_labels": {"pose": "left hand, a"}},
        {"start": 1.0, "end": 2.0, "label": "b"}], "modality_labels": {"pose": "right hand, b"}}
    assert align.token_labels(routine, 4, temporal=True, modality="pose") == ["left hand, a"] * 2 + ["b"] * 2
    assert align.token_labels(routine, 2, temporal=False, modality="pose") == ["right hand, b"] * 2
    assert align.token_labels(routine, 2, temporal=False, modality="video") == ["b"] * 2
    assert set(align.record_labels(routine)) == {"a", "b", "left hand, a", "right hand, b"}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([dict(records[0], modality_labels={"pose": ""})]))
    with pytest.raises(ValueError, match="h000.*modality_labels"):
        align.load_label_records(bad)


def test_records_of_one_holdout_group_are_held_out_together(tmp_path):
    """Three cameras of each performance: the held-out samples are whole performances (none of a held-out
    performance's other views is in the fit), and without the key each record is drawn alone."""
    from llavidal.data.feature_store import FeatureFolder

    records, folders, _ = _world(tmp_path, clips=90)
    grouped = [dict(record, holdout_group=f"P{index // 3:03d}") for index, record in enumerate(records)]
    folder = FeatureFolder(folders["pose"], "pose")
    spec = _registry()["pose"]
    held = align.collect(grouped, spec, folder, val_fraction=0.3).held_out.tolist()
    by_group: dict[str, set[bool]] = {}
    for record, flag in zip(grouped, held):
        by_group.setdefault(record["holdout_group"], set()).add(flag)
    assert all(len(flags) == 1 for flags in by_group.values()), "a performance is split between fit and held out"
    assert 0 < sum(held) < len(held)
    alone = align.collect(records, spec, folder, val_fraction=0.3).held_out.tolist()
    assert any(len({alone[i] for i in range(start, start + 3)}) == 2 for start in range(0, 90, 3)), \
        "by id, some performances are split (the leak the key removes)"
