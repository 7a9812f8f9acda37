"""Image features as 1-frame videos: the same encoder, pooling and file layout as video features.

``llavidal extract video --video_dir_path images/ --clip_feat_path image_feats/`` on a folder of images (jpg,
jpeg, png, webp; subfolders included) writes ``{stem}.safetensors`` per image, exactly as for a video whose only
sampled frame is the image: the frame is resized (nearest) to the encoder's input, encoded, and pooled with the
video recipe (temporal tokens: the image's row then zero rows up to ``--temporal_tokens``/``--num_frames``;
spatial tokens: its patches). The features therefore have the video features' shape and reach the model through
the video modality and its projector. ``manifest.json`` holds the video recipe of the flags given (so that it
compares equal to the video folder's made with the same flags) with ``frames: 1`` and ``extra.source: "image"``.

Training records in LLaVA's format (``{"id", "image": "000123.jpg", "conversations": [{"from": "human",
"value": "<image>\\n..."}, ...]}``) read these files from ``--image_folder`` (``000123.jpg`` resolves to
``000123.safetensors``); the demo and the server make the same features on the fly (:func:`image_frames`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

from llavidal.features.decode import DecodedVideo, resize_nearest, video_id_for

if TYPE_CHECKING:
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.video import (
        ExtractionSummary,
        VideoExtractionArgs,
        VideoExtractor,
    )

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_DECODER = "image"
"""What an image's ``DecodedVideo.decoder`` and its feature file's metadata say."""


class ImageDecodeError(ValueError):
    """An image could not be read (the message names the file and the reason)."""


def is_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image extension (jpg, jpeg, png, webp)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root`` (subfolders included), sorted by path; hidden files are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in filenames if not name.startswith(".") and is_image(name))
    return sorted(found)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` of an image file; :class:`ImageDecodeError` names a file that cannot be read."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageDecodeError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from None


def image_frames(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """The image as a 1-frame video for an encoder of ``image_size``: uint8 ``(1, S, S, 3)`` (nearest resize, as
    video frames are resized)."""
    return resize_nearest(read_image(path)[None], image_size)


def decode_image(path: str | os.PathLike, image_size: int, video_id: str | None = None) -> DecodedVideo:
    """The image as a :class:`DecodedVideo` of one frame; never raises for a bad image (see ``.error``)."""
    path = Path(path)
    result = DecodedVideo(video_id=video_id or video_id_for(path), path=str(path), decoder=IMAGE_DECODER)
    try:
        result.frames = image_frames(path, image_size)
        result.num_total_frames, result.indices = 1, [0]
    except ImageDecodeError as err:
        result.error = str(err)
    return result


def image_features(extractor: "VideoExtractor", path: str | os.PathLike) -> np.ndarray:
    """float32 features of one image through a video extractor (what a 1-frame video of it gives), rounded
    through the recipe's storage dtype as training read them."""
    from llavidal.features.extractor import round_through

    frames = image_frames(path, extractor.encoder.image_size)
    features = extractor.pool(extractor.encode_frames(frames)).cpu().numpy()
    return round_through(features, extractor.recipe.feature_dtype)


def image_manifest(extractor: "VideoExtractor", output_format: str = "safetensors") -> "FeatureManifest":
    """The video manifest of ``extractor`` marked as image features: ``frames`` 1, ``extra.source`` image."""
    manifest = extractor.manifest(output_format)
    extra = {**manifest.extra, "source": "image", "sampling": "one frame: the image",
             "image_extensions": list(IMAGE_EXTENSIONS)}
    return dataclasses.replace(manifest, frames=1, extra=extra,
                               pooling=f"{manifest.pooling}; images: 1 frame each")


def extract_image_features(
    image_paths: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    extractor: "VideoExtractor",
    *,
    output_format: str = "safetensors",
    batch_size: int = 64,
    progress: bool = True,
    image_root: str | os.PathLike | None = None,
) -> "ExtractionSummary":
    """Features of images as 1-frame videos into ``out_dir`` (``{stem}.safetensors`` + ``manifest.json`` +
    ``failed.jsonl``), resumable (valid outputs of the same recipe are skipped) and sharded across torchrun
    ranks like video extraction. ``image_root`` names images by their path under it (``--video_id path``)."""
    from tqdm.auto import tqdm

    from llavidal.constants import MANIFEST_NAME
    from llavidal.data.feature_store import (
        FeatureFileError,
        FeatureManifest,
        merge_rank_manifests,
        rank_manifest_name,
        save_features,
        save_pickle_features,
    )
    from llavidal.features import video as video_module
    from llavidal.utils import dist as dist_utils
    from llavidal.utils.io import append_jsonl

    start = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(image_paths, (str, os.PathLike)) and Path(image_paths).is_dir():
        image_paths = find_images(image_paths)
    image_paths = [Path(p) for p in image_paths]
    if extractor.per_layer:
        raise ValueError("per-layer features (--layers) are for videos; extract images with pooled features")
    distributed = dist_utils.process_group(require_rendezvous=True)
    rank, world_size = distributed.rank, distributed.world_size
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = image_manifest(extractor, output_format)
        existing = FeatureManifest.load(out_dir)
        if existing is not None and not existing.same_recipe(manifest):
            raise FeatureFileError(
                f"{out_dir / MANIFEST_NAME}: the features in this folder were made differently ({existing.model_id}, "
                f"{existing.shape}, frames={existing.frames}, source={existing.extra.get('source', 'video')}) than "
                f"asked ({manifest.shape}, images); write to a new --clip_feat_path or delete the old features"
            )
        failed_name = video_module.FAILED_NAME
        if rank == 0:
            if existing is None:
                manifest.save(out_dir)
            dist_utils.remove_stale_rank_files(out_dir / MANIFEST_NAME, world_size)
            dist_utils.remove_stale_rank_files(out_dir / failed_name, world_size if world_size > 1 else 0)
            if world_size > 1:
                (out_dir / failed_name).unlink(missing_ok=True)
        failed_path = out_dir / failed_name if world_size == 1 else dist_utils.rank_path(out_dir / failed_name, rank)
        failed_path.unlink(missing_ok=True)
        root = Path(image_root) if image_root is not None else None
        jobs = dist_utils.shard(video_module._plan_jobs(image_paths, out_dir, output_format, root), rank, world_size)
        summary = video_module.ExtractionSummary(out_dir=str(out_dir), total=len(jobs), rank=rank, world_size=world_size)
        digest = video_module.recipe_digest(manifest)
        dtype = extractor.recipe.feature_dtype
        todo = []
        for job in jobs:
            if job.duplicate_of is None and video_module.output_is_valid(
                    job.out_path, manifest.shape, dtype, digest if output_format == "safetensors" else None):
                summary.skipped += 1
            else:
                todo.append(job)

        def fail(job, reason: str) -> None:
            record = {"video": str(job.path), "video_id": job.video_id, "reason": reason, "rank": rank,
                      "time": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
            append_jsonl(failed_path, record)
            summary.failures.append(record)
            summary.failed += 1
            logger.warning("failed: %s", reason)

        bar = tqdm(total=len(todo), desc="image features", unit="image", disable=not progress, dynamic_ncols=True)
        try:
            for begin in range(0, len(todo), batch_size):
                batch, frames = [], []
                for job in todo[begin:begin + batch_size]:
                    if job.duplicate_of is not None:
                        fail(job, f"{job.path}: duplicate image id {job.video_id!r} (also {job.duplicate_of}); rename one")
                        continue
                    decoded = decode_image(job.path, extractor.encoder.image_size, job.video_id)
                    if not decoded.ok:
                        fail(job, decoded.error)
                        continue
                    batch.append(job)
                    frames.append(decoded.frames)
                if batch:
                    encoded = extractor.encode_frames(torch.cat(frames), batch_size=len(frames))  # (B, P, D)
                    for row, job in enumerate(batch):
                        pooled = extractor.pool(encoded[row:row + 1])  # (T_max + S, D) or grid (T, S, D)
                        array = pooled.cpu().numpy().astype(video_module.FEATURE_DTYPES[dtype])
                        if output_format == "pickle":
                            save_pickle_features(job.out_path, array)
                        else:
                            save_features(job.out_path, array, metadata={
                                "video_id": job.video_id, "recipe": digest, "model_id": extractor.encoder.model_id,
                                "num_total_frames": 1, "sampled_frames": 1, "decoder": IMAGE_DECODER,
                                "source": "image"})
                        summary.done += 1
                bar.update(len(todo[begin:begin + batch_size]))
        finally:
            bar.close()
        manifest.save(out_dir, rank_manifest_name(rank))
        counts = distributed.sum_counts([summary.done, summary.skipped, summary.failed, summary.total])
        distributed.barrier()
        if rank == 0:
            merge_rank_manifests(out_dir)
            dist_utils.merge_rank_outputs([out_dir / failed_name])
        distributed.barrier()
        summary.done, summary.skipped, summary.failed, summary.total = counts
        summary.seconds = time.perf_counter() - start
        return summary
    finally:
        distributed.close()


def extract_images_command(args: "VideoExtractionArgs", images: Sequence[Path]) -> int:
    """``llavidal extract video`` on a folder of images (called by its ``main``): 0 when every image succeeded."""
    import sys

    from llavidal.features.encoders import load_vision_encoder
    from llavidal.features.video import VideoExtractor
    from llavidal.utils import dist as dist_utils

    encoder = load_vision_encoder(args.encoder, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    extractor = VideoExtractor.create(encoder, args.pooling_config(), args.num_frames, args.feature_dtype, args.decoder,
                                      args.encoder, layers=args.layers, layer_token=args.layer_token,
                                      pooling_mode=args.pooling)
    if dist_utils.rank() == 0:
        print(f"{len(images)} images under {args.video_dir_path} (as 1-frame videos); encoder {encoder.model_id} "
              f"({encoder.feature_dim}-d, {encoder.num_patches} patches) on {encoder.device}", file=sys.stderr)
    summary = extract_image_features(
        images, args.output_dir, extractor, output_format=args.format, batch_size=args.batch_size,
        progress=args.progress, image_root=args.video_dir_path if args.video_id == "path" else None,
    )
    if summary.rank == 0:
        print(summary.line().replace("video features", "image features").replace("videos/s", "images/s"))
    return 0 if summary.ok else 1
