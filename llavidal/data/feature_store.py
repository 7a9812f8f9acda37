"""Per-sample features on disk: our safetensors + manifest, ``.npy``, and upstream pickles (safely).

One folder holds one modality's features, one file per sample, plus a ``manifest.json`` that says how
they were made (extractor, model id and weight hash, layer, frames, pooling, shape, dtype, package
version). Upstream folders hold ``{id}.pkl`` / ``{id}_pose.pickle`` / ``{id}_object.pkl`` pickles of
numpy arrays; those are read through :func:`safe_load_pickle`, which admits numpy arrays and nothing
else: a pickle that names any other callable is refused before anything runs.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import io
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file as _np_load_file
from safetensors.numpy import save_file as _np_save_file

from llavidal.constants import MANIFEST_NAME
from llavidal.utils.io import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

FEATURE_KEY = "features"
MANIFEST_FORMAT = "llavidal-features/2"
"""2: manifests carry a typed ``recipe``; 1 (still read): how features were made only as loose fields."""
FEATURE_EXTENSIONS = (".safetensors", ".npy", ".pkl", ".pickle")


class UnsafePickleError(ValueError):
    """A pickle asked for something other than numpy arrays; nothing was executed."""


class FeatureFileError(ValueError):
    """A feature file is missing, unreadable or of the wrong shape."""


# The only globals a pickle of plain numpy arrays needs. Both numpy 1 (`numpy.core`) and numpy 2
# (`numpy._core`) module paths appear in upstream files.
_ALLOWED_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_NUMPY_GLOBALS:
            if name == "_reconstruct":
                return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own reconstruct function
            if name == "scalar":
                return np.float32(0).__reduce__()[0]
            if name == "_frombuffer":
                return _frombuffer
            return getattr(np, name)
        raise UnsafePickleError(
            f"{self._source}: refused to load: the pickle asks for '{module}.{name}', and only numpy "
            "arrays are admitted (a pickle can run arbitrary code when loaded). Nothing was executed. "
            "Re-save the features as .npy or .safetensors, or re-extract them with llavidal."
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refused: persistent ids are not allowed in feature pickles")


def _frombuffer(buf, dtype, shape, order):
    array = np.frombuffer(buf, dtype=dtype)
    return array.reshape(shape, order=order) if shape else array


def safe_load_pickle(path_or_bytes: str | os.PathLike | bytes, source: str | None = None) -> np.ndarray:
    """Load an upstream feature pickle that holds a numpy array (or a list of equally shaped arrays)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, source = bytes(path_or_bytes), source or "<bytes>"
    else:
        source = source or str(path_or_bytes)
        data = Path(path_or_bytes).read_bytes()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or corrupt file
        raise FeatureFileError(f"{source}: not a readable feature pickle ({type(err).__name__}: {err})") from None
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise UnsafePickleError(f"{source}: refused: object arrays are not feature arrays")
        return obj
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(a, np.ndarray) for a in obj):
        return np.stack(obj)
    raise UnsafePickleError(f"{source}: refused: holds {type(obj).__name__}, expected a numpy array")


def save_pickle_features(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write upstream's format (a pickled numpy array), atomically. For users who need it."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            pickle.dump(np.ascontiguousarray(array), handle, protocol=4)


def save_features(path: str | os.PathLike, features: np.ndarray | torch.Tensor, metadata: dict | None = None) -> None:
    """Write one sample's features as safetensors (key ``features``), atomically."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        _np_save_file({FEATURE_KEY: np.ascontiguousarray(features)}, str(tmp), metadata=meta or None)


def load_feature_file(path: str | os.PathLike) -> np.ndarray:
    """Read one feature file of any supported format as a numpy array."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            tensors = _np_load_file(str(path))
            if FEATURE_KEY not in tensors:
                if len(tensors) != 1:
                    raise FeatureFileError(f"{path}: expected a tensor named '{FEATURE_KEY}', found {sorted(tensors)}")
                return next(iter(tensors.values()))
            return tensors[FEATURE_KEY]
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".pkl", ".pickle"):
            return safe_load_pickle(path)
    except (UnsafePickleError, FeatureFileError):
        raise
    except FileNotFoundError:
        raise
    except Exception as err:
        raise FeatureFileError(f"{path}: unreadable feature file ({type(err).__name__}: {err}); delete it and re-extract") from None
    raise FeatureFileError(f"{path}: unsupported feature file type {suffix!r}; use one of {FEATURE_EXTENSIONS}")


def check_feature_array(array: Any, path: str | os.PathLike, record_id: str = "") -> np.ndarray:
    """Return ``array`` as numpy when it holds usable features; else raise :class:`FeatureFileError`
    naming ``path`` (and ``record_id``): features must be floating point and finite everywhere.

    Every reader of feature files calls this on what it read (training's dataset, evaluation), so
    NaN/Inf values or integer/bool arrays never reach a model (one NaN turns a whole batch's loss NaN).
    """
    where = f"{path}" + (f" (record {record_id})" if record_id else "")
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy() if array.dtype != torch.bfloat16 else array.detach().float().cpu().numpy()
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise FeatureFileError(
            f"{where}: features are of dtype {array.dtype}; feature files hold floating point values "
            "(float16/float32). This file was not written by a feature extractor: re-extract it"
        )
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        inf = int(array.size - finite.sum()) - nan
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise FeatureFileError(
            f"{where}: features hold {nan} NaN and {inf} Inf values (first at index {first}, shape "
            f"{tuple(array.shape)}); re-extract this file (check the source video/pose data of this record)"
        )
    return array


def validate_feature_file(path: str | os.PathLike, expected_shape: tuple | None = None) -> bool:
    """True when ``path`` exists, loads, and matches ``expected_shape`` (``-1`` matches any size)."""
    try:
        array = load_feature_file(path)
    except (OSError, ValueError):
        return False
    if expected_shape is None:
        return True
    if len(array.shape) != len(expected_shape):
        return False
    return all(e in (-1, None) or e == a for e, a in zip(expected_shape, array.shape))


def weights_sha256(paths: list[str | os.PathLike] | str | os.PathLike | None = None, state_dict: dict | None = None) -> str:
    """A stable hash of model weights (files' bytes, or a state dict's tensors) for manifests."""
    digest = hashlib.sha256()
    if state_dict is not None:
        for key in sorted(state_dict):
            tensor = state_dict[key]
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()
    if paths is None:
        return ""
    return files_sha256(paths)


def files_sha256(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> str:
    """sha256 of the files' bytes, in the order of their sorted paths (model weights, a sample's sources)."""
    digest = hashlib.sha256()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in sorted(str(p) for p in paths):
        with open(p, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


FINGERPRINT_CONTENT_LIMIT = 256 * 1024 * 1024
"""Files up to this size are fingerprinted by content; larger ones (a base model's shards) by size and mtime."""


def weights_fingerprint(path: str | os.PathLike) -> str:
    """A sha256 naming a weights file or folder as it is now: its top-level files by content (by name, size and
    modification time beyond :data:`FINGERPRINT_CONTENT_LIMIT`). Retraining into the same folder changes it."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(file.name.encode())
        if stat.st_size <= FINGERPRINT_CONTENT_LIMIT:
            digest.update(bytes.fromhex(files_sha256([file])))
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


SOURCE_KEY = "source_sha256"
"""safetensors metadata key of a feature file: :func:`files_sha256` of the files its features were computed
from (the video; its tracks; the skeleton), so that a resumed extraction redoes a sample whose source changed."""


def stored_source_digest(path: str | os.PathLike) -> str | None:
    """The :data:`SOURCE_KEY` a safetensors feature file records, or None (another format, an older file)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            return (handle.metadata() or {}).get(SOURCE_KEY)
    except Exception:  # unreadable: the caller's validation decides
        return None


def source_unchanged(path: str | os.PathLike, sources: Sequence[str | os.PathLike]) -> bool:
    """Whether feature file ``path`` was computed from ``sources`` as they are now: True when it records the
    same digest, or records none (pickles and files written before digests were kept cannot tell)."""
    stored = stored_source_digest(path)
    return stored is None or stored == files_sha256(sources)


@dataclass
class FeatureManifest:
    """How a folder of features was made. Written as ``manifest.json`` in the folder."""

    modality: str
    extractor: str
    feature_dim: int
    shape: list[int]
    """Per-sample shape; ``-1`` for a variable axis (objects: ``[-1, 512]`` or ``[-1, 8, 512]``)."""
    dtype: str = "float16"
    model_id: str = ""
    weights_sha256: str = ""
    layer: int | None = None
    frames: int | None = None
    pooling: str = ""
    """A human-readable description of the pooling (for people; code reads ``recipe``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    created: str = ""
    format: str = MANIFEST_FORMAT
    recipe: dict[str, Any] = field(default_factory=dict)
    """The typed, versioned recipe (:mod:`llavidal.features.extractor`) that rebuilds the extractor.
    Empty in manifests of format ``llavidal-features/1``, which are upgraded from their other fields."""

    def __post_init__(self) -> None:
        if not self.package_version:
            from llavidal import __version__

            self.package_version = __version__
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureManifest":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: str | os.PathLike, name: str = MANIFEST_NAME) -> Path:
        path = Path(folder) / name
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike) -> "FeatureManifest | None":
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.exists():
            return None
        with open(path, encoding="utf-8") as handle:
            try:
                return cls.from_dict(json.load(handle))
            except (json.JSONDecodeError, TypeError) as err:
                raise FeatureFileError(f"{path}: unreadable manifest ({err}); delete it and re-extract") from None

    def same_recipe(self, other: "FeatureManifest") -> bool:
        """True when two manifests describe features made the same way (ignores timestamps)."""
        a, b = self.to_dict(), other.to_dict()
        ignored = ["created", "package_version", "extra"]
        if not (a.get("recipe") and b.get("recipe")):
            ignored += ["recipe", "format"]  # an old-format manifest: compare what both record
        for key in ignored:
            a.pop(key, None)
            b.pop(key, None)
        return a == b


def rank_manifest_name(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def merge_rank_manifests(folder: str | os.PathLike) -> FeatureManifest | None:
    """Merge ``manifest.rank*.json`` written by torchrun ranks into ``manifest.json``.

    All ranks must agree on the recipe; the merged manifest is written atomically and the per-rank files
    are removed. Returns the merged manifest (or the existing one when there is nothing to merge).
    """
    folder = Path(folder)
    parts = sorted(glob.glob(str(folder / "manifest.rank*.json")))
    if not parts:
        return FeatureManifest.load(folder)
    manifests = [FeatureManifest.load(p) for p in parts]
    first = manifests[0]
    for path, other in zip(parts[1:], manifests[1:]):
        if not first.same_recipe(other):
            raise FeatureFileError(f"{path}: this rank's recipe differs from {parts[0]}; re-run extraction")
    existing = FeatureManifest.load(folder)
    if existing is not None and not existing.same_recipe(first):
        raise FeatureFileError(
            f"{folder / MANIFEST_NAME}: existing features were made differently ({existing.extractor}, "
            f"{existing.model_id}); write to a new folder or delete the old features"
        )
    first.save(folder)
    for p in parts:
        os.remove(p)
    return first


def check_manifest_compatible(folder: str | os.PathLike, modality: str, feature_dim: int, num_tokens: int | None = None) -> FeatureManifest | None:
    """Refuse, with a clear message, a feature folder whose manifest disagrees with the model config.

    Folders without a manifest (upstream pickles) pass; their shapes are checked per sample on load.
    """
    manifest = FeatureManifest.load(folder)
    if manifest is None:
        return None
    if manifest.feature_dim != feature_dim:
        raise FeatureFileError(
            f"{folder}: features are {manifest.feature_dim}-d ({manifest.extractor}, {manifest.model_id or 'no model id'}) "
            f"but the model's '{modality}' projector expects {feature_dim}-d. Pass the matching feature "
            f"dimension to the model (e.g. --{modality}_feature_dim {manifest.feature_dim}) or re-extract."
        )
    # Only (k, D) features have their token count in the first axis; (T, P, D) grids and (n, 8, D) objects are
    # checked per sample by the reader (a design's frontend decides how many tokens a grid gives).
    if num_tokens and len(manifest.shape or []) == 2 and manifest.shape[0] not in (-1, num_tokens):
        raise FeatureFileError(
            f"{folder}: features have {manifest.shape[0]} tokens per sample but the model's '{modality}' "
            f"modality expects {num_tokens}; set the token count to match or re-extract."
        )
    return manifest


class FeatureFolder:
    """Reads one modality's features for samples named as in instruction records.

    ``get("v_1.pkl")`` looks for that exact file, then for the same stem with any supported extension
    (so upstream records that name ``.pkl`` files work with our ``.safetensors``). A missing file returns
    ``None`` (and is counted); ``strict=True`` raises instead.
    """

    def __init__(self, folder: str | os.PathLike, modality: str = "", strict: bool = False):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"feature folder {self.folder} does not exist; check the --{modality or 'feature'}_folder path")
        self.modality = modality
        self.strict = strict
        self.missing: list[str] = []
        self.manifest = FeatureManifest.load(self.folder)

    def resolve(self, name: str) -> Path | None:
        candidate = self.folder / name
        if candidate.is_file():
            return candidate
        stem = Path(name).name
        for ext in FEATURE_EXTENSIONS:
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        for ext in FEATURE_EXTENSIONS:
            candidate = self.folder / (stem + ext)
            if candidate.is_file():
                return candidate
        return None

    def get(self, name: str, record_id: str = "") -> np.ndarray | None:
        """The features of ``name`` as read (``None`` when missing; see the class docstring)."""
        return self.read(name, record_id)[0]

    def read(self, name: str, record_id: str = "") -> tuple[np.ndarray | None, Path | None]:
        """``(features, resolved path)`` of ``name``, ``(None, None)`` when missing (``strict``: an error).

        The values are returned as read; callers check them with :func:`check_feature_array`, naming the
        resolved path (an upstream record naming ``v_1.pkl`` may resolve to ``v_1.safetensors``).
        """
        path = self.resolve(name)
        if path is None:
            if self.strict:
                raise FeatureFileError(
                    f"{self.folder}: no {self.modality or 'feature'} file for record {record_id or name!r} "
                    f"(looked for {name!r} with extensions {FEATURE_EXTENSIONS}); extract it or drop --strict_features"
                )
            self.missing.append(name)
            return None, None
        return load_feature_file(path), path
