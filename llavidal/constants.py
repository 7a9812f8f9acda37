"""Constants shared by every part of the package (defined once, imported everywhere)."""

IGNORE_INDEX = -100
"""Label value ignored by the cross-entropy loss (transformers' convention)."""

DEFAULT_VIDEO_TOKENS = 356  # 100 temporal + 256 spatial tokens (CLIP ViT-L/14 at 224 px)
DEFAULT_POSE_TOKENS = 256
OBJECT_TOKENS_PER_OBJECT = 8

MANIFEST_NAME = "manifest.json"
