"""Video conditioning inside the LLM (inject / gated cross-attention) on tiny random LLaMA, Qwen2 and GPT-2 models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from llavidal.model.hf.conditioning import VideoConditioning, find_decoder_layers

HIDDEN, FEATURE_DIM, LAYERS, VOCAB = 32, 12, 3, 97


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is much faster on a shared, busy CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llm(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = Qwen2ForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64)
        model = GPT2LMHeadModel(config)
    return model.eval()


def inputs(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    video = torch.randn(batch, 5, FEATURE_DIM, generator=generator)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return input_ids, torch.ones_like(input_ids), video, mask


def open_gates(conditioning: VideoConditioning, value: float = 0.5) -> None:
    with torch.no_grad():
        for gate in conditioning.gates().values():
            gate.fill_(value)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["inject", "xattn"])
def test_closed_gates_equal_base_logits_and_generation(arch: str, mode: str) -> None:
    llm = tiny_llm(arch)
    input_ids, attention_mask, video, mask = inputs()
    with torch.no_grad():
        base_logits = llm(input_ids=input_ids, attention_mask=attention_mask).logits
        base_tokens = llm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6,
                                   do_sample=False, pad_token_id=0)
    conditioning = VideoConditioning(mode, HIDDEN, FEATURE_DIM, LAYERS, layers=[0, 2], num_heads=4).attach(llm)
    assert conditioning.attached and len(conditioning.gates()) == (2 if mode == "inject" else 4)
    with torch.no_grad(), conditioning.context(video, mask):
        logits = llm(input_ids=input_ids, attention_mask=attention_mask).logits
        tokens = llm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6,
                              do_sample=False, pad_token_id=0)
    torch.testing.assert_close(logits, base_logits, atol=1e-6, rtol=0)
    assert torch.equal(tokens, base_tokens)
    assert not conditioning.has_context


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("mode", ["inject", "xattn"])
def test_open_gates_change_logits_and_train(arch: str, mode: str) -> None:
    llm = tiny_llm(arch)
    input_ids, attention_mask, video, mask = inputs()
    with torch.no_grad():
        base_logits = llm(input_ids=input_ids, attention_mask=attention_mask).logits
    conditioning = VideoConditioning(mode, HIDDEN, FEATURE_DIM, LAYERS, num_heads=4).attach(llm)
    open_gates(conditioning)
    with conditioning.context(video, mask):
        logits = llm(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (logits - base_logits).abs().max() > 1e-3
    logits.float().logsumexp(-1).mean().backward()
    for name, gate in conditioning.gates().items():
        assert gate.grad is not None and gate.grad.abs() > 0, name
    # the context is gone: a later call equals the base model
    with torch.no_grad():
        after = llm(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(after, base_logits, atol=1e-6, rtol=0)
    # detached hooks: the base model even with a context set
    conditioning.detach()
    conditioning.set_context(video, mask)
    with torch.no_grad():
        detached = llm(input_ids=input_ids, attention_mask=attention_mask).logits
    conditioning.clear_context()
    torch.testing.assert_close(detached, base_logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["inject", "xattn"])
def test_generation_conditions_every_new_token(mode: str) -> None:
    """KV-cache decoding with the context set gives the same per-step logits as one full forward pass."""
    llm = tiny_llm("qwen2")
    input_ids, attention_mask, video, mask = inputs()
    conditioning = VideoConditioning(mode, HIDDEN, FEATURE_DIM, LAYERS, layers=[1, 2], num_heads=4).attach(llm)
    open_gates(conditioning, 1.0)
    with torch.no_grad(), conditioning.context(video, mask):
        generated = llm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5,
                                 do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        sequence = generated.sequences
        full = llm(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
    steps = torch.stack(generated.logits, dim=1)  # (B, new, V)
    prompt = input_ids.shape[1]
    torch.testing.assert_close(steps, full[:, prompt - 1 : sequence.shape[1] - 1], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        unconditioned = llm(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
    assert (unconditioned - full).abs().max() > 1e-3  # the new tokens' logits did depend on the video


def test_per_layer_video_and_masking() -> None:
    """Per-layer video (B, L, T, D): conditioned layer j reads video layer j; masked frames have no effect."""
    llm = tiny_llm("llama")
    input_ids, attention_mask, _video, mask = inputs()
    conditioning = VideoConditioning("inject", HIDDEN, FEATURE_DIM, LAYERS).attach(llm)
    open_gates(conditioning)
    per_layer = torch.randn(2, 2, 5, FEATURE_DIM, generator=torch.Generator().manual_seed(3))  # L=2 < 3 layers
    with torch.no_grad():
        with conditioning.context(per_layer, mask):
            reference = llm(input_ids=input_ids, attention_mask=attention_mask).logits
        changed = per_layer.clone()
        changed[1, :, 3:] = 100.0  # masked-out frames of row 1
        with conditioning.context(changed, mask):
            masked = llm(input_ids=input_ids, attention_mask=attention_mask).logits
        torch.testing.assert_close(masked, reference, atol=1e-6, rtol=0)
        changed[:, 1] += 1.0  # the second video layer feeds the second conditioned layer
        with conditioning.context(changed, mask):
            second = llm(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (second - reference).abs().max() > 1e-4


def test_attach_under_peft_lora() -> None:
    from peft import LoraConfig, get_peft_model

    llm = tiny_llm("llama")
    input_ids, attention_mask, video, mask = inputs()
    peft_model = get_peft_model(llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert find_decoder_layers(peft_model) is llm.model.layers
    with torch.no_grad():
        base_logits = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    conditioning = VideoConditioning("xattn", HIDDEN, FEATURE_DIM, LAYERS, num_heads=4).attach(peft_model)
    assert conditioning.layers == [2]
    with torch.no_grad(), conditioning.context(video, mask):
        closed = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(closed, base_logits, atol=1e-6, rtol=0)
    open_gates(conditioning)
    with conditioning.context(video, mask):
        logits = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (logits - base_logits).abs().max() > 1e-3
    logits.float().pow(2).mean().backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora_grads and any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(g.grad is not None and g.grad.abs() > 0 for g in conditioning.gates().values())
    assert not any(k.startswith("blocks.") for k in peft_model.state_dict())  # LLM state dict untouched
    assert set(conditioning.state_dict()) >= {"blocks.2.attn_gate", "blocks.2.ff_gate"}


def test_errors_and_beam_expansion() -> None:
    llm = tiny_llm("gpt2")
    with pytest.raises(ValueError, match="built for 5 decoder layers"):
        VideoConditioning("inject", HIDDEN, FEATURE_DIM, 5).attach(llm)
    with pytest.raises(ValueError, match="unknown video conditioning mode"):
        VideoConditioning("concat", HIDDEN, FEATURE_DIM, LAYERS)
    with pytest.raises(ValueError, match="out of range"):
        VideoConditioning("inject", HIDDEN, FEATURE_DIM, LAYERS, layers=[3])
    conditioning = VideoConditioning("inject", HIDDEN, FEATURE_DIM, LAYERS).attach(llm)
    with pytest.raises(ValueError, match=r"\(B, N, 12\)"):
        conditioning.set_context(torch.randn(2, 5, FEATURE_DIM + 1))
    open_gates(conditioning)
    input_ids, attention_mask, video, mask = inputs()
    with torch.no_grad(), conditioning.context(video, mask):  # beams: each video row serves its beams
        beams = llm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3, num_beams=2,
                             do_sample=False, pad_token_id=0)
    assert beams.shape == (2, input_ids.shape[1] + 3)
