r"""ADLMCQ scoring (action recognition and forecasting): deterministic answer parsing, accuracy with
missing answers counted wrong, per-task and per-class tables, report and gallery.

Run as:
    python evaluation/ADLMCQ/evaluate_mcq.py --pred_path preds.jsonl --output_dir results/lemma \
        [--records lemma_mcq.json] [--benchmark adlmcq_forecasting] [--fallback_judge local]
(the same as 'llavidal eval mcq'; --pred_path may also be an upstream file with a 'pred' field).
"""

import sys

from llavidal.eval.commands import main

if __name__ == "__main__":
    sys.exit(main(["mcq", *sys.argv[1:]]))
