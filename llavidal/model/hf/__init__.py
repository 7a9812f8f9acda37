"""LLAVIDAL as a transformers-native model: ``AutoModelForCausalLM.from_pretrained(exported_folder)``.

``configuration_llavidal.py`` (:class:`LlavidalHFConfig`, ``model_type = "llavidal"``) and
``modeling_llavidal.py`` (:class:`LlavidalForCausalLM`) import only torch and transformers: ``llavidal export``
copies them beside the weights (``auto_map`` in ``config.json``), so the folder loads with
``trust_remote_code=True`` where this package is not installed. Once ``llavidal`` is imported the classes are
registered with ``AutoConfig`` / ``AutoModelForCausalLM`` and no remote code is needed.

Importing this package stays light (no torch): :func:`register` imports the classes and registers them;
:func:`register_when_transformers_loads` (called when ``llavidal`` is imported) runs it as soon as
transformers' Auto classes are imported, or at once when they already are.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

MODEL_TYPE = "llavidal"
MODELING_FILES = ("configuration_llavidal.py", "modeling_llavidal.py")
"""The self-contained files copied beside exported weights."""
AUTO_MAP = {
    "AutoConfig": "configuration_llavidal.LlavidalHFConfig",
    "AutoModelForCausalLM": "modeling_llavidal.LlavidalForCausalLM",
}
_TRIGGERS = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")
_lock = threading.RLock()
_registered = {"config": False, "model": False}


def register_config() -> None:
    """Register :class:`LlavidalHFConfig` with ``AutoConfig`` (idempotent)."""
    with _lock:
        if _registered["config"]:
            return
        from transformers.models.auto.configuration_auto import AutoConfig

        from llavidal.model.hf.configuration_llavidal import LlavidalHFConfig

        AutoConfig.register(MODEL_TYPE, LlavidalHFConfig, exist_ok=True)
        _registered["config"] = True


def register() -> None:
    """Register the config with ``AutoConfig`` and the model with ``AutoModelForCausalLM`` (idempotent)."""
    with _lock:
        register_config()
        if _registered["model"]:
            return
        from transformers.models.auto.modeling_auto import AutoModelForCausalLM

        from llavidal.model.hf.configuration_llavidal import LlavidalHFConfig
        from llavidal.model.hf.modeling_llavidal import LlavidalForCausalLM

        AutoModelForCausalLM.register(LlavidalHFConfig, LlavidalForCausalLM, exist_ok=True)
        _registered["model"] = True


def _register_after(name: str) -> None:
    try:
        if name.endswith("modeling_auto"):
            register()
        else:
            register_config()
    except Exception as err:  # noqa: BLE001 - never break the user's import of transformers
        logger.warning("llavidal: could not register the transformers classes (%s); pass trust_remote_code=True "
                       "to load exported folders", err)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs a module's own loader, then registers our classes."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _register_after(self._name)

    def __getattr__(self, attr: str) -> Any:  # get_source, is_package, get_resource_reader...
        return getattr(self._loader, attr)


class _AutoClassesHook(importlib.abc.MetaPathFinder):
    """Registers the classes right after transformers' Auto modules are first imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _TRIGGERS:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader, fullname)
        return spec


_HOOK = _AutoClassesHook()


def register_when_transformers_loads() -> None:
    """Register now if transformers' Auto classes are already imported, else as soon as they are.

    Cheap (imports neither torch nor transformers), so ``import llavidal`` stays fast."""
    for name in _TRIGGERS:
        if name in sys.modules:
            _register_after(name)
    if not all(name in sys.modules for name in _TRIGGERS) and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
