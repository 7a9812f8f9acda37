"""The Breakfast fork's segmentation metrics at its path: MoF, Edit and F1@{10,25,50} as MS-TCN computes them
(see llavidal.eval.segmentation).

Run as::

    python video_chatgpt/eval/metrics.py --pred_path predictions.json [--labels_dir LABELS] [--background SIL]
"""

import sys

from llavidal.eval.segmentation import main

if __name__ == "__main__":
    sys.exit(main())
