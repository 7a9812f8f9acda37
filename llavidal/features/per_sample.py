"""The resumable, atomic, shardable loop shared by the per-sample extractors (pose, objects).

For each ``(sample_id, source)``: skip when ``{out}/{id}{suffix}{ext}`` exists, validates and was computed
from the sample's source files as they are now (the sha256 a safetensors file records; a world regenerated
with another preset or seed under the same names is extracted again); else compute the features, check their shape, write them atomically (a killed run leaves no half file), or
record the error in ``failed.jsonl`` and go on. Work is split round-robin across torchrun ranks; each
rank writes its own files and ``manifest.rank{r}.json`` / ``failed.rank{r}.jsonl``, merged into
``manifest.json`` / ``failed.jsonl`` at the end (through a gloo barrier when the ranks can rendezvous,
otherwise by the next single-process run). A folder whose manifest describes a different recipe is
refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llavidal.constants import MANIFEST_NAME
from llavidal.data.feature_store import (
    SOURCE_KEY,
    FeatureFileError,
    FeatureManifest,
    files_sha256,
    merge_rank_manifests,
    rank_manifest_name,
    save_features,
    save_pickle_features,
    source_unchanged,
    validate_feature_file,
)
from llavidal.utils import dist
from llavidal.utils.io import append_jsonl

logger = logging.getLogger(__name__)

FAILED_NAME = "failed.jsonl"
SAVE_FORMATS = {"safetensors": ".safetensors", "pickle": None}  # pickle: extension given by the caller
SAVE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class ExtractionSummary:
    modality: str
    out_dir: Path
    done: int = 0
    skipped: int = 0
    failed: int = 0
    changed: int = 0
    """Samples whose feature file existed but was computed from other source files (extracted again)."""
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    def line(self) -> str:
        where = f" (reasons in {self.out_dir / FAILED_NAME})" if self.failed else ""
        rank = f" [rank {dist.rank()}/{dist.world_size()}]" if dist.world_size() > 1 else ""
        changed = f" ({self.changed} of them from changed sources)" if self.changed else ""
        return (
            f"{self.modality}{rank}: {self.done} extracted{changed}, {self.skipped} already done, {self.failed} failed{where} "
            f"in {self.seconds:.1f} s -> {self.out_dir}"
        )


def output_path(out_dir: Path, sample_id: str, suffix: str, save_format: str, pickle_ext: str) -> Path:
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"unknown format {save_format!r}; use one of {sorted(SAVE_FORMATS)}")
    extension = SAVE_FORMATS[save_format] or pickle_ext
    return out_dir / f"{sample_id}{suffix}{extension}"


def check_unique_ids(items: Sequence[tuple[str, Any]]) -> None:
    counts = collections.Counter(sample_id for sample_id, _ in items)
    duplicates = sorted(i for i, c in counts.items() if c > 1)
    if duplicates:
        sources = [str(src) for sid, src in items if sid == duplicates[0]]
        raise ValueError(
            f"{len(duplicates)} sample ids occur more than once (e.g. {duplicates[0]!r}: {sources}); "
            "ids are file names without extension and must be unique across subfolders"
        )


def check_existing_manifest(out_dir: Path, manifest: FeatureManifest, overwrite: bool) -> None:
    existing = FeatureManifest.load(out_dir)
    if existing is not None and not existing.same_recipe(manifest) and not overwrite:
        raise FeatureFileError(
            f"{out_dir / MANIFEST_NAME}: the features there were made differently ({existing.extractor}, "
            f"{existing.model_id or 'no model id'}, shape {existing.shape}) than this run ({manifest.extractor}, "
            f"{manifest.model_id or 'no model id'}, shape {manifest.shape}); use another --out or pass --overwrite"
        )


def merge_outputs(out_dir: Path) -> None:
    """Merge per-rank manifests and ``failed.rank*.jsonl`` files left in ``out_dir`` (idempotent)."""
    merge_rank_manifests(out_dir)
    dist.merge_rank_outputs([out_dir / FAILED_NAME])


def remove_stale_temporaries(out_dir: Path, targets: set[str]) -> None:
    """Delete temporary files that a killed run left behind for ``targets`` (``.{name}.XXXX.tmp...``).

    Only this rank's targets, so that other ranks' writes in progress are not touched.
    """
    for entry in out_dir.iterdir():
        name = entry.name
        if name.startswith(".") and ".tmp" in name:
            target = name[1:].rsplit(".tmp", 1)[0].rsplit(".", 1)[0]  # ".{target}.{random}.tmp{suffix}"
            if target in targets:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def run_per_sample(
    items: Sequence[tuple[str, Any]],
    out_dir: str | os.PathLike,
    compute: Callable[[str, Any], np.ndarray],
    manifest: FeatureManifest,
    suffix: str,
    pickle_ext: str,
    expected_shape: Sequence[int],
    save_format: str = "safetensors",
    overwrite: bool = False,
    progress: bool = True,
    sources: Callable[[str, Any], Sequence[Path]] | None = None,
) -> ExtractionSummary:
    """Extract every item's features (this rank's share); see the module docstring. ``sources(sample_id,
    source)`` names the files a sample's features are computed from (default: ``source`` itself when it is a
    file); their sha256 is recorded in each safetensors file and checked when a rerun finds the file."""
    if sources is None:
        def sources(sample_id: str, source: Any) -> list[Path]:
            return [Path(source)] if isinstance(source, (str, os.PathLike)) and Path(source).is_file() else []

    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_unique_ids(items)
    check_existing_manifest(out_dir, manifest, overwrite)
    if manifest.dtype not in SAVE_DTYPES:
        raise ValueError(f"manifest dtype {manifest.dtype!r} is not one of {sorted(SAVE_DTYPES)}")
    dtype = SAVE_DTYPES[manifest.dtype]
    world = dist.world_size()
    if world == 1:
        merge_outputs(out_dir)  # leftovers of an earlier torchrun that could not rendezvous
    failed_path = out_dir / FAILED_NAME if world == 1 else dist.rank_path(out_dir / FAILED_NAME, dist.rank())
    for stale in {failed_path, out_dir / FAILED_NAME} if dist.rank() == 0 else {failed_path}:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()  # this run retries everything that failed before
    mine = dist.shard(sorted(items, key=lambda item: item[0]))
    remove_stale_temporaries(out_dir, {output_path(out_dir, i, suffix, save_format, pickle_ext).name for i, _ in mine})
    summary = ExtractionSummary(manifest.modality, out_dir)
    started = time.perf_counter()
    bar = tqdm(mine, desc=f"extract {manifest.modality}", unit="sample", disable=not progress, dynamic_ncols=True)
    for sample_id, source in bar:
        path = output_path(out_dir, sample_id, suffix, save_format, pickle_ext)
        if not overwrite and path.exists() and validate_feature_file(path, tuple(expected_shape)):
            if source_unchanged(path, sources(sample_id, source)):
                summary.skipped += 1
                continue
            summary.changed += 1
            logger.info("%s: %s was computed from other source files; extracting it again", sample_id, path)
            path.unlink()  # never left in place for a reader if this sample now fails
        try:
            features = np.asarray(compute(sample_id, source))
            if len(features.shape) != len(expected_shape) or any(
                e not in (-1, None) and e != a for e, a in zip(expected_shape, features.shape)
            ):
                raise ValueError(f"features have shape {features.shape}, expected {tuple(expected_shape)}")
            if not np.isfinite(features).all():
                raise ValueError("features contain NaN or infinite values")
            features = features.astype(dtype)
            if save_format == "pickle":
                save_pickle_features(path, features)
            else:
                metadata = {"sample_id": sample_id, "modality": manifest.modality}
                used = sources(sample_id, source)  # after compute: it may have written one (detected tracks)
                if used:
                    metadata[SOURCE_KEY] = files_sha256(used)
                save_features(path, features, metadata)
            summary.done += 1
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one bad sample must not stop the run: record it and go on
            record = {"id": sample_id, "source": str(source), "error": f"{type(err).__name__}: {err}"}
            append_jsonl(failed_path, record)
            summary.failures.append(record)
            summary.failed += 1
            logger.warning("%s: %s", sample_id, record["error"])
        bar.set_postfix(done=summary.done, skipped=summary.skipped, failed=summary.failed)
    bar.close()
    summary.seconds = time.perf_counter() - started
    if world == 1:
        manifest.save(out_dir)
    else:
        manifest.save(out_dir, rank_manifest_name(dist.rank()))
        with dist.process_group() as group:  # created here: ranks rendezvous only once their work is done
            if group.active:
                group.barrier()
                if group.is_main:
                    merge_outputs(out_dir)
                group.barrier()
            else:
                logger.info("ranks cannot rendezvous; rerun once without torchrun to merge %s", out_dir)
    return summary
