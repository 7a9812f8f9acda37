"""Splice correctness: our logits equal inputs_embeds assembled by hand; mismatches name the sample."""

from __future__ import annotations

import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.model.llavidal_model import LlavidalModel, causal_lm_loss
from llavidal.model.modality import ModalityRegistry, SpliceError, expand_placeholders
from llavidal.testing import tiny_config, tiny_tokenizer

torch.set_num_threads(1)

VIDEO_DIM, VIDEO_TOKENS, POSE_DIM, POSE_TOKENS, OBJECT_DIM = 16, 6, 12, 4, 10


def tiny_registry() -> ModalityRegistry:
    registry = ModalityRegistry.default(
        video_dim=VIDEO_DIM, video_tokens=VIDEO_TOKENS, pose_dim=POSE_DIM, pose_tokens=POSE_TOKENS,
        object_dim=OBJECT_DIM,
    )
    registry["pose"].projector_type = "mlp2x_gelu"  # exercise both projector layouts
    return registry


def tiny_model(arch: str = "llama", seed: int = 0) -> tuple[LlavidalModel, object]:
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    llm = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=len(tokenizer)), attn_implementation="eager")
    model = LlavidalModel(llm, tokenizer, tiny_registry())
    with torch.no_grad():  # distinct rows, so a wrong lookup cannot pass unnoticed
        for param in model.token_embeddings.values():
            param.normal_()
    return model.eval(), tokenizer


# (id, question, number of objects or None, has pose)
SAMPLES = [
    ("clip_a", "What is the person doing?", None, False),
    ("clip_b", "Which object is used?", 1, True),
    ("clip_c", "Describe the video in detail.", 4, True),
    ("clip_d", "What happens next?", 2, False),
]


def make_batch(tokenizer, samples=SAMPLES, seed: int = 1):
    """Right-padded batch + features per row (objects as (n, 8, D))."""
    generator = torch.Generator().manual_seed(seed)
    registry = tiny_registry()
    texts, features = [], {"video": [], "object": [], "pose": []}
    for sample_id, question, objects, pose in samples:
        row = {"video": torch.randn(VIDEO_TOKENS, VIDEO_DIM, generator=generator)}
        if objects:
            row["object"] = torch.randn(objects, 8, OBJECT_DIM, generator=generator)
        if pose:
            row["pose"] = torch.randn(POSE_TOKENS, POSE_DIM, generator=generator)
        rows = {name: (t.shape[0] * t.shape[1] if t.dim() == 3 else t.shape[0]) for name, t in row.items()}
        texts.append(expand_placeholders(f"{question}\n<video><object><human_pose> The person", registry, rows,
                                         sample_id=sample_id))
        for name in features:
            features[name].append(row.get(name))
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"], features, [s[0] for s in samples]


def reference_embeds(model: LlavidalModel, input_ids, features) -> torch.Tensor:
    """Embedding lookup (modality rows written into the matrix) + projector outputs at patch positions."""
    model.write_token_rows_into_llm()
    embeds = model.llm.get_input_embeddings()(input_ids).clone()  # (B, T, H)
    for name, rows in features.items():
        patch = model.token_ids[name]["patch"]
        for row, value in enumerate(rows):
            if value is None:
                continue
            projected = model.projectors[name](value.reshape(-1, value.shape[-1]))  # (k, H)
            positions = (input_ids[row] == patch).nonzero().flatten().tolist()
            assert len(positions) == projected.shape[0]
            for j, position in enumerate(positions):
                embeds[row, position] = projected[j]
    return embeds


def test_logits_match_hand_assembled_embeddings():
    model, tokenizer = tiny_model()
    input_ids, attention_mask, features, ids = make_batch(tokenizer)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask, modality_features=features, sample_ids=ids).logits
        reference = model.llm(inputs_embeds=reference_embeds(model, input_ids, features),
                              attention_mask=attention_mask).logits
    assert ours.shape == (len(SAMPLES), input_ids.shape[1], len(tokenizer))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_objects_flat_or_grouped_give_same_logits():
    model, tokenizer = tiny_model()
    input_ids, attention_mask, features, _ = make_batch(tokenizer)
    flat = dict(features, object=[None if t is None else t.reshape(-1, OBJECT_DIM) for t in features["object"]])
    with torch.no_grad():
        a = model(input_ids, attention_mask=attention_mask, modality_features=features).logits
        b = model(input_ids, attention_mask=attention_mask, modality_features=flat).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_count_mismatch_names_the_sample():
    model, tokenizer = tiny_model()
    input_ids, attention_mask, features, ids = make_batch(tokenizer)
    features["video"][2] = features["video"][2][:-1]  # clip_c: one video row short
    with pytest.raises(SpliceError, match="clip_c"):
        model(input_ids, attention_mask=attention_mask, modality_features=features, sample_ids=ids)
    features["video"][2] = None  # patch tokens in the text, no features
    with pytest.raises(SpliceError, match=r"clip_c.*6 <vid_patch>"):
        model(input_ids, attention_mask=attention_mask, modality_features=features, sample_ids=ids)


def test_wrong_feature_dim_and_unknown_modality_are_clear():
    model, tokenizer = tiny_model()
    input_ids, attention_mask, features, ids = make_batch(tokenizer)
    features["pose"][1] = torch.randn(POSE_TOKENS, POSE_DIM + 1)
    with pytest.raises(SpliceError, match=r"clip_b: pose features have shape \(4, 13\)"):
        model(input_ids, attention_mask=attention_mask, modality_features=features, sample_ids=ids)
    with pytest.raises(SpliceError, match="audio"):
        model(input_ids, modality_features={"audio": [torch.zeros(1, 3)] * len(SAMPLES)})
    with pytest.raises(SpliceError, match="3 entries for a batch of 4"):
        model(input_ids, modality_features={"video": features["video"][:3]})


def test_loss_normalisation_and_packed_rows_match_padded():
    """sum / num_items_in_batch; a packed row (position_ids restart) gives the padded batch's loss."""
    model, tokenizer = tiny_model()
    samples = SAMPLES[:2]
    input_ids, attention_mask, features, ids = make_batch(tokenizer, samples)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    num_items = int((labels[:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        padded = model(input_ids, attention_mask=attention_mask, labels=labels, modality_features=features)
        summed = model(input_ids, attention_mask=attention_mask, labels=labels, modality_features=features,
                       num_items_in_batch=torch.tensor(num_items))
        torch.testing.assert_close(padded.loss, summed.loss)
        torch.testing.assert_close(padded.loss, causal_lm_loss(padded.logits, labels))

        lengths = attention_mask.sum(1).tolist()
        packed_ids = torch.cat([input_ids[r, : lengths[r]] for r in range(2)])[None]  # (1, L1 + L2)
        packed_labels = torch.cat([labels[r, : lengths[r]] for r in range(2)])[None]
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        packed_features = {
            name: [torch.cat([t.reshape(-1, t.shape[-1]) for t in rows if t is not None])]
            if any(t is not None for t in rows) else [None]
            for name, rows in features.items()
        }
        packed = model(packed_ids, labels=packed_labels, position_ids=position_ids,
                       modality_features=packed_features, sample_ids=[ids], num_items_in_batch=num_items)
    torch.testing.assert_close(packed.loss, padded.loss, atol=1e-5, rtol=1e-5)
