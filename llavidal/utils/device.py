"""The one place that turns ``device`` / ``dtype`` settings into torch objects.

    resolve_device("auto")               -> cuda:LOCAL_RANK when CUDA is available, else cpu
    resolve_dtype("bf16")                -> torch.bfloat16
    resolve_dtype("auto", device=cuda)   -> torch.float16 (upstream's extraction dtype); float32 on CPU
    resolve_dtype("auto", default=None)  -> None (let from_pretrained keep the checkpoint's dtype)
"""

from __future__ import annotations

import os
from typing import Any

DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
"""Accepted spellings -> torch attribute names."""


def resolve_device(device: Any = None):
    """``None``/``""``/``"auto"``: this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")  # under torchrun each rank takes its own GPU
        return torch.device("cpu")
    try:
        return torch.device(str(device))
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} ({err}); use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(dtype: Any = None, device: Any = None, default: Any = "by_device"):
    """A torch dtype from a name (``bf16``, ``"torch.float16"``...) or a dtype.

    ``None``/``""``/``"auto"`` give ``default``: by default float16 on CUDA and float32 elsewhere (what
    extraction uses); pass ``default=None`` to leave the choice to the caller (``from_pretrained``), or a
    dtype/name.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if default == "by_device":
            return torch.float16 if resolve_device(device).type == "cuda" else torch.float32
        if default is None:
            return None
        return resolve_dtype(default)
    name = DTYPE_NAMES.get(str(dtype).replace("torch.", "").lower())
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPE_NAMES))} or auto")
    return getattr(torch, name)


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` / ``"bf16"`` -> ``"bfloat16"`` (for configs and manifests)."""
    return str(resolve_dtype(dtype, default="float32")).replace("torch.", "")
