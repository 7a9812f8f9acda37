"""Tiny offline models and tokenizers for tests and smoke runs (no network, built in milliseconds).

``tiny_tokenizer()`` trains a byte-level BPE on a small built-in ADL corpus and wraps it as a
``PreTrainedTokenizerFast`` with a ChatML chat template (like SmolLM2's). ``tiny_causal_lm_dir()``
saves a randomly initialised 2-layer model of a given architecture (llama, qwen2, mistral) with that
tokenizer, so code paths for real checkpoints run on something of the same shape.
"""

from __future__ import annotations

import os
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. USER: ASSISTANT: What is the person doing in the
video? The person is drinking from a mug. The person picks up a book from the table and reads it.
Describe the video in detail. The person sits down on a chair, then stands up and waves with the right
hand. Which object is used? A mug, a phone, a book, a tray, a bottle, a cup. What happens next? Which
hand does the person use? The left hand. The right hand. How many times does the person clap? Two
times, three times. The person points at something, stoops to the floor, makes a phone call, eats food
from a tray, puts an object down, walks, runs, jumps, kicks, punches, dances. Choices are (A) (B) (C)
(D) (E) (F). The best answer is A B C D E F. yes no 0 1 2 3 4 5 6 7 8 9 10 100 score pred
"""


def tiny_tokenizer(vocab_size: int = 400, chat_template: bool = True):
    """A small byte-level BPE tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``, ChatML tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", vocab_size: int = 400, hidden_size: int = 32, layers: int = 2, **overrides):
    """A tiny transformers config of ``arch`` (llama, qwen2, mistral)."""
    import transformers

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=3,
    )
    common.update(overrides)
    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; one of {sorted(classes)}")
    return classes[arch](**common)


def tiny_causal_lm_dir(path: str | os.PathLike, arch: str = "llama", seed: int = 0, **config_overrides) -> Path:
    """Save a random tiny causal LM + tokenizer to ``path`` (a normal HF folder) and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = tiny_tokenizer()
    config = tiny_config(arch, vocab_size=len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
