"""Rank/world-size helpers that read torchrun's environment (no process group needed)."""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

T = TypeVar("T")


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
