"""The whole pipeline on the embedded default: world -> features -> training -> evaluation -> report.

Run as::

    llavidal quickstart --out quickstart_out                      # medium world, SmolLM2, the preset
    llavidal quickstart --out qs_small --preset small --llm tiny --recipe ci   # the CI smoke run

Steps (each validates its output; a rerun skips the steps that are done, so an interrupted run resumes; each
command line is echoed, logged under ``OUT/logs/`` and listed in ``OUT/commands.sh`` to rerun by hand):

1. ``world``          ``llavidal synth`` (medium preset by default)
2. ``llm``            the backbone: SmolLM2-135M-Instruct converted once by ``llavidal embedded-llm`` (cached), a
                      tiny random llama (``--llm tiny``, for tests) or a local Hugging Face folder
3. ``video``          ``llavidal extract video`` with the embedded CLIP-architecture encoder
4. ``pose_pretrain``  ``llavidal pose-pretrain`` on the skeletons of the TRAIN split only (cross-subject)
5. ``pose``           ``llavidal extract pose`` with that encoder
6. ``object``         ``llavidal extract object`` from the world's object tracks
7. ``data``           training conversations: the train split's records and its ADLMCQ questions (``curriculum``)
8. ``align``          ``llavidal align``: projectors fitted to the LLM's embeddings of the train clips'
                      activity names (no LLM pass; seconds), the starting point of training
9. ``train``          ``llavidal/train/train_mem.py`` under torchrun (gloo on CPU) with the recipe's config
10. ``evaluate``      held-out subjects (cross-subject test split): ``llavidal eval infer`` + ``eval mcq`` for ADLMCQ
                      recognition and forecasting under the modality sets video / pose / video+pose / all (features
                      withheld at inference from the one trained model), ``eval infer`` + ``eval judge descriptions``
                      (local MiniLM judge) for ADL descriptions, ``eval report`` over them all
11. ``report``        ``report/report.md``, ``report.json`` and PNG plots from the eval result files; the demo
                      command is printed

Modules: ``recipes`` (presets), ``curriculum`` (training data), ``stages`` (the steps and their commands),
``steps`` (the resumable runner), ``report``, ``command`` (``main``).
"""

from llavidal.quickstart.command import QuickstartArguments, main
from llavidal.quickstart.recipes import RECIPES, Recipe, apply_recipe_settings

__all__ = ["QuickstartArguments", "RECIPES", "Recipe", "apply_recipe_settings", "main"]
