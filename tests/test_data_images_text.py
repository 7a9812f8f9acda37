"""LLaVA-format image records (``<image>``, read from an image feature folder through the video span), text-only
records, weighted data mixtures, and the video projector learning from image samples."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from fixtures.tiny_adl_data import VIDEO_DIM, VIDEO_TOKENS

from llavidal.constants import IGNORE_INDEX
from llavidal.data.collator import PaddedCollator
from llavidal.data.dataset import LazySupervisedDataset, record_source
from llavidal.data.feature_store import save_features
from llavidal.data.mixture import (
    MixedDataset,
    build_training_dataset,
    draw_counts,
    parse_data_mixture,
)
from llavidal.model.modality import ModalityRegistry
from llavidal.testing import tiny_tokenizer

torch.set_num_threads(1)

IMAGE_QUESTION, IMAGE_ANSWER = "What is on the table?", "A red mug next to a book."
TEXT_QUESTION, TEXT_ANSWER = "Which room is the kettle usually in?", "The kitchen."


def video_registry() -> ModalityRegistry:
    return ModalityRegistry.default(["video"], video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS)


def tokenizer():
    tok = tiny_tokenizer()
    tok.add_tokens(ModalityRegistry.default().new_tokens(), special_tokens=True)
    return tok


def image_record(stem: str = "000123") -> dict:
    return {"id": stem, "image": f"{stem}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\n{IMAGE_QUESTION}"}, {"from": "gpt", "value": IMAGE_ANSWER}]}


def video_record(stem: str) -> dict:
    return {"id": stem, "video": f"{stem}.pkl", "conversations": [
        {"from": "human", "value": f"<video>\n{IMAGE_QUESTION}"}, {"from": "gpt", "value": IMAGE_ANSWER}]}


def text_record(stem: str = "text_0") -> dict:
    return {"id": stem, "conversations": [
        {"from": "human", "value": TEXT_QUESTION}, {"from": "gpt", "value": TEXT_ANSWER}]}


def write_folder(folder, stems, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem in stems:
        arrays[stem] = rng.standard_normal((VIDEO_TOKENS, VIDEO_DIM)).astype(np.float16)
        save_features(folder / f"{stem}.safetensors", arrays[stem])
    return arrays


@pytest.fixture()
def folders(tmp_path):
    images = write_folder(tmp_path / "image_feats", ["000123", "000124", "000125"], seed=1)
    videos = write_folder(tmp_path / "video_feats", ["000123", "clip_0", "clip_1"], seed=2)
    return {"image": tmp_path / "image_feats", "video": tmp_path / "video_feats", "images": images, "videos": videos}


def supervised_text(tok, item) -> str:
    return tok.decode(item["input_ids"][item["labels"] != IGNORE_INDEX], skip_special_tokens=True).strip()


def test_image_record_maps_to_the_video_span_with_the_image_features(folders):
    tok = tokenizer()
    reg = video_registry()
    data = LazySupervisedDataset([image_record(), text_record()], tok, reg, {"video": str(folders["video"])},
                                 image_folder=str(folders["image"]))
    assert data.sources == ["image", "text"]
    assert data.summary.sources == collections.Counter({"image": 1, "text": 1})
    assert "sources: image 1, text 1" in data.summary.format(2048)

    item = data[0]
    # The image's features, not the video folder's file of the same stem.
    np.testing.assert_array_equal(item["modality_features"]["video"].numpy(),
                                  folders["images"]["000123"].astype(np.float32))
    ids = item["input_ids"].tolist()
    patch, start, end = (tok.convert_tokens_to_ids(t) for t in ("<vid_patch>", "<vid_start>", "<vid_end>"))
    assert ids.count(patch) == VIDEO_TOKENS and ids.count(start) == 1 and ids.count(end) == 1
    assert ids[ids.index(start) + 1: ids.index(end)] == [patch] * VIDEO_TOKENS
    # Labels: the answer only; the question and the whole span are masked.
    labels = item["labels"].tolist()
    assert all(labels[i] == IGNORE_INDEX for i in range(ids.index(end) + 1))
    assert supervised_text(tok, item) == IMAGE_ANSWER

    # <image> is exactly the <video> placeholder: the same record written for a video tokenises identically.
    as_video = {**image_record(), "conversations": [
        {"from": "human", "value": f"<video>\n{IMAGE_QUESTION}"}, {"from": "gpt", "value": IMAGE_ANSWER}]}
    as_video.pop("image")
    reference = LazySupervisedDataset([as_video], tok, reg, {"video": str(folders["image"])})[0]
    assert torch.equal(reference["input_ids"], item["input_ids"]) and torch.equal(reference["labels"], item["labels"])
    assert torch.equal(reference["modality_features"]["video"], item["modality_features"]["video"])


def test_text_only_record_has_no_span_and_supervises_the_answer(folders):
    tok = tokenizer()
    data = LazySupervisedDataset([text_record()], tok, video_registry(), {"video": str(folders["video"])})
    item = data[0]
    assert item["modality_features"] == {}
    specials = {tok.convert_tokens_to_ids(t) for t in ModalityRegistry.default().new_tokens()}
    assert not specials & set(item["input_ids"].tolist())
    assert supervised_text(tok, item) == TEXT_ANSWER
    answer_ids = tok(TEXT_ANSWER, add_special_tokens=False)["input_ids"]
    supervised = int((item["labels"] != IGNORE_INDEX).sum())
    assert len(answer_ids) <= supervised <= len(answer_ids) + 2  # the answer and the turn's end token(s)
    assert data.modality_lengths == [-data.lengths[0]]  # text-only samples group apart (LLaVA's convention)


def test_image_record_without_image_folder_is_dropped_by_name(folders, caplog):
    tok = tokenizer()
    data = LazySupervisedDataset([image_record(), text_record()], tok, video_registry(), {"video": str(folders["video"])})
    assert data.sources == ["text"] and data.summary.dropped == {"no_image_folder": 1}
    assert "--image_folder" in caplog.text and "000123" in caplog.text


def test_record_source():
    assert record_source(image_record()) == "image"
    assert record_source(text_record()) == "text"
    assert record_source(video_record("v")) == "video"


def test_parse_data_mixture():
    entries = parse_data_mixture("video.json:1, images.json:0.5:image=feats/img,text.json:0.2,more.json")
    assert [(e.path, e.weight, dict(e.folders)) for e in entries] == [
        ("video.json", 1.0, {}), ("images.json", 0.5, {"image": "feats/img"}), ("text.json", 0.2, {}),
        ("more.json", 1.0, {})]
    assert dict(parse_data_mixture("a.json:2:video=v:pose=p")[0].folders) == {"video": "v", "pose": "p"}
    for bad, words in [("a.json:x", "not a number"), ("a.json:0", "positive"), ("a.json:1:sound=s", "KEY=DIR"),
                       ("a.json:1:2", "only KEY=DIR"), (" , ", "empty")]:
        with pytest.raises(ValueError, match=words):
            parse_data_mixture(bad)


def test_mixture_weights_sources_and_reproducible_draws(folders, tmp_path):
    import json

    tok = tokenizer()
    files = {
        "video": [video_record("clip_0"), video_record("clip_1")],
        "images": [image_record("000123"), image_record("000124"), image_record("000125")],
        "text": [text_record(f"text_{i}") for i in range(10)],
    }
    for name, records in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(records))

    class Args:
        video_folder, image_folder, pose_folder, object_folder = str(folders["video"]), None, None, None
        data_mixture = (f"{tmp_path / 'video.json'}:2,{tmp_path / 'images.json'}:1:image={folders['image']},"
                        f"{tmp_path / 'text.json'}:0.3")
        data_path = None

        def feature_folders(self):
            return {"video": self.video_folder}

    def build(seed):
        return build_training_dataset(Args(), tok, video_registry(), seed=seed, log=False)

    mixed = build(seed=7)
    assert isinstance(mixed, MixedDataset)
    assert mixed.counts == [4, 3, 3] == draw_counts([2, 3, 10], [2, 1, 0.3]) and len(mixed) == 10
    assert mixed.source_counts() == collections.Counter({"video": 4, "image": 3, "text": 3})
    assert "per source this epoch: video 4, image 3, text 3" in mixed.describe()
    # weight 2: each video sample twice; weight 1: each image once; 0.3 of 10 text samples: 3 distinct ones
    table = [mixed.locate(i) for i in range(len(mixed))]
    assert sorted(local for part, local in table if part == 0) == [0, 0, 1, 1]
    assert sorted(local for part, local in table if part == 1) == [0, 1, 2]
    text_draw = sorted(local for part, local in table if part == 2)
    assert len(set(text_draw)) == 3
    # image samples read the image folder of their entry
    image_index = next(i for i, (part, _) in enumerate(table) if part == 1)
    item = mixed[image_index]
    stem = item["id"]
    np.testing.assert_array_equal(item["modality_features"]["video"].numpy(), folders["images"][stem].astype(np.float32))
    assert mixed.lengths[image_index] == len(item["input_ids"])

    # reproducible from the seed; another epoch draws another subset of the same size
    again = build(seed=7)
    assert [again.locate(i) for i in range(len(again))] == table
    epochs = set()
    for epoch in range(6):
        again.set_epoch(epoch)
        assert len(again) == 10
        epochs.add(tuple(sorted(local for part, local in (again.locate(i) for i in range(10)) if part == 2)))
    assert len(epochs) > 1

    # The Trainer's epochs reach the table through the callback (a resumed run redraws the epoch it resumes in).
    from types import SimpleNamespace

    fresh = build(seed=7)
    for epoch in (0.0, 1.0, 2.5):
        fresh.epoch_callback().on_epoch_begin(None, SimpleNamespace(epoch=epoch), None)
        again.set_epoch(int(epoch))
        assert fresh.epoch == int(epoch)
        assert [fresh.locate(i) for i in range(10)] == [again.locate(i) for i in range(10)]


def test_video_projector_gets_gradients_from_an_image_batch(folders):
    from llavidal.model.builder import build_model
    from llavidal.testing import tiny_causal_lm_dir

    torch.manual_seed(0)
    llm = tiny_causal_lm_dir(folders["image"].parent / "llm")
    model, tok = build_model(llm, video_registry(), template="v1", freeze_llm=True)
    model.train()
    collate = PaddedCollator(pad_token_id=tok.pad_token_id)
    data = LazySupervisedDataset([image_record("000123"), image_record("000124"), text_record()], tok, model.modalities,
                                 {"video": str(folders["video"])}, image_folder=str(folders["image"]))
    projector = model.projectors["video"]

    batch = collate([data[0], data[1]])  # image samples only
    model(**batch).loss.backward()
    grads = [p.grad for p in projector.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0

    model.zero_grad(set_to_none=True)
    batch = collate([data[2]])  # text only: the projector is touched with weight zero (DDP sees a gradient)
    model(**batch).loss.backward()
    grads = [p.grad for p in projector.parameters()]
    assert all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)
