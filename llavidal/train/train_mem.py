"""``train.py`` with the fastest exact attention kernel available (flash-attention 2 on a CUDA device
with ``flash_attn`` installed, else PyTorch SDPA, else eager). Same flags as ``train.py``.

Run as::

    torchrun --nproc_per_node=8 --master_port 29001 llavidal/train/train_mem.py --version v1 ...
"""

from __future__ import annotations

import sys

from llavidal.train.train import main as _train_main


def main(argv: list[str] | None = None) -> int:
    """Train with ``attn_implementation`` = the fastest exact kernel (unless --attn_implementation is given)."""
    return _train_main(argv, fastest_attention=True)


if __name__ == "__main__":
    sys.exit(main())
