"""On-the-fly features for the demo, made by the same extractors as training.

The weights folder records how training's features were made (the feature manifests saved with the
weights: vision encoder, layer, frames, pooling; pose encoder; object recipe). The demo loads those
extractors, checks at start that what they produce has the feature dims and token counts the weights'
projectors expect (refusing a mismatch with a message that says what to pass), and for each video:

- video: decode + vision encoder + spatio-temporal pooling, as ``llavidal extract video``;
- pose: the skeleton of the world clip the video came from (its ``skeletons/{clip}.skeleton``), else
  3D pose from mediapipe when installed, else "not detected"; then the pose encoder, as
  ``llavidal extract pose``;
- objects: the clip's ``tracks/{clip}.json`` when the video comes from a world folder, else the
  detector when one is available; then crops through the vision encoder, as ``llavidal extract object``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from llavidal.demo.video_io import VideoInfo, VideoLimits, probe_video

if TYPE_CHECKING:
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.model.modality import ModalityRegistry, ModalitySpec

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
    video: VideoInfo
    features: dict[str, np.ndarray]
    """modality name -> features for the inference engine (only modalities that were found)."""
    outcomes: dict[str, ModalityOutcome] = field(default_factory=dict)
    skeleton_image: np.ndarray | None = None
    """uint8 RGB frame with the extracted skeleton drawn over it, when a skeleton was found."""


def _no_progress(fraction: float, step: str) -> None:
    logger.info("%3.0f%% %s", fraction * 100, step)


# ---------------------------------------------------------------------------------------------------
# What training recorded


def recorded_manifests(extra: dict[str, Any]) -> dict[str, "FeatureManifest"]:
    """Feature manifests of training, from the weights' ``llavidal_config.json`` ``extra``.

    Preferred: ``extra["feature_manifests"]`` (modality -> manifest dict, self-contained). Else the
    ``manifest.json`` of each folder in ``extra["feature_folders"]``, when that folder is still on this
    machine.
    """
    from llavidal.data.feature_store import FeatureManifest

    manifests: dict[str, FeatureManifest] = {}
    for name, data in (extra.get("feature_manifests") or {}).items():
        if isinstance(data, dict):
            manifests[name] = FeatureManifest.from_dict(data)
    for name, folder in (extra.get("feature_folders") or {}).items():
        if name in manifests or not folder:
            continue
        try:
            manifest = FeatureManifest.load(folder) if Path(folder).is_dir() else None
        except ValueError as err:  # an unreadable manifest: say so, carry on as if none were recorded
            logger.warning("%s", err)
            manifest = None
        if manifest is not None:
            manifests[name] = manifest
    return manifests


# ---------------------------------------------------------------------------------------------------
# Video


@dataclass
class VideoStep:
    """Decode + vision encoder + spatio-temporal pooling, with training's settings."""

    encoder: Any  # llavidal.features.encoders.VisionEncoder
    num_frames: int
    pooling: Any  # llavidal.features.pooling.PoolingConfig
    decoder: str = "pyav"
    feature_dtype: str = "float32"
    origin: str = ""
    """Where the settings came from (a manifest, or defaults), for the page."""

    @property
    def num_tokens(self) -> int:
        return int(self.pooling.num_tokens(self.encoder.num_patches))

    def describe(self) -> str:
        return (f"video: {self.encoder.name} encoder `{self.encoder.model_id}` ({self.encoder.feature_dim}-d), "
                f"{self.num_frames} frames, {self.num_tokens} tokens ({self.origin})")

    def run(self, video_path: str | os.PathLike) -> np.ndarray:
        from llavidal.features.decode import VideoDecodeError
        from llavidal.features.video import video_features_for_file

        try:
            features = video_features_for_file(
                video_path, self.encoder, num_frames=self.num_frames, pooling=self.pooling, decoder=self.decoder,
            )  # (T + S, D)
        except VideoDecodeError as err:
            raise ExtractionError(
                f"{Path(video_path).name}: the video could not be decoded ({err}). Re-encode it as MP4 (H.264)."
            ) from None
        # Training read features stored in this dtype; round the same way so the model sees the same values.
        return features.astype(self.feature_dtype).astype(np.float32)


def _pooling_from_manifest(manifest: "FeatureManifest", num_patches: int) -> Any:
    """The PoolingConfig whose description is the manifest's ``pooling`` field (refuses otherwise)."""
    import math
    import re

    from llavidal.features.pooling import PoolingConfig

    match = re.search(r"temporal=(\d+)", manifest.pooling or "")
    side = re.search(r"->(\d+)x(\d+)", manifest.pooling or "")
    if match:
        grid = math.isqrt(num_patches)
        spatial = int(side.group(1)) if side else grid
        candidate = PoolingConfig(
            temporal_tokens=int(match.group(1)), spatial_grid=None if spatial == grid else spatial,
        )
        if candidate.describe(num_patches) == manifest.pooling:
            return candidate
    raise IncompatibleProjectorError(
        f"the video features of training were pooled as {manifest.pooling!r}, which this version of the "
        "demo cannot reproduce; re-extract the training features with 'llavidal extract video' and retrain"
    )


def build_video_step(
    spec: "ModalitySpec",
    manifest: "FeatureManifest | None",
    encoder_override: str | None,
    device: str | None,
) -> VideoStep:
    """Load the vision encoder training used and check its pooled features fit the video projector."""
    from llavidal.features.encoders import EMBEDDED_NAME, load_vision_encoder
    from llavidal.features.pooling import PoolingConfig

    recorded = (manifest.extra or {}).get("encoder") if manifest is not None else None
    if encoder_override:
        encoder_spec = encoder_override
    elif recorded == EMBEDDED_NAME or manifest is None:
        encoder_spec = EMBEDDED_NAME
    else:
        raise IncompatibleProjectorError(
            f"the video features of training were made with the vision encoder '{manifest.model_id}' "
            f"({manifest.feature_dim}-d); pass its folder with --vision_tower_name PATH"
        )
    try:
        encoder = load_vision_encoder(encoder_spec, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise IncompatibleProjectorError(f"--vision_tower_name: {err}") from None
    if manifest is not None:
        pooling = _pooling_from_manifest(manifest, encoder.num_patches)
        num_frames = int(manifest.frames or pooling.temporal_tokens)
        decoder = str((manifest.extra or {}).get("decoder", "pyav"))
        feature_dtype = manifest.dtype if manifest.dtype in ("float16", "float32") else "float32"
        origin = "settings from training's feature manifest"
        if manifest.weights_sha256 and encoder.weights_sha256 != manifest.weights_sha256:
            logger.warning(
                "the vision encoder %s is not the one training's features were made with (%s): weight hashes "
                "differ, so answers may be poor", encoder.model_id, manifest.model_id,
            )
            origin += "; WARNING: encoder weights differ from training's"
    else:
        # No manifest: the upstream layout (all patches as spatial tokens, the rest temporal).
        temporal = spec.num_tokens - encoder.num_patches
        if temporal < 1:
            raise IncompatibleProjectorError(
                f"the video projector expects {spec.num_tokens} tokens, fewer than the {encoder.num_patches} "
                f"patches of the encoder {encoder.model_id}, and the weights record no feature manifest that "
                "says how they were pooled; pass the weights of a training run whose feature folders exist"
            )
        pooling = PoolingConfig(temporal_tokens=temporal)
        num_frames, decoder, feature_dtype = temporal, "pyav", "float16"
        origin = "no feature manifest recorded with the weights: upstream pooling assumed"
        logger.warning("the weights record no video feature manifest; assuming upstream pooling (%s)", origin)
    step = VideoStep(encoder, num_frames, pooling, decoder, feature_dtype, origin)
    if (step.num_tokens, encoder.feature_dim) != (spec.num_tokens, spec.feature_dim):
        raise IncompatibleProjectorError(
            f"the video projector expects {spec.num_tokens} tokens of {spec.feature_dim}-d features, but the "
            f"vision encoder '{encoder.model_id}' with this pooling gives {step.num_tokens} tokens of "
            f"{encoder.feature_dim}-d. Pass the encoder training used (--vision_tower_name) or weights trained "
            "on this encoder's features."
        )
    return step


# ---------------------------------------------------------------------------------------------------
# Pose

MEDIAPIPE_MAX_FRAMES = 300
"""At most this many frames go through MediaPipe or the detector (a stride spreads them over a long video)."""
SKELETON_IMAGE_MIN_SIDE = 320
"""Frames smaller than this are enlarged (by a whole factor) before the skeleton is drawn, to be legible."""


@dataclass
class FoundSkeleton:
    """A skeleton for one video and how to place its joints on the video's frames."""

    sequence: Any  # llavidal.features.pose.ntu.SkeletonSequence
    source: str
    frame_stride: int = 1
    """Skeleton frame t is video frame t * frame_stride."""
    kinect_colour: bool = False
    """colorX/colorY are in a 1920x1080 Kinect image whose centred square is the video frame (the
    embedded world's convention) rather than video pixels (MediaPipe's)."""

    def detected(self) -> bool:
        return any(len(frame) for frame in self.sequence.frames)

    def pixels(self, frame_index: int, width: int, height: int) -> list[np.ndarray]:
        """Per body, ``(25, 2)`` joint positions in video pixels for skeleton frame ``frame_index``."""
        bodies = []
        for body in self.sequence.frames[frame_index]:
            xy = np.asarray(body.color_xy, dtype=np.float64)
            if self.kinect_colour:
                from llavidal.sim.camera import COLOUR_SIZE

                side = COLOUR_SIZE[1]  # the video frame is the centred side x side square of the colour image
                left = (COLOUR_SIZE[0] - side) / 2
                xy = np.stack([(xy[:, 0] - left) * width / side, xy[:, 1] * height / side], axis=1)
            bodies.append(xy)
        return bodies


@dataclass
class PoseStep:
    """Skeleton (world file or MediaPipe) -> pose encoder, with training's encoder."""

    encoder: Any  # llavidal.features.pose.encoder.PoseEncoder
    origin: str = ""

    def describe(self) -> str:
        mediapipe = "MediaPipe" if mediapipe_available() else "MediaPipe not installed"
        return (f"pose: encoder `{self.encoder.model_id}` ({self.encoder.config.dim}-d), skeletons from world "
                f"files or {mediapipe} ({self.origin})")

    def find_skeleton(
        self, video_path: Path, info: VideoInfo, world_skeleton: Path | None,
    ) -> tuple[FoundSkeleton | None, str]:
        """(skeleton or None, why not) for one video."""
        from llavidal.features.pose.ntu import SkeletonFormatError, read_skeleton

        if world_skeleton is not None:
            try:
                sequence = read_skeleton(world_skeleton)
            except (OSError, SkeletonFormatError) as err:
                return None, f"the example's skeleton file is unreadable ({err})"
            return FoundSkeleton(sequence, "the example's skeleton file (world ground truth)", kinect_colour=True), ""
        if not mediapipe_available():
            return None, "not detected: MediaPipe is not installed (pip install 'llavidal[mediapipe]')"
        from llavidal.features.pose.mediapipe_pose import skeleton_from_video

        stride = max(1, -(-info.num_frames // MEDIAPIPE_MAX_FRAMES))
        try:
            sequence = skeleton_from_video(video_path, frame_stride=stride, max_frames=MEDIAPIPE_MAX_FRAMES)
        except ValueError as err:
            return None, f"not detected: MediaPipe failed ({err})"
        return FoundSkeleton(sequence, "MediaPipe Pose on the video", frame_stride=stride), ""

    def run(self, skeleton: FoundSkeleton) -> np.ndarray:
        from llavidal.features.pose.encoder import pose_features_for_skeleton

        return pose_features_for_skeleton(skeleton.sequence, self.encoder).astype(np.float32)  # (tokens, dim)


def mediapipe_available() -> bool:
    from llavidal.utils.optional import available

    return available("mediapipe")


def build_pose_step(spec: "ModalitySpec", manifest: "FeatureManifest | None", encoder_override: str | None,
                    device: str | None, search_roots: Sequence[Path] = ()) -> PoseStep:
    """Load the pose encoder training used and check it fits the pose projector.

    The checkpoint is ``encoder_override`` (``--pose-encoder``); else, when training's manifest names a
    trained encoder, a ``pose_encoder.json`` folder under ``search_roots`` whose weights hash is the
    manifest's; else the seeded encoder when that is what training used.
    """
    from llavidal.features.pose.encoder import SEEDED_MODEL_ID, load_pose_encoder

    seeded = manifest is None or manifest.model_id in ("", SEEDED_MODEL_ID)
    path: str | None = encoder_override
    if path is None and not seeded:
        found = find_pose_encoder(manifest.weights_sha256, search_roots)
        if found is None:
            raise IncompatibleProjectorError(
                f"the pose features of training were made with the pose encoder '{manifest.model_id}', which was "
                "not found next to the weights or the feature folders; pass its checkpoint folder with --pose-encoder"
            )
        path = str(found)
    try:
        encoder = load_pose_encoder(path or "seeded", device=_torch_device(device))
    except (FileNotFoundError, ValueError) as err:
        raise IncompatibleProjectorError(f"pose encoder: {err}") from None
    origin = "training's pose encoder" if manifest is not None else "no pose manifest recorded: seeded encoder"
    if manifest is not None and manifest.weights_sha256 and encoder.weights_sha256() != manifest.weights_sha256:
        logger.warning("the pose encoder %s is not the one training's features were made with (%s)",
                       encoder.model_id, manifest.model_id)
        origin = "WARNING: pose encoder weights differ from training's"
    if (encoder.config.tokens, encoder.config.dim) != (spec.num_tokens, spec.feature_dim):
        raise IncompatibleProjectorError(
            f"the pose projector expects {spec.num_tokens} tokens of {spec.feature_dim}-d features, but the pose "
            f"encoder '{encoder.model_id}' gives {encoder.config.tokens} tokens of {encoder.config.dim}-d. Pass "
            "the encoder training used (--pose-encoder) or weights trained on this encoder's features."
        )
    return PoseStep(encoder, origin)


def find_pose_encoder(weights_sha256: str, roots: Sequence[Path], max_depth: int = 3) -> Path | None:
    """A pose encoder checkpoint folder under ``roots`` whose weights hash is ``weights_sha256``."""
    from llavidal.features.pose.encoder import CONFIG_NAME, load_pose_encoder

    if not weights_sha256:
        return None
    seen: set[Path] = set()
    for root in roots:
        for depth in range(max_depth + 1):
            for config in sorted(Path(root).glob("/".join(["*"] * depth + [CONFIG_NAME]))):
                folder = config.parent.resolve()
                if folder in seen:
                    continue
                seen.add(folder)
                try:
                    if load_pose_encoder(folder).weights_sha256() == weights_sha256:
                        return folder
                except (OSError, ValueError) as err:
                    logger.debug("%s: not a usable pose encoder (%s)", folder, err)
    return None


def _torch_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


# ---------------------------------------------------------------------------------------------------
# Examples from a world folder


@dataclass(frozen=True)
class WorldClip:
    """Annotations the embedded world ships next to one of its videos."""

    video: Path
    size: int
    skeleton: Path | None
    tracks: Path | None


class ExampleIndex:
    """Recognises the bundled example videos after gradio has copied them into its upload cache.

    gradio hands handlers a copy of an example file, so the world folder it came from is found by name
    and size; only then are the world's own skeleton and object tracks used for it.
    """

    def __init__(self, videos: Sequence[Path] = ()):
        self._by_name: dict[str, WorldClip] = {}
        for video in videos:
            world = video.parent.parent if video.parent.name == "videos" else None
            skeleton = world / "skeletons" / f"{video.stem}.skeleton" if world else None
            tracks = world / "tracks" / f"{video.stem}.json" if world else None
            self._by_name[video.name] = WorldClip(
                video=video, size=video.stat().st_size,
                skeleton=skeleton if skeleton is not None and skeleton.is_file() else None,
                tracks=tracks if tracks is not None and tracks.is_file() else None,
            )

    def lookup(self, path: Path) -> WorldClip | None:
        clip = self._by_name.get(path.name)
        if clip is None or path.stat().st_size != clip.size:
            return None
        if path.resolve() != clip.video.resolve() and path.read_bytes() != clip.video.read_bytes():
            return None
        return clip


# ---------------------------------------------------------------------------------------------------
# The pipeline


class DemoFeaturePipeline:
    """Every modality of one video, made the way training's features were made."""

    def __init__(
        self,
        registry: "ModalityRegistry",
        limits: VideoLimits,
        video: VideoStep | None,
        pose: PoseStep | None = None,
        objects: "ObjectStep | None" = None,
        examples: ExampleIndex | None = None,
    ):
        self.registry = registry
        self.limits = limits
        self.video = video
        self.pose = pose
        self.objects = objects
        self.examples = examples or ExampleIndex()

    @classmethod
    def for_weights(
        cls,
        weights_dir: str | os.PathLike,
        registry: "ModalityRegistry",
        limits: VideoLimits | None = None,
        vision_encoder: str | None = None,
        pose_encoder: str | None = None,
        device: str | None = None,
        examples: Sequence[Path] = (),
        object_encoder: str | None = None,
        detector: str | None = None,
    ) -> "DemoFeaturePipeline":
        """Extractors for the weights in ``weights_dir`` (refused with :class:`IncompatibleProjectorError`
        when what they make does not fit the weights' projectors)."""
        from llavidal.model.config import LlavidalConfig

        weights_dir = Path(weights_dir)
        config = LlavidalConfig.from_json_file(weights_dir)
        manifests = recorded_manifests(config.extra)
        unknown = [name for name in registry.names() if name not in ("video", "pose", "object")]
        if unknown:
            raise IncompatibleProjectorError(
                f"{weights_dir}: the weights use modalities {unknown}, which the demo has no extractor for"
            )
        if "video" not in registry:
            raise IncompatibleProjectorError(f"{weights_dir}: the weights have no video projector; the demo needs one")
        video = build_video_step(registry["video"], manifests.get("video"), vision_encoder, device)
        pose = None
        if "pose" in registry:
            roots = [weights_dir.parent, weights_dir.parent.parent]
            folder = (config.extra.get("feature_folders") or {}).get("pose")
            if folder:
                roots += [Path(folder).parent, Path(folder).parent.parent]
            pose = build_pose_step(registry["pose"], manifests.get("pose"), pose_encoder, device, roots)
        objects = None
        if "object" in registry:
            objects = build_object_step(
                registry["object"], manifests.get("object"), video.encoder, object_encoder, detector, device,
            )
        return cls(registry, limits or VideoLimits(), video, pose, objects, ExampleIndex(examples))

    def describe(self) -> str:
        parts = [step.describe() for step in (self.video, self.pose, self.objects) if step is not None]
        return "Extractors: " + "; ".join(parts)

    def extract(self, video_path: str | os.PathLike, progress: Progress | None = None) -> DemoFeatures:
        """Features of every modality the weights use; raises VideoRejected / ExtractionError for the user."""
        progress = progress or _no_progress
        path = Path(video_path)
        progress(0.02, "Checking the video")
        info = probe_video(path, self.limits)
        clip = self.examples.lookup(path)
        features: dict[str, np.ndarray] = {}
        outcomes: dict[str, ModalityOutcome] = {}
        skeleton_image = None
        if self.video is not None:
            frames = min(self.video.num_frames, info.num_frames or self.video.num_frames)
            progress(0.1, f"Video: encoding {frames} frames")
            features["video"] = self.video.run(path)
            rows, dim = features["video"].shape
            outcomes["video"] = ModalityOutcome(True, f"{rows} tokens x {dim}-d from {self.video.encoder.model_id}")
        if self.pose is not None:
            progress(0.5, "Pose: finding the person's skeleton")
            skeleton, reason = self.pose.find_skeleton(path, info, clip.skeleton if clip else None)
            if skeleton is None or not skeleton.detected():
                outcomes["pose"] = ModalityOutcome(False, reason or "not detected: no person found in the video")
            else:
                progress(0.65, "Pose: encoding the skeleton")
                features["pose"] = self.pose.run(skeleton)
                frames_with_body = sum(1 for frame in skeleton.sequence.frames if frame)
                outcomes["pose"] = ModalityOutcome(
                    True, f"detected in {frames_with_body} frames, from {skeleton.source}; "
                          f"{features['pose'].shape[0]} tokens x {features['pose'].shape[1]}-d",
                )
                skeleton_image = draw_skeleton_frame(path, skeleton, info)
        if self.objects is not None:
            progress(0.75, "Objects: finding and encoding objects")
            found = self.objects.run(path, info, clip.tracks if clip else None)
            if found.features is not None:
                features["object"] = found.features
            outcomes["object"] = ModalityOutcome(found.features is not None, found.detail)
        progress(1.0, "Done")
        return DemoFeatures(video=info, features=features, outcomes=outcomes, skeleton_image=skeleton_image)


def draw_skeleton_frame(video_path: Path, skeleton: FoundSkeleton, info: VideoInfo) -> np.ndarray | None:
    """The skeleton drawn over the middle frame among those where a body was found."""
    from llavidal.demo.skeleton_draw import draw_skeletons
    from llavidal.demo.video_io import read_frame

    with_body = [t for t, frame in enumerate(skeleton.sequence.frames) if frame]
    if not with_body:
        return None
    index = with_body[len(with_body) // 2]
    frame = read_frame(video_path, index * skeleton.frame_stride)
    height, width = frame.shape[:2]
    bodies = skeleton.pixels(index, width, height)
    scale = max(1, -(-SKELETON_IMAGE_MIN_SIDE // min(height, width)))  # small videos: draw on an enlarged frame
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
        bodies = [(xy + 0.5) * scale - 0.5 for xy in bodies]  # pixel centres move with the enlargement
    return draw_skeletons(frame, bodies)


# ---------------------------------------------------------------------------------------------------
# Objects


@dataclass
class FoundObjects:
    features: np.ndarray | None
    """``(n, group, D)`` object features, or None when no object was found."""
    detail: str


@dataclass
class ObjectStep:
    """Object tracks (the world's, or a detector's) -> crops -> the vision encoder, as training."""

    encoder: Any  # llavidal.features.encoders.VisionEncoder used by training's object extraction
    tokens_per_object: int
    margin: float
    square: bool
    feature_dtype: str = "float32"
    detector: Any = None  # llavidal.features.objects.detect.Detector
    origin: str = ""

    def describe(self) -> str:
        detector = f"detector {self.detector.name}" if self.detector is not None else "no detector (--detector)"
        return (f"objects: {self.tokens_per_object} crops per object through `{self.encoder.model_id}`, tracks from "
                f"world files or {detector} ({self.origin})")

    def run(self, video_path: Path, info: VideoInfo, world_tracks: Path | None) -> FoundObjects:
        from llavidal.features.objects.extract import TracksError, load_tracks, object_features_for_video

        if world_tracks is not None:
            try:
                tracks = load_tracks(world_tracks)
            except (OSError, ValueError) as err:
                return FoundObjects(None, f"the example's tracks file is unreadable ({err})")
            source = "the example's object tracks (world ground truth)"
        elif self.detector is not None:
            from llavidal.features.objects.detect import detect_tracks

            stride = max(1, -(-info.num_frames // MEDIAPIPE_MAX_FRAMES))
            try:
                tracks = detect_tracks(video_path, self.detector, frame_stride=stride)
            except ValueError as err:
                return FoundObjects(None, f"not detected: the detector failed ({err})")
            source = f"detector {self.detector.name}"
        else:
            return FoundObjects(None, "not detected: no object detector configured (start the demo with --detector)")
        try:
            features = object_features_for_video(
                video_path, tracks, self.encoder, self.tokens_per_object, self.margin, self.square,
            )  # (n, tokens_per_object, D)
        except (TracksError, ValueError) as err:
            return FoundObjects(None, f"not used: {err}")
        if features.shape[0] == 0:
            return FoundObjects(None, f"no objects found ({source})")
        names = [str(obj.get("class", "?")) for obj in sorted(tracks["objects"], key=lambda o: o.get("object_id", 0))
                 if any(e["box"][2] > e["box"][0] and e["box"][3] > e["box"][1] for e in obj["frames"])]
        features = features.astype(self.feature_dtype).astype(np.float32)
        return FoundObjects(features, f"{', '.join(names)} ({len(names)} objects, from {source})")


def build_object_step(
    spec: "ModalitySpec",
    manifest: "FeatureManifest | None",
    video_encoder: Any,
    encoder_override: str | None,
    detector_spec: str | None,
    device: str | None,
) -> ObjectStep:
    """Object extraction as training made it: encoder, crops per object, margin; checked against the
    object projector."""
    import re

    from llavidal.features.encoders import EMBEDDED_MODEL_ID, EMBEDDED_NAME, load_vision_encoder
    from llavidal.features.objects.extract import object_manifest

    encoder = video_encoder
    if encoder_override:
        try:
            encoder = load_vision_encoder(encoder_override, device=device)
        except (FileNotFoundError, ValueError) as err:
            raise IncompatibleProjectorError(f"--object-encoder: {err}") from None
    elif manifest is not None and manifest.model_id and manifest.model_id != video_encoder.model_id:
        if manifest.model_id != EMBEDDED_MODEL_ID:
            raise IncompatibleProjectorError(
                f"the object features of training were made with the vision encoder '{manifest.model_id}'; "
                "pass its folder with --object-encoder"
            )
        encoder = load_vision_encoder(EMBEDDED_NAME, device=device)
    tokens, margin, square, dtype = spec.group_size, 0.15, True, "float16"
    origin = "no object manifest recorded: extraction defaults"
    if manifest is not None:
        tokens = int(manifest.frames or spec.group_size)
        found = re.search(r"margin ([0-9.]+), (square|box)", manifest.pooling or "")
        if found:
            margin, square = float(found.group(1)), found.group(2) == "square"
        if object_manifest(encoder, manifest.dtype, margin, square, tokens, "").pooling != manifest.pooling:
            raise IncompatibleProjectorError(
                f"the object features of training were made as {manifest.pooling!r}, which this version of the "
                "demo cannot reproduce; re-extract them with 'llavidal extract object' and retrain"
            )
        dtype = manifest.dtype if manifest.dtype in ("float16", "float32") else "float32"
        origin = "settings from training's feature manifest"
    if (tokens, int(encoder.feature_dim)) != (spec.group_size, spec.feature_dim):
        raise IncompatibleProjectorError(
            f"the object projector expects {spec.group_size} tokens per object of {spec.feature_dim}-d features, "
            f"but the encoder '{encoder.model_id}' gives {tokens} of {encoder.feature_dim}-d. Pass the encoder "
            "training used (--object-encoder) or weights trained on this encoder's object features."
        )
    detector = None
    if detector_spec:
        from llavidal.features.objects.detect import load_detector

        try:
            detector = load_detector(detector_spec)
        except (FileNotFoundError, ValueError, ImportError) as err:
            raise IncompatibleProjectorError(f"--detector {detector_spec}: {err}") from None
    return ObjectStep(encoder, tokens, margin, square, dtype, detector, origin)
