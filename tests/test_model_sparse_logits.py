"""Training-mode logits only at supervised positions: loss and gradients equal the full-logits path.

``LlavidalModel.forward`` in training mode with labels runs the LM head only where the next label is
supervised (``logits_to_keep`` mask). These tests compare it, in fp32, with ``full_logits=True`` (the
LM head at every position, the behaviour before) on padded batches, packed rows (both layouts),
LoRA, tied input/output embeddings with full fine-tuning, and gradient accumulation normalised by
``num_items_in_batch``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.data.collator import PaddedCollator
from llavidal.data.packing import PackingCollator, prepare_model_for_packing
from llavidal.model.builder import build_model
from llavidal.model.llavidal_model import causal_lm_loss, supervised_positions
from llavidal.model.modality import ModalityRegistry
from llavidal.testing import tiny_causal_lm_dir

torch.set_num_threads(1)

VIDEO_TOKENS, VIDEO_DIM = 6, 16
POSE_TOKENS, POSE_DIM = 4, 12
OBJECT_GROUP, OBJECT_DIM = 3, 10
TOL = {"atol": 1e-5, "rtol": 1e-5}

# (text tokens before the spans, modalities, objects, answer tokens, second answer): modalities vary.
SAMPLES = [
    (5, ("video", "object", "pose"), 1, 7, 0),
    (3, ("video",), 0, 4, 3),
    (8, ("video", "pose"), 0, 9, 0),
    (4, ("video", "object"), 4, 3, 5),
    (6, ("video", "object", "pose"), 2, 11, 0),
]


def registry() -> ModalityRegistry:
    return ModalityRegistry.default(
        video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS, pose_dim=POSE_DIM, pose_tokens=POSE_TOKENS,
        object_dim=OBJECT_DIM, object_group=OBJECT_GROUP,
    )


def build(tmp_path, arch: str = "llama", tie: bool = False, **kwargs):
    path = tiny_causal_lm_dir(tmp_path / arch, arch, initializer_range=0.2, tie_word_embeddings=tie)
    model, tokenizer = build_model(path, registry(), torch_dtype=torch.float32, attn_implementation="sdpa", **kwargs)
    return model.train(), tokenizer


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build(tmp_path_factory.mktemp("llm"))


def make_items(model, seed: int = 0) -> list[dict]:
    """Dataset items: prompt, modality spans, supervised answer; some with a second supervised turn."""
    generator = torch.Generator().manual_seed(seed)

    def text(count: int) -> list[int]:
        return torch.randint(10, 300, (count,), generator=generator).tolist()

    items = []
    for index, (prefix, modalities, objects, answer, second) in enumerate(SAMPLES):
        ids, labels, features = text(prefix), [IGNORE_INDEX] * prefix, {}
        for name in ("video", "object", "pose"):
            if name not in modalities:
                continue
            tokens = model.token_ids[name]
            rows = {"video": VIDEO_TOKENS, "pose": POSE_TOKENS, "object": OBJECT_GROUP * objects}[name]
            dim = {"video": VIDEO_DIM, "pose": POSE_DIM, "object": OBJECT_DIM}[name]
            span = [tokens["start"], *[tokens["patch"]] * rows, tokens["end"]]
            ids += span
            labels += [IGNORE_INDEX] * len(span)
            shape = (objects, OBJECT_GROUP, dim) if name == "object" else (rows, dim)
            features[name] = torch.randn(shape, generator=generator)
        for turn in (answer, second):
            if turn:
                question, reply = text(2), text(turn) + [2]
                ids += question + reply
                labels += [IGNORE_INDEX] * 2 + reply
        items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "modality_features": features,
                      "id": f"s{index}"})
    return items


def num_items(items) -> int:
    return sum(int((item["labels"][1:] != IGNORE_INDEX).sum()) for item in items)


def loss_and_grads(model, batches, full_logits: bool, normaliser=None):
    """Summed loss over micro-batches and the gradients of every trainable parameter."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = model(**batch, num_items_in_batch=normaliser, full_logits=full_logits).loss
        loss.backward()
        total += float(loss.detach())
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return total, grads


def assert_exact(model, batches, normaliser=None, expect_grads=("projectors.", "token_embeddings.")):
    full = loss_and_grads(model, batches, full_logits=True, normaliser=normaliser)
    sparse = loss_and_grads(model, batches, full_logits=None, normaliser=normaliser)  # training-mode default
    assert sparse[0] == pytest.approx(full[0], abs=1e-5, rel=1e-5)
    assert set(sparse[1]) == set(full[1])
    for prefix in expect_grads:
        assert any(name.startswith(prefix) for name in full[1]), prefix
    for name, grad in full[1].items():
        assert grad.abs().sum() > 0 or name.startswith("projectors."), name  # every path carries gradient
        torch.testing.assert_close(sparse[1][name], grad, **TOL, msg=name)
    return full, sparse


# ------------------------------------------------------------------------------------------ shapes
def test_training_logits_are_the_supervised_rows_of_the_full_logits(llama):
    model, tokenizer = llama
    items = make_items(model)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)
    keep = supervised_positions(batch["labels"])
    with torch.no_grad():
        full = model(**batch, full_logits=True)
        sparse = model(**batch)
    vocab = full.logits.shape[-1]
    assert full.logits.shape == (*batch["input_ids"].shape, vocab)
    assert sparse.logits.shape == (num_items(items), vocab) == (int(keep.sum()), vocab)
    torch.testing.assert_close(sparse.logits, full.logits[keep], **TOL)
    torch.testing.assert_close(sparse.loss, full.loss, **TOL)
    torch.testing.assert_close(causal_lm_loss(sparse.logits, batch["labels"]), sparse.loss, **TOL)
    with pytest.raises(ValueError, match="supervise"):
        causal_lm_loss(sparse.logits[1:], batch["labels"])
    model.eval()
    try:
        with torch.no_grad():
            assert model(**batch).logits.shape == full.logits.shape  # eval mode: full logits, as before
            assert model(**batch, full_logits=False).logits.shape == sparse.logits.shape
            assert model(batch["input_ids"], attention_mask=batch["attention_mask"],
                         modality_features=batch["modality_features"]).logits.shape == full.logits.shape
    finally:
        model.train()
    model.sparse_training_logits = False
    try:
        with torch.no_grad():
            assert model(**batch).logits.shape == full.logits.shape
    finally:
        del model.sparse_training_logits  # back to the class default


def test_llm_without_logits_to_keep_falls_back_to_full_logits(llama):
    base, tokenizer = llama
    model = copy.deepcopy(base)
    model.__dict__["_keeps_logits"] = False  # as for an LLM whose forward takes no logits_to_keep
    items = make_items(model)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(out.loss, base(**batch).loss, **TOL)


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("normalised", [False, True])
def test_padded_batch_exact(llama, normalised):
    model, tokenizer = llama
    items = make_items(model)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)
    assert bool((batch["attention_mask"] == 0).any())  # really padded
    assert_exact(model, [batch], normaliser=num_items(items) if normalised else None)


@pytest.mark.parametrize("padding_free", [True, False])
def test_packed_rows_exact(llama, padding_free):
    base, tokenizer = llama
    model = copy.deepcopy(base)
    prepare_model_for_packing(model, use_varlen_sdpa=padding_free)  # varlen SDPA, or sdpa + block mask
    items = make_items(model)
    batch = PackingCollator(pad_token_id=tokenizer.pad_token_id, max_length=64, padding_free=padding_free)(items)
    assert "attention_mask" not in batch and "cu_seq_lens_q" in batch
    assert (batch["input_ids"].shape[0] == 1) == padding_free  # one row, or budgeted padded rows
    _full, sparse = assert_exact(model, [batch], normaliser=num_items(items))
    # ... and the packed sparse run equals the padded full-logits run over the same samples.
    padded = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)
    reference = loss_and_grads(base, [padded], full_logits=True, normaliser=num_items(items))
    assert sparse[0] == pytest.approx(reference[0], abs=1e-5, rel=1e-5)
    for name, grad in reference[1].items():
        torch.testing.assert_close(sparse[1][name], grad, **TOL, msg=name)


def test_gradient_accumulation_exact(llama):
    """Micro-batches normalised by the supervised count of the whole accumulated batch."""
    model, tokenizer = llama
    items = make_items(model)
    collate = PaddedCollator(pad_token_id=tokenizer.pad_token_id)
    micro = [collate(items[:2]), collate(items[2:])]
    total = num_items(items)
    _full, sparse = assert_exact(model, micro, normaliser=torch.tensor(total))
    one_batch = loss_and_grads(model, [collate(items)], full_logits=True, normaliser=None)  # mean over all
    assert sparse[0] == pytest.approx(one_batch[0], abs=1e-5, rel=1e-5)
    for name, grad in one_batch[1].items():
        torch.testing.assert_close(sparse[1][name], grad, **TOL, msg=name)


def test_no_supervised_token(llama):
    model, tokenizer = llama
    items = make_items(model)[:2]
    for item in items:
        item["labels"] = torch.full_like(item["labels"], IGNORE_INDEX)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)
    out = model(**batch, num_items_in_batch=1)
    assert out.logits.shape[0] == 0 and float(out.loss.detach()) == 0.0
    out.loss.backward()  # a graph that reaches the trainable parameters, zero gradients
    model.zero_grad(set_to_none=True)


def test_lora_exact(tmp_path):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    model, tokenizer = build(tmp_path, lora=lora)
    with torch.no_grad():  # non-zero B matrices, so the adapters change the output and get full gradients
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    items = make_items(model)
    assert_exact(model, [PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)], normaliser=num_items(items),
                 expect_grads=("projectors.", "token_embeddings.", "llm.base_model.model."))
    prepare_model_for_packing(model)
    packed = PackingCollator(pad_token_id=tokenizer.pad_token_id, max_length=64)(items)
    assert_exact(model, [packed], normaliser=num_items(items))


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_tied_embeddings_and_other_backbones_full_finetune_exact(tmp_path, arch):
    """qwen2 with tied input/output embeddings, fully fine-tuned: the shared matrix gets both gradients."""
    model, tokenizer = build(tmp_path, arch, tie=arch == "qwen2", freeze_llm=False)
    llm = model.base_llm
    tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    assert tied == (arch == "qwen2")
    items = make_items(model)
    collate = PaddedCollator(pad_token_id=tokenizer.pad_token_id)
    prefixes = ("projectors.", "token_embeddings.", "llm.model.embed_tokens.")
    assert_exact(model, [collate(items[:3]), collate(items[3:])], normaliser=num_items(items), expect_grads=prefixes)
    prepare_model_for_packing(model)
    packed = PackingCollator(pad_token_id=tokenizer.pad_token_id, max_length=64)(items)
    assert_exact(model, [packed], normaliser=num_items(items), expect_grads=prefixes)
