r"""Video-ChatGPT's demo at its path: the same as ``llavidal/demo/video_demo.py`` (``llavidal demo``).

Upstream ran:

    python video_chatgpt/demo/video_demo.py --model-name LLaVA-7B-Lightening-v1-1 \
        --projection_path video_chatgpt-7B.bin [--vision_tower_name openai/clip-vit-large-patch14] \
        [--conv-mode video-chatgpt_v1] [--host 0.0.0.0 --port 7860]

a Gradio chat that extracted CLIP features of an uploaded video on the fly. Ours takes the same flags
(:func:`llavidal.demo.video_demo.main`; ``--help`` lists them): features are computed by the extractors the
weights' feature manifests record (``--vision_tower_name`` names the encoder where none is recorded),
answers come from the one inference engine, and it binds 127.0.0.1 unless ``--host`` says otherwise.
Controller options (``--controller_url``, ``--model_list_mode``) are accepted and have no effect: the model
runs in this process.
"""

import sys

from llavidal.demo.video_demo import main

if __name__ == "__main__":
    sys.exit(main())
