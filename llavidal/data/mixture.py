"""Several instruction files in one training run (video, image and text-only instruction data, as PLLaVA and
LSTP-Chat train), each with a sampling weight.

``--data_mixture video.json:1,images.json:0.5:image=feats/coco,text.json:0.2`` (comma-separated entries)::

    PATH[:WEIGHT][:KEY=DIR ...]

* ``WEIGHT`` (default 1) is the share of that file's usable samples drawn per epoch: 1 takes each sample once,
  0.5 a seeded half of them, 2 each twice (any positive number; the part above a whole number is a seeded
  subset). The draw is reproducible from ``--seed`` and the epoch (every torchrun rank draws the same table).
* ``KEY=DIR`` (``video``, ``image``, ``pose``, ``object``) gives that file its own feature folder; a file
  without one uses the global ``--video_folder`` / ``--image_folder`` / ``--pose_folder`` / ``--object_folder``.
  The model's modalities are those of the global folders (an entry may re-point a folder, not add a modality).

Each file is read by :class:`~llavidal.data.dataset.LazySupervisedDataset` (so a file may itself mix video,
image and text records); the start of training logs, per file, its records, usable samples per source and
the samples it contributes per epoch.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from llavidal.data.dataset import SOURCES, LazySupervisedDataset

logger = logging.getLogger(__name__)

FOLDER_KEYS = ("video", "image", "pose", "object")


@dataclass(frozen=True)
class MixtureEntry:
    """One file of a data mixture."""

    path: str
    weight: float = 1.0
    folders: Mapping[str, str] = field(default_factory=dict)
    """Folder overrides of this file: ``video``, ``image``, ``pose``, ``object`` -> folder."""


def parse_data_mixture(spec: str) -> list[MixtureEntry]:
    """``PATH[:WEIGHT][:KEY=DIR...],...`` -> entries (see the module docstring); a ValueError names the bad entry."""
    entries = []
    for raw in (part.strip() for part in str(spec).split(",")):
        if not raw:
            continue
        path, *rest = raw.split(":")
        weight, folders = 1.0, {}
        for position, item in enumerate(rest):
            if "=" in item:
                key, _, folder = item.partition("=")
                if key not in FOLDER_KEYS or not folder:
                    raise ValueError(f"--data_mixture entry {raw!r}: {item!r} must be KEY=DIR with KEY one of {FOLDER_KEYS}")
                folders[key] = folder
            elif position == 0:
                try:
                    weight = float(item)
                except ValueError:
                    raise ValueError(f"--data_mixture entry {raw!r}: weight {item!r} is not a number "
                                     "(write PATH:WEIGHT, e.g. images.json:0.5)") from None
                if not math.isfinite(weight) or weight <= 0:
                    raise ValueError(f"--data_mixture entry {raw!r}: the weight must be a positive number, got {item}")
            else:
                raise ValueError(f"--data_mixture entry {raw!r}: after PATH:WEIGHT only KEY=DIR items may follow, got {item!r}")
        if not path:
            raise ValueError(f"--data_mixture entry {raw!r} has no file path")
        entries.append(MixtureEntry(path, weight, folders))
    if not entries:
        raise ValueError("--data_mixture is empty; write PATH:WEIGHT,PATH:WEIGHT,...")
    return entries


def draw_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Samples per epoch of each part: ``round(weight * size)``, at least 1 for a non-empty part."""
    return [max(1, int(round(w * n))) if n else 0 for n, w in zip(sizes, weights)]


def draw_indices(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into ``range(size)``: whole passes over a permutation each, then a seeded subset."""
    if size == 0 or count == 0:
        return np.zeros(0, dtype=np.int64)
    passes, remainder = divmod(count, size)
    parts = [rng.permutation(size) for _ in range(passes)]
    if remainder:
        parts.append(rng.permutation(size)[:remainder])
    return np.concatenate(parts).astype(np.int64)


class MixedDataset(Dataset):
    """Samples drawn per epoch from several datasets with weights (see the module docstring).

    ``parts`` are ``(name, dataset, weight)``; an index addresses this epoch's table of (part, sample) pairs,
    ordered part by part (the trainer's sampler shuffles). :meth:`set_epoch` draws the next epoch's table.
    """

    def __init__(self, parts: Sequence[tuple[str, Any, float]], seed: int = 42):
        if not parts:
            raise ValueError("a data mixture needs at least one part")
        self.names = [name for name, _, _ in parts]
        self.datasets = [dataset for _, dataset, _ in parts]
        self.weights = [float(weight) for _, _, weight in parts]
        self.seed = int(seed)
        self.counts = draw_counts([len(d) for d in self.datasets], self.weights)
        self.epoch = 0
        self._draw()

    def _draw(self) -> None:
        part_ids, local_ids = [], []
        for part, (dataset, count) in enumerate(zip(self.datasets, self.counts)):
            rng = np.random.default_rng([self.seed, self.epoch, part])
            drawn = draw_indices(len(dataset), count, rng)
            part_ids.append(np.full(len(drawn), part, dtype=np.int64))
            local_ids.append(drawn)
        self.part_ids = np.concatenate(part_ids)
        self.local_ids = np.concatenate(local_ids)

    def set_epoch(self, epoch: int) -> None:
        """Draw the table of ``epoch`` (and re-seed each part's modality dropout)."""
        self.epoch = int(epoch)
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        self._draw()

    def epoch_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that draws this dataset's table at the start of each epoch (the
        Trainer calls a dataset's ``set_epoch`` only when its sampler has none; a resumed run draws the table of
        the epoch it resumes in)."""
        from transformers import TrainerCallback

        dataset = self

        class MixtureEpoch(TrainerCallback):
            def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                epoch = int(math.floor(float(state.epoch or 0.0) + 1e-9))
                if epoch != dataset.epoch:
                    dataset.set_epoch(epoch)

        return MixtureEpoch()

    def __len__(self) -> int:
        return int(len(self.part_ids))

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index in that part's dataset) of ``index`` in this epoch's table."""
        return int(self.part_ids[index]), int(self.local_ids[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, local = self.locate(index)
        return self.datasets[part][local]

    def _per_sample(self, attribute: str) -> list:
        values = [getattr(dataset, attribute) for dataset in self.datasets]
        return [values[p][i] for p, i in zip(self.part_ids.tolist(), self.local_ids.tolist())]

    @property
    def lengths(self) -> list[int]:
        return self._per_sample("lengths")

    @property
    def modality_lengths(self) -> list[int]:
        return self._per_sample("modality_lengths")

    @property
    def sources(self) -> list[str]:
        return self._per_sample("sources")

    @property
    def runtime_drops(self) -> collections.Counter:
        return sum((getattr(d, "runtime_drops", collections.Counter()) for d in self.datasets), collections.Counter())

    @property
    def runtime_missing(self) -> collections.Counter:
        return sum((getattr(d, "runtime_missing", collections.Counter()) for d in self.datasets), collections.Counter())

    def source_counts(self) -> collections.Counter:
        """source -> samples of this epoch's table."""
        return collections.Counter(self.sources)

    def describe(self) -> str:
        """Per file: usable samples per source, weight, samples per epoch; then the epoch's totals per source."""
        lines = [f"data mixture: {len(self)} samples per epoch from {len(self.datasets)} files"]
        for name, dataset, weight, count in zip(self.names, self.datasets, self.weights, self.counts):
            per_source = collections.Counter(getattr(dataset, "sources", []))
            shown = ", ".join(f"{k} {per_source[k]}" for k in SOURCES if per_source.get(k)) or "none"
            lines.append(f"  {name}: {len(dataset)} usable samples ({shown}) x {weight:g} -> {count} per epoch")
        totals = self.source_counts()
        lines.append("  per source this epoch: " + ", ".join(f"{k} {totals[k]}" for k in SOURCES if totals.get(k)))
        return "\n".join(lines)


def build_training_dataset(
    data_args: Any, tokenizer: Any, registry: Any, *, log: bool = True,
    make: Callable[..., Any] = LazySupervisedDataset, **dataset_kwargs: Any,
) -> Any:
    """The training dataset of ``data_args``: one file (``--data_path``) or a :class:`MixedDataset`
    (``--data_mixture``). Logs the per-source counts when ``log``. ``dataset_kwargs`` go to every
    :class:`LazySupervisedDataset` (template, max_length, seed, ...)."""
    folders = data_args.feature_folders()
    image_folder = getattr(data_args, "image_folder", None)
    if not getattr(data_args, "data_mixture", None):
        dataset = make(data_args.data_path, tokenizer, registry, folders, image_folder=image_folder,
                       log_summary=log, **dataset_kwargs)
        if log:
            counts = collections.Counter(dataset.sources)
            logger.info("training samples per source: %s",
                        ", ".join(f"{k} {counts[k]}" for k in SOURCES if counts.get(k)) or "none")
        return dataset
    parts = []
    for entry in parse_data_mixture(data_args.data_mixture):
        extra = sorted(set(entry.folders) - set(registry.names()) - {"image"})
        if extra:
            raise ValueError(f"--data_mixture {entry.path}: {extra[0]}={entry.folders[extra[0]]} names a modality the "
                             f"model does not use (its modalities come from the global folders: {registry.names()}); "
                             f"pass --{extra[0]}_folder too")
        own = {**folders, **{k: v for k, v in entry.folders.items() if k != "image"}}
        if not Path(entry.path).is_file():
            raise FileNotFoundError(f"--data_mixture: {entry.path} does not exist")
        dataset = make(entry.path, tokenizer, registry, own, image_folder=entry.folders.get("image", image_folder),
                       log_summary=log, **dataset_kwargs)
        parts.append((os.fspath(entry.path), dataset, entry.weight))
    mixed = MixedDataset(parts, seed=dataset_kwargs.get("seed", 42))
    if log:
        logger.info(mixed.describe())
    return mixed
