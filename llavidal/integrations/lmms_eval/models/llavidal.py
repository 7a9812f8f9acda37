"""lmms-eval model ``llavidal``: :class:`~llavidal.serve.engine.InferenceEngine` behind lmms-eval's ``lmms`` API.

``--model_args`` (comma-separated ``key=value``, as lmms-eval passes them to ``__init__``):

- ``pretrained``: the weights folder written by training (or upstream weights, with ``base_model``);
- ``base_model``, ``device``, ``dtype``;
- ``video_features`` / ``pose_features`` / ``object_features``: pre-extracted feature folders (``{stem}.*``,
  ``{stem}_pose.*``, ``{stem}_object.*``); a modality without a folder is extracted from the video by the
  extractor its recorded recipe describes (:func:`llavidal.features.extractor.extractor_from_manifest`);
- ``video_dir``: where a task's bare video file names are found; ``world_dir``: a world folder whose
  ``skeletons/`` and ``tracks/`` give pose and objects for its clips (default: the parent of ``video_dir``
  when it is a world's ``videos/``);
- ``batch_size``, ``max_new_tokens`` (default for tasks that do not say).

Requests, as lmms-eval's task layer builds them for a simple model: ``generate_until`` gets
``(context, generation_kwargs, doc_to_visual, doc_id, task, split)`` and ``loglikelihood`` gets
``(context, continuation, doc_to_visual, doc_id, task, split)``; ``doc_to_visual(doc)`` gives the video
(a path or a file name). ``loglikelihood`` runs one forward per option and returns lmms-eval's
``(loss, is_greedy)``: the mean negative log-likelihood of the continuation's tokens (lmms-eval's
``multiple_choice`` scorer takes the option with the smallest value, as for its built-in models).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from llavidal.serve.engine import GenerationRequest, InferenceEngine

logger = logging.getLogger("llavidal.lmms_eval")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class Llavidal(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str = "",
        base_model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        video_features: str | None = None,
        pose_features: str | None = None,
        object_features: str | None = None,
        video_dir: str | None = None,
        world_dir: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 256,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if not pretrained:
            raise ValueError("llavidal: pass the weights folder as --model_args pretrained=DIR")
        if unknown:
            logger.warning("llavidal: model_args %s are not used", sorted(unknown))
        self.weights = Path(pretrained).expanduser()
        self.engine = InferenceEngine.from_pretrained(self.weights, base_model=base_model, device=device, dtype=dtype)
        self.device_name = device
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.video_dir = Path(video_dir).expanduser() if video_dir else None
        if world_dir is None and self.video_dir is not None and self.video_dir.name == "videos":
            world_dir = str(self.video_dir.parent)
        self.world_dir = Path(world_dir).expanduser() if world_dir else None
        from llavidal.data.feature_store import FeatureFolder

        given = {"video": video_features, "pose": pose_features, "object": object_features}
        self.folders = {name: FeatureFolder(folder, modality=name) for name, folder in given.items()
                        if folder and name in self.engine.modalities}
        self._extractors: dict[str, Any] | None = None

    # ------------------------------------------------------------------ features
    def _extractors_for_videos(self) -> dict[str, Any]:
        """Extractors of the modalities without a feature folder, rebuilt from the weights' recipes (once)."""
        if self._extractors is None:
            from llavidal.features.extractor import extractor_from_manifest, unrecorded_manifest
            from llavidal.model.builder import recorded_manifests

            manifests = recorded_manifests(self.weights)
            self._extractors = {}
            for spec in self.engine.modalities:
                if spec.name in self.folders:
                    continue
                manifest = manifests.get(spec.name) or unrecorded_manifest(spec)
                self._extractors[spec.name] = extractor_from_manifest(
                    manifest, base_dir=self.weights, device=self.device_name,
                )
        return self._extractors

    def _video_path(self, visual: Any) -> tuple[str, Path | None]:
        """(stem, video file or None) of what ``doc_to_visual`` gave."""
        if isinstance(visual, (list, tuple)):
            if len(visual) != 1:
                raise ValueError(f"llavidal: expected one video per request, got {len(visual)}: {visual!r}")
            visual = visual[0]
        if isinstance(visual, dict):  # {"video": path} / {"path": path}
            visual = visual.get("video") or visual.get("path")
        if not isinstance(visual, (str, Path)):
            raise ValueError(f"llavidal: doc_to_visual must give a video path or file name, got {type(visual).__name__}")
        path = Path(visual).expanduser()
        stem = path.name
        for suffix in VIDEO_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        candidates = [path] + ([self.video_dir / path.name] if self.video_dir else [])
        return stem, next((c for c in candidates if c.is_file()), None)

    def features_for(self, visual: Any, request_id: str = "") -> dict[str, np.ndarray]:
        """Modality -> features of one request's video: feature folders first, else the recorded extractors."""
        stem, video = self._video_path(visual)
        features: dict[str, np.ndarray] = {}
        for name, folder in self.folders.items():
            suffix = self.engine.modalities[name].file_suffix
            found = folder.get(f"{stem}{suffix}", record_id=request_id)
            if found is None and suffix:
                found = folder.get(stem, record_id=request_id)
            if found is not None:
                features[name] = np.asarray(found)
        missing = [spec.name for spec in self.engine.modalities if spec.name not in features]
        if missing and not self.folders.keys() >= set(missing):
            extractors = {name: e for name, e in self._extractors_for_videos().items() if name in missing}
            if extractors and video is None:
                where = f" or in video_dir {self.video_dir}" if self.video_dir else "; pass video_dir=FOLDER"
                raise FileNotFoundError(f"llavidal: request {request_id}: video {visual!r} not found{where}")
            from llavidal.features.extractor import Clip

            clip = Clip(video=video, **self._world_files(stem))
            for name, extractor in extractors.items():
                extracted = extractor.extract(clip)
                if extracted.features is not None:
                    features[name] = np.asarray(extracted.features)
                else:
                    logger.info("request %s: no %s features (%s)", request_id, name, extracted.detail)
        if "video" in self.engine.modalities and "video" not in features:
            raise FileNotFoundError(f"llavidal: request {request_id}: no video features for {visual!r}")
        return features

    def _world_files(self, stem: str) -> dict[str, Path]:
        if self.world_dir is None:
            return {}
        found = {"skeleton": self.world_dir / "skeletons" / f"{stem}.skeleton",
                 "tracks": self.world_dir / "tracks" / f"{stem}.json"}
        return {kind: path for kind, path in found.items() if path.is_file()}

    def _request(self, context: str, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> GenerationRequest:
        doc = self.task_dict[task][split][doc_id]
        request_id = f"{task}:{doc_id}"
        visual = doc_to_visual(doc) if callable(doc_to_visual) else doc_to_visual
        return GenerationRequest(question=context, features=self.features_for(visual, request_id),
                                 request_id=request_id)

    # ------------------------------------------------------------------ lmms API
    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        answers: list[str] = []
        pending: list[tuple[GenerationRequest, dict]] = []

        def flush() -> None:
            if not pending:
                return
            kwargs = pending[0][1]
            texts = self.engine.generate(
                [r for r, _ in pending], max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)),
                temperature=float(kwargs.get("temperature", 0.0) or 0.0), top_p=float(kwargs.get("top_p", 1.0) or 1.0),
                batch_size=self.batch_size,
            )
            for (_, gen_kwargs), text in zip(pending, texts):
                answers.append(_cut_at_stops(text, gen_kwargs.get("until")))
            pending.clear()

        for instance in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = instance.args
            gen_kwargs = dict(gen_kwargs or {})
            if pending and _sampling(pending[0][1]) != _sampling(gen_kwargs) or len(pending) >= self.batch_size:
                flush()
            pending.append((self._request(context, doc_to_visual, doc_id, task, split), gen_kwargs))
        flush()
        return answers

    def loglikelihood(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        results = []
        for instance in requests:
            context, continuation, doc_to_visual, doc_id, task, split = instance.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            request = self._request(context, doc_to_visual, doc_id, task, split)
            results.append(self.continuation_loss(request, str(continuation)))
        return [_survives_unwrapping(pair) for pair in results]

    @torch.inference_mode()
    def continuation_loss(self, request: GenerationRequest, continuation: str) -> tuple[float, bool]:
        """(mean negative log-likelihood of ``continuation``'s tokens after the request's prompt, whether greedy
        decoding would produce exactly those tokens)."""
        engine = self.engine
        prompt, features = engine.build_prompt(request)
        special = engine._add_special_tokens([prompt])
        context_ids = engine.tokenizer(prompt, add_special_tokens=special)["input_ids"]
        full_ids = engine.tokenizer(prompt + continuation, add_special_tokens=special)["input_ids"]
        if len(full_ids) <= len(context_ids):
            raise ValueError(f"request {request.request_id}: the continuation {continuation!r} has no tokens")
        device = engine.device
        input_ids = torch.tensor([full_ids], device=device)  # (1, T)
        modality_features = {name: [tensor.to(device)] for name, tensor in features.items()}
        output = engine.model(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), modality_features=modality_features,
            sample_ids=[request.request_id],
        )
        logits = output.logits[0, len(context_ids) - 1: -1].float()  # (C, V): the positions predicting the continuation
        targets = input_ids[0, len(context_ids):]  # (C,)
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
        greedy = bool((logits.argmax(dim=-1) == targets).all())
        return float(-log_probs.mean()), greedy

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise NotImplementedError("llavidal: multi-round generation is not supported; use generate_until tasks")


def _survives_unwrapping(pair: tuple[float, bool]) -> Any:
    """``pair`` as the evaluator must receive it. lmms-eval 0.7.x passes every model output through
    ``unwrap_generation_output``, which turns a ``(loss, is_greedy)`` tuple into its string (its
    ``multiple_choice`` scoring then fails for every model); a ``GenerationResult`` is passed on untouched,
    so the pair travels in one where unwrapping would break it."""
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:  # older lmms-eval: results are used as returned
        return pair
    if unwrap_generation_output(pair)[0] == pair:
        return pair
    return GenerationResult(text=pair)  # type: ignore[arg-type]


def _sampling(kwargs: dict) -> tuple:
    return (kwargs.get("max_new_tokens"), kwargs.get("temperature"), kwargs.get("top_p"))


def _cut_at_stops(text: str, until: Any) -> str:
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text.strip()
