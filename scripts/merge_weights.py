"""Merge projector weight files of the staged recipe; later keys win.

Run as: python scripts/merge_weights.py --inputs a/trainable.safetensors b/mm_projector.bin --output merged/
"""

import sys

from llavidal.model.merge import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
