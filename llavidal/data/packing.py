"""Packed (padding-free) training batches: several samples per row, no attention across them.

Padded batches spend compute on pad tokens: LLAVIDAL samples carry 356 video + 256 pose + 8 per object
tokens plus 30-600 text tokens, so rows of one batch differ by hundreds of tokens. Packing concatenates
the samples of a micro-batch instead:

* position ids restart at 0 for every sample (RoPE sees each sample as if it were alone);
* attention never crosses a sample boundary. Every attention implementation of transformers 5.x
  handles this from the batch alone: ``flash_attention_2/3/4`` run their varlen kernel from the
  ``cu_seq_lens_*`` / ``max_length_*`` keys; ``sdpa``, ``eager`` and ``flex_attention`` build a
  block-diagonal causal mask from the restarting ``position_ids`` (only when no ``attention_mask`` is
  given and no KV cache is in use: :func:`prepare_model_for_packing` turns the cache off).
  :data:`VARLEN_SDPA` (registered here) is the exact alternative without flash-attn: SDPA run once
  per sample from ``cu_seq_lens_q``, so its cost is the sum of the samples' squared lengths, not that
  of the packed row;
* the first label of each sample is ignored, so no token is predicted from the previous sample's last
  token (unpacked, that label is never predicted either: it has no preceding token);
* modality features of the samples in a row are concatenated in the samples' order, which is the
  order in which their patch tokens appear (the model's splice contract).

With the loss normalised by ``num_items_in_batch`` (the HF Trainer counts the supervised labels of all
gradient-accumulation micro-batches and passes the count to the model), a packed run optimises exactly
the objective of the padded run over the same samples.

Layouts. ``padding_free=True`` (for varlen attention: flash-attn, :data:`VARLEN_SDPA`) lays the whole
micro-batch out as ONE row without any pad token, as transformers' ``DataCollatorWithFlattening``
does. ``padding_free=False`` (for implementations that materialise a mask over the row: sdpa, eager,
flex) first packs the samples into rows of at most ``max_length`` tokens (best-fit decreasing) and pads
the rows to the longest one, which bounds the quadratic cost of the block-diagonal mask.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llavidal.constants import IGNORE_INDEX

logger = logging.getLogger(__name__)

VARLEN_SDPA = "llavidal_varlen_sdpa"
"""Attention implementation registered by :func:`register_varlen_sdpa`: exact per-sample SDPA."""

VARLEN_IMPLEMENTATIONS = frozenset({"flash_attention_2", "flash_attention_3", "flash_attention_4", VARLEN_SDPA})
"""Implementations whose cost does not depend on how samples are laid out in rows (padding-free layout)."""

MASKED_IMPLEMENTATIONS = frozenset({"sdpa", "eager", "flex_attention"})
"""Implementations that build a block-diagonal causal mask from restarting ``position_ids``."""

Item = dict[str, Any]
"""A dataset item: ``input_ids`` (T,), ``labels`` (T,), ``modality_features`` {name: (k, D)}, ``id``."""


# ---------------------------------------------------------------------------------------------- bins
def pack_lengths(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group indices into bins whose lengths sum to at most ``max_length`` (best-fit decreasing).

    Each index, longest first, goes into the fullest bin that still has room for it, else into a new
    bin. An index longer than ``max_length`` gets a bin of its own. Deterministic: ties keep index order.
    Returns bins of indices, each in decreasing length order; bins in order of creation.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining room, bin index), sorted: best fit = first room >= length
    for index in order:
        length = int(lengths[index])
        if length < 0:
            raise ValueError(f"negative length {length} at index {index}")
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            room, bin_index = free.pop(slot)
            bins[bin_index].append(index)
            room -= length
        else:
            bins.append([index])
            bin_index = len(bins) - 1
            room = max_length - length
        if room > 0:
            bisect.insort(free, (room, bin_index))
    return bins


# ---------------------------------------------------------------------------------------------- length-grouped batches
def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None,
                           mega_batch_mult: int | None = None, drop_last: bool = False) -> list[list[int]]:
    """Micro-batches of samples of similar length: the padded alternative to packing (same padded collator, same
    per-sample losses, less padding).

    The order is transformers' ``get_length_grouped_indices`` (what ``--group_by_length`` gives the Trainer,
    through its ``LengthGroupedSampler``): a random permutation cut into mega-batches of ``mega_batch_mult``
    micro-batches (default: 50, or fewer so that there are 4 mega-batches), each sorted by length, longest
    first; the micro-batch with the longest sample comes first (an out-of-memory error shows at step 0).
    Every index appears exactly once; ``drop_last`` drops a final micro-batch smaller than ``batch_size``.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not len(lengths):
        return []
    order = get_length_grouped_indices([int(n) for n in lengths], batch_size, mega_batch_mult=mega_batch_mult,
                                       generator=generator)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """``DataLoader(dataset, batch_sampler=LengthGroupedBatchSampler(dataset.lengths, 4, seed=0))``: the
    micro-batches of :func:`length_grouped_batches`, a new grouping every epoch (``set_epoch``; seeded by
    ``seed + epoch``, so a run is reproducible)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int | None = None,
                 drop_last: bool = False):
        self.lengths = [int(n) for n in lengths]
        self.batch_size, self.seed, self.mega_batch_mult, self.drop_last = int(batch_size), int(seed), mega_batch_mult, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return length_grouped_batches(self.lengths, self.batch_size, generator, self.mega_batch_mult, self.drop_last)

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


# ---------------------------------------------------------------------------------------------- collator
@dataclass
class PackingCollator:
    """Pack a micro-batch of dataset items into padding-free rows (see the module docstring).

    Keys in (per item, as the padded collator reads them):
        ``input_ids``: LongTensor (T_i,); ``labels``: LongTensor (T_i,) with ``IGNORE_INDEX`` on
        unsupervised tokens; ``modality_features``: {name: Tensor (k, D) or (n, group, D)} for the
        modalities the item uses; ``id``: str (optional).
    Keys out (R rows of T tokens; R = 1 when ``padding_free``):
        ``input_ids``: LongTensor (R, T), tail of short rows filled with ``pad_token_id``;
        ``labels``: LongTensor (R, T), ``IGNORE_INDEX`` on each sample's first token and on padding;
        ``position_ids``: LongTensor (R, T), 0.. per sample (the padding tail counts as one more sample);
        ``cu_seq_lens_q`` / ``cu_seq_lens_k``: IntTensor (S + 1,), cumulative segment lengths over the
        flattened (R * T) tokens (segments: the samples, plus each row's padding tail);
        ``max_length_q`` / ``max_length_k``: int, the longest segment;
        ``modality_features``: {name: [Tensor (k_r, D) or None] * R}, the features of a row's samples
        concatenated in row order (objects flattened to (8n, D));
        ``sample_ids``: [tuple[str, ...]] * R, the ids of each row's samples.
    No ``attention_mask`` is returned: transformers derives the block-diagonal mask (or the varlen
    segments) from the keys above only when no mask is given.
    """

    pad_token_id: int
    max_length: int
    """Row budget in tokens (``--packing_max_length``); used for the row layout (``padding_free=False``)."""
    padding_free: bool = True
    """One row holding the whole micro-batch (varlen attention), instead of budgeted, padded rows."""
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("PackingCollator needs a pad_token_id (set tokenizer.pad_token)")
        if self.max_length <= 0:
            raise ValueError(f"PackingCollator max_length must be positive, got {self.max_length}")

    def rows(self, items: Sequence[Item]) -> list[list[Item]]:
        """How items are grouped into rows (the layout ``__call__`` uses)."""
        if self.padding_free:
            return [list(items)]
        lengths = [int(item["input_ids"].shape[0]) for item in items]
        # Keep the samples of a row in their batch order: the order carries no meaning, but it is stable.
        return [[items[i] for i in sorted(bin_)] for bin_ in pack_lengths(lengths, self.max_length)]

    def __call__(self, items: Sequence[Item]) -> dict[str, Any]:
        if not items:
            raise ValueError("PackingCollator got an empty batch")
        rows = self.rows(items)
        row_lengths = [sum(int(item["input_ids"].shape[0]) for item in row) for row in rows]
        width = max(row_lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        num_rows = len(rows)
        input_ids = torch.full((num_rows, width), int(self.pad_token_id), dtype=torch.long)  # (R, T)
        labels = torch.full((num_rows, width), IGNORE_INDEX, dtype=torch.long)  # (R, T)
        position_ids = torch.zeros((num_rows, width), dtype=torch.long)  # (R, T)
        segments: list[int] = []
        for row_index, row in enumerate(rows):
            offset = 0
            for item in row:
                ids = item["input_ids"]
                length = int(ids.shape[0])
                if length == 0:
                    continue
                if item["labels"].shape[0] != length:
                    raise ValueError(
                        f"sample {item.get('id', '?')}: {item['labels'].shape[0]} labels for {length} input ids"
                    )
                input_ids[row_index, offset:offset + length] = ids
                labels[row_index, offset:offset + length] = item["labels"]
                # Never predict a sample's first token from the previous sample's last one.
                labels[row_index, offset] = IGNORE_INDEX
                position_ids[row_index, offset:offset + length] = torch.arange(length)
                segments.append(length)
                offset += length
            if width > offset:  # the padding tail is a segment of its own: it attends only to itself
                position_ids[row_index, offset:] = torch.arange(width - offset)
                segments.append(width - offset)
        cu_seq_lens = torch.tensor([0, *segments], dtype=torch.int64).cumsum(0).to(torch.int32)  # (S + 1,)
        max_segment = max(segments)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens.clone(),
            "max_length_q": max_segment,
            "max_length_k": max_segment,
            "modality_features": _row_features(rows),
            "sample_ids": [tuple(str(item.get("id", "")) for item in row) for row in rows],
        }


def _row_features(rows: Sequence[Sequence[Item]]) -> dict[str, list[Tensor | None]]:
    """{name: one entry per row}: the row's features of that modality, concatenated in sample order."""
    names: list[str] = []
    for row in rows:
        for item in row:
            for name in item.get("modality_features", {}) or {}:
                if name not in names:
                    names.append(name)
    features: dict[str, list[Tensor | None]] = {}
    for name in names:
        entries: list[Tensor | None] = []
        for row in rows:
            parts = []
            for item in row:
                value = (item.get("modality_features") or {}).get(name)
                if value is None:
                    continue
                value = torch.as_tensor(value)
                if value.dim() == 3:  # objects (n, group, D) -> (n * group, D), the order of their patch tokens
                    value = value.reshape(-1, value.shape[-1])
                if value.shape[0]:
                    parts.append(value)
            entries.append(torch.cat(parts, dim=0) if parts else None)
        features[name] = entries
    return features


def make_packing_collator(
    tokenizer: Any, max_length: int, attn_implementation: str | None = None, pad_to_multiple_of: int | None = None
) -> PackingCollator:
    """The packing collator for a model with ``attn_implementation`` (padding-free for varlen kernels).

    ``attn_implementation=None`` means a varlen kernel (what :func:`prepare_model_for_packing` sets up).
    """
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id
    padding_free = attn_implementation is None or attn_implementation in VARLEN_IMPLEMENTATIONS
    return PackingCollator(
        pad_token_id=int(pad_token_id), max_length=int(max_length), padding_free=padding_free,
        pad_to_multiple_of=pad_to_multiple_of,
    )


def real_token_count(batch: dict[str, Any], lengths: Iterable[int]) -> tuple[int, int]:
    """(tokens of the samples, token slots the batch computes): the useful-token fraction's terms."""
    return int(sum(int(n) for n in lengths)), int(batch["input_ids"].numel())


# ---------------------------------------------------------------------------------------------- attention
def varlen_sdpa_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: Tensor | None = None,
    cu_seq_lens_k: Tensor | None = None,
    position_ids: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Exact causal attention per packed segment with PyTorch SDPA (a transformers attention function).

    query: (B, H, T, d); key, value: (B, H_kv, T, d). Segments come from ``cu_seq_lens_q`` (cumulative
    lengths over the flattened B * T tokens, as the packing collator returns them), else from restarts
    of ``position_ids``; each attends causally to itself only, so the cost is the sum of squared segment
    lengths. With a mask (a padded batch) or a KV cache (generation) this is transformers' ``sdpa``
    unchanged. Returns (B, T, H, d).
    """
    from transformers.integrations.sdpa_attention import (
        repeat_kv,
        sdpa_attention_forward,
    )

    batch, heads, length, head_dim = query.shape
    if attention_mask is not None or key.shape[2] != length:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if cu_seq_lens_q is not None:
        if cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_k, cu_seq_lens_q):
            raise ValueError(f"{VARLEN_SDPA}: cu_seq_lens_k differs from cu_seq_lens_q; only self-attention is supported")
        bounds = [int(b) for b in cu_seq_lens_q.tolist()]
    else:
        bounds = _segment_bounds(position_ids, batch, length)
    if bounds[0] != 0 or bounds[-1] != batch * length:
        raise ValueError(
            f"{VARLEN_SDPA}: cu_seq_lens_q covers {bounds[0]}..{bounds[-1]} tokens but the batch holds "
            f"{batch} x {length}; build batches with llavidal.data.packing.PackingCollator"
        )
    groups = heads // key.shape[1]
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # (B, H, T, d)
    # (B, H, T, d) -> (1, H, B*T, d): segments are contiguous in the flattened token order.
    flat_q, flat_k, flat_v = (x.transpose(0, 1).reshape(1, heads, batch * length, head_dim) for x in (query, key, value))
    dropout_p = dropout if module.training else 0.0
    outputs = [
        F.scaled_dot_product_attention(
            flat_q[:, :, start:end], flat_k[:, :, start:end], flat_v[:, :, start:end],
            dropout_p=dropout_p, is_causal=True, scale=scaling,
        )
        for start, end in pairwise(bounds)
        if end > start
    ]
    out = torch.cat(outputs, dim=2).reshape(heads, batch, length, head_dim)  # (H, B, T, d)
    return out.permute(1, 2, 0, 3).contiguous(), None  # (B, T, H, d)


def _segment_bounds(position_ids: Tensor | None, batch: int, length: int) -> list[int]:
    """Cumulative segment bounds over the flattened (B * T) tokens: rows, split where positions restart."""
    if position_ids is None:
        return list(range(0, batch * length + 1, length))
    positions = position_ids.expand(batch, -1)  # (B, T)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    return [*torch.nonzero(starts.reshape(-1)).flatten().tolist(), batch * length]


def _varlen_mask(*args: Any, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor | None:
    """sdpa's mask for padded batches; none for unpadded ones (the segments are found in the attention)."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and kwargs.get("q_length") == kwargs.get("kv_length"):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_varlen_sdpa() -> str:
    """Register :data:`VARLEN_SDPA` with transformers (attention function + mask builder)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, _varlen_mask)
    return VARLEN_SDPA


def _llm_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a LlavidalModel (under any peft wrapper), or ``model`` itself."""
    for attribute in ("base_llm", "llm"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return inner
    return model


def prepare_model_for_packing(model: nn.Module, use_varlen_sdpa: bool = True) -> str:
    """Make ``model`` (a LlavidalModel or a transformers causal LM) exact on packed batches.

    Turns the LLM's KV cache off for forward calls (transformers ignores restarting ``position_ids``
    while a cache is in use, which would let samples attend to each other) and, when the LLM uses
    ``sdpa`` or ``eager`` and ``use_varlen_sdpa`` is set, switches it to :data:`VARLEN_SDPA` (same
    result, cost per sample instead of per row). Returns the attention implementation in use.
    ``generate`` still uses its cache (generation configs set ``use_cache`` explicitly).
    """
    llm = _llm_of(model)
    config = llm.config
    config.use_cache = False
    implementation = str(getattr(config, "_attn_implementation", None) or "eager")
    if use_varlen_sdpa and implementation in ("sdpa", "eager"):
        register_varlen_sdpa()
        llm.set_attn_implementation(VARLEN_SDPA)
        logger.info("packing: attention %s -> %s (exact per-sample SDPA)", implementation, VARLEN_SDPA)
        implementation = str(config._attn_implementation)
    if implementation not in VARLEN_IMPLEMENTATIONS | MASKED_IMPLEMENTATIONS:
        raise ValueError(
            f"packing needs an attention implementation that keeps packed samples apart "
            f"({sorted(VARLEN_IMPLEMENTATIONS | MASKED_IMPLEMENTATIONS)}); this model uses {implementation!r}"
        )
    return implementation
