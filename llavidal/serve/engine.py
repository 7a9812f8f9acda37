"""The one inference engine: (features, question, history) -> prompt -> generated text.

Used by evaluation, the demo and any server::

    engine = InferenceEngine.from_pretrained("runs/stage3", base_model="path/to/llm")
    engine = InferenceEngine.from_pretrained("mm_projector.bin", base_model="LLaVA-7B-Lightening-v1-1")  # upstream
    answers = engine.generate([GenerationRequest("What is the person doing?", {"video": video_features})])
    for text in engine.stream(request):  # growing text, for the demo
        ...
    scores = engine.score_options([request], [["sit down", "stand up"]])  # option log-likelihoods
    scores[0].best("token"), scores[0].logliks

The prompt is the question, a newline, and the placeholders of the modalities present in
``features`` (registry order), expanded to their token spans and rendered with the conversation
template the weights were trained with (``llavidal_v1`` for the upstream ``v1`` training template).

Batches are formed from requests sorted by prompt length (longest first; answers come back in request
order), which wastes less compute on padding; a row's answer does not depend on the other rows of its batch
(left padding, masked, position ids counted from each row's first token), so sorting changes no answer.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from transformers import StoppingCriteria

from llavidal.data.templates import get_template, inference_template, render_generation_prompt
from llavidal.model.llavidal_model import LlavidalModel
from llavidal.model.modality import ModalityRegistry, expand_placeholders

FeatureArray = np.ndarray | Tensor

logger = logging.getLogger("llavidal.serve")

STOP_JOIN_TIMEOUT_S = 30.0
"""How long closing a stream waits for its generation to stop (one decoding step after the stop signal;
the bound only matters for a model that hangs)."""


@dataclass
class GenerationRequest:
    """One question about one sample's features."""

    question: str
    features: dict[str, FeatureArray]
    """modality name -> features: video (k, D), pose (k, D), object (n, 8, D) or (8n, D)."""
    history: list[tuple[str, str]] = field(default_factory=list)
    """Earlier (question, answer) turns of the conversation; the features go with the first one."""
    request_id: str = ""
    answer_prefix: str = ""
    """Text the answer starts with, which the model continues (MVBench's ``Best option:(``)."""


@dataclass
class OptionScores:
    """Log-likelihoods of a request's options as continuations of its prompt (:meth:`InferenceEngine.score_options`)."""

    options: list[str]
    logliks: list[float]
    """Sum of the log-probabilities of each option's tokens after the prompt (natural log)."""
    num_tokens: list[int]
    num_chars: list[int]

    def scores(self, normalization: str = "token") -> list[float]:
        """``none``: the sums; ``token``: per token (the mean log-probability); ``char``: per character."""
        if normalization == "none":
            return list(self.logliks)
        if normalization == "token":
            return [value / max(1, n) for value, n in zip(self.logliks, self.num_tokens)]
        if normalization == "char":
            return [value / max(1, n) for value, n in zip(self.logliks, self.num_chars)]
        raise ValueError(f"normalization {normalization!r} is not one of {OPTION_NORMALIZATIONS}")

    def best(self, normalization: str = "token") -> int:
        """Index of the highest-scoring option (the first one on a tie)."""
        values = self.scores(normalization)
        return max(range(len(values)), key=lambda i: (values[i], -i))


OPTION_NORMALIZATIONS = ("token", "char", "none")


@dataclass
class _Scored:
    """One request prepared for option scoring: its prompt's token ids and each option's token ids."""

    prompt_ids: list[int]
    features: dict[str, Tensor]
    option_ids: list[list[int]]
    request_id: str


def _length_order(lengths: Sequence[int], sort_by_length: bool) -> list[int]:
    """Request indices, longest prompt first (stable), or as given."""
    order = list(range(len(lengths)))
    return sorted(order, key=lambda i: -lengths[i]) if sort_by_length else order


class InferenceEngine:
    """Batched, left-padded generation from a :class:`LlavidalModel` and its tokenizer."""

    def __init__(
        self,
        model: LlavidalModel,
        tokenizer: Any,
        template: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or inference_template(model.config.template)
        if device is not None:
            self.model.to(device)
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | os.PathLike,
        base_model: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: Any = None,
        template: str | None = None,
        attn_implementation: str | None = None,
    ) -> "InferenceEngine":
        """Load weights on top of their base model: a folder written by ``save_pretrained`` (or ``export``),
        or upstream weights, a file or a folder without ``llavidal_config.json`` (Video-ChatGPT's
        ``mm_projector.bin``, LLAVIDAL's per-modality or merged projectors, the Breakfast fork's ``model.bin``,
        safetensors), whose modalities and dims are inferred from the weights; ``base_model`` is then required
        (see :func:`llavidal.model.builder.load_pretrained`)."""
        from llavidal.data.feature_store import weights_fingerprint
        from llavidal.model.builder import load_pretrained

        model, tokenizer = load_pretrained(
            weights_dir, base_model=base_model, torch_dtype=dtype, device=device,
            attn_implementation=attn_implementation,
        )
        engine = cls(model, tokenizer, template=template)
        # which weights answered: predictions files resume only rows written by the same weights
        engine.weights_sha256 = weights_fingerprint(weights_dir)
        return engine

    @property
    def modalities(self) -> ModalityRegistry:
        return self.model.modalities

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ prompt
    def _features_of(self, request: GenerationRequest) -> dict[str, Tensor]:
        features: dict[str, Tensor] = {}
        for name, value in request.features.items():
            if value is None:
                continue
            if name not in self.modalities:
                raise ValueError(
                    f"request {request.request_id or '<unnamed>'}: modality {name!r} is not one of this model's "
                    f"{self.modalities.names()}"
                )
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            if tensor.dim() == 3 and not self.modalities[name].design:  # objects (n, group, D) -> (n * group, D)
                tensor = tensor.reshape(-1, tensor.shape[-1])
            features[name] = tensor.float()
        return features

    def build_prompt(self, request: GenerationRequest) -> tuple[str, dict[str, Tensor]]:
        """(rendered prompt text with expanded spans, features per present modality)."""
        features = self._features_of(request)
        placeholders = "".join(spec.placeholder for spec in self.modalities if spec.name in features)
        rows = {name: tuple(t.shape) for name, t in features.items()}  # a video design counts tokens from the shape

        def with_spans(question: str) -> str:
            text = f"{question}\n{placeholders}" if placeholders else question
            return expand_placeholders(
                text, self.modalities, rows, self.model.config.use_modality_string_prefix, request.request_id
            )

        history = list(request.history)
        question = request.question
        if history:  # the features belong to the first turn of the conversation, as in training records
            history[0] = (with_spans(history[0][0]), history[0][1])
        else:
            question = with_spans(question)
        text = render_generation_prompt(self.template, self.tokenizer, history, question)
        if request.answer_prefix:
            text += (" " if text.endswith(":") else "") + request.answer_prefix
        return text, features

    # ------------------------------------------------------------------ generation
    def _generate_kwargs(self, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _encode(self, requests: Sequence[GenerationRequest]) -> tuple[dict[str, Tensor], dict[str, list], list[str]]:
        prompts, per_row = [], []
        for request in requests:
            text, features = self.build_prompt(request)
            prompts.append(text)
            per_row.append(features)
        previous_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            batch = self.tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=self._add_special_tokens(prompts)
            )
        finally:
            self.tokenizer.padding_side = previous_side
        device = self.device
        modality_features = {
            spec.name: [row.get(spec.name) for row in per_row]
            for spec in self.modalities if any(spec.name in row for row in per_row)
        }
        modality_features = {
            name: [None if t is None else t.to(device) for t in rows] for name, rows in modality_features.items()
        }
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        return inputs, modality_features, [r.request_id for r in requests]

    def _add_special_tokens(self, prompts: Sequence[str]) -> bool:
        # Chat templates write their own BOS; the Vicuna templates rely on the tokenizer adding it.
        if get_template(self.template).style == "chat":
            return False
        bos = self.tokenizer.bos_token
        return not (bos and all(p.startswith(bos) for p in prompts))

    def sampled_frames(self, request: GenerationRequest) -> list[int] | None:
        """The video frames a temporal sampler keeps for this request's prompt (ascending indices), or None when the
        model has no sampler or the request no video (the splice only; no generation)."""
        projectors = getattr(self.model, "projectors", None)
        if not hasattr(self.model, "sampled_frames") or projectors is None or \
                not any(getattr(p, "sampler", None) is not None for p in projectors.values()):
            return None
        inputs, modality_features, ids = self._encode([request])
        chosen = self.model.sampled_frames(inputs["input_ids"], modality_features, inputs["attention_mask"], ids)
        rows = next((rows for rows in chosen.values() if rows and rows[0]), None)
        return rows[0] if rows else None

    def prompt_lengths(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Prompt length in tokens of each request (modality spans included)."""
        lengths = []
        for request in requests:
            text, _ = self.build_prompt(request)
            lengths.append(len(self.tokenizer(text, add_special_tokens=self._add_special_tokens([text]))["input_ids"]))
        return lengths

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        sort_by_length: bool = True,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """Answers, one per request (greedy when temperature is 0), in batches of ``batch_size``.

        With ``sort_by_length`` the batches are made of requests of similar prompt length (longest first);
        the answers are returned in request order either way. ``generate`` stops a batch as soon as all of
        its rows have ended (transformers' own early exit), so similar rows also finish together more often.
        ``stop``: strings that end a row's generation once its text contains one (transformers'
        ``stop_strings``); the answer keeps the text up to and including the stop string (tokens past it in
        the same token are kept too), so a caller that needs the text before it cuts there.
        """
        requests = list(requests)
        kwargs = self._generate_kwargs(max_new_tokens, temperature, top_p)
        if stop:
            kwargs.update(stop_strings=[str(s) for s in stop], tokenizer=self.tokenizer)
        size = max(1, batch_size)
        sort = sort_by_length and len(requests) > size  # one batch: nothing to sort
        order = _length_order(self.prompt_lengths(requests), True) if sort else list(range(len(requests)))
        answers: list[str] = [""] * len(requests)
        for start in range(0, len(order), size):
            indices = order[start:start + size]
            inputs, modality_features, ids = self._encode([requests[i] for i in indices])
            new_tokens = self.model.generate(
                inputs["input_ids"], inputs["attention_mask"], modality_features=modality_features,
                sample_ids=ids, **kwargs,
            )
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for index, text in zip(indices, texts):
                answers[index] = text.strip()
        return answers

    # ------------------------------------------------------------------ option log-likelihoods
    def score_options(
        self,
        requests: Sequence[GenerationRequest],
        options: Sequence[Sequence[str]],
        batch_size: int = 8,
        sort_by_length: bool = True,
    ) -> list[OptionScores]:
        """Log-likelihood of each option as the answer to its request (multiple choice without generation).

        For request i, option j is scored as the continuation of the prompt ``generate`` would send (same
        template, same spliced modality features): the sum of the log-probabilities of its tokens, with the
        modality tokens left out of the distribution as generation suppresses them. A space separates the
        option from a prompt that does not end in whitespace. The option's tokens are those of the tokenizer
        on prompt + option after the prompt's own tokens (the option alone when the two do not split there).

        Each batch of ``batch_size`` requests runs the prompts once (left-padded, KV cache kept) and then all
        their options in one forward from that cache, one row per option. Values do not depend on the batch
        (the same to float rounding at any ``batch_size``); results are in request order.
        """
        requests = list(requests)
        if len(options) != len(requests):
            raise ValueError(f"score_options: {len(options)} option lists for {len(requests)} requests")
        if getattr(self.model, "is_encoder_decoder", False):  # options would be decoder targets, not continuations
            raise ValueError("option log-likelihoods are computed for causal LMs only; this model is an encoder-decoder "
                             "(use --mcq_scoring generate)")
        prepared = [self._prepare_scoring(request, list(opts)) for request, opts in zip(requests, options)]
        size = max(1, batch_size)
        order = _length_order([len(p.prompt_ids) for p in prepared], sort_by_length)
        results: list[OptionScores | None] = [None] * len(requests)
        for start in range(0, len(order), size):
            indices = order[start:start + size]
            sums = self._score_batch([prepared[i] for i in indices])
            for index, values in zip(indices, sums):
                opts = [str(o) for o in options[index]]
                results[index] = OptionScores(
                    options=opts, logliks=values, num_tokens=[len(ids) for ids in prepared[index].option_ids],
                    num_chars=[len(o) for o in opts],
                )
        return [r for r in results if r is not None]

    def _prepare_scoring(self, request: GenerationRequest, options: list[str]) -> _Scored:
        name = request.request_id or "<unnamed>"
        if not options:
            raise ValueError(f"request {name}: no options to score")
        text, features = self.build_prompt(request)
        add = self._add_special_tokens([text])
        prompt_ids = list(self.tokenizer(text, add_special_tokens=add)["input_ids"])
        separator = "" if not text or text[-1].isspace() else " "
        option_ids = []
        for option in options:
            continuation = separator + str(option)
            whole = list(self.tokenizer(text + continuation, add_special_tokens=add)["input_ids"])
            if len(whole) > len(prompt_ids) and whole[:len(prompt_ids)] == prompt_ids:
                ids = whole[len(prompt_ids):]
            else:  # the tokenizer merged across the boundary: keep the prompt's tokens, the option's own after
                ids = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
            if not ids or not str(option).strip():
                raise ValueError(f"request {name}: option {option!r} is empty; every option needs some text")
            option_ids.append(ids)
        return _Scored(prompt_ids, features, option_ids, request.request_id)

    def _llm_parameters(self) -> set[str]:
        """Names the base LLM's ``forward`` takes (``cache`` is ``past_key_values`` before transformers 5.2x)."""
        import inspect

        llm = getattr(self.model, "base_llm", None) or self.model.llm
        try:
            return set(inspect.signature(llm.forward).parameters)
        except (TypeError, ValueError):
            return set()

    @torch.no_grad()
    def _score_batch(self, items: list[_Scored]) -> list[list[float]]:
        """Sums of option-token log-probabilities for a batch of prepared requests (one list per request)."""
        device = self.device
        pad = self.tokenizer.pad_token_id
        width = max(len(item.prompt_ids) for item in items)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):  # left padding, as generation
            input_ids[row, width - len(item.prompt_ids):] = torch.tensor(item.prompt_ids)
            mask[row, width - len(item.prompt_ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        modality_features = {
            spec.name: [None if item.features.get(spec.name) is None else item.features[spec.name].to(device)
                        for item in items]
            for spec in self.modalities if any(spec.name in item.features for item in items)
        }
        embeds, _ = self.model.embed_inputs(input_ids, modality_features, [item.request_id for item in items],
                                            attention_mask=mask)  # a frontend's question context skips the padding
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        llm = self.model.llm
        parameters = self._llm_parameters()
        extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        cache_name = "cache" if "cache" in parameters else "past_key_values"
        out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        suppressed = list(self.model.modality_token_ids())
        first = self._log_probs(out.logits[:, -1], suppressed)  # (B, V): each option's first token

        owner = torch.tensor([row for row, item in enumerate(items) for _ in item.option_ids], device=device)
        options = [ids for item in items for ids in item.option_ids]
        longest = max(len(ids) for ids in options)
        option_ids = torch.full((len(options), longest), pad, dtype=torch.long)
        option_mask = torch.zeros((len(options), longest), dtype=torch.long)
        for row, ids in enumerate(options):  # right padding: a causal row never sees its padding
            option_ids[row, :len(ids)] = torch.tensor(ids)
            option_mask[row, :len(ids)] = 1
        option_ids, option_mask = option_ids.to(device), option_mask.to(device)
        totals = first[owner].gather(1, option_ids[:, :1]).squeeze(1)
        if longest > 1:
            cache = out.cache if "cache" in getattr(out, "__dataclass_fields__", {}) else out.past_key_values
            cache.reorder_cache(owner)  # one cache row per option: the prompt is not run again
            steps = option_ids[:, :-1]
            option_embeds, _ = self.model.embed_inputs(steps)
            attention = torch.cat([mask[owner], option_mask[:, :-1]], dim=1)
            step_positions = mask.sum(-1)[owner].unsqueeze(1) + torch.arange(longest - 1, device=device)
            later = llm(inputs_embeds=option_embeds, attention_mask=attention, position_ids=step_positions,
                        use_cache=True, **{cache_name: cache})
            log_probs = self._log_probs(later.logits, suppressed)  # (N, L - 1, V)
            picked = log_probs.gather(2, option_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            totals = totals + torch.where(option_mask[:, 1:].bool(), picked, torch.zeros_like(picked)).sum(-1)
        values = totals.double().cpu().tolist()
        out_lists, cursor = [], 0
        for item in items:
            out_lists.append(values[cursor:cursor + len(item.option_ids)])
            cursor += len(item.option_ids)
        return out_lists

    @staticmethod
    def _log_probs(logits: Tensor, suppressed: list[int]) -> Tensor:
        logits = logits.float()
        if suppressed:
            logits = logits.clone()
            logits[..., suppressed] = float("-inf")
        return torch.log_softmax(logits, dim=-1)

    def stream(
        self,
        request: GenerationRequest,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> Iterator[str]:
        """Yield the answer as it grows (each item is the whole text so far).

        Generation runs in a thread that stops as soon as the consumer stops: closing the generator
        (what gradio does when a user presses stop, closes the tab or a request is cancelled) sets a
        stop signal that the next decoding step obeys, and the close returns only once the thread has
        ended, so an abandoned answer never keeps the model busy in the background.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        inputs, modality_features, ids = self._encode([request])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True, timeout=600)
        stop = threading.Event()
        kwargs = self._generate_kwargs(max_new_tokens, temperature, top_p)
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop)])
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(
                    inputs["input_ids"], inputs["attention_mask"], modality_features=modality_features,
                    sample_ids=ids, streamer=streamer, **kwargs,
                )
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(err)
                streamer.end()

        thread = threading.Thread(
            target=run, daemon=True, name=f"llavidal-stream-{request.request_id or 'request'}",
        )
        thread.start()
        finished = False
        try:
            text = ""
            for piece in streamer:
                text += piece
                yield text.strip()
            finished = True
        finally:
            # Also reached by GeneratorExit (the consumer closed us) and by an error in the consumer's
            # thread: either way the generation must not outlive the request.
            stop.set()
            thread.join(STOP_JOIN_TIMEOUT_S)
            if thread.is_alive():
                logger.warning(
                    "request %s: generation did not stop within %.0f s of its cancellation",
                    request.request_id or "<unnamed>", STOP_JOIN_TIMEOUT_S,
                )
        if finished and errors:
            raise errors[0]


class _StopWhenSet(StoppingCriteria):
    """Stop every row once ``event`` is set; ``generate`` checks it after each new token, so a set event
    ends generation within one decoding step."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
