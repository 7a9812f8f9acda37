"""``LlavidalProcessor``: a video file (or feature files) plus text -> the inputs of ``LlavidalForCausalLM``.

    processor = LlavidalProcessor.from_pretrained("exported/llavidal")     # tokenizer + processor_config.json
    inputs = processor("What is the person doing?", videos="clip.mp4")     # features made on the fly
    inputs = processor("What is the person doing?", features={"video": "clip.safetensors", "pose": "clip_pose.npy"})
    new_tokens = model.generate(**inputs, max_new_tokens=64)
    print(processor.batch_decode(new_tokens, skip_special_tokens=True))

Features of a video are made by the extractors that made training's features, rebuilt from the feature
manifests the weights record (:func:`llavidal.features.extractor.extractor_from_manifest`). The prompt is built
as :class:`llavidal.serve.engine.InferenceEngine` builds it: the question, a newline, the placeholders of the
modalities present (registry order), each expanded to ``start + k x patch + end``
(:func:`llavidal.model.modality.expand_placeholders`), rendered with the weights' conversation template.
Needs the ``llavidal`` package (the model files beside the weights do not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROCESSOR_CONFIG_NAME = "processor_config.json"


class LlavidalProcessor:
    """Tokenizer + the modality registry + the feature extractors (built on first use from the manifests)."""

    def __init__(
        self,
        tokenizer: Any,
        modalities: list[dict],
        feature_manifests: dict[str, dict] | None = None,
        template: str = "v1",
        use_modality_string_prefix: bool = False,
        base_dir: str | os.PathLike | None = None,
        device: str | None = None,
    ) -> None:
        from llavidal.model.modality import ModalityRegistry

        self.tokenizer = tokenizer
        self.registry = ModalityRegistry.from_list(modalities)
        self.feature_manifests = dict(feature_manifests or {})
        self.template = template
        self.use_modality_string_prefix = bool(use_modality_string_prefix)
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.device = device
        self._extractors: dict[str, Any] | None = None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "processor_class": type(self).__name__,
            "modalities": self.registry.to_list(),
            "feature_manifests": self.feature_manifests,
            "template": self.template,
            "use_modality_string_prefix": self.use_modality_string_prefix,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **tokenizer_kwargs: Any) -> Path:
        """Write ``processor_config.json`` (recipe paths relative to the folder) and the tokenizer."""
        from llavidal.data.feature_store import FeatureManifest
        from llavidal.features.extractor import absolute_manifest, relative_manifest
        from llavidal.utils.io import atomic_write_text

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        manifests = {}
        for name, manifest in self.feature_manifests.items():
            parsed = FeatureManifest.from_dict(manifest)
            if self.base_dir is not None:
                parsed = absolute_manifest(parsed, self.base_dir)
            manifests[name] = relative_manifest(parsed, folder).to_dict()
        data["feature_manifests"] = manifests
        atomic_write_text(folder / PROCESSOR_CONFIG_NAME, json.dumps(data, indent=2) + "\n")
        self.tokenizer.save_pretrained(folder, **tokenizer_kwargs)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | None = None, **tokenizer_kwargs: Any) -> LlavidalProcessor:
        """From a folder written by :meth:`save_pretrained` (``llavidal export`` writes one), or from a training
        output folder (``llavidal_config.json`` + a tokenizer of the base model)."""
        folder = Path(folder)
        config_file = folder / PROCESSOR_CONFIG_NAME
        if config_file.is_file():
            from transformers import AutoTokenizer

            try:
                data = json.loads(config_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{config_file}: not valid JSON ({err})") from err
            tokenizer = AutoTokenizer.from_pretrained(folder, **tokenizer_kwargs)
            return cls(tokenizer, data["modalities"], data.get("feature_manifests"), data.get("template", "v1"),
                       data.get("use_modality_string_prefix", False), base_dir=folder, device=device)
        from llavidal.model.builder import llavidal_weights_dir, load_tokenizer
        from llavidal.model.config import CONFIG_NAME, LlavidalConfig

        weights = llavidal_weights_dir(folder)
        if weights is None:
            raise FileNotFoundError(f"{folder}: neither {PROCESSOR_CONFIG_NAME} nor {CONFIG_NAME}; pass a folder written "
                                    "by `llavidal export` or by training")
        config = LlavidalConfig.from_json_file(weights)
        tokenizer = load_tokenizer(weights if (weights / "tokenizer_config.json").is_file() else config.base_model)
        missing = [t for t in config.new_tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        manifests = {name: m.to_dict() for name, m in config.recorded_manifests(weights).items()}
        return cls(tokenizer, config.modalities, manifests, config.template, config.use_modality_string_prefix,
                   base_dir=None, device=device)

    # -------------------------------------------------------------- features
    @property
    def extractors(self) -> dict[str, Any]:
        """Modality -> extractor rebuilt from the recorded recipe (built on first use)."""
        if self._extractors is None:
            from llavidal.data.feature_store import FeatureManifest
            from llavidal.features.extractor import (
                absolute_manifest,
                extractor_from_manifest,
                unrecorded_manifest,
            )

            extractors = {}
            for spec in self.registry:
                data = self.feature_manifests.get(spec.name)
                if data is None:
                    manifest = unrecorded_manifest(spec)
                else:
                    manifest = FeatureManifest.from_dict(data)
                    if self.base_dir is not None:
                        manifest = absolute_manifest(manifest, self.base_dir)
                extractors[spec.name] = extractor_from_manifest(manifest, base_dir=self.base_dir, device=self.device)
            self._extractors = extractors
        return self._extractors

    def extract(self, video: str | os.PathLike, skeleton: str | os.PathLike | None = None,
                tracks: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
        """Features of every modality the extractors can make for ``video`` (modalities they cannot make, e.g.
        pose without a skeleton or pose estimator, are left out)."""
        from llavidal.features.extractor import Clip

        clip = Clip(video=Path(video), skeleton=Path(skeleton) if skeleton else None,
                    tracks=Path(tracks) if tracks else None)
        features = {}
        for name, extractor in self.extractors.items():
            extracted = extractor.extract(clip)
            if extracted.features is not None:
                features[name] = np.asarray(extracted.features)
        return features

    @staticmethod
    def _read(value: Any) -> np.ndarray:
        if isinstance(value, (str, os.PathLike)):
            from llavidal.data.feature_store import load_feature_file

            return np.asarray(load_feature_file(value))
        if hasattr(value, "detach"):
            return value.detach().cpu().float().numpy()
        return np.asarray(value)

    # -------------------------------------------------------------- text
    def prompt(self, question: str, features: dict[str, Any], history: Sequence[tuple[str, str]] = (),
               render: bool = True) -> str:
        """The prompt text for ``question`` about a sample with ``features`` (modality -> (k, D) array)."""
        from llavidal.data.templates import inference_template, render_generation_prompt
        from llavidal.model.modality import expand_placeholders

        rows = {name: tuple(f.shape) for name, f in features.items()}  # a video design counts tokens from the shape
        placeholders = "".join(spec.placeholder for spec in self.registry if spec.name in features)

        def with_spans(text: str) -> str:
            if placeholders and not any(spec.placeholder in text for spec in self.registry):
                text = f"{text}\n{placeholders}"
            return expand_placeholders(text, self.registry, rows, self.use_modality_string_prefix)

        history = list(history)
        if history:  # the features belong to the first turn, as in training records
            history[0] = (with_spans(history[0][0]), history[0][1])
        else:
            question = with_spans(question)
        if not render:
            return question
        return render_generation_prompt(inference_template(self.template), self.tokenizer, history, question)

    def __call__(
        self,
        text: str | Sequence[str],
        videos: str | os.PathLike | Sequence[str | os.PathLike | None] | None = None,
        features: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        history: Sequence[tuple[str, str]] | None = None,
        render: bool = True,
        return_tensors: str = "pt",
    ) -> Any:
        """Model inputs for one question (a string) or a batch (a list), left-padded for ``generate``.

        ``videos``: a video file per row (features made by the recorded extractors); ``features``: per row, a
        dict modality -> features (an array/tensor or a feature file: .safetensors, .npy, .pkl). With
        ``render=True`` each text is a question and gets the conversation template; else it is the raw
        prompt (placeholders such as ``<video>`` are expanded; missing ones are appended). Returns a
        ``BatchFeature`` with ``input_ids``, ``attention_mask`` and ``modality_features``.
        """
        import torch
        from transformers import BatchFeature

        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if videos is None or isinstance(videos, (str, os.PathLike)):
            videos = [videos] * len(texts) if videos is None or single else [videos]
        if features is None or isinstance(features, dict):
            features = [features] * len(texts) if single or features is None else [features]
        if not len(texts) == len(videos) == len(features):
            raise ValueError(f"{len(texts)} texts, {len(videos)} videos and {len(features)} feature sets: give one each")
        prompts, per_row = [], []
        for question, video, given in zip(texts, videos, features, strict=True):
            row = self.extract(video) if video is not None else {}
            for name, value in (given or {}).items():
                if value is not None:
                    if name not in self.registry:
                        raise ValueError(f"modality {name!r} is not one of this model's {self.registry.names()}")
                    row[name] = self._read(value)
            row = {name: np.asarray(f, dtype=np.float32) if self.registry[name].design
                   else np.asarray(f, dtype=np.float32).reshape(-1, f.shape[-1]) for name, f in row.items()}
            prompts.append(self.prompt(question, row, history or (), render=render))
            per_row.append(row)
        from llavidal.data.templates import get_template

        add_special = not (render and get_template(self.template).style == "chat")
        bos = self.tokenizer.bos_token
        if add_special and bos and all(p.startswith(bos) for p in prompts):
            add_special = False
        previous = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            batch = self.tokenizer(prompts, return_tensors=return_tensors, padding=True, add_special_tokens=add_special)
        finally:
            self.tokenizer.padding_side = previous
        modality_features = {
            spec.name: [torch.from_numpy(row[spec.name]) if spec.name in row else None for row in per_row]
            for spec in self.registry if any(spec.name in row for row in per_row)
        }
        return BatchFeature({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                             "modality_features": modality_features})

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)
