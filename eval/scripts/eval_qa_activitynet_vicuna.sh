#!/usr/bin/env bash
# LSTP-Chat's eval/scripts/eval_qa_activitynet_vicuna.sh: bash eval/scripts/eval_qa_activitynet_vicuna.sh [PRED_PATH] [OUTPUT_DIR]
# See eval_qa.sh for the judge settings (JUDGE, JUDGE_MODEL, BASE_URL, ...).
BACKBONE=vicuna exec bash "$(dirname "$0")/eval_qa.sh" activitynet "$@"
