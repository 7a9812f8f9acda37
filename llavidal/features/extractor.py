"""Extractors as data: one protocol, typed and versioned recipes, one registry keyed by modality.

A recipe holds every setting needed to rebuild an extractor (encoder reference and weight hash, frames,
pooling, crop margins, tokens per object...). Extraction writes it into each feature folder's
``manifest.json`` (``FeatureManifest.recipe``); training copies the manifests into the weights'
``llavidal_config.json`` (``feature_manifests``); evaluation, the demo and any server rebuild the
extractors from there and only from there:

    extractor = extractor_from_manifest(manifest, base_dir=weights_dir, device="cpu")
    extractor.output_shape()          # (tokens, dim), or (-1, tokens_per_object, dim) for objects
    extracted = extractor.extract(Clip(video=path, skeleton=..., tracks=...))
    extracted.features                # what training read for such a clip (float32), or None

Paths in a recipe (a CLIP folder, a pose-encoder checkpoint) are absolute in memory and in feature
folders; a weights folder stores them relative to itself (:func:`relative_manifest` on save,
:func:`absolute_manifest` on load), so weights moved together with their encoders keep working.

Manifests written before recipes existed (``format`` ``llavidal-features/1`` without ``recipe``) still load:
:func:`recipe_from_manifest` upgrades them from their old fields, the one place that reads the old
``pooling`` description.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Union

if TYPE_CHECKING:
    import numpy as np

    from llavidal.data.feature_store import FeatureManifest

RECIPE_FORMAT = "llavidal-recipe/1"
SEEDED_POSE_ENCODER = "seeded"
EMBEDDED_VISION_ENCODER = "embedded"
VIDEO_POOLINGS = ("spatio_temporal", "grid")
"""How video features keep their tokens: pooled over time and space (upstream), or per frame (a grid per frame)."""


class RecipeError(ValueError):
    """A recipe is malformed, of an unknown version, or cannot be rebuilt here."""


# ---------------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class VideoRecipe:
    """Decode ``num_frames`` frames, encode them, pool to ``temporal_tokens + spatial_grid**2`` tokens."""

    modality: ClassVar[str] = "video"
    path_fields: ClassVar[tuple[str, ...]] = ("encoder",)
    encoder: str = EMBEDDED_VISION_ENCODER
    """``embedded``, a CLIP checkpoint folder, ``open_clip:ARCH:WEIGHTS``, ``efficientnet-lite0`` (packaged
    weights) or ``efficientnet-liteN:WEIGHTS.pth``."""
    model_id: str = ""
    weights_sha256: str = ""
    num_frames: int = 100
    temporal_tokens: int = 100
    spatial_grid: int | None = None
    """Side of the pooled spatial grid; None keeps the encoder's grid."""
    decoder: str = "pyav"
    feature_dtype: str = "float16"
    layers: list[int] | None = None
    """Per-layer features: these hidden states (0 = embeddings), one token each per frame, ``(T, L, D)``
    (the Breakfast fork: all 25 of ViT-L/14). None: the pooled penultimate-layer patches above."""
    layer_token: str = "patches"
    """``patches`` (pooled patch tokens; ``layers`` is None), or with ``layers``: ``cls`` or ``mean``."""
    pooling: str = "spatio_temporal"
    """``spatio_temporal`` (upstream: ``(T + S, D)``) or ``grid``: every frame's patch tokens, ``(num_frames, S, D)``
    (zero frames at the end of a short video), area-pooled to ``spatial_grid`` when set, for pooling at train time."""
    optional_fields: ClassVar[tuple[str, ...]] = ("layers", "layer_token", "pooling")
    """Fields added after recipe format 1: left out of a recipe's dict at their defaults, so that manifests of
    features made without them stay equal to those written before (a rerun resumes the same folder)."""


@dataclass(frozen=True)
class PoseRecipe:
    """Skeletons (NTU files, or MediaPipe on the video) through a pose encoder checkpoint."""

    modality: ClassVar[str] = "pose"
    path_fields: ClassVar[tuple[str, ...]] = ("encoder",)
    encoder: str = SEEDED_POSE_ENCODER
    """A ``llavidal pose-pretrain`` checkpoint folder, or ``seeded`` (untrained)."""
    model_id: str = ""
    weights_sha256: str = ""
    skeleton_source: str = "ntu-skeleton"
    """``ntu-skeleton`` (files) or ``mediapipe`` (estimated from the video)."""
    fov_degrees: float = 60.0
    frame_stride: int = 1
    feature_dtype: str = "float16"


@dataclass(frozen=True)
class ObjectRecipe:
    """Per tracked object, ``tokens_per_object`` crops through a vision encoder, mean over patches."""

    modality: ClassVar[str] = "object"
    path_fields: ClassVar[tuple[str, ...]] = ("encoder",)
    encoder: str = EMBEDDED_VISION_ENCODER
    model_id: str = ""
    weights_sha256: str = ""
    tokens_per_object: int = 8
    margin: float = 0.15
    square: bool = True
    detector: str = ""
    """Detector used where no tracks file existed (``ssd:PATH`` / ``owlv2:FOLDER``); empty: tracks only."""
    feature_dtype: str = "float16"


Recipe = Union[VideoRecipe, PoseRecipe, ObjectRecipe]
RECIPES: dict[str, type] = {"video": VideoRecipe, "pose": PoseRecipe, "object": ObjectRecipe}


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    data = {"format": RECIPE_FORMAT, "modality": recipe.modality, **dataclasses.asdict(recipe)}
    defaults = {f.name: f.default for f in dataclasses.fields(recipe)}
    for name in getattr(recipe, "optional_fields", ()):
        if data.get(name) == defaults.get(name):
            del data[name]
    return data


def recipe_from_dict(data: dict[str, Any], source: str = "manifest") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: recipe must be a mapping, got {type(data).__name__}")
    if data.get("format") != RECIPE_FORMAT:
        raise RecipeError(
            f"{source}: recipe format {data.get('format')!r} is not {RECIPE_FORMAT!r}; this version of llavidal "
            "cannot rebuild its extractor: upgrade llavidal or re-extract the features"
        )
    cls = RECIPES.get(str(data.get("modality")))
    if cls is None:
        raise RecipeError(f"{source}: recipe of unknown modality {data.get('modality')!r}; known: {sorted(RECIPES)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"format", "modality"})
    if unknown:
        raise RecipeError(f"{source}: {cls.__name__} has no fields {unknown}; upgrade llavidal or re-extract")
    return cls(**{k: v for k, v in data.items() if k in names})


def recipe_from_manifest(manifest: "FeatureManifest", source: str = "manifest") -> Recipe:
    """The manifest's typed recipe; manifests written before recipes existed are upgraded."""
    if manifest.recipe:
        return recipe_from_dict(manifest.recipe, source)
    return _upgrade_legacy(manifest, source)


_LEGACY_POOLING = re.compile(r"temporal=(\d+) .*grid (\d+)x\d+->(\d+)x\d+")


def _upgrade_legacy(manifest: "FeatureManifest", source: str) -> Recipe:
    """A recipe from a ``llavidal-features/1`` manifest's fields (written before recipes existed)."""
    extra = manifest.extra or {}
    common = dict(model_id=manifest.model_id, weights_sha256=manifest.weights_sha256,
                  feature_dtype=manifest.dtype if manifest.dtype in ("float16", "float32") else "float32")
    if manifest.modality == "video":
        found = _LEGACY_POOLING.search(manifest.pooling or "")
        if not found:
            raise RecipeError(f"{source}: video features pooled as {manifest.pooling!r}, which this version cannot "
                              "rebuild; re-extract them with 'llavidal extract video'")
        temporal, grid, side = (int(g) for g in found.groups())
        encoder = str(extra.get("encoder") or "")
        if encoder != EMBEDDED_VISION_ENCODER:
            encoder = ""  # the old format did not record where a CLIP folder was: the user passes it
        return VideoRecipe(encoder=encoder, num_frames=int(manifest.frames or temporal), temporal_tokens=temporal,
                           spatial_grid=None if side == grid else side, decoder=str(extra.get("decoder", "pyav")),
                           **common)
    if manifest.modality == "pose":
        from_video = manifest.extractor.endswith("mediapipe")
        seeded = manifest.model_id in ("", "llavidal-pose-seeded-untrained")
        return PoseRecipe(encoder=SEEDED_POSE_ENCODER if seeded else "",
                          skeleton_source="mediapipe" if from_video else "ntu-skeleton", **common)
    if manifest.modality == "object":
        detector = str(extra.get("detector", ""))
        return ObjectRecipe(
            encoder=EMBEDDED_VISION_ENCODER if "embedded" in manifest.model_id else "",
            tokens_per_object=int(extra.get("tokens_per_object") or manifest.frames or 8),
            margin=float(extra.get("margin", 0.15)), square=bool(extra.get("square", True)),
            detector=detector[len("detector:"):] if detector.startswith("detector:") else "", **common,
        )
    raise RecipeError(f"{source}: no extractor for modality {manifest.modality!r}")


_ARCHITECTURE_PREFIX = re.compile(r"^(efficientnet-lite\d+(?:@\d+)?)(?::(.*))?$")
"""Encoder references that name an architecture: alone (packaged weights) or with ``:PATH`` to a weights file."""


def split_encoder_reference(value: str) -> tuple[str, str]:
    """A recipe's encoder reference -> ``(prefix, local path)``: ``("", "")`` for a name with no path
    (``embedded``, ``seeded``, ``open_clip:...``, ``efficientnet-lite0``), ``("efficientnet-lite2:", PATH)``
    for an architecture with a weights file, ``("", value)`` for a checkpoint folder."""
    if not value or value in (EMBEDDED_VISION_ENCODER, SEEDED_POSE_ENCODER) or value.startswith("open_clip:"):
        return "", ""
    named = _ARCHITECTURE_PREFIX.match(value)
    if named:
        return (f"{named.group(1)}:", named.group(2)) if named.group(2) else ("", "")
    return "", value


def resolve_recipe_path(value: str, base_dir: str | os.PathLike | None) -> str:
    """A recipe path field made usable here: relative paths are relative to ``base_dir``."""
    prefix, value_path = split_encoder_reference(value)
    if not value_path:
        return value
    path = Path(value_path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return prefix + str(path)


def recipe_and_encoder(manifest: "FeatureManifest", base_dir: str | os.PathLike | None, override: str | None,
                       flag: str) -> tuple[Recipe, str]:
    """The manifest's recipe and where its encoder is: ``override``, else the recorded reference (relative
    paths against ``base_dir``); a clear error naming ``flag`` when the manifest does not record it."""
    recipe = recipe_from_manifest(manifest)
    location = override or resolve_recipe_path(recipe.encoder, base_dir)
    if not location:
        raise RecipeError(
            f"the {manifest.modality} features were made with the encoder '{recipe.model_id}' "
            f"({manifest.feature_dim}-d), whose location the manifest does not record; pass it with {flag}"
        )
    return recipe, location


def _is_path(value: str) -> bool:
    return bool(split_encoder_reference(value)[1])


def _change_path(value: str, change) -> str:
    prefix, path = split_encoder_reference(value)
    return prefix + change(path)


def _with_paths(manifest: "FeatureManifest", change) -> "FeatureManifest":
    try:
        recipe = recipe_from_manifest(manifest)
    except RecipeError:
        return manifest  # an old manifest this version cannot read: left as it is (refused when used)
    changes = {name: _change_path(getattr(recipe, name), change) for name in recipe.path_fields
               if _is_path(getattr(recipe, name))}
    return dataclasses.replace(manifest, recipe=recipe_to_dict(dataclasses.replace(recipe, **changes)))


def absolute_manifest(manifest: "FeatureManifest", base_dir: str | os.PathLike) -> "FeatureManifest":
    """``manifest`` with recipe paths relative to ``base_dir`` made absolute (how manifests live in memory)."""
    return _with_paths(manifest, lambda value: str((Path(base_dir) / Path(value).expanduser()).resolve()))


def relative_manifest(manifest: "FeatureManifest", base_dir: str | os.PathLike) -> "FeatureManifest":
    """``manifest`` with absolute recipe paths made relative to ``base_dir`` (how weights folders store them,
    so that a weights folder moved together with its encoders keeps working)."""
    return _with_paths(manifest, lambda value: os.path.relpath(value, Path(base_dir).resolve())
                       if Path(value).is_absolute() else value)


# ---------------------------------------------------------------------------------------------------
# The protocol and the registry


@dataclass
class Clip:
    """One sample's sources; each extractor reads what it needs."""

    video: Path | None = None
    skeleton: Path | None = None
    """An NTU ``.skeleton`` file for the clip (the world's ground truth, or an earlier estimate)."""
    tracks: Path | None = None
    """An object-tracks JSON for the clip (docs/ARCHITECTURE.md)."""
    num_frames: int | None = None
    """The video's frame count when known (spreads on-the-fly pose estimation and detection over it)."""


@dataclass
class Extracted:
    """An extractor's answer for one clip: the features, or None and why (for the user)."""

    features: "np.ndarray | None"
    detail: str
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Side results a front end may show (pose: ``skeleton``, the skeleton that was encoded)."""


class Extractor(Protocol):
    modality: ClassVar[str]
    recipe: Recipe

    @classmethod
    def from_manifest(cls, manifest: "FeatureManifest", *, base_dir: str | os.PathLike | None = None,
                      device: str | None = None, encoder: str | None = None, **options: Any) -> "Extractor":
        """Rebuild from a manifest (``encoder`` overrides the recorded encoder reference)."""

    def manifest(self, **options: Any) -> "FeatureManifest":
        """The manifest of features this extractor makes."""

    def output_shape(self) -> tuple[int, ...]:
        """Per-sample feature shape; ``-1`` for a variable axis."""

    def extract(self, clip: Clip) -> Extracted:
        """Features of one clip, as float32 values rounded through the recipe's storage dtype."""

    def describe(self) -> str:
        """One line for logs and the demo page."""


EXTRACTORS: dict[str, str] = {
    "video": "llavidal.features.video:VideoExtractor",
    "pose": "llavidal.features.pose.extract:PoseExtractor",
    "object": "llavidal.features.objects.extract:ObjectExtractor",
}
"""Modality -> ``module:Class`` implementing :class:`Extractor` (imported when used)."""


def extractor_class(modality: str) -> type:
    if modality not in EXTRACTORS:
        raise RecipeError(f"no extractor for modality {modality!r}; known: {sorted(EXTRACTORS)}")
    module, _, name = EXTRACTORS[modality].partition(":")
    return getattr(importlib.import_module(module), name)


def extractor_from_manifest(manifest: "FeatureManifest", **options: Any) -> Extractor:
    """The extractor that made ``manifest``'s features (see :meth:`Extractor.from_manifest`)."""
    return extractor_class(manifest.modality).from_manifest(manifest, **options)


def manifest_differences(expected: "FeatureManifest", actual: "FeatureManifest") -> list[str]:
    """How features described by ``actual`` differ from those ``expected`` (e.g. what trained weights
    record): one human-readable line per difference in what determines the values (encoder weights,
    frames, pooling, crops, storage shape and dim); empty when they were made the same way. Paths are not
    compared (the same encoder may live elsewhere); its weight hash is."""
    differences = []
    if expected.modality != actual.modality:
        return [f"modality {actual.modality!r} instead of {expected.modality!r}"]
    if expected.feature_dim != actual.feature_dim:
        differences.append(f"feature dim {actual.feature_dim} instead of {expected.feature_dim}")
    if expected.shape and actual.shape and list(expected.shape) != list(actual.shape):
        differences.append(f"per-sample shape {actual.shape} instead of {expected.shape}")
    try:
        want, got = recipe_from_manifest(expected), recipe_from_manifest(actual)
    except RecipeError:
        want = got = None
    if want is not None and got is not None:
        for field in dataclasses.fields(want):
            if field.name in want.path_fields or field.name == "model_id":
                continue
            a, b = getattr(want, field.name), getattr(got, field.name)
            if field.name == "weights_sha256" and (not a or not b):
                continue
            if a != b:
                label = "encoder weights (sha256)" if field.name == "weights_sha256" else field.name
                shown = (f"{b[:12]}... instead of {a[:12]}..." if field.name == "weights_sha256"
                         else f"{b!r} instead of {a!r}")
                differences.append(f"{label} {shown}")
    elif expected.weights_sha256 and actual.weights_sha256 and expected.weights_sha256 != actual.weights_sha256:
        differences.append(f"encoder {actual.model_id!r} (other weights) instead of {expected.model_id!r}")
    return differences


UPSTREAM_VIDEO_PATCHES = 256
"""Patches per frame of upstream's CLIP ViT-L/14 at 224 px (and of the embedded encoder)."""


def unrecorded_manifest(spec: Any) -> "FeatureManifest":
    """For weights that record no manifest for a modality (upstream weights): the upstream recipe for the
    modality ``spec`` (a :class:`~llavidal.model.modality.ModalitySpec`); the caller checks the result
    against the projector."""
    from llavidal.data.feature_store import FeatureManifest

    if spec.name == "video":
        temporal = spec.num_tokens - UPSTREAM_VIDEO_PATCHES
        if temporal < 1:
            raise RecipeError(
                f"the video projector expects {spec.num_tokens} tokens, fewer than the {UPSTREAM_VIDEO_PATCHES} "
                "patches of upstream pooling, and the weights record no feature manifest that says how they were "
                "pooled; pass the weights of a training run whose feature folders exist"
            )
        recipe: Recipe = VideoRecipe(num_frames=temporal, temporal_tokens=temporal)
    elif spec.name == "pose":
        recipe = PoseRecipe()
    elif spec.name == "object":
        recipe = ObjectRecipe(tokens_per_object=int(spec.group_size))
    else:
        raise RecipeError(f"no extractor for modality {spec.name!r}; known: {sorted(EXTRACTORS)}")
    return FeatureManifest(modality=spec.name, extractor="unrecorded (upstream recipe assumed)",
                           feature_dim=int(spec.feature_dim), shape=[], dtype=recipe.feature_dtype,
                           recipe=recipe_to_dict(recipe))


def round_through(features: "np.ndarray", dtype: str) -> "np.ndarray":
    """float32 values as training read them after storage in ``dtype``."""
    import numpy as np

    return np.asarray(features).astype(dtype if dtype in ("float16", "float32") else "float32").astype(np.float32)
