"""LLAVIDAL: video large-language models for Activities of Daily Living."""

__version__ = "0.1.0"
