"""LSTP pseudo-label training of the temporal sampler (its auxiliary loss, weight, gradient and logged value), and
the frames the sampler chose: in ``llavidal eval infer`` rows and under the demo's answer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.model.builder import build_model
from llavidal.model.hf.frontends import VideoFrontend
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.testing import tiny_causal_lm_dir

DIM, FRAMES, PATCHES, K = 16, 6, 4, 2  # grid features (T, P, D) = (6, 4, 16); the sampler keeps 2 frames


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_causal_lm_dir(tmp_path_factory.mktemp("sampler") / "llm", "llama")


def sampler_registry(train: str) -> ModalityRegistry:
    reg = ModalityRegistry.default(["video"], video_dim=DIM, video_tokens=FRAMES)
    design = {"sampler": {"k": K, "motion": "diff", "train": train}, "patches": PATCHES}
    return ModalityRegistry({"video": dataclasses.replace(reg["video"], design=design)})


def clip(seed: int) -> torch.Tensor:
    features = torch.randn(FRAMES, PATCHES, DIM, generator=torch.Generator().manual_seed(seed))
    features[-1] = 0.0  # a zero-padded last frame (a clip shorter than the extraction's frame count)
    return features


def batch(model, tokenizer):
    """Two right-padded rows: question, video span, answer (labels on the answer only)."""
    texts, starts, video = [], [], []
    for row, (question, answer) in enumerate((("What is the person doing?", " cooking"), ("Which?", " the mug"))):
        value = clip(10 + row)
        prompt = expand_placeholders(f"{question}\n<video>", model.modalities, {"video": tuple(value.shape)})
        texts.append(prompt + answer)
        starts.append(len(tokenizer(prompt).input_ids))
        video.append(value)
    tokenizer.padding_side = "right"
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    labels = encoded.input_ids.clone()
    for row, start in enumerate(starts):
        labels[row, :start] = IGNORE_INDEX
    labels[encoded.attention_mask == 0] = IGNORE_INDEX
    return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, "labels": labels,
            "modality_features": {"video": video}}


def scorer_grads(model, inputs, weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.sampler_loss_weight = weight
    loss = model(**inputs).loss
    loss.backward()
    sampler = model.projectors["video"].sampler
    return loss.detach(), {name: p.grad.detach().clone() for name, p in sampler.named_parameters()
                           if p.grad is not None}


def test_pseudo_training_adds_the_weighted_loss_and_its_gradient_reaches_the_scorer(base):
    torch.manual_seed(0)
    model, tokenizer = build_model(base, sampler_registry("pseudo"))
    assert isinstance(model.projectors["video"], VideoFrontend)
    inputs = batch(model, tokenizer)
    model.train()
    plain, plain_grads = scorer_grads(model, inputs, 0.0)
    assert model.last_sampler_loss is None  # weight 0: not computed
    weighted, weighted_grads = scorer_grads(model, inputs, 2.0)
    auxiliary = model.last_sampler_loss
    assert auxiliary is not None and torch.isfinite(auxiliary) and float(auxiliary) > 0
    torch.testing.assert_close(weighted, plain + 2.0 * auxiliary, atol=1e-5, rtol=1e-5)
    # the auxiliary loss moves the scorer's own weights (frame and question projections, the prior)
    for name in ("frame_proj.weight", "query.weight", "prior.weight"):
        assert not torch.allclose(weighted_grads[name], plain_grads[name]), name
    # and nothing of it reaches the LLM-side projector (the targets carry no gradient)
    frontend = model.projectors["video"]
    model.zero_grad(set_to_none=True)
    frame_mask = torch.ones(2, FRAMES, dtype=torch.bool)
    frame_mask[:, -1] = False
    direct = model.sampler_pseudo_loss(model.embed_tokens(inputs["input_ids"]), inputs["input_ids"], inputs["labels"],
                                       inputs["modality_features"], inputs["attention_mask"])
    direct.backward()
    assert all(p.grad is None or not p.grad.any() for p in frontend.projector.parameters())
    assert frontend.sampler.prior.weight.grad.abs().sum() > 0
    # eval mode: no auxiliary loss
    model.eval()
    model(**inputs)
    assert model.last_sampler_loss is None


def test_straight_through_training_adds_no_auxiliary_loss(base):
    torch.manual_seed(0)
    model, tokenizer = build_model(base, sampler_registry("straight_through"))
    model.train()
    model.sampler_loss_weight = 1.0
    output = model(**batch(model, tokenizer))
    assert torch.isfinite(output.loss) and model.last_sampler_loss is None


def test_train_flags_select_pseudo_labels_and_the_weight(tmp_path):
    from llavidal.train.args import ModelArguments, TrainingArguments

    args = ModelArguments(model_name_or_path="x", video_design="sampler", sampler_train="pseudo")
    design, _ = args.video_design_settings()
    assert design["sampler"]["train"] == "pseudo" and design["sampler"]["k"] == 8
    with pytest.raises(ValueError, match="needs a temporal sampler"):
        ModelArguments(model_name_or_path="x", video_design="pe", sampler_train="pseudo")
    with pytest.raises(ValueError, match="straight_through, pseudo"):
        ModelArguments(model_name_or_path="x", video_design="sampler", sampler_train="soft")
    with pytest.raises(ValueError, match="sampler_loss_weight"):
        TrainingArguments(output_dir=str(tmp_path), sampler_loss_weight=-1.0, report_to="none")


class _Batches(torch.utils.data.Dataset):
    def __init__(self, item: dict, length: int = 4) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.item


def test_the_trainer_logs_the_sampler_loss_apart(base, tmp_path):
    from llavidal.train.args import TrainingArguments
    from llavidal.train.trainer import LOSS_HISTORY, LlavidalTrainer

    torch.manual_seed(0)
    model, tokenizer = build_model(base, sampler_registry("pseudo"))
    inputs = batch(model, tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, logging_steps=1, learning_rate=1e-3,
                             per_device_train_batch_size=1, gradient_accumulation_steps=2, report_to="none",
                             save_strategy="no", sampler_loss_weight=0.5, seed=0, dataloader_num_workers=0)
    trainer = LlavidalTrainer(model=model, args=args, train_dataset=_Batches(inputs),
                              data_collator=lambda items: items[0])
    assert model.sampler_loss_weight == 0.5
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / LOSS_HISTORY).read_text().splitlines()]
    logged = [row for row in rows if "sampler_loss" in row]
    assert [row["step"] for row in logged] == [1, 2]
    assert all(row["sampler_loss"] > 0 and "loss" in row for row in logged)
    assert model.auxiliary_loss_scale == 0.5  # one weight per optimizer step with 2 accumulated micro-batches


# ------------------------------------------------------------------------------------- the frames chosen shown


@pytest.fixture(scope="module")
def sampler_engine(base):
    from llavidal.serve.engine import InferenceEngine

    torch.manual_seed(0)
    model, tokenizer = build_model(base, sampler_registry("straight_through"))
    return InferenceEngine(model, tokenizer)


def test_infer_rows_carry_the_sampled_frames(sampler_engine, tmp_path):
    from safetensors.numpy import save_file

    from llavidal.eval.records import EvalRecord
    from llavidal.eval.run_inference import run_inference
    from llavidal.utils.io import read_jsonl

    folder = tmp_path / "video"
    folder.mkdir()
    records = []
    for index in range(2):
        save_file({"features": clip(index).numpy()}, str(folder / f"c{index}.safetensors"))
        records.append(EvalRecord(id=f"r{index}", video=f"c{index}.mp4", question="What is the person doing?"))
    out = tmp_path / "preds.jsonl"
    summary = run_inference(sampler_engine, records, {"video": folder}, out, max_new_tokens=2, show_progress=False)
    assert summary.generated == 2
    rows = {row["id"]: row for row in read_jsonl(out)}
    for index, record in enumerate(records):
        frames = rows[record.id]["sampled_frames"]
        assert len(frames) == K and frames == sorted(frames) and all(0 <= f < FRAMES for f in frames)
        # the frames the forward pass itself keeps for this prompt (the frontend's last sampler output)
        from llavidal.serve.engine import GenerationRequest

        request = GenerationRequest(question=record.question, features={"video": clip(index).numpy()})
        inputs, features, ids = sampler_engine._encode([request])
        with torch.no_grad():
            sampler_engine.model.embed_inputs(inputs["input_ids"], features, ids,
                                              attention_mask=inputs["attention_mask"])
        assert sampler_engine.model.projectors["video"].last_sampler_output.indices[0].tolist() == frames


def test_infer_rows_of_a_model_without_sampler_have_no_frames(base, tmp_path):
    from safetensors.numpy import save_file

    from llavidal.eval.records import EvalRecord
    from llavidal.eval.run_inference import run_inference
    from llavidal.serve.engine import InferenceEngine
    from llavidal.utils.io import read_jsonl

    torch.manual_seed(0)
    model, tokenizer = build_model(base, ModalityRegistry.default(["video"], video_dim=DIM, video_tokens=3))
    folder = tmp_path / "video"
    folder.mkdir()
    save_file({"features": np.ones((3, DIM), dtype=np.float32)}, str(folder / "c0.safetensors"))
    out = tmp_path / "preds.jsonl"
    run_inference(InferenceEngine(model, tokenizer), [EvalRecord(id="r0", video="c0.mp4", question="What?")],
                  {"video": folder}, out, max_new_tokens=1, show_progress=False)
    assert "sampled_frames" not in read_jsonl(out)[0]


def test_demo_shows_the_frames_used_under_the_answer(sampler_engine):
    from llavidal.demo.session import DemoSession
    from llavidal.demo.video_demo import DemoHandlers, DemoSettings, frames_used_line
    from llavidal.serve.engine import GenerationRequest

    features = {"video": clip(3).numpy()}
    request = GenerationRequest(question="What is the person doing?", features=features)
    frames = sampler_engine.sampled_frames(request)
    line = frames_used_line(sampler_engine, request)
    assert line == "frames used: " + ", ".join(str(f) for f in frames) and len(frames) == K

    class Streaming:  # the real engine's sampler and modalities; a fixed answer instead of generation
        modalities = sampler_engine.modalities
        sampled_frames = staticmethod(sampler_engine.sampled_frames)

        def stream(self, request, **kwargs):
            yield "cooking"

    handlers = DemoHandlers(Streaming(), features=None, settings=DemoSettings())
    session = DemoSession(features=features)
    final = list(handlers.reply("What is the person doing?", session, 0.0, 8))[-1]
    assert final[-1] == {"role": "assistant", "content": f"cooking\n\n{line}"}
    assert session.history == [("What is the person doing?", "cooking")]  # the next prompt holds the answer alone
    assert frames_used_line(object(), request) == ""  # an engine without a sampler: nothing shown
