"""Apply a delta checkpoint to its base: target = base + delta, tensor by tensor (LLaVA's apply_delta).

Run as: python scripts/apply_delta.py --base-model-path LLaMA-7B --target-model-path LLaVA-7B-Lightening-v1-1 \
    --delta-path LLaVA-Lightning-7B-delta-v1-1
(the same as `llavidal apply-delta`; see llavidal/model/delta.py)
"""

import sys

from llavidal.model.delta import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
