"""On-the-fly features for the demo, made by the extractors that made training's features.

The weights record how training's features were made (the feature manifests' recipes); every modality's
extractor is rebuilt from its recipe (:func:`llavidal.features.extractor.extractor_from_manifest`),
checked once against the weights' projectors, and run on each uploaded video. A video from a world folder
(an example) brings its own skeleton and object-tracks files; other videos use MediaPipe and a detector
when available. An image (jpg, png, webp) is answered as a 1-frame video: the video extractor encodes and pools
it exactly as ``llavidal extract video`` does a folder of images (:mod:`llavidal.features.images`); the other
modalities are not used for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from llavidal.demo.video_io import ImageInfo, VideoInfo, VideoLimits, probe_image, probe_video

if TYPE_CHECKING:
    from llavidal.model.modality import ModalityRegistry

logger = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


class IncompatibleProjectorError(ValueError):
    """The weights' projectors expect features the demo's extractors do not produce."""


class ExtractionError(RuntimeError):
    """Features could not be computed for a video; the message is meant for the user."""


@dataclass
class ModalityOutcome:
    """What happened to one modality for one video (shown in the demo's panel)."""

    used: bool
    detail: str


@dataclass
class DemoFeatures:
    video: VideoInfo | ImageInfo
    """What the upload is (an image: :class:`ImageInfo`)."""
    features: dict[str, np.ndarray]
    """modality name -> features for the inference engine (only modalities that were found)."""
    outcomes: dict[str, ModalityOutcome] = field(default_factory=dict)
    skeleton_image: np.ndarray | None = None
    """uint8 RGB frame with the extracted skeleton drawn over it, when a skeleton was found."""


class ExampleIndex:
    """Finds the world files of a world folder's clips in an uploaded or example video.

    Every clip the index was given is a candidate (all of a world's ``videos/``, held-out ones too, not only
    the gallery's few): an upload matches a clip with the same bytes, whatever gradio or the user named the
    copy (candidates are narrowed by file size, then by name, before any bytes are compared)."""

    def __init__(self, videos: Sequence[Path] = ()):
        self._by_size: dict[int, list[Path]] = {}
        for video in videos:
            self._by_size.setdefault(video.stat().st_size, []).append(video)

    def __len__(self) -> int:
        return sum(len(videos) for videos in self._by_size.values())

    def match(self, path: Path) -> Path | None:
        """The indexed clip whose bytes equal ``path``'s, or None."""
        candidates = self._by_size.get(path.stat().st_size, [])
        candidates = sorted(candidates, key=lambda video: video.name != path.name)  # same name first
        content: bytes | None = None
        for video in candidates:
            if path.resolve() == video.resolve():
                return video
            content = path.read_bytes() if content is None else content
            if content == video.read_bytes():
                return video
        return None

    def clip(self, path: Path, num_frames: int | None = None) -> Any:
        from llavidal.features.extractor import Clip

        video = self.match(path)
        if video is None:
            return Clip(video=path, num_frames=num_frames)
        world = video.parent.parent if video.parent.name == "videos" else None
        found = {kind: world / folder / f"{video.stem}{suffix}" if world else None
                 for kind, folder, suffix in (("skeleton", "skeletons", ".skeleton"), ("tracks", "tracks", ".json"))}
        return Clip(video=path, num_frames=num_frames,
                    **{kind: p for kind, p in found.items() if p is not None and p.is_file()})


class DemoFeaturePipeline:
    """Every modality of one video, made the way training's features were made."""

    def __init__(self, extractors: dict[str, Any], limits: VideoLimits, examples: ExampleIndex | None = None):
        self.extractors, self.limits, self.examples = extractors, limits, examples or ExampleIndex()

    @classmethod
    def for_weights(cls, weights_dir: str | os.PathLike, registry: "ModalityRegistry", limits: VideoLimits | None = None,
                    options: dict[str, dict[str, Any]] | None = None, device: str | None = None,
                    examples: Sequence[Path] = ()) -> "DemoFeaturePipeline":
        """Extractors for the weights in ``weights_dir``; ``options[modality]`` overrides the recorded encoder
        (``encoder``) or adds a detector (``detector``). Refused with :class:`IncompatibleProjectorError` when
        what they make does not fit the weights' projectors."""
        from llavidal.features.decode import VideoDecodeError  # noqa: F401  (fail early without the extras)
        from llavidal.features.extractor import extractor_from_manifest, unrecorded_manifest
        from llavidal.model.builder import recorded_manifests

        weights_dir = Path(weights_dir)
        manifests = recorded_manifests(weights_dir)  # none for upstream weights: the upstream recipe
        extractors = {}
        for spec in registry:
            manifest = manifests.get(spec.name)
            if manifest is None:
                logger.warning("%s: no %s feature manifest recorded; assuming the upstream recipe", weights_dir, spec.name)
                manifest = unrecorded_manifest(spec)
            given = {k: v for k, v in (options or {}).get(spec.name, {}).items() if v}
            try:
                extractor = extractor_from_manifest(manifest, base_dir=weights_dir, device=device, **given)
            except (FileNotFoundError, ValueError, ImportError) as err:
                raise IncompatibleProjectorError(f"{spec.name} extractor: {err}") from None
            if not extractor.weights_match():
                logger.warning("the %s encoder is not the one training's features were made with (%s): weight hashes "
                               "differ, so answers may be poor", spec.name, extractor.recipe.model_id)
            *tokens, dim = extractor.output_shape()
            want = (spec.group_size if spec.variable else spec.num_tokens, spec.feature_dim)
            if (tokens[-1], dim) != want:
                unit = " per object" if spec.variable else ""
                raise IncompatibleProjectorError(
                    f"the {spec.name} projector expects {want[0]} tokens{unit} of {want[1]}-d features, but "
                    f"{extractor.describe()} gives {tokens[-1]} tokens{unit} of {dim}-d. Pass the encoder training "
                    "used, or weights trained on this encoder's features."
                )
            extractors[spec.name] = extractor
        return cls(extractors, limits or VideoLimits(), ExampleIndex(examples))

    def describe(self) -> str:
        return "Extractors: " + "; ".join(extractor.describe() for extractor in self.extractors.values())

    def extract(self, video_path: str | os.PathLike, progress: Progress | None = None) -> DemoFeatures:
        """Features of every modality the weights use; raises VideoRejected / ExtractionError for the user."""
        from llavidal.demo.skeleton_draw import draw_skeleton_frame
        from llavidal.features.decode import VideoDecodeError

        progress = progress or (lambda fraction, step: logger.info("%3.0f%% %s", fraction * 100, step))
        path = Path(video_path)
        from llavidal.features.images import is_image

        if is_image(path):
            return self.extract_image(path, progress)
        progress(0.02, "Checking the video")
        info = probe_video(path, self.limits)
        clip = self.examples.clip(path, info.num_frames)
        result = DemoFeatures(video=info, features={})
        for index, (name, extractor) in enumerate(self.extractors.items()):
            progress(0.1 + 0.85 * index / len(self.extractors), f"{name.capitalize()}: extracting features")
            try:
                extracted = extractor.extract(clip)
            except VideoDecodeError as err:
                raise ExtractionError(f"{path.name}: the video could not be decoded ({err}). Re-encode it as MP4 "
                                      "(H.264).") from None
            if extracted.features is not None:
                result.features[name] = extracted.features
            result.outcomes[name] = ModalityOutcome(extracted.features is not None, extracted.detail)
            if extracted.artifacts.get("skeleton") is not None and extracted.features is not None:
                result.skeleton_image = draw_skeleton_frame(path, extracted.artifacts["skeleton"])
        progress(1.0, "Done")
        return result

    def extract_image(self, image_path: str | os.PathLike, progress: Progress | None = None) -> DemoFeatures:
        """An image as a 1-frame video: video features only (the other modalities are not used for it)."""
        from llavidal.features.images import ImageDecodeError, image_features

        progress = progress or (lambda fraction, step: logger.info("%3.0f%% %s", fraction * 100, step))
        path = Path(image_path)
        progress(0.02, "Checking the image")
        info = probe_image(path, self.limits)
        result = DemoFeatures(video=info, features={})
        for name, extractor in self.extractors.items():
            if name != "video":
                result.outcomes[name] = ModalityOutcome(False, f"an image has no {name} track (images use video only)")
                continue
            if getattr(extractor, "per_layer", False):
                raise ExtractionError(f"{path.name}: these weights read per-layer video features, which images do not "
                                      "have; upload a video")
            progress(0.3, "Video: extracting features of the image (1 frame)")
            try:
                features = image_features(extractor, path)
            except ImageDecodeError as err:
                raise ExtractionError(f"{path.name}: the image could not be decoded ({err}).") from None
            result.features[name] = features
            shape = " x ".join(str(s) for s in features.shape[:-1])
            result.outcomes[name] = ModalityOutcome(
                True, f"{shape} tokens x {features.shape[-1]}-d from {extractor.encoder.model_id} (an image: 1 frame)")
        if "video" not in self.extractors:
            raise ExtractionError(f"{path.name}: these weights have no video projector, through which images are "
                                  "answered; upload a video")
        progress(1.0, "Done")
        return result
