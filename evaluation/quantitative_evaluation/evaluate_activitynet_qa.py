r"""Zero-shot QA (ActivityNet-QA, MSVD-QA, MSRVTT-QA style) at the upstream path: yes/no accuracy + score.

Run as:
    python evaluation/quantitative_evaluation/evaluate_activitynet_qa.py --pred_path PRED.json \
        --output_dir OUT --judge_model gpt-4o-2024-08-06 [--base_url URL] [--num_tasks 8]
The API key comes from $OPENAI_API_KEY (or --api_key_env NAME); --judge local needs no API.
"""

import sys

from llavidal.eval.commands import upstream_main

if __name__ == "__main__":
    sys.exit(upstream_main("zeroshot"))
