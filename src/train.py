"""LSTP-Chat's ``python src/train.py experiment=NAME key=value ...``: trains with ``llavidal train``.

``experiment=NAME`` reads ``configs/experiment/NAME.yaml`` (in the current folder, then the project's), whose
``data.*`` / ``model.*`` / ``trainer.*`` keys name flags of ``llavidal train --help`` (LSTP's Hydra names such
as ``trainer.max_epochs``, ``model.optimizer.lr``, ``data.batch_size`` are understood too); any ``key=value``
on the command line overrides. LSTP trains through Lightning; this runs transformers' Trainer, so Lightning
settings without an equivalent (callbacks, loggers, strategy) are refused by name.

    python src/train.py experiment=llavidal_lora model_name_or_path=BASE data_path=train.json \\
        video_folder=FEATURES/video output_dir=OUT trainer.max_epochs=1
"""

import sys

from llavidal.train.train import main

if __name__ == "__main__":
    sys.exit(main())
