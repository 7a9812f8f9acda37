"""Driving the demo from a real browser: Debian's chromium through playwright's Python package.

Shared by the browser test (``tests/test_demo_browser.py``) and ``scripts/demo_screenshot.py``.
Playwright is never allowed to download a browser: the system chromium is launched by path
(``$LLAVIDAL_CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on ``PATH``), headless, with no
background traffic, and each launch gets a new, empty profile folder from playwright itself.
``scripts/install_test_deps.sh`` installs both.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
"""Added to playwright's own (which include ``--headless`` and a new temporary ``--user-data-dir``)."""

INSTALL_HINT = "run scripts/install_test_deps.sh (pip install playwright; apt-get install chromium)"


class BrowserUnavailable(RuntimeError):
    """Playwright or chromium is not installed (the message says how to install it)."""


def chromium_path() -> str | None:
    """The chromium executable to launch, or None when there is none."""
    for candidate in (os.environ.get("LLAVIDAL_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def sync_playwright() -> Any:
    """``playwright.sync_api.sync_playwright`` or :class:`BrowserUnavailable` saying how to install it."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        raise BrowserUnavailable(f"the playwright Python package is not installed; {INSTALL_HINT}") from None
    return start


def launch_chromium(playwright: Any, executable: str | None = None) -> Any:
    """A headless system chromium (a playwright ``Browser``) with :data:`CHROMIUM_FLAGS`.

    Raises :class:`BrowserUnavailable` when no chromium is installed, never downloading one.
    """
    executable = executable or chromium_path()
    if executable is None:
        raise BrowserUnavailable(
            f"chromium is not installed (looked at $LLAVIDAL_CHROMIUM, /usr/bin/chromium, PATH); {INSTALL_HINT}"
        )
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
