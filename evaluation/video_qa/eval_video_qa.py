r"""Zero-shot video QA judge (MSVD-QA, MSRVTT-QA, ActivityNet-QA, TGIF-QA), what LSTP-Chat's and PLLaVA's QA
evaluation scripts run: Video-ChatGPT's yes/no + score prompt; accuracy = yes / (yes + no) with its n and 95%
interval, and the mean 0-5 score.

Run as:
    python evaluation/video_qa/eval_video_qa.py --pred_path merge.jsonl --output_dir OUT \
        --judge_model gpt-4o-2024-08-06 [--base_url URL] [--num_tasks 8] [--output_json OUT/results.json]
Predictions: rows {id, question, answer, pred} (LSTP's and Video-ChatGPT's; no video field needed), upstream
{video_name, Q, A, pred} rows, or 'llavidal eval infer' output. The API key comes from $OPENAI_API_KEY (or
--api_key_env NAME); --judge local needs no API. Same as 'llavidal eval judge zeroshot'.
"""

import sys

from llavidal.eval.commands import upstream_main

if __name__ == "__main__":
    sys.exit(upstream_main("zeroshot"))
