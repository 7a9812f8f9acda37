"""Encoder-decoder backbones (a tiny random T5, as LSTP-Chat's Flan-T5): detected by config, features spliced
into the encoder's input, answers as decoder labels; training, generation through the engine, save/reload,
LoRA, and the ``llavidal train`` + ``llavidal eval infer`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fixtures.tiny_adl_data import (
    OBJECT_DIM, OBJECT_GROUP, POSE_DIM, POSE_TOKENS, VIDEO_DIM, VIDEO_TOKENS, make_records, write_features,
)
from llavidal.constants import IGNORE_INDEX
from llavidal.data.collator import PaddedCollator
from llavidal.data.dataset import LazySupervisedDataset
from llavidal.data.feature_store import save_features
from llavidal.model.builder import build_model, load_base_llm, load_pretrained
from llavidal.model.config import LoraSettings
from llavidal.model.modality import ModalityRegistry
from llavidal.serve.engine import GenerationRequest, InferenceEngine
from llavidal.testing import tiny_causal_lm_dir, tiny_tokenizer

torch.set_num_threads(1)

TEMPLATE = "llavidal_v1"  # trained with the prompt the engine sends (v1 would answer with another system prompt)
QUESTION = "What is the person doing?"
ANSWERS = {"clip_a": "The person drinks from a mug.", "clip_b": "A phone."}


def tiny_t5_dir(path, seed: int = 0):
    """A random 2+2-layer T5 and the tiny BPE tokenizer (decoder start = pad, as T5) saved as a model folder."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tiny_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def video_registry() -> ModalityRegistry:
    return ModalityRegistry.default(["video"], video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS)


def full_registry() -> ModalityRegistry:
    return ModalityRegistry.default(
        video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS, pose_dim=POSE_DIM, pose_tokens=POSE_TOKENS,
        object_dim=OBJECT_DIM, object_group=OBJECT_GROUP,
    )


def two_clips(root):
    """Two records with the same question and different answers, and their (different) video features."""
    folder = root / "video"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for clip, answer in ANSWERS.items():
        save_features(folder / f"{clip}.safetensors", rng.standard_normal((VIDEO_TOKENS, VIDEO_DIM)).astype(np.float32))
        records.append({"id": clip, "video": f"{clip}.pkl", "conversations": [
            {"from": "human", "value": f"{QUESTION}\n<video>"}, {"from": "gpt", "value": answer}]})
    return records, folder


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return tiny_t5_dir(tmp_path_factory.mktemp("t5") / "backbone")  # no "t5" in the name: found by its config


def seq2seq_data(model, tokenizer, records, folder):
    return LazySupervisedDataset(records, tokenizer, model.modalities, {"video": folder}, template=TEMPLATE,
                                 seq2seq=model.is_encoder_decoder)


def train(model, dataset, steps: int, lr: float) -> list[float]:
    batch = PaddedCollator(pad_token_id=dataset.tokenizer.pad_token_id, seq2seq=True)([dataset[i] for i in range(len(dataset))])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     modality_features=batch["modality_features"], sample_ids=batch["sample_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def requests_for(dataset):
    return [GenerationRequest(QUESTION, {"video": dataset[i]["modality_features"]["video"]}, request_id=dataset[i]["id"])
            for i in range(len(dataset))]


def test_backbone_detected_by_config(t5_folder, tmp_path):
    from transformers import T5ForConditionalGeneration

    llm, tokenizer, _ = load_base_llm(t5_folder)
    assert isinstance(llm, T5ForConditionalGeneration) and tokenizer.pad_token_id == llm.config.decoder_start_token_id
    model, _ = build_model(t5_folder, video_registry())
    assert model.is_encoder_decoder and model.config.llm_model_type == "t5"
    causal, _ = build_model(tiny_causal_lm_dir(tmp_path / "llm"), video_registry())
    assert not causal.is_encoder_decoder


def test_sources_hold_the_spans_and_labels_only_the_answer(t5_folder, tmp_path):
    """One sample per answer; the encoder input is the engine's prompt (spans included), the labels the answer."""
    records = make_records(6)  # records 2 and 5 have two turns
    folders = write_features(tmp_path / "feats", records, fmt="safetensors")
    model, tokenizer = build_model(t5_folder, full_registry(), template=TEMPLATE)
    data = LazySupervisedDataset(records, tokenizer, model.modalities, folders, template=TEMPLATE, seq2seq=True)
    assert len(data) == 8 and data.summary.usable == 6 and data.summary.examples == 8
    modality_ids = set(model.modality_token_ids())
    engine = InferenceEngine(model, tokenizer)
    compared = []
    for index in range(len(data)):
        item = data[index]
        record = next(r for r in records if r["id"] == item["id"])
        answers = [m["value"] for m in record["conversations"] if m["from"] == "gpt"]
        questions = [m["value"] for m in record["conversations"] if m["from"] == "human"]
        turn = data.samples[index].turn
        labels, source = item["labels"].tolist(), item["input_ids"].tolist()
        assert labels == tokenizer(answers[turn], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        assert not modality_ids & set(labels)
        for name, features in item["modality_features"].items():  # every span whole in the source
            ids = model.token_ids[name]
            assert source.count(ids["patch"]) == features.shape[0]
            assert source.count(ids["start"]) == source.count(ids["end"]) == 1
        assert set(item["modality_features"]) == {"video", "object", "pose"}
        # The source is exactly what the engine sends for the same conversation, earlier answers included.
        text = lambda q: q.replace("<video><object><human_pose>", "").strip()
        request = GenerationRequest(
            text(questions[turn]) if turn == 0 else questions[turn],
            {k: v for k, v in item["modality_features"].items()}, request_id=item["id"],
            history=[(text(questions[0]), answers[0])] if turn == 1 else [],
        )
        if questions[0].startswith("<video>"):  # the engine puts the spans after the question
            continue
        inputs, _, _ = engine._encode([request])
        assert inputs["input_ids"][0].tolist() == source
        compared.append(turn)
    assert sorted(compared) == [0, 0, 0, 1]  # records 0, 2 (both answers) and 4

    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id, seq2seq=True)([data[i] for i in range(3)])
    longest_source = max(len(data[i]["input_ids"]) for i in range(3))
    longest_target = max(len(data[i]["labels"]) for i in range(3))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, longest_source)
    assert batch["labels"].shape == (3, longest_target)
    for row in range(3):
        target = data[row]["labels"]
        assert torch.equal(batch["labels"][row, :len(target)], target)
        assert (batch["labels"][row, len(target):] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == len(data[row]["input_ids"])


def test_features_decide_the_answer_and_generation_gives_it(t5_folder, tmp_path):
    """Same question, different features, different answers: both learnt; the engine generates them."""
    records, folder = two_clips(tmp_path)
    model, tokenizer = build_model(t5_folder, video_registry(), template=TEMPLATE, freeze_llm=False)
    data = seq2seq_data(model, tokenizer, records, folder)
    engine = InferenceEngine(model, tokenizer)
    before = engine.generate(requests_for(data), max_new_tokens=12)
    assert all(isinstance(text, str) for text in before)  # generation runs on the untrained model
    losses = train(model, data, steps=40, lr=1e-2)
    assert losses[-1] < 0.05 * losses[0], losses
    assert engine.generate(requests_for(data), max_new_tokens=12) == [ANSWERS[r["id"]] for r in records]
    streamed = list(engine.stream(requests_for(data)[1], max_new_tokens=12))
    assert streamed[-1] == ANSWERS["clip_b"]
    with pytest.raises(ValueError, match="encoder-decoder"):
        engine.score_options(requests_for(data), [["A phone.", "A mug."]] * 2)


def test_projector_only_training(t5_folder, tmp_path):
    records, folder = two_clips(tmp_path)
    model, tokenizer = build_model(t5_folder, video_registry(), template=TEMPLATE, freeze_llm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, seq2seq_data(model, tokenizer, records, folder), steps=30, lr=3e-2)
    # through the frozen random encoder the projector alone moves the loss little, but it moves
    assert losses[-1] < losses[0] - 0.2 and losses[-1] < losses[14] < losses[0], losses
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert {"projectors.video.weight", "token_embeddings.video"} <= changed
    assert all(k.startswith(("projectors.", "token_embeddings.")) for k in changed), sorted(changed)


@pytest.mark.parametrize("variant", ["projectors", "lora"])
def test_save_reload_identical_logits(t5_folder, tmp_path, variant):
    records, folder = two_clips(tmp_path)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q", "v"]) if variant == "lora" else None
    model, tokenizer = build_model(t5_folder, video_registry(), template=TEMPLATE, lora=lora)
    if lora is not None:
        with torch.no_grad():  # peft starts B at zero; make the adapters active so both matrices train
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.02)
    data = seq2seq_data(model, tokenizer, records, folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, data, steps=8, lr=1e-2)
    assert losses[-1] < losses[0], losses
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    if lora is not None:  # the adapters train; the base T5 stays as it was
        assert any("lora_" in k for k in changed)
        assert all("lora_" in k or k.startswith(("projectors.", "token_embeddings.")) for k in changed), sorted(changed)
    model.save_pretrained(tmp_path / "weights")
    if lora is not None:
        adapter = json.loads((tmp_path / "weights" / "adapter_config.json").read_text())
        assert adapter["task_type"] == "SEQ_2_SEQ_LM"
    reloaded, _ = load_pretrained(tmp_path / "weights")
    assert reloaded.is_encoder_decoder and reloaded.has_lora == (lora is not None)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id, seq2seq=True)([data[0], data[1]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "modality_features")}
    with torch.no_grad():
        expected, got = model(**inputs), reloaded(**inputs)
    assert expected.logits.shape == (2, batch["labels"].shape[1], len(tokenizer))
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)


def test_cli_train_then_eval_infer(t5_folder, tmp_path):
    from llavidal.eval.commands import main as eval_main
    from llavidal.train import train as train_module

    records, folder = two_clips(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps(records))
    output = tmp_path / "run"
    assert train_module.main([
        "--model_name_or_path", str(t5_folder), "--data_path", str(tmp_path / "train.json"), "--output_dir",
        str(output), "--video_folder", str(folder), "--video_tokens", str(VIDEO_TOKENS), "--video_feature_dim",
        str(VIDEO_DIM), "--version", TEMPLATE, "--tune_mm_mlp_adapter", "False", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--max_steps", "40", "--logging_steps", "10",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True", "--seed", "0",
    ]) == 0
    losses = [json.loads(line)["loss"] for line in (output / "loss_history.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.1 * losses[0], losses
    eval_records = [{"id": clip, "video_filename": f"{clip}.mp4", "question": QUESTION, "answer": answer}
                    for clip, answer in ANSWERS.items()]
    (tmp_path / "qa.json").write_text(json.dumps(eval_records))
    out = tmp_path / "preds.jsonl"
    assert eval_main([
        "infer", "--benchmark", "zeroshot_qa", "--records", str(tmp_path / "qa.json"), "--weights", str(output),
        "--video_folder", str(folder), "--output", str(out), "--max_new_tokens", "12", "--device", "cpu",
    ]) == 0
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert {clip: rows[clip]["prediction"] for clip in ANSWERS} == ANSWERS
