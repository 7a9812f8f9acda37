"""lmms-eval task YAMLs (``--include_path`` this folder) and the functions they name (``utils.py``)."""
