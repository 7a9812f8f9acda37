"""Spatio-temporal CLIP video features at the path and with the flags upstream users type.

Run as:
    python scripts/save_spatio_temporal_clip_features.py --video_dir_path VIDEOS --clip_feat_path FEATURES
    torchrun --nproc_per_node=4 scripts/save_spatio_temporal_clip_features.py --video_dir_path VIDEOS --clip_feat_path FEATURES

Upstream encoded with CLIP ViT-L/14 (openai/clip-vit-large-patch14): pass its local folder with
``--encoder PATH``. Without it the embedded seeded encoder is used. All flags: ``--help``; the code is
``llavidal.features.video`` (also ``llavidal extract video``).
"""

import sys

from llavidal.features.video import main

if __name__ == "__main__":
    sys.exit(main())
