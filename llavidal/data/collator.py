"""Batch collation for training: right-padded batches of dataset items.

The item format (from :class:`llavidal.data.dataset.LazySupervisedDataset`) is the contract every
collator consumes; a packing collator lives in its own module and reads the same items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from llavidal.constants import IGNORE_INDEX


@dataclass
class PaddedCollator:
    """Pad a list of items into one batch (right padding, for training).

    Keys in (per item):
        ``input_ids``: LongTensor (T_i,); ``labels``: LongTensor (T_i,);
        ``modality_features``: {name: Tensor (k, D)} for the modalities the item uses;
        ``id``: str (optional).
    Keys out:
        ``input_ids``: LongTensor (B, T) padded with ``pad_token_id``;
        ``attention_mask``: LongTensor (B, T), 1 on real tokens;
        ``labels``: LongTensor (B, T) padded with ``IGNORE_INDEX``;
        ``modality_features``: {name: [Tensor (k, D) or None] * B} for every modality any item uses
        (``None`` in rows without it);
        ``sample_ids``: [str] * B.
    ``T`` is the longest item, rounded up to ``pad_to_multiple_of``; items longer than ``max_length``
    are an error (the dataset truncates them).

    ``seq2seq=True`` (encoder-decoder items: ``input_ids`` the encoder's source, ``labels`` the decoder's
    target, of their own length): ``labels`` is (B, L), L the longest target, padded with ``IGNORE_INDEX``;
    the rest as above.
    """

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    seq2seq: bool = False

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("PaddedCollator needs a pad_token_id (set tokenizer.pad_token)")

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("PaddedCollator got an empty batch")
        lengths = [int(item["input_ids"].shape[0]) for item in items]
        width = max(lengths)
        if self.max_length is not None and width > self.max_length:
            longest = items[lengths.index(width)].get("id", "?")
            raise ValueError(f"sample {longest} has {width} tokens, more than max_length {self.max_length}")
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(items)
        input_ids = torch.full((batch, width), int(self.pad_token_id), dtype=torch.long)  # (B, T)
        label_lengths = [int(item["labels"].shape[0]) for item in items] if self.seq2seq else lengths
        label_width = max(label_lengths) if self.seq2seq else width
        labels = torch.full((batch, label_width), IGNORE_INDEX, dtype=torch.long)  # (B, T), or (B, L) for seq2seq
        attention_mask = torch.zeros((batch, width), dtype=torch.long)  # (B, T)
        for row, (item, length) in enumerate(zip(items, lengths)):
            input_ids[row, :length] = item["input_ids"]
            labels[row, :label_lengths[row]] = item["labels"]
            attention_mask[row, :length] = 1
        names: list[str] = []
        for item in items:
            for name in item.get("modality_features", {}):
                if name not in names:
                    names.append(name)
        modality_features = {
            name: [item.get("modality_features", {}).get(name) for item in items] for name in names
        }
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "modality_features": modality_features,
            "sample_ids": [str(item.get("id", "")) for item in items],
        }
