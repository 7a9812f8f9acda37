"""LSTP-Chat's ``python -m demo.demo`` (run from the repository root): the Gradio video chat demo.

It is ``llavidal demo`` with the same flags (``--projection_path WEIGHTS`` written by ``llavidal train``,
``--model-name BASE``, ``--host``, ``--port``; ``llavidal demo --help`` lists them). LSTP's nframe slider (1-8
frames chosen by its temporal sampler) is not a slider here: the frames are those the weights' video features
were made with (their recorded recipe).
"""

import sys

from llavidal.demo.video_demo import main

if __name__ == "__main__":
    sys.exit(main())
