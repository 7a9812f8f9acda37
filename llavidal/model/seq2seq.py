"""Encoder-decoder backbones (Flan-T5, BART...) under :class:`~llavidal.model.llavidal_model.LlavidalModel`.

The same splice as for causal LMs, into the ENCODER's input embeddings; the decoder is trained on the
answer (LSTP-Chat's Flan-T5 arrangement)::

    encoder inputs_embeds : {system} USER: question <vid_start> proj(video) (k, H) <vid_end> ASSISTANT:
    decoder labels        : answer tokens + eos        (decoder inputs: the labels shifted right)

Whether a backbone is one is read from its config (``is_encoder_decoder``), never from its name. The
loss is the cross-entropy over every supervised label (no shift: the decoder inputs are already shifted),
summed and divided by ``num_items_in_batch`` when the Trainer gives it, else averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llavidal.constants import IGNORE_INDEX


def is_encoder_decoder(llm: Any) -> bool:
    """Whether ``llm`` (a transformers model, or a peft wrapper of one) is an encoder-decoder."""
    config = getattr(llm, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False))


def seq2seq_loss(logits: Tensor, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Cross-entropy of decoder logits (B, L, V) against labels (B, L) (``IGNORE_INDEX`` unsupervised).

    Sum over supervised labels / ``num_items_in_batch`` when given, else their mean."""
    labels = labels.to(logits.device)
    flat_logits = logits.float().reshape(-1, logits.shape[-1])  # (B*L, V)
    flat_labels = labels.reshape(-1)  # (B*L,)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="mean")
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if isinstance(num_items_in_batch, Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def decoder_inputs_from_labels(llm: Any, labels: Tensor) -> Tensor:
    """Decoder input ids (B, L) for labels (B, L): the labels shifted right after the decoder start token,
    ``IGNORE_INDEX`` turned into padding (the model's own ``prepare_decoder_input_ids_from_labels``)."""
    prepare = getattr(llm, "prepare_decoder_input_ids_from_labels", None)
    if prepare is None:
        raise TypeError(f"{type(llm).__name__} cannot make decoder inputs from labels; pass decoder_input_ids")
    return prepare(labels=labels)


def seq2seq_forward(
    model: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    position_ids: Tensor | None,
    used: Iterable[str],
    num_items_in_batch: int | Tensor | None,
    llm_kwargs: Mapping[str, Any],
) -> Any:
    """``LlavidalModel.forward`` for an encoder-decoder: spliced ``inputs_embeds`` (B, T, H) into the encoder,
    decoder inputs from ``labels`` (B, L) unless ``decoder_input_ids`` is among ``llm_kwargs``. Returns the LLM's
    ``Seq2SeqLMOutput`` (logits (B, L, V)) with ``loss`` set when labels are given."""
    if position_ids is not None:
        raise ValueError(
            "position_ids are not used by encoder-decoder backbones (packed rows are not supported for them); "
            "train without --packing"
        )
    kwargs = dict(llm_kwargs)
    kwargs.pop("logits_to_keep", None)  # causal-LM option; the decoder's logits are few
    kwargs.setdefault("use_cache", False)  # no KV cache unless asked (training needs none)
    if labels is not None and kwargs.get("decoder_input_ids") is None and kwargs.get("decoder_inputs_embeds") is None:
        kwargs["decoder_input_ids"] = decoder_inputs_from_labels(model.base_llm, labels).to(inputs_embeds.device)
    if kwargs.get("decoder_input_ids") is None and kwargs.get("decoder_inputs_embeds") is None:
        raise ValueError("an encoder-decoder forward needs labels (the answer) or decoder_input_ids")
    outputs = model.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
    loss = None
    if labels is not None:
        loss = seq2seq_loss(outputs.logits, labels, num_items_in_batch)
        touch = model._zero_touch(used)
        if touch is not None:
            loss = loss + touch.to(loss.device)
    outputs["loss"] = loss  # the LLM's own output (Seq2SeqLMOutput), with our loss
    return outputs


def new_decoder_tokens(sequences: Tensor, generate_kwargs: Mapping[str, Any]) -> Tensor:
    """The generated tokens of an encoder-decoder's ``generate`` output (B, 1 + new): without the decoder
    start token (or the ``decoder_input_ids`` prefix the caller gave)."""
    prefix = generate_kwargs.get("decoder_input_ids")
    start = int(prefix.shape[-1]) if isinstance(prefix, torch.Tensor) else 1
    return sequences[:, start:]


__all__ = [
    "decoder_inputs_from_labels",
    "is_encoder_decoder",
    "new_decoder_tokens",
    "seq2seq_forward",
    "seq2seq_loss",
]
