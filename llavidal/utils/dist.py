"""Ranks, shards and the end-of-run merge that extraction and inference share under torchrun.

    with dist.process_group() as group:          # a gloo group when torchrun's ranks can rendezvous
        mine = dist.shard(items)                 # every WORLD_SIZE-th item, starting at RANK
        failed = dist.rank_path(out / "failed.jsonl", group.rank)      # failed.rank{r}.jsonl
        ...                                      # each rank writes its own files
        totals = group.sum_counts([done, failed_count])
        group.barrier()                          # every rank's files are written
        if group.is_main:
            dist.merge_rank_outputs([out / "failed.jsonl"])   # + merge_rank_manifests(out) for features
        group.barrier()                          # the merge is done before any rank reports

Without a rendezvous (``WORLD_SIZE``/``RANK`` set by hand, or shards run one after another) the group
runs alone: its barriers return at once, ``sum_counts`` returns this rank's counts and each rank's files
stay on disk. :func:`merge_rank_outputs` is idempotent, so a later single-process run merges them.
Nothing here needs torch unless a process group is used.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(hours=48)
"""How long a barrier waits: ranks can finish hours apart (uneven shards); torchrun stops the others
when one rank dies, so a long wait does not hang on a crash."""


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def shard(items: Sequence[T], shard_rank: int | None = None, shards: int | None = None) -> list[T]:
    """Deterministic round-robin shard of ``items`` for this rank (every item in exactly one shard)."""
    shard_rank = rank() if shard_rank is None else shard_rank
    shards = world_size() if shards is None else shards
    return [item for i, item in enumerate(items) if i % shards == shard_rank]


# ---------------------------------------------------------------------------------------------------
# Per-rank files: rank r of ``out/preds.jsonl`` writes ``out/preds.rank{r}.jsonl``


def rank_path(path: str | os.PathLike, shard_rank: int) -> Path:
    """``dir/name.ext`` -> ``dir/name.rank{r}.ext``: the file rank ``r`` writes instead of ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{shard_rank}{path.suffix}")


def done_marker(path: str | os.PathLike, shard_rank: int) -> Path:
    """``dir/name.rank{r}.done``: written by a rank that finished its share of ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{shard_rank}.done")


def _rank_files(path: Path, suffix: str) -> list[Path]:
    """Existing ``{stem}.rank{r}{suffix}`` files beside ``path``, in rank order (rank 2 before rank 10)."""
    pattern = re.compile(rf"^{re.escape(path.stem)}\.rank(\d+){re.escape(suffix)}$")
    if not path.parent.is_dir():
        return []
    found = [(int(m.group(1)), entry) for entry in path.parent.iterdir() if (m := pattern.match(entry.name))]
    return [entry for _, entry in sorted(found)]


def rank_files(path: str | os.PathLike) -> list[Path]:
    """The per-rank files of ``path`` that exist, in rank order."""
    path = Path(path)
    return _rank_files(path, path.suffix)


def mark_done(path: str | os.PathLike, shard_rank: int) -> None:
    done_marker(path, shard_rank).write_text("done\n")


def pending_ranks(path: str | os.PathLike, shards: int) -> list[int]:
    """Ranks of ``shards`` that have not marked their share of ``path`` done."""
    return [r for r in range(shards) if not done_marker(path, r).exists()]


def remove_stale_rank_files(path: str | os.PathLike, shards: int) -> None:
    """Remove rank files of ``path`` (and markers) for ranks ``>= shards``: left by an earlier run with more ranks.

    Only the main rank calls this, and never for ranks of this run, whose files may be growing.
    """
    path = Path(path)
    for entry in _rank_files(path, path.suffix) + _rank_files(path, ".done"):
        if int(entry.name[len(path.stem) + len(".rank"):].split(".")[0]) >= shards:
            entry.unlink(missing_ok=True)


def merge_rank_outputs(
    outputs: Iterable[str | os.PathLike] = (),
    *,
    key: str | None = None,
    order: Sequence[str] | None = None,
    write_empty: bool = False,
) -> list[Path]:
    """Merge each JSONL output's rank files into it, then remove them (and the ranks' ``.done`` markers).

    Rows already in the merged file come first (they are older), then rank 0's, rank 1's, ... With
    ``key``, the latest row of each key wins and rows follow ``order`` (keys not in it after, in the
    order first seen; the merged file is compacted so even when there are no rank files); without, a row
    identical to an earlier one is dropped. Either way a merge cut
    short (killed after writing the merged file, before removing the rank files) gives the same file when
    run again, and running it with nothing left to merge changes nothing. The merged file is replaced
    atomically; with no rows at all it is removed, unless ``write_empty``. Returns the files written.

    Feature manifests (``manifest.rank{r}.json``) are merged by their owner,
    :func:`llavidal.data.feature_store.merge_rank_manifests`, which callers run beside this one.
    """
    from llavidal.utils.io import atomic_write_text, read_jsonl

    written = []
    for output in outputs:
        output = Path(output)
        parts = rank_files(output)
        markers = _rank_files(output, ".done")
        if not parts and not markers and key is None and (output.exists() or not write_empty):
            continue  # nothing to merge; with a key the merged file itself is compacted (latest row per key)
        rows = read_jsonl(output)
        for part in parts:
            rows.extend(read_jsonl(part))
        if key is not None:
            latest: dict[str, dict] = {}
            for row in rows:
                latest[str(row[key])] = row  # a key keeps the place where it was first seen
            ordered = [k for k in dict.fromkeys(str(k) for k in (order or ())) if k in latest]
            known = set(ordered)
            rows = [latest[k] for k in ordered] + [row for k, row in latest.items() if k not in known]
        else:
            seen: set[str] = set()
            unique = []
            for row in rows:
                text = json.dumps(row, sort_keys=True, ensure_ascii=False)
                if text not in seen:
                    seen.add(text)
                    unique.append(row)
            rows = unique
        if rows or write_empty:
            atomic_write_text(output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            written.append(output)
        else:
            output.unlink(missing_ok=True)
        for part in parts + markers:
            part.unlink(missing_ok=True)
    return written


# ---------------------------------------------------------------------------------------------------
# The process group


class ProcessGroup:
    """This run's ranks: a torch process group when they can rendezvous, else this process alone.

    Under torchrun (``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` set) it joins the ranks' group (an existing
    one, e.g. the Trainer's, is reused; else one is created and destroyed by :meth:`close`). ``gloo`` is
    the default backend: the collectives here are a barrier and a few counts, which gloo does on the CPU
    whether or not the ranks use GPUs; ``nccl`` works too (counts go through this rank's GPU). Without a
    rendezvous it runs alone (``active`` False), unless ``require_rendezvous``, which raises instead.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, backend: str = "gloo", timeout: float | datetime.timedelta | None = None,
                 require_rendezvous: bool = False) -> None:
        self.rank, self.world_size = rank(), world_size()
        self.active = False
        self._owned = False
        if self.world_size <= 1:
            return
        import torch.distributed as torch_dist

        if torch_dist.is_available() and torch_dist.is_initialized():
            self.rank, self.world_size, self.active = torch_dist.get_rank(), torch_dist.get_world_size(), True
            return
        if "MASTER_ADDR" not in os.environ or not torch_dist.is_available():
            if require_rendezvous:
                raise ValueError(
                    f"WORLD_SIZE={self.world_size} but MASTER_ADDR is not set: launch several ranks with "
                    "torchrun (python -m torch.distributed.run --nproc_per_node=N ...)"
                )
            logger.info("rank %d of %d runs without a process group (no MASTER_ADDR); its files are "
                        "merged by rank 0 when every rank is done, or by a later single-process run",
                        self.rank, self.world_size)
            return
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        elif not isinstance(timeout, datetime.timedelta):
            timeout = datetime.timedelta(seconds=float(timeout))
        if backend == "nccl":
            import torch

            torch.cuda.set_device(local_rank())
        torch_dist.init_process_group(backend, timeout=timeout)
        self.active = self._owned = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (returns at once when running alone)."""
        if self.active:
            import torch.distributed as torch_dist

            torch_dist.barrier()

    def sum_counts(self, counts: Sequence[int]) -> list[int]:
        """Element-wise sum of every rank's ``counts`` (this rank's own when running alone)."""
        if not self.active:
            return list(counts)
        import torch
        import torch.distributed as torch_dist

        device = torch.device("cuda", torch.cuda.current_device()) if torch_dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor(list(counts), dtype=torch.int64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if self._owned:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()
            self._owned = self.active = False

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_group(backend: str = "gloo", timeout: float | datetime.timedelta | None = None,
                  require_rendezvous: bool = False) -> ProcessGroup:
    """``with process_group() as group:`` (see :class:`ProcessGroup`)."""
    return ProcessGroup(backend, timeout, require_rendezvous)
