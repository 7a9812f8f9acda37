"""Conversation templates and v1 label masking, against hand computations of the answer tokens.

The LLaMA tokenizer is the real 32000-piece SentencePiece model (tests/fixtures/llama_spm, rebuilt by
tests/fixtures/build_llama_spm_tokenizer.py); the expected ids are assembled piece by piece with the
``sentencepiece`` library itself, independently of the masking code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llavidal.constants import IGNORE_INDEX
from llavidal.data.templates import (
    LLAVIDAL_SYSTEM,
    VICUNA_SYSTEM,
    ConversationMismatchError,
    get_template,
    render_generation_prompt,
    tokenize_conversation,
)
from llavidal.testing import tiny_tokenizer

SPM_DIR = Path(__file__).parent / "fixtures" / "llama_spm"

CONVERSATION = [
    {"from": "human", "value": "What is the person doing in the video?"},
    {"from": "gpt", "value": "The person is drinking from a mug."},
    {"from": "human", "value": "Which hand does the person use?"},
    {"from": "gpt", "value": "The left hand."},
    {"from": "human", "value": "What happens next?"},
    {"from": "gpt", "value": "The person puts the mug down on the table."},
]


def llama_tokenizer(legacy: bool = True):
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(SPM_DIR), legacy=legacy)


def test_llama_fixture_is_the_real_32000_vocabulary():
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(SPM_DIR / "tokenizer.model"))
    assert processor.get_piece_size() == 32000
    # llama.cpp's reference tokenisations (ggml-vocab-llama-spm.gguf.inp/.out)
    assert processor.encode(" Hello world") == [29871, 15043, 3186]
    assert processor.encode("Hello world") == [15043, 3186]
    tokenizer = llama_tokenizer()
    assert tokenizer("Hello world").input_ids == [1, 15043, 3186]


def test_v1_prompt_strings_are_vicuna_v1_1():
    tokenizer = tiny_tokenizer()
    prompt = render_generation_prompt("v1", tokenizer, [("q1", "a1")], "q2")
    assert prompt == VICUNA_SYSTEM + " USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:"
    assert render_generation_prompt("llavidal_v1", tokenizer, [], "q").startswith(LLAVIDAL_SYSTEM + " USER: q")
    assert render_generation_prompt("llavidal_v1", tokenizer, [], "q").endswith("ASSISTANT:")
    chat = render_generation_prompt("chat", tokenizer, [("q1", "a1")], "q2")
    assert chat.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nq2<|im_end|>" in chat
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_template("nope")


def test_v1_masking_matches_hand_computation_llama_spm():
    """[BOS] + sp(instruction_1) + sp(answer_1) + </s> + sp(instruction_2) + ...; only answers + </s> supervised."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(SPM_DIR / "tokenizer.model"))
    input_ids, labels = tokenize_conversation(CONVERSATION, llama_tokenizer(), "v1")

    expected_ids, expected_labels = [1], [IGNORE_INDEX]
    for turn in range(0, len(CONVERSATION), 2):
        head = (VICUNA_SYSTEM + " " if turn == 0 else "") + f"USER: {CONVERSATION[turn]['value']} ASSISTANT:"
        instruction = processor.encode(head)
        answer = processor.encode(CONVERSATION[turn + 1]["value"]) + [2]  # "▁The ..." = " The ..." in context
        expected_ids += instruction + answer
        expected_labels += [IGNORE_INDEX] * len(instruction) + answer
    assert input_ids == expected_ids
    assert labels == expected_labels
    supervised = [token for token, label in zip(input_ids, labels) if label != IGNORE_INDEX]
    assert supervised.count(2) == 3


def test_v1_masking_matches_hand_computation_bpe():
    tokenizer = tiny_tokenizer()
    input_ids, labels = tokenize_conversation(CONVERSATION, tokenizer, "v1")

    def encode(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    eos = tokenizer.eos_token_id
    expected_ids, expected_labels = [], []
    for turn in range(0, len(CONVERSATION), 2):
        head = (VICUNA_SYSTEM + " " if turn == 0 else "") + f"USER: {CONVERSATION[turn]['value']} ASSISTANT:"
        answer = encode(" " + CONVERSATION[turn + 1]["value"]) + [eos]
        expected_ids += encode(head) + answer
        expected_labels += [IGNORE_INDEX] * len(encode(head)) + answer
    assert input_ids == expected_ids
    assert labels == expected_labels


def test_v1_masking_with_modality_spans_in_the_question():
    tokenizer = llama_tokenizer()
    tokenizer.add_tokens(["<vid_patch>", "<vid_start>", "<vid_end>"], special_tokens=True)
    span = "<vid_start>" + "<vid_patch>" * 5 + "<vid_end>"
    conversation = [
        {"from": "human", "value": f"{span}\nWhat is the person doing?"},
        {"from": "gpt", "value": "Drinking."},
        {"from": "human", "value": f"Describe it.\n{span}"},
        {"from": "gpt", "value": "A person drinks from a mug."},
    ]
    input_ids, labels = tokenize_conversation(conversation, tokenizer, "v1")
    patch = tokenizer.convert_tokens_to_ids("<vid_patch>")
    assert input_ids.count(patch) == 10
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    assert [tokenizer.decode(run) for run in runs] == ["Drinking.</s>", "A person drinks from a mug.</s>"]


def test_chat_template_masks_answers_and_end_of_turn():
    tokenizer = tiny_tokenizer()
    input_ids, labels = tokenize_conversation(CONVERSATION, tokenizer, "chat")
    assert input_ids == tokenizer(tokenizer.apply_chat_template(
        [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]} for m in CONVERSATION],
        tokenize=False), add_special_tokens=False).input_ids
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    supervised = [t if l != IGNORE_INDEX else None for t, l in zip(input_ids, labels)]
    text = tokenizer.decode([t for t in supervised if t is not None])
    assert text == "".join(m["value"] + "<|im_end|>" for m in CONVERSATION[1::2])
    # user turns' <|im_end|> are not supervised, the assistants' are
    assert sum(1 for t, l in zip(input_ids, labels) if t == end and l != IGNORE_INDEX) == 3
    assert sum(1 for t in input_ids if t == end) == 6


def test_non_legacy_llama_multi_turn_is_a_detected_mismatch():
    """legacy=False tokenises "USER" after </s> without the "▁": the upstream rule's lengths disagree."""
    with pytest.raises(ConversationMismatchError, match="tokenization mismatch"):
        tokenize_conversation(CONVERSATION, llama_tokenizer(legacy=False), "v1", sample_id="clip_7")
    # single-turn conversations have no border to disagree on
    tokenize_conversation(CONVERSATION[:2], llama_tokenizer(legacy=False), "v1")


def test_answer_containing_the_separator_is_a_mismatch_not_a_silent_zero():
    conversation = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x ASSISTANT: y"}]
    with pytest.raises(ConversationMismatchError, match="sample s1"):
        tokenize_conversation(conversation, tiny_tokenizer(), "v1", sample_id="s1")


def test_malformed_conversations_name_the_sample():
    with pytest.raises(ValueError, match="sample r9: turn 1"):
        tokenize_conversation([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], tiny_tokenizer(), "v1", sample_id="r9")
    with pytest.raises(ValueError, match="ends with a user turn"):
        tokenize_conversation([{"from": "human", "value": "q"}], tiny_tokenizer(), "v1")


DEFAULT_SYSTEM_TEMPLATE = (  # SmolLM2-Instruct's shape: its own system prompt when the conversation has none
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant named Tiny<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chat_bare_keeps_the_templates_default_system_prompt_out_of_training_and_inference():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = DEFAULT_SYSTEM_TEMPLATE
    question = CONVERSATION[0]["value"]
    with_default = render_generation_prompt("chat", tokenizer, [], question)
    bare = render_generation_prompt("chat_bare", tokenizer, [], question)
    assert "named Tiny" in with_default
    assert bare == f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    for name in ("chat", "chat_bare"):
        input_ids, labels = tokenize_conversation(CONVERSATION, tokenizer, name)
        # training sees the prompt that inference writes before the first answer
        first_answer = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        prompt = render_generation_prompt(name, tokenizer, [], question)
        assert input_ids[:first_answer] == tokenizer(prompt, add_special_tokens=False).input_ids
        supervised = tokenizer.decode([t for t, label in zip(input_ids, labels) if label != IGNORE_INDEX])
        assert supervised == "".join(m["value"] + "<|im_end|>" for m in CONVERSATION[1::2])
    assert len(tokenize_conversation(CONVERSATION, tokenizer, "chat_bare")[0]) < \
        len(tokenize_conversation(CONVERSATION, tokenizer, "chat")[0])
    assert get_template("chat_bare").style == "chat"


def test_inference_template_follows_upstream_aliases():
    # Upstream trains with v1 (alias vicuna_v1_1) and answers with llavidal_v1's system prompt; every other
    # template answers as it trained. The engine and the processor both resolve it here.
    from llavidal.data.templates import inference_template

    assert inference_template("v1") == "llavidal_v1"
    assert inference_template("vicuna_v1_1") == "llavidal_v1"
    assert inference_template("vicuna_v1") == "llavidal_v1"
    for name in ("llavidal_v1", "chat", "chat_bare"):
        assert inference_template(name) == name
