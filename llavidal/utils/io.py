"""Atomic file writes and append-only JSONL, so that a killed job never leaves a half file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The temporary file keeps ``path``'s suffix (some writers pick a format by suffix). On error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync it: a crash loses at most the line being written.

    Readers (:func:`read_jsonl`) skip a torn last line, so a rerun can resume from the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_utf8_text(path: str | os.PathLike) -> str:
    """The text of ``path``; a file that is not UTF-8 is a ``ValueError`` naming it, the byte and the fix.

    The one reader of users' text files (training records, evaluation records, predictions), so that a file
    saved in another encoding never ends in a bare ``UnicodeDecodeError``.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}: not UTF-8 text (byte {err.start}, line {line}: {data[err.start:err.start + 1]!r} {err.reason}); "
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8, or your editor's 'save with encoding')"
        ) from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file, skipping a torn (unterminated, unparsable) final line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = io.StringIO(read_utf8_text(path), newline=None).readlines()  # as open(): \r\n -> \n, \u2028 kept
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn write from a killed run
            raise ValueError(f"{path}:{number}: not valid JSON; fix or delete this line") from None
    return records


def load_json_or_jsonl(path: str | os.PathLike) -> list[dict] | dict:
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    try:
        return json.loads(read_utf8_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); check the file") from None
