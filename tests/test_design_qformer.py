"""The Q-Former projector: shapes, loading BLIP-2 Q-Former weights by path, the instruction-aware variant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Blip2Config, Blip2QFormerConfig, Blip2QFormerModel

from llavidal.model.hf.qformer import QFormerLoadError, QFormerProjector

FEATURE_DIM, HIDDEN, QUERIES = 24, 40, 4
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
        "cross_attention_frequency": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is much faster on a shared, busy CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def feature_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 9, FEATURE_DIM, generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return tokens, mask


def reference_output(qformer: Blip2QFormerModel, projector: QFormerProjector, tokens, mask) -> torch.Tensor:
    """What transformers' model gives on the same inputs, through the projector's own input/output layers."""
    states = tokens if projector.input_projection is None else projector.input_projection(tokens)
    queries = projector.query_tokens.expand(tokens.shape[0], -1, -1)
    out = qformer(query_embeds=queries, encoder_hidden_states=states, encoder_attention_mask=mask).last_hidden_state
    return projector.language_projection(out)


def test_shapes_and_padding() -> None:
    torch.manual_seed(0)
    projector = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=TINY).eval()
    tokens, mask = feature_batch()
    with torch.no_grad():
        out = projector(tokens, mask)
        alone = projector(tokens[1:, :6])  # row 1 without its padding
    assert out.shape == (2, QUERIES, HIDDEN)
    torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=1e-5)
    assert projector.input_projection is None  # encoder_hidden_size defaults to the feature size
    default = QFormerProjector(FEATURE_DIM, HIDDEN)  # the small default Q-Former, 32 queries
    assert default(tokens).shape == (2, 32, HIDDEN)
    rebuilt = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=projector.config_dict())
    assert set(rebuilt.state_dict()) == set(projector.state_dict())


def test_saved_qformer_loads_by_path(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = Blip2QFormerConfig(**TINY, encoder_hidden_size=16)
    saved = Blip2QFormerModel(config).eval()
    saved.save_pretrained(tmp_path / "qformer")
    projector = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=str(tmp_path / "qformer")).eval()
    for key, value in saved.state_dict().items():
        assert torch.equal(projector.qformer.state_dict()[key], value), key
    assert projector.input_projection is not None  # 24-d features -> the Q-Former's 16-d encoder width
    assert "query_tokens" in projector.missing_keys and "qformer.layernorm.weight" in projector.loaded_keys
    tokens, mask = feature_batch()
    with torch.no_grad():
        torch.testing.assert_close(projector(tokens, mask), reference_output(saved, projector, tokens, mask))


def blip2_checkpoint(folder: Path, with_config: bool = True) -> dict[str, torch.Tensor]:
    """A BLIP-2-style checkpoint: Q-Former, query tokens and projection among vision/LLM keys (left unread)."""
    torch.manual_seed(2)
    qformer_config = {**TINY, "hidden_size": 64, "num_attention_heads": 1, "encoder_hidden_size": FEATURE_DIM}
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**qformer_config))
    state = {f"qformer.{k}": v.contiguous() for k, v in qformer.state_dict().items()}
    state["query_tokens"] = torch.randn(1, QUERIES, 64)
    state["language_projection.weight"] = torch.randn(HIDDEN, 64)
    state["language_projection.bias"] = torch.randn(HIDDEN)
    state["vision_model.embeddings.patch_embedding.weight"] = torch.randn(8, 3, 2, 2)
    state["language_model.lm_head.weight"] = torch.randn(10, HIDDEN)
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    if with_config:
        config = Blip2Config(qformer_config=qformer_config, vision_config={"hidden_size": FEATURE_DIM},
                             num_query_tokens=QUERIES)
        config.save_pretrained(folder)
    return state


@pytest.mark.parametrize("with_config", [True, False])
def test_blip2_checkpoint_keys_load(tmp_path: Path, with_config: bool) -> None:
    state = blip2_checkpoint(tmp_path / "blip2", with_config)
    source = tmp_path / "blip2" if with_config else tmp_path / "blip2" / "model.safetensors"
    projector = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=str(source)).eval()
    own = projector.state_dict()
    for key, value in state.items():
        if key.startswith(("qformer.", "query_tokens", "language_projection.")):
            assert torch.equal(own[key], value), key
    assert projector.missing_keys == []
    assert projector.qformer_config.hidden_size == 64 and projector.qformer_config.num_hidden_layers == 2
    reference = Blip2QFormerModel(projector.qformer_config).eval()
    reference.load_state_dict({k[len("qformer."):]: v for k, v in state.items() if k.startswith("qformer.")})
    tokens, mask = feature_batch()
    with torch.no_grad():
        torch.testing.assert_close(projector(tokens, mask), reference_output(reference, projector, tokens, mask))
    with pytest.raises(QFormerLoadError, match="holds 4 query tokens"):
        QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=8, qformer=str(source))


def test_instructblip_names_and_bad_paths(tmp_path: Path) -> None:
    state = blip2_checkpoint(tmp_path / "ckpt", with_config=True)
    renamed = {k.replace("qformer.layernorm.", "qformer.embeddings.layernorm."): v for k, v in state.items()}
    renamed["qformer.embeddings.position_embeddings.weight"] = torch.randn(512, 64)
    save_file(renamed, str(tmp_path / "ckpt" / "model.safetensors"))
    projector = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=str(tmp_path / "ckpt"),
                                 instruction_aware=True, text_dim=20)
    assert torch.equal(projector.state_dict()["qformer.layernorm.weight"], state["qformer.layernorm.weight"])
    assert torch.equal(projector.text_positions.weight, renamed["qformer.embeddings.position_embeddings.weight"])
    with pytest.raises(QFormerLoadError, match="does not exist"):
        QFormerProjector(FEATURE_DIM, HIDDEN, qformer=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "empty" / "model.safetensors"))
    with pytest.raises(QFormerLoadError, match="no Q-Former weights"):
        QFormerProjector(FEATURE_DIM, HIDDEN, qformer=str(tmp_path / "empty"))


def test_instruction_aware_depends_on_the_question() -> None:
    torch.manual_seed(3)
    projector = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=TINY,
                                 instruction_aware=True, text_dim=20).eval()
    plain = QFormerProjector(FEATURE_DIM, HIDDEN, num_queries=QUERIES, qformer=TINY).eval()
    tokens, mask = feature_batch()
    generator = torch.Generator().manual_seed(4)
    question, other = torch.randn(2, 5, 20, generator=generator), torch.randn(2, 5, 20, generator=generator)
    text_mask = torch.ones(2, 5, dtype=torch.long)
    text_mask[0, 3:] = 0
    with torch.no_grad():
        first = projector(tokens, mask, question, text_mask)
        second = projector(tokens, mask, other, text_mask)
        assert first.shape == (2, QUERIES, HIDDEN)
        assert (first - second).abs().max() > 1e-3
        # padded question tokens are ignored
        changed = question.clone()
        changed[0, 3:] = 50.0
        torch.testing.assert_close(projector(tokens, mask, changed, text_mask), first)
        # the plain Q-Former ignores the question
        torch.testing.assert_close(plain(tokens, mask, question, text_mask), plain(tokens, mask, other, text_mask))
    with pytest.raises(ValueError, match="text_dim"):
        QFormerProjector(FEATURE_DIM, HIDDEN, instruction_aware=True)
