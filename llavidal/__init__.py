"""LLAVIDAL: video large-language models for Activities of Daily Living."""

__version__ = "0.1.0"

# Registers the transformers-native model (model_type "llavidal") with the Auto classes once transformers
# loads them; imports neither torch nor transformers here.
import llavidal.model  # noqa: F401
