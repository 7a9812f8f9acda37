"""The legacy ``LMMS_EVAL_PLUGINS`` layout: ``{plugin}.models.{name}.{class}``."""

AVAILABLE_MODELS = {"llavidal": "Llavidal"}
