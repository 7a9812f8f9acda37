"""A sqlite cache of judge replies, keyed by a hash of (judge id, prompt version, request).

Each reply is committed as soon as its call completes (autocommit, WAL journal), so a run killed with
``kill -9`` loses at most the calls still in flight; a rerun asks only for what is not in the cache.
Raw reply text is stored (not the parsed score), so an improved reply parser applies to cached replies
too. Failed calls (no reply after the retries) are not stored: a rerun tries them again.

``synchronous=NORMAL`` with WAL survives a killed process (the WAL is in the OS before a commit
returns); only a power cut can lose the last commits.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def cache_key(judge_id: str, prompt_version: str, request: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of (judge id, prompt version, request fields)."""
    payload = json.dumps(
        {"judge_id": judge_id, "prompt_version": prompt_version, "request": request},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CachedReply:
    reply: str
    served_model: str
    created: float


class JudgeCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, judge_id TEXT NOT NULL, "
                "prompt_version TEXT NOT NULL, criterion TEXT, reply TEXT NOT NULL, served_model TEXT, "
                "created REAL NOT NULL)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as err:
            raise RuntimeError(f"judge cache {self.path}: not a usable sqlite database ({err}); move it away") from None

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reply, served_model, created FROM judgements WHERE key = ?", (key,)
            ).fetchone()
        return CachedReply(*row) if row else None

    def put(
        self, key: str, judge_id: str, prompt_version: str, criterion: str, reply: str, served_model: str = ""
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, judge_id, prompt_version, criterion, reply, served_model, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def keys(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT key FROM judgements")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
