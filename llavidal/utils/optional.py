"""Lazy imports of optional extras with a message that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA_FOR = {
    "av": "extract",
    "decord": "decord",
    "pybullet": "world",
    "openai": "eval",
    "matplotlib": "eval",
    "sentence_transformers": "pose",
    "gradio": "demo",
    "mediapipe": "mediapipe",
    "deepspeed": "deepspeed",
    "gguf": "embedded",
    "ai_edge_litert": "detect",
    "open_clip": "open_clip",
    "flash_attn": "flash-attn",
}


class MissingDependencyError(ImportError):
    pass


def require(module: str, feature: str = "", extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or _EXTRA_FOR.get(module.split(".")[0], "all")
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"'{module}' is needed{what} but is not installed ({err}). "
            f"Install it with: pip install 'llavidal[{extra}]'"
        ) from None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
