"""Pose features for every clip: ``{id}_pose.safetensors`` ``(256, 216)`` + ``manifest.json``.

Run as::

    llavidal extract pose --skeleton_dir WORLD/skeletons --out features/pose --encoder runs/pose_encoder
    llavidal extract pose --video_dir videos/ --out features/pose --encoder runs/pose_encoder   # MediaPipe
    torchrun --nproc_per_node=4 -m llavidal.cli extract pose --skeleton_dir ... --out ... --encoder ...

``--skeleton_dir`` reads NTU RGB+D ``.skeleton`` files (recursively; the id is the file name without
extension). ``--video_dir`` first estimates 3D pose with MediaPipe (optional extra
``llavidal[mediapipe]``) and keeps the skeletons in ``--skeleton_out`` (default ``OUT/skeletons``), each with
``{id}.skeleton.json`` (the video's sha256 and the estimation settings): a rerun reuses a skeleton only when
the video and the settings are the same. ``--encoder`` is a checkpoint folder from ``llavidal pose-pretrain``, or ``seeded``
for an untrained, seeded encoder (a baseline).

Resumable (outputs that exist and validate are skipped), atomic, failures listed in
``OUT/failed.jsonl`` (the exit status is 1 when anything failed), sharded across torchrun ranks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from llavidal.config import arg, command, parse
from llavidal.data.feature_store import FeatureManifest, files_sha256
from llavidal.features.per_sample import SAVE_DTYPES, run_per_sample
from llavidal.features.pose.encoder import SEEDED_MODEL_ID, PoseEncoder, load_pose_encoder, pose_features_for_skeleton
from llavidal.features.extractor import (
    SEEDED_POSE_ENCODER,
    Clip,
    Extracted,
    PoseRecipe,
    recipe_and_encoder,
    recipe_to_dict,
    round_through,
)
from llavidal.features.pose.ntu import COLOUR_SIZE, SkeletonFormatError, SkeletonSequence, read_skeleton
from llavidal.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

FILE_SUFFIX = "_pose"
PICKLE_EXTENSION = ".pickle"  # upstream: {id}_pose.pickle
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


def find_files(folder: Path, extensions: Sequence[str]) -> list[tuple[str, Path]]:
    """``(id, path)`` for every file under ``folder`` with one of ``extensions`` (case-insensitive)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    found = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in extensions]
    return [(p.stem, p) for p in found]


MAX_ESTIMATION_FRAMES = 300
"""At most this many frames of a video go through MediaPipe on the fly (a stride spreads them)."""


@dataclass
class FoundSkeleton:
    """A skeleton for one video and how to place its joints on the video's frames."""

    sequence: SkeletonSequence
    source: str
    frame_stride: int = 1
    """Skeleton frame t is video frame t * frame_stride."""
    kinect_colour: bool = False
    """colorX/colorY are in a 1920x1080 Kinect colour image whose centred square is the video frame (NTU
    files of the embedded world) rather than video pixels (MediaPipe's)."""

    def detected(self) -> bool:
        return any(len(frame) for frame in self.sequence.frames)

    def pixels(self, frame_index: int, width: int, height: int) -> list[np.ndarray]:
        """Per body, ``(25, 2)`` joint positions in video pixels for skeleton frame ``frame_index``."""
        bodies = []
        for body in self.sequence.frames[frame_index]:
            xy = np.asarray(body.color_xy, dtype=np.float64)
            if self.kinect_colour:
                side = COLOUR_SIZE[1]  # the video frame is the centred side x side square of the colour image
                left = (COLOUR_SIZE[0] - side) / 2
                xy = np.stack([(xy[:, 0] - left) * width / side, xy[:, 1] * height / side], axis=1)
            bodies.append(xy)
        return bodies


def pose_encoder_reference(path: str | os.PathLike | None, encoder: PoseEncoder | None = None) -> str:
    """How a recipe names a pose encoder: ``seeded``, or its checkpoint folder as an absolute path."""
    if path is None and encoder is not None and encoder.checkpoint_folder is not None:
        path = encoder.checkpoint_folder
    if path is None:
        return SEEDED_POSE_ENCODER if encoder is None or encoder.model_id == SEEDED_MODEL_ID else ""
    if str(path) == SEEDED_POSE_ENCODER:
        return SEEDED_POSE_ENCODER
    path = Path(path).expanduser().resolve()
    return str(path.parent if path.is_file() else path)


@dataclass
class PoseExtractor:
    """Skeleton (NTU file, or MediaPipe on the video) -> pose encoder (:class:`~llavidal.features.extractor.Extractor`)."""

    modality: ClassVar[str] = "pose"
    recipe: PoseRecipe
    encoder: PoseEncoder

    @classmethod
    def create(cls, encoder: PoseEncoder, encoder_path: str | os.PathLike | None, source: str = "ntu-skeleton",
               feature_dtype: str = "float16", fov_degrees: float = 60.0, frame_stride: int = 1) -> "PoseExtractor":
        recipe = PoseRecipe(encoder=pose_encoder_reference(encoder_path, encoder), model_id=encoder.model_id,
                            weights_sha256=encoder.weights_sha256(), skeleton_source=source,
                            fov_degrees=fov_degrees, frame_stride=frame_stride, feature_dtype=feature_dtype)
        return cls(recipe, encoder)

    @classmethod
    def from_manifest(cls, manifest: FeatureManifest, *, base_dir: str | os.PathLike | None = None,
                      device: str | None = None, encoder: str | None = None, **_: object) -> "PoseExtractor":
        from llavidal.utils.device import resolve_device

        recipe, path = recipe_and_encoder(manifest, base_dir, encoder, "--pose-encoder PATH")
        loaded = load_pose_encoder(path, device=resolve_device(device))
        return cls(recipe, loaded)

    def output_shape(self) -> tuple[int, int]:
        return int(self.encoder.config.tokens), int(self.encoder.config.dim)

    def weights_match(self) -> bool:
        return not self.recipe.weights_sha256 or self.recipe.weights_sha256 == self.encoder.weights_sha256()

    def manifest(self, **_: object) -> FeatureManifest:
        config = self.encoder.config
        return FeatureManifest(
            modality="pose",
            extractor=f"llavidal-pose/{self.recipe.skeleton_source}",
            feature_dim=config.dim,
            shape=[config.tokens, config.dim],
            dtype=self.recipe.feature_dtype,
            model_id=self.encoder.model_id,
            weights_sha256=self.encoder.weights_sha256(),
            frames=config.num_frames,
            pooling=f"skeleton transformer over {config.num_frames} frames x {config.num_persons} persons -> "
            + ("per-frame mean over present persons -> " if config.token_pooling == "frames" else "")
            + f"{config.tokens} tokens",
            extra={"encoder_config": config.to_dict(),
                   "text_encoder": self.encoder.checkpoint_info.get("text_encoder", "")},
            recipe=recipe_to_dict(self.recipe),
        )

    def features(self, skeleton: SkeletonSequence | str | os.PathLike) -> np.ndarray:
        """float32 ``(tokens, dim)`` features of one skeleton sequence."""
        return round_through(pose_features_for_skeleton(skeleton, self.encoder), self.recipe.feature_dtype)

    def find_skeleton(self, clip: Clip) -> tuple[FoundSkeleton | None, str]:
        """(skeleton or None, why not): the clip's skeleton file, else MediaPipe on the video."""
        if clip.skeleton is not None:
            try:
                sequence = read_skeleton(clip.skeleton)
            except (OSError, SkeletonFormatError) as err:
                return None, f"the clip's skeleton file is unreadable ({err})"
            return FoundSkeleton(sequence, "the clip's skeleton file", kinect_colour=True), ""
        if clip.video is None:
            return None, "not detected: no skeleton file and no video"
        from llavidal.utils.optional import available

        if not available("mediapipe"):
            return None, "not detected: MediaPipe is not installed (pip install 'llavidal[mediapipe]')"
        from llavidal.features.pose.mediapipe_pose import skeleton_from_video

        stride = max(self.recipe.frame_stride, -(-(clip.num_frames or 0) // MAX_ESTIMATION_FRAMES))
        try:
            sequence = skeleton_from_video(clip.video, frame_stride=stride, max_frames=MAX_ESTIMATION_FRAMES)
        except ValueError as err:
            return None, f"not detected: MediaPipe failed ({err})"
        return FoundSkeleton(sequence, "MediaPipe Pose on the video", frame_stride=stride), ""

    def extract(self, clip: Clip) -> Extracted:
        skeleton, reason = self.find_skeleton(clip)
        if skeleton is None or not skeleton.detected():
            return Extracted(None, reason or "not detected: no person found in the video")
        features = self.features(skeleton.sequence)
        frames_with_body = sum(1 for frame in skeleton.sequence.frames if frame)
        detail = (f"detected in {frames_with_body} frames, from {skeleton.source}; "
                  f"{features.shape[0]} tokens x {features.shape[1]}-d")
        return Extracted(features, detail, {"skeleton": skeleton})

    def describe(self) -> str:
        from llavidal.utils.optional import available

        mediapipe = "MediaPipe" if available("mediapipe") else "MediaPipe not installed"
        return (f"pose: encoder `{self.encoder.model_id}` ({self.encoder.config.dim}-d), skeletons from "
                f"skeleton files or {mediapipe}")


def _read_stamp(path: Path) -> dict | None:
    """The settings a kept skeleton was estimated with (``{id}.skeleton.json``); None when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def extract_pose_features(
    out_dir: str | Path,
    encoder: PoseEncoder,
    skeleton_dir: str | Path | None = None,
    video_dir: str | Path | None = None,
    skeleton_out: str | Path | None = None,
    fov_degrees: float = 60.0,
    frame_stride: int = 1,
    save_format: str = "safetensors",
    dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    encoder_path: str | Path | None = None,
):
    """Library form of ``llavidal extract pose``; returns the :class:`ExtractionSummary`."""
    if (skeleton_dir is None) == (video_dir is None):
        raise ValueError("pass exactly one of skeleton_dir or video_dir")
    out_dir = Path(out_dir)
    if skeleton_dir is not None:
        items = find_files(Path(skeleton_dir), (".skeleton",))
        source = "ntu-skeleton"

        def compute(sample_id: str, path: Path) -> np.ndarray:
            return pose_features_for_skeleton(read_skeleton(path), encoder)  # (tokens, dim)

    else:
        from llavidal.features.pose.mediapipe_pose import video_to_skeleton_file
        from llavidal.utils.optional import require

        require("mediapipe", "pose from video (--video_dir)")
        items = find_files(Path(video_dir), VIDEO_EXTENSIONS)
        source = "mediapipe"
        skeletons = Path(skeleton_out) if skeleton_out else out_dir / "skeletons"

        def compute(sample_id: str, path: Path) -> np.ndarray:
            skeleton_path = skeletons / f"{sample_id}.skeleton"
            # what the kept skeleton was estimated from: the video's bytes and the estimation settings; another
            # video under the same name (another world, a re-encoded file) is estimated again
            estimated_from = {"source_sha256": files_sha256(path), "fov_degrees": fov_degrees,
                              "frame_stride": frame_stride}
            stamp = skeleton_path.with_name(skeleton_path.name + ".json")
            sequence = None
            if skeleton_path.is_file() and not overwrite and _read_stamp(stamp) == estimated_from:
                try:
                    sequence = read_skeleton(skeleton_path)  # estimated by an earlier run from this same video
                except SkeletonFormatError:
                    sequence = None
            if sequence is None:
                sequence = video_to_skeleton_file(path, skeleton_path, fov_degrees=fov_degrees, frame_stride=frame_stride)
                atomic_write_json(stamp, estimated_from)
            if sequence.max_bodies == 0:
                raise ValueError("MediaPipe found no person in the video")
            return pose_features_for_skeleton(sequence, encoder)

    if not items:
        raise FileNotFoundError(f"no {'.skeleton' if skeleton_dir is not None else 'video'} files under {skeleton_dir or video_dir}")
    manifest = PoseExtractor.create(encoder, encoder_path, source, dtype, fov_degrees, frame_stride).manifest()
    return run_per_sample(
        items, out_dir, compute, manifest, suffix=FILE_SUFFIX, pickle_ext=PICKLE_EXTENSION,
        expected_shape=manifest.shape, save_format=save_format, overwrite=overwrite, progress=progress,
    )


@dataclass
class PoseExtractionArgs:
    """Flags of ``llavidal extract pose`` (exactly one of --skeleton_dir / --video_dir)."""

    output_dir: str = arg(None, "output folder for {id}_pose.safetensors and manifest.json", aliases=["--out"])
    encoder: str = arg(None, "pose encoder checkpoint folder (from 'llavidal pose-pretrain'), or 'seeded' (untrained)")
    skeleton_dir: str | None = arg(None, "folder of NTU RGB+D .skeleton files (searched recursively)")
    video_dir: str | None = arg(None, "folder of videos; pose estimated with MediaPipe (llavidal[mediapipe])")
    skeleton_out: str | None = arg(None, "where --video_dir skeletons are kept (default OUTPUT_DIR/skeletons)")
    fov_degrees: float = arg(60.0, "assumed horizontal field of view of the videos")
    frame_stride: int = arg(1, "run MediaPipe on every n-th frame")
    format: str = arg("safetensors", "'pickle' writes upstream's {id}_pose.pickle", choices=("safetensors", "pickle"))
    dtype: str = arg("float16", "saved dtype", choices=sorted(SAVE_DTYPES))
    device: str = arg("cpu", "torch device for the encoder")
    overwrite: bool = arg(False, "recompute existing outputs; replace a different recipe")
    progress: bool = arg(True, "show a progress bar (--no_progress hides it)")

    def __post_init__(self) -> None:
        if not self.output_dir or not self.encoder:
            raise ValueError("--output_dir and --encoder are required")
        if (self.skeleton_dir is None) == (self.video_dir is None):
            raise ValueError("pass exactly one of --skeleton_dir (NTU .skeleton files) or --video_dir (videos)")


@command("llavidal extract pose")
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = parse((PoseExtractionArgs,), argv, prog="llavidal extract pose", description=__doc__.split("\n\n")[0])
    from llavidal.utils.device import resolve_device

    encoder = load_pose_encoder(args.encoder, device=resolve_device(args.device))
    summary = extract_pose_features(
        args.output_dir, encoder, skeleton_dir=args.skeleton_dir, video_dir=args.video_dir,
        skeleton_out=args.skeleton_out, fov_degrees=args.fov_degrees, frame_stride=args.frame_stride,
        save_format=args.format, dtype=args.dtype, overwrite=args.overwrite, progress=args.progress,
        encoder_path=args.encoder,
    )
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
