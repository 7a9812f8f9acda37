"""The one inference engine: (features, question, history) -> prompt -> generated text.

Used by evaluation, the demo and any server::

    engine = InferenceEngine.from_pretrained("runs/stage3", base_model="path/to/llm")
    engine = InferenceEngine.from_pretrained("mm_projector.bin", base_model="LLaVA-7B-Lightening-v1-1")  # upstream
    answers = engine.generate([GenerationRequest("What is the person doing?", {"video": video_features})])
    for text in engine.stream(request):  # growing text, for the demo
        ...

The prompt is the question, a newline, and the placeholders of the modalities present in
``features`` (registry order), expanded to their token spans and rendered with the conversation
template the weights were trained with (``llavidal_v1`` for the upstream ``v1`` training template).
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

from llavidal.data.templates import render_generation_prompt
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


def _inference_template(template: str) -> str:
    # Upstream trains with v1 and answers with the llavidal_v1 system prompt.
    return "llavidal_v1" if template == "v1" else template


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
        self.template = template or _inference_template(model.config.template)
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
        from llavidal.model.builder import load_pretrained

        model, tokenizer = load_pretrained(
            weights_dir, base_model=base_model, torch_dtype=dtype, device=device,
            attn_implementation=attn_implementation,
        )
        return cls(model, tokenizer, template=template)

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
            if tensor.dim() == 3:  # objects (n, group, D) -> (n * group, D)
                tensor = tensor.reshape(-1, tensor.shape[-1])
            features[name] = tensor.float()
        return features

    def build_prompt(self, request: GenerationRequest) -> tuple[str, dict[str, Tensor]]:
        """(rendered prompt text with expanded spans, features per present modality)."""
        features = self._features_of(request)
        placeholders = "".join(spec.placeholder for spec in self.modalities if spec.name in features)
        rows = {name: int(t.shape[0]) for name, t in features.items()}

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
        if self.template == "chat":
            return False
        bos = self.tokenizer.bos_token
        return not (bos and all(p.startswith(bos) for p in prompts))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
    ) -> list[str]:
        """Answers, one per request (greedy when temperature is 0), in batches of ``batch_size``."""
        answers: list[str] = []
        kwargs = self._generate_kwargs(max_new_tokens, temperature, top_p)
        for start in range(0, len(requests), max(1, batch_size)):
            chunk = list(requests[start:start + batch_size])
            inputs, modality_features, ids = self._encode(chunk)
            new_tokens = self.model.generate(
                inputs["input_ids"], inputs["attention_mask"], modality_features=modality_features,
                sample_ids=ids, **kwargs,
            )
            answers.extend(
                text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            )
        return answers

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
