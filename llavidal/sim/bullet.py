"""pybullet access for the world generator: a silenced import and a silenced client.

The pybullet C library prints a build banner on import and URDF warnings while loading, straight to the
process's C-level stdout/stderr. Python's ``sys.stdout`` redirection cannot catch that, so
:func:`silenced` points file descriptors 1 and 2 at ``/dev/null`` for the duration of a block.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from types import ModuleType
from typing import Iterator

from llavidal.utils.optional import require

_fd_lock = threading.Lock()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Send C-level stdout and stderr to /dev/null inside the block (Python's streams are flushed)."""
    with _fd_lock:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = []
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # fd not open (e.g. a daemon without a terminal): nothing to silence
                    continue
                os.dup2(devnull, fd)
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            os.close(devnull)


_pybullet: ModuleType | None = None


def pybullet() -> ModuleType:
    """Import pybullet once, without its banner."""
    global _pybullet
    if _pybullet is None:
        with silenced():
            _pybullet = require("pybullet", "the embedded ADL world (llavidal synth)")
    return _pybullet


def data_path() -> str:
    with silenced():
        data = require("pybullet_data", "the embedded ADL world (llavidal synth)", extra="world")
    return data.getDataPath()


class Client:
    """One DIRECT-mode physics client. Every call goes through ``client.call(name, ...)`` or the
    attribute shortcut ``client.<function>(...)``, with this client's id filled in."""

    def __init__(self) -> None:
        p = pybullet()
        with silenced():
            self.id = p.connect(p.DIRECT)
        if self.id < 0:
            raise RuntimeError("pybullet could not open a DIRECT physics client")
        self.p = p

    def __getattr__(self, name: str):
        function = getattr(self.p, name)
        if not callable(function):
            return function

        def bound(*args, **kwargs):
            return function(*args, physicsClientId=self.id, **kwargs)

        return bound

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.p.disconnect(physicsClientId=self.id)
