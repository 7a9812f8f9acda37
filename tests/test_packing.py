"""Packed batches: the collator's layout, bin packing, and exact equality with unpacked training."""

from __future__ import annotations

import copy

import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.data.collator import PaddedCollator
from llavidal.data.packing import (
    VARLEN_SDPA,
    PackingCollator,
    make_packing_collator,
    pack_lengths,
    prepare_model_for_packing,
)
from llavidal.model.builder import build_model
from llavidal.model.modality import ModalityRegistry
from llavidal.testing import tiny_causal_lm_dir

VIDEO_TOKENS, VIDEO_DIM = 6, 16
POSE_TOKENS, POSE_DIM = 4, 12
OBJECT_GROUP, OBJECT_DIM = 3, 10

# (text tokens before the spans, modalities, objects, answer tokens): pose and objects vary per sample.
SAMPLES = [
    (5, ("video", "object", "pose"), 1, 7),
    (3, ("video",), 0, 4),
    (8, ("video", "pose"), 0, 9),
    (4, ("video", "object"), 4, 3),
    (6, ("video", "object", "pose"), 2, 11),
    (2, ("video", "object"), 3, 5),
]


def registry() -> ModalityRegistry:
    return ModalityRegistry.default(
        video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS, pose_dim=POSE_DIM, pose_tokens=POSE_TOKENS,
        object_dim=OBJECT_DIM, object_group=OBJECT_GROUP,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_causal_lm_dir(tmp_path_factory.mktemp("llm") / "llama", initializer_range=0.2)
    model, tokenizer = build_model(path, registry(), torch_dtype=torch.float32, attn_implementation="sdpa")
    return model, tokenizer


def make_items(model, seed: int = 0) -> list[dict]:
    """Items as the dataset makes them: text, start + patches + end per modality (video, object, pose order)."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index, (prefix, modalities, objects, answer) in enumerate(SAMPLES):
        ids: list[int] = torch.randint(10, 300, (prefix,), generator=generator).tolist()
        features = {}
        for name in ("video", "object", "pose"):
            if name not in modalities:
                continue
            tokens = model.token_ids[name]
            rows = {"video": VIDEO_TOKENS, "pose": POSE_TOKENS, "object": OBJECT_GROUP * objects}[name]
            dim = {"video": VIDEO_DIM, "pose": POSE_DIM, "object": OBJECT_DIM}[name]
            ids += [tokens["start"], *[tokens["patch"]] * rows, tokens["end"]]
            shape = (objects, OBJECT_GROUP, dim) if name == "object" else (rows, dim)
            features[name] = torch.randn(shape, generator=generator)
        context = len(ids)
        ids += torch.randint(10, 300, (answer,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * context + ids[context:]
        if index == 1:  # a supervised first token: never predicted alone, so never from the previous sample
            labels[0] = ids[0]
        items.append({
            "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "modality_features": features,
            "id": f"s{index}",
        })
    return items


def supervised(items) -> int:
    """Predicted tokens: supervised labels that have a preceding token in their own sample."""
    return sum(int((item["labels"][1:] != IGNORE_INDEX).sum()) for item in items)


def loss_and_grads(model, batches, num_items: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Sum of the losses of ``batches`` (all normalised by ``num_items``) and the trainable gradients."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = model(**batch, num_items_in_batch=num_items).loss
        loss.backward()
        total += float(loss.detach())
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return total, grads


def assert_same(reference, other, label: str) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    assert loss_b == pytest.approx(loss_a, abs=1e-5, rel=1e-5), label
    assert set(grads_a) == set(grads_b)
    assert any(name.startswith("projectors.") for name in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-5, msg=f"{label}: {name}")


# ------------------------------------------------------------------------------------------ bins + layout
def test_pack_lengths_best_fit_decreasing():
    lengths = [700, 300, 1000, 1048, 50, 900, 3000, 20]
    bins = pack_lengths(lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for bin_ in bins:
        total = sum(lengths[i] for i in bin_)
        assert total <= 2048 or (len(bin_) == 1 and lengths[bin_[0]] > 2048)
    assert [6] in bins  # longer than the budget: alone
    assert sorted(3 if 3 in b else -1 for b in bins if 3 in b) == [3]
    assert pack_lengths([], 10) == []
    with pytest.raises(ValueError):
        pack_lengths([1], 0)


def test_collator_layout(tiny):
    model, tokenizer = tiny
    items = make_items(model)
    lengths = [int(item["input_ids"].shape[0]) for item in items]
    collator = make_packing_collator(tokenizer, max_length=64)
    assert collator.padding_free
    batch = collator(items)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, sum(lengths))  # one row, not a single pad token
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    assert batch["cu_seq_lens_q"].tolist() == starts + [sum(lengths)]
    assert batch["max_length_q"] == max(lengths)
    for start, length, item in zip(starts, lengths, items):
        assert batch["position_ids"][0, start:start + length].tolist() == list(range(length))
        assert batch["labels"][0, start] == IGNORE_INDEX
        torch.testing.assert_close(batch["labels"][0, start + 1:start + length], item["labels"][1:])
    objects = [item["modality_features"]["object"].reshape(-1, OBJECT_DIM) for item in items if "object" in item["modality_features"]]
    torch.testing.assert_close(batch["modality_features"]["object"][0], torch.cat(objects))
    assert batch["sample_ids"] == [tuple(item["id"] for item in items)]

    rows = PackingCollator(pad_token_id=tokenizer.pad_token_id, max_length=max(lengths) + 12, padding_free=False)
    batch = rows(items)
    num_rows, width = batch["input_ids"].shape
    assert num_rows > 1
    assert sum(len(ids) for ids in batch["sample_ids"]) == len(items)
    segments = batch["cu_seq_lens_q"].diff().tolist()
    assert sum(segments) == num_rows * width
    for row in range(num_rows):
        members = [items[int(i[1:])] for i in batch["sample_ids"][row]]
        used = sum(int(m["input_ids"].shape[0]) for m in members)
        assert used <= max(lengths) + 12
        assert (batch["input_ids"][row, used:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, used:] == IGNORE_INDEX).all()
        assert batch["position_ids"][row, used:].tolist() == list(range(width - used))
        for name in ("video", "pose", "object"):
            parts = [m["modality_features"][name].reshape(-1, m["modality_features"][name].shape[-1])
                     for m in members if name in m["modality_features"]]
            entry = batch["modality_features"][name][row]
            if parts:
                torch.testing.assert_close(entry, torch.cat(parts))
            else:
                assert entry is None


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("attention", [VARLEN_SDPA, "sdpa", "eager"])
@pytest.mark.parametrize("padding_free", [True, False])
def test_packed_equals_unpacked(tiny, attention, padding_free):
    """Loss and every trainable gradient of packed rows equal those of the samples one by one (fp32)."""
    base, tokenizer = tiny
    model = copy.deepcopy(base)
    items = make_items(model)
    num_items = supervised(items)
    pad = tokenizer.pad_token_id
    padded = PaddedCollator(pad_token_id=pad)

    # Reference: every sample alone in its own batch, one loss normalised by the global count.
    reference = loss_and_grads(model, [padded([item]) for item in items], num_items)

    # The padded path: two micro-batches of three (gradient accumulation), same normalisation.
    accumulated = loss_and_grads(model, [padded(items[:3]), padded(items[3:])], num_items)
    assert_same(reference, accumulated, "padded")

    if attention == VARLEN_SDPA:
        assert prepare_model_for_packing(model) == VARLEN_SDPA
    else:
        model.llm.set_attn_implementation(attention)
        assert prepare_model_for_packing(model, use_varlen_sdpa=False) == attention
    budget = 2 * max(int(item["input_ids"].shape[0]) for item in items)
    collator = PackingCollator(pad_token_id=pad, max_length=budget, padding_free=padding_free)
    # Packed rows over two accumulation micro-batches, and all samples in one.
    packed = loss_and_grads(model, [collator(items[:3]), collator(items[3:])], num_items)
    assert_same(reference, packed, f"packed {attention}")
    assert_same(reference, loss_and_grads(model, [collator(items)], num_items), f"packed {attention}, one batch")


@torch.no_grad()
def test_packing_without_boundaries_differs(tiny):
    """The test above can fail: the same row with one causal sequence (no restarts) gives another loss."""
    base, tokenizer = tiny
    model = copy.deepcopy(base)
    prepare_model_for_packing(model)
    items = make_items(model)
    batch = PackingCollator(pad_token_id=tokenizer.pad_token_id, max_length=4096)(items)
    exact = float(model(**batch, num_items_in_batch=supervised(items)).loss)
    leaky = {k: v for k, v in batch.items() if not k.startswith(("cu_seq_lens", "max_length", "position_ids"))}
    crossing = float(model(**leaky, num_items_in_batch=supervised(items)).loss)
    assert abs(exact - crossing) > 1e-3
    # Without cu_seq_lens the segments are found from the restarting position ids.
    positions_only = {k: v for k, v in batch.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    assert float(model(**positions_only, num_items_in_batch=supervised(items)).loss) == pytest.approx(exact, abs=1e-6)


def test_stock_sdpa_needs_the_cache_off(tiny):
    """Why prepare_model_for_packing turns the cache off: with it on, transformers ignores the restarts."""
    base, tokenizer = tiny
    model = copy.deepcopy(base)
    items = make_items(model)
    batch = PackingCollator(pad_token_id=tokenizer.pad_token_id, max_length=4096)(items)
    reference = loss_and_grads(model, [PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)], supervised(items))[0]
    with torch.no_grad():
        cached = float(model(**batch, num_items_in_batch=supervised(items), use_cache=True).loss)
        assert abs(cached - reference) > 1e-3
        assert prepare_model_for_packing(model, use_varlen_sdpa=False) == "sdpa"
        exact = float(model(**batch, num_items_in_batch=supervised(items)).loss)
    assert exact == pytest.approx(reference, abs=1e-5)


def test_varlen_sdpa_falls_back_to_sdpa_on_padded_batches(tiny):
    base, tokenizer = tiny
    model = copy.deepcopy(base)
    items = make_items(model)
    batch = PaddedCollator(pad_token_id=tokenizer.pad_token_id)(items)
    with torch.no_grad():
        expected = model(**batch).logits
        prepare_model_for_packing(model)
        got = model(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_generation_unchanged_by_packing_setup(tiny):
    """Generation (KV cache, left padding) gives the same tokens after prepare_model_for_packing."""
    base, tokenizer = tiny
    model = copy.deepcopy(base)
    items = make_items(model)[1:3]
    prompts = [item["input_ids"][: int((item["labels"] == IGNORE_INDEX).sum())] for item in items]
    width = max(len(p) for p in prompts)
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    features = {name: [item["modality_features"].get(name) for item in items] for name in ("video", "pose")}
    kwargs = {"attention_mask": mask, "modality_features": features, "max_new_tokens": 4, "do_sample": False,
              "use_cache": True, "pad_token_id": tokenizer.pad_token_id}
    expected = model.generate(ids, **kwargs)
    prepare_model_for_packing(model)
    assert torch.equal(model.generate(ids, **kwargs), expected)
