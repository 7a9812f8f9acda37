"""The lazy dataset and the padded collator on tiny upstream-format fixtures."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fixtures.tiny_adl_data import (
    OBJECT_DIM, OBJECT_GROUP, POSE_DIM, POSE_TOKENS, VIDEO_DIM, VIDEO_TOKENS, make_records, write_features,
)
from llavidal.constants import IGNORE_INDEX
from llavidal.data.collator import PaddedCollator
from llavidal.data.dataset import LazySupervisedDataset
from llavidal.data.feature_store import FeatureFileError, FeatureManifest
from llavidal.model.modality import ModalityRegistry
from llavidal.testing import tiny_tokenizer

torch.set_num_threads(1)


def registry(names=("video", "object", "pose")) -> ModalityRegistry:
    return ModalityRegistry.default(
        list(names), video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS, pose_dim=POSE_DIM, pose_tokens=POSE_TOKENS,
        object_dim=OBJECT_DIM, object_group=OBJECT_GROUP,
    )


def tokenizer_for(reg: ModalityRegistry):
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(ModalityRegistry.default().new_tokens(), special_tokens=True)
    return tokenizer


@pytest.fixture()
def fixture(tmp_path):
    records = make_records(6)
    folders = write_features(tmp_path / "feats", records, fmt="pickle")
    return records, folders


def dataset(records, folders, names=("video", "object", "pose"), **kwargs):
    reg = registry(names)
    return LazySupervisedDataset(records, tokenizer_for(reg), reg, {n: folders[n] for n in names}, **kwargs)


def test_items_splice_all_modalities(fixture):
    records, folders = fixture
    data = dataset(records, folders)
    assert len(data) == 6 and data.summary.usable == 6
    tokenizer = data.tokenizer
    for index in range(len(data)):
        item = data[index]
        features = item["modality_features"]
        assert set(features) == {"video", "object", "pose"}
        assert features["video"].shape == (VIDEO_TOKENS, VIDEO_DIM)
        assert features["pose"].shape == (POSE_TOKENS, POSE_DIM)
        assert features["object"].shape == (OBJECT_GROUP * (1 + index % 3), OBJECT_DIM)  # (n, 8, D) -> (8n, D)
        for name, tensor in features.items():
            patch = tokenizer.convert_tokens_to_ids(data.modalities[name].patch_token)
            assert int((item["input_ids"] == patch).sum()) == tensor.shape[0]
        assert item["id"] == records[index]["id"]
        text = tokenizer.decode(item["input_ids"][item["labels"] != IGNORE_INDEX], skip_special_tokens=False)
        assert text.strip().startswith(records[index]["conversations"][1]["value"])
        # length known without reading features: exact except for the object count
        assert data.lengths[index] == len(item["input_ids"]) - OBJECT_GROUP * (index % 3)
    # upstream span order: video, object, pose
    ids = data[0]["input_ids"].tolist()
    starts = [ids.index(tokenizer.convert_tokens_to_ids(t)) for t in ("<vid_start>", "<object_start>", "<pose_start>")]
    assert starts == sorted(starts)
    np.testing.assert_allclose(data[0]["modality_features"]["video"].numpy(),
                               np.asarray(data.folders["video"].get("clip_000.pkl")), rtol=0)


def test_unused_modality_placeholders_are_stripped(fixture):
    records, folders = fixture
    data = dataset(records, folders, names=("video",))
    item = data[0]
    assert set(item["modality_features"]) == {"video"}
    text = data.tokenizer.decode(item["input_ids"])
    assert "<human_pose>" not in text and "<object>" not in text and "<pose_start>" not in text
    assert data.summary.modality_samples == {"video": 6}


def test_missing_features_zeros_and_counted_or_strict_error(tmp_path, caplog):
    records = make_records(4)
    folders = write_features(tmp_path / "feats", records, fmt="pickle", skip=("clip_001",))
    with caplog.at_level(logging.WARNING, logger="llavidal"):
        data = dataset(records, folders)
    assert data.summary.missing_features == {"video": 1, "object": 1, "pose": 1}
    assert any("clip_001" in r.message and "zeros" in r.message for r in caplog.records)
    item = data[1]
    assert item["id"] == "clip_001"
    assert all(float(t.abs().sum()) == 0.0 for t in item["modality_features"].values())
    assert item["modality_features"]["object"].shape == (OBJECT_GROUP, OBJECT_DIM)
    with pytest.raises(FeatureFileError, match="clip_001"):
        dataset(records, folders, strict_features=True)


def test_tokenization_mismatch_is_dropped_with_warning(fixture, caplog):
    records, folders = fixture
    records = [dict(r) for r in records]
    records[1] = {**records[1], "conversations": [
        {"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a ASSISTANT: b"}]}
    with caplog.at_level(logging.WARNING, logger="llavidal"):
        data = dataset(records, folders)
    assert data.summary.dropped == {"tokenization_mismatch": 1}
    assert len(data) == 5 and "clip_001" not in [data[i]["id"] for i in range(len(data))]
    assert any("clip_001" in r.message and "mismatch" in r.message for r in caplog.records)
    assert "tokenization_mismatch 1" in data.summary.format(2048)


def test_overlong_samples_truncate_outside_spans_or_drop(fixture, caplog):
    records, folders = fixture
    # clip_002 is two rounds; a limit that ends inside its second round keeps the first answer
    full = dataset(records, folders)
    two_rounds = full[2]
    first_end = [i for i, l in enumerate(two_rounds["labels"].tolist()) if l != IGNORE_INDEX]
    limit = first_end[0] + 12
    assert limit < len(two_rounds["input_ids"])
    with caplog.at_level(logging.WARNING, logger="llavidal"):
        short = dataset(records, folders, max_length=limit)
    assert short.summary.truncated >= 1
    kept = {short[i]["id"]: short[i] for i in range(len(short))}
    assert "clip_002" in kept and len(kept["clip_002"]["input_ids"]) <= limit
    # samples whose answer lies past the limit are dropped, with a count, without crashing
    assert short.summary.dropped["overlong"] == len(records) - len(short)
    # a cut that would fall inside a span removes the whole span and its features
    spans_end = two_rounds["input_ids"].tolist().index(full.tokenizer.convert_tokens_to_ids("<pose_end>"))
    item = short.build(short.samples.index(next(p for p in short.samples if p.sample_id == "clip_002")))
    assert len(item["input_ids"]) <= limit
    assert spans_end < limit or "pose" not in item["modality_features"]


def test_cut_inside_span_drops_the_span_not_the_sample(tmp_path):
    records = [{
        "id": "long", "video": "long.pkl", "pose": "long_pose.pkl",
        "conversations": [
            {"from": "human", "value": "What is the person doing?"},
            {"from": "gpt", "value": "Drinking."},
            {"from": "human", "value": "And now?\n<video><human_pose>"},
            {"from": "gpt", "value": "Sitting."},
        ],
    }]
    folders = write_features(tmp_path / "f", [{"id": "long"}], fmt="pickle")
    full = dataset(records, folders, names=("video", "pose"))
    ids = full[0]["input_ids"].tolist()
    pose_start = ids.index(full.tokenizer.convert_tokens_to_ids("<pose_start>"))
    short = dataset(records, folders, names=("video", "pose"), max_length=pose_start + 2)
    item = short[0]
    assert "pose" not in item["modality_features"] and "video" in item["modality_features"]
    patch = short.tokenizer.convert_tokens_to_ids("<pose_patch>")
    assert patch not in item["input_ids"].tolist()
    assert len(item["input_ids"]) == pose_start
    assert (item["labels"] != IGNORE_INDEX).any()  # the first answer is still supervised


def test_modality_dropout_is_seeded(fixture):
    records, folders = fixture
    always = dataset(records, folders, mask_probs={"pose": 1.0})
    assert float(always[0]["modality_features"]["pose"].abs().sum()) == 0.0
    assert float(always[0]["modality_features"]["video"].abs().sum()) > 0.0
    half_a = dataset(records, folders, mask_probs={"video": 0.5}, seed=3)
    half_b = dataset(records, folders, mask_probs={"video": 0.5}, seed=3)
    zeroed_a = [float(half_a[i]["modality_features"]["video"].abs().sum()) == 0 for i in range(6)]
    zeroed_b = [float(half_b[i]["modality_features"]["video"].abs().sum()) == 0 for i in range(6)]
    assert zeroed_a == zeroed_b
    with pytest.raises(ValueError, match="mask_prob"):
        dataset(records, folders, mask_probs={"video": 1.5})


def test_bad_feature_shape_replaced_not_crashing(fixture, caplog):
    records, folders = fixture
    from llavidal.data.feature_store import save_pickle_features

    save_pickle_features(folders["video"] / "clip_000.pkl", np.zeros((VIDEO_TOKENS + 1, VIDEO_DIM), np.float16))
    data = dataset(records, folders)
    with caplog.at_level(logging.WARNING, logger="llavidal"):
        item = data[0]
    assert item["id"] == "clip_001"  # replaced by the next sample
    assert data.runtime_drops == {"bad_features": 1}
    assert any("clip_000.pkl" in r.message for r in caplog.records)


def test_manifest_dims_checked_before_training(tmp_path):
    records = make_records(2)
    folders = write_features(tmp_path / "f", records, fmt="safetensors")
    FeatureManifest(modality="video", extractor="x", feature_dim=VIDEO_DIM + 1, shape=[VIDEO_TOKENS, VIDEO_DIM + 1]).save(folders["video"])
    with pytest.raises(FeatureFileError, match="--video_feature_dim"):
        dataset(records, folders)


def test_jsonl_and_errors_name_file_and_line(tmp_path, fixture):
    import json

    records, folders = fixture
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n{not json\n")
    reg = registry()
    with pytest.raises(ValueError, match=r"train.jsonl:4"):
        LazySupervisedDataset(path, tokenizer_for(reg), reg, folders)
    path.write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n")
    assert len(LazySupervisedDataset(path, tokenizer_for(reg), reg, folders)) == 3


def test_padded_collator(fixture):
    records, folders = fixture
    data = dataset(records, folders, names=("video", "pose"))
    records_without_pose = [dict(records[1], conversations=[
        {"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "A mug."}])]
    mixed = LazySupervisedDataset(records_without_pose, data.tokenizer, data.modalities, {n: folders[n] for n in ("video", "pose")})
    items = [data[0], mixed[0], data[2]]
    batch = PaddedCollator(pad_token_id=data.tokenizer.pad_token_id)(items)
    lengths = [len(i["input_ids"]) for i in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, item in enumerate(items):
        n = lengths[row]
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert (batch["input_ids"][row, n:] == data.tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert batch["sample_ids"] == ["clip_000", "clip_001", "clip_002"]
    assert batch["modality_features"]["pose"][1] is None
    assert batch["modality_features"]["video"][1].shape == (VIDEO_TOKENS, VIDEO_DIM)
    padded = PaddedCollator(pad_token_id=0, pad_to_multiple_of=64)(items)
    assert padded["input_ids"].shape[1] % 64 == 0


def test_compact_tokenisation_equals_expand_placeholders(fixture):
    """Items are tokenised with one patch per span and expanded; that equals tokenising expand_placeholders' text."""
    records, folders = fixture
    for kwargs in ({}, {"use_modality_string_prefix": True}, {"template": "chat"}):
        data = dataset(records, folders, **kwargs)
        for index in range(len(data)):
            item = data[index]
            rows = {name: int(t.shape[0]) for name, t in item["modality_features"].items()}
            record = records[data.samples[index].record_index]
            full_ids, full_labels = data._tokenize(record["conversations"], rows, item["id"], compact=False)
            assert item["input_ids"].tolist() == full_ids
            assert item["labels"].tolist() == full_labels
