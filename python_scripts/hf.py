"""PLLaVA's ``python_scripts/hf.py`` downloads its checkpoints from the Hugging Face hub. Nothing is
downloaded here: fetch the files yourself and make the model folder from them with ``llavidal
prepare-model`` (this script runs it with the same flags):

    python python_scripts/hf.py --from /data/llava-v1.6-vicuna-7b-hf --output_dir MODELS/pllava-7b

Without flags it prints this message.
"""

import sys

from llavidal.model.prepare import main

if __name__ == "__main__":
    if len(sys.argv) == 1:
        print(__doc__.strip())
        sys.exit(0)
    sys.exit(main())
