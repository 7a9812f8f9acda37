"""Upstream LLaMA tokenizer folders (no ``legacy`` key) keep the legacy SentencePiece behaviour, so
multi-turn ``v1`` conversations mask correctly instead of being dropped."""

import shutil
from pathlib import Path

from llavidal.constants import IGNORE_INDEX
from llavidal.data.templates import tokenize_conversation
from llavidal.model.builder import load_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "llama_spm" / "tokenizer.model"


def test_upstream_llama_folder_loads_legacy_and_masks_multi_turn(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}'
    )
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.legacy is True
    conversation = [
        {"from": "human", "value": "What is happening?\n<video>"},
        {"from": "gpt", "value": "A person drinks from a mug."},
        {"from": "human", "value": "Which hand?"},
        {"from": "gpt", "value": "The left hand."},
    ]
    input_ids, labels = tokenize_conversation(conversation, tokenizer, "v1")
    supervised = [t for t, l in zip(input_ids, labels) if l != IGNORE_INDEX]
    text = tokenizer.decode(supervised)
    assert "A person drinks from a mug." in text and "The left hand." in text
    assert text.count("</s>") == 2
