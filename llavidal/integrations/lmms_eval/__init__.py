"""lmms-eval integration: the ``llavidal`` model and the ADLMCQ / ADL-description tasks.

Run as (lmms-eval installed; the model registers itself through the ``lmms_eval.models`` entry point of
this package, no code change in lmms-eval)::

    python -m lmms_eval --model llavidal \\
        --model_args pretrained=runs/stage3,video_dir=WORLD/videos \\
        --tasks llavidal_adlmcq_recognition,llavidal_adlmcq_forecasting,llavidal_adl_descriptions \\
        --include_path $(python -c "import llavidal.integrations.lmms_eval as m; print(m.TASK_DIR)")

The task YAMLs (``tasks/``) read our benchmark files from local JSON (``dataset_path: json``), by default
``annotations/mcq_action_recognition.json`` etc. relative to the working directory (a world folder written
by ``llavidal synth``); for other files, a YAML of your own with ``include:`` and ``dataset_kwargs``
(see ``tasks/README.md``). For lmms-eval older than the entry-point registry, ``LMMS_EVAL_PLUGINS=
llavidal.integrations.lmms_eval`` finds the model through :mod:`.models` (``AVAILABLE_MODELS``).
"""

from __future__ import annotations

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_ID = "llavidal"
MODEL_CLASS = "llavidal.integrations.lmms_eval.models.llavidal.Llavidal"


def manifest():
    """The entry point ``lmms_eval.models: llavidal`` (lmms-eval's ``ModelRegistryV2`` calls it)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)
