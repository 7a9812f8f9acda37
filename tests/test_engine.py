"""The inference engine: batched left-padded greedy generation equals per-sample generation; strings
out; streaming yields growing text (stopping a cancelled stream: tests/faults/test_demo_faults.py); weights
folders load through from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llavidal.model.llavidal_model import LlavidalModel
from llavidal.model.modality import ModalityRegistry
from llavidal.serve.engine import GenerationRequest, InferenceEngine
from llavidal.testing import tiny_config, tiny_tokenizer

torch.set_num_threads(1)

DIMS = dict(video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4, object_dim=10)


def tiny_engine(template: str = "chat") -> InferenceEngine:
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tokenizer)), attn_implementation="eager")
    model = LlavidalModel(llm, tokenizer, ModalityRegistry.default(**DIMS), template=template)
    with torch.no_grad():
        for projector in model.projectors.values():
            projector.weight.mul_(20.0)  # features strong enough to change the answer
    return InferenceEngine(model, tokenizer)


def requests() -> list[GenerationRequest]:
    rng = np.random.default_rng(0)
    video = lambda: rng.standard_normal((6, 16)).astype(np.float32)  # noqa: E731
    return [
        GenerationRequest("What is the person doing?", {"video": video()}, request_id="r0"),
        GenerationRequest("Which hand?", {"video": video(), "pose": torch.randn(4, 12)}, request_id="r1"),
        GenerationRequest("Describe the video in detail. Which object is used?",
                          {"video": video(), "object": rng.standard_normal((3, 8, 10)).astype(np.float32)},
                          request_id="r2"),
        GenerationRequest("And then?", {"video": video()}, history=[("What happens?", "The person sits down.")],
                          request_id="r3"),
    ]


def test_batched_generation_equals_per_sample():
    engine = tiny_engine()
    reqs = requests()
    batched = engine.generate(reqs, max_new_tokens=8, batch_size=4)
    single = [engine.generate([r], max_new_tokens=8)[0] for r in reqs]
    assert all(isinstance(text, str) for text in batched)
    assert batched == single
    assert len(set(batched)) > 1, "the features should change the answers"

    # The model's own generate: new tokens only, left padding checked.
    inputs, features, ids = engine._encode(reqs)
    assert bool((inputs["attention_mask"][:, -1] == 1).all())
    new = engine.model.generate(inputs["input_ids"], inputs["attention_mask"], modality_features=features,
                                max_new_tokens=4, do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
    assert new.shape[0] == len(reqs) and new.shape[1] <= 4
    right = inputs["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="LEFT padding"):
        engine.model.generate(inputs["input_ids"], right, modality_features=features)


def test_prompt_has_spans_of_present_modalities_in_registry_order():
    engine = tiny_engine()
    text, features = engine.build_prompt(requests()[2])
    assert set(features) == {"video", "object"}
    assert text.index("<vid_start>") < text.index("<object_start>")
    assert text.count("<object_patch>") == 24 and "<pose_start>" not in text
    assert text.startswith("<|im_start|>user\nDescribe the video") and text.endswith("<|im_start|>assistant\n")
    history_text, _ = engine.build_prompt(requests()[3])
    assert history_text.index("<vid_start>") < history_text.index("The person sits down.")
    with pytest.raises(ValueError, match="audio"):
        engine.build_prompt(GenerationRequest("?", {"audio": np.zeros((2, 2))}))


def test_stream_yields_growing_text():
    engine = tiny_engine()
    request = requests()[1]
    pieces = list(engine.stream(request, max_new_tokens=8))
    assert pieces, "stream yielded nothing"
    assert all(isinstance(p, str) for p in pieces)
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:], strict=False))
    assert pieces[-1] == engine.generate([request], max_new_tokens=8)[0]


def test_stream_reraises_a_generation_error_and_leaves_no_thread():
    import threading

    engine = tiny_engine()

    def broken_generate(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    engine.model.generate = broken_generate
    baseline = threading.active_count()
    with pytest.raises(RuntimeError, match="out of memory, say"):
        list(engine.stream(requests()[0], max_new_tokens=8))
    assert threading.active_count() == baseline


def test_from_pretrained_and_v1_template(tmp_path):
    from llavidal.model.builder import build_model
    from llavidal.testing import tiny_causal_lm_dir

    base = tiny_causal_lm_dir(tmp_path / "llm", "llama")
    model, _ = build_model(base, ModalityRegistry.default(["video"], **DIMS), template="v1")
    model.save_pretrained(tmp_path / "w")
    engine = InferenceEngine.from_pretrained(str(tmp_path / "w"))
    assert engine.template == "llavidal_v1" and engine.modalities.names() == ["video"]
    text, _ = engine.build_prompt(requests()[0])
    assert text.rstrip().endswith("ASSISTANT:") and "USER: What is the person doing?\n<vid_start>" in text
    answers = engine.generate(requests()[:1], max_new_tokens=3, temperature=0.7, top_p=0.9)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_generation_never_emits_modality_tokens():
    engine = tiny_engine()
    model = engine.model
    modality_ids = model.modality_token_ids()
    assert len(modality_ids) == 9
    # Make the LM head prefer modality tokens strongly: generation must still avoid them.
    head = model.llm.get_output_embeddings()
    with torch.no_grad():
        head.weight[modality_ids] = head.weight[modality_ids] * 0 + 5.0
    inputs, features, _ = engine._encode(requests())
    new = model.generate(inputs["input_ids"], inputs["attention_mask"], modality_features=features,
                         max_new_tokens=6, do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
    assert not set(new.flatten().tolist()) & set(modality_ids)
