#!/usr/bin/env bash
# LSTP-Chat's eval/scripts/eval_qa_msvd.sh: bash eval/scripts/eval_qa_msvd.sh [PRED_PATH] [OUTPUT_DIR]
# See eval_qa.sh for the judge settings (JUDGE, JUDGE_MODEL, BASE_URL, ...).
exec bash "$(dirname "$0")/eval_qa.sh" msvd "$@"
