#!/usr/bin/env bash
# Judge zero-shot QA predictions, as LSTP-Chat's eval/scripts/eval_qa_*.sh (Video-ChatGPT's yes/no + score
# prompt): accuracy = yes / (yes + no) with its n and 95% interval, and the mean 0-5 score.
#
# Usage: bash eval/scripts/eval_qa.sh DATASET [PRED_PATH] [OUTPUT_DIR] [more 'llavidal eval judge' flags]
# PRED_PATH   predictions: merge.json / merge.jsonl from run_qa_*.sh, or any file of {id, question, answer,
#             pred} rows (no video field needed) (default eval_results/$DATASET/$(basename CKPT)/merge.jsonl)
# OUTPUT_DIR  default: the folder of PRED_PATH + /judged
# Judge settings from the environment, as in evaluation/README.md: JUDGE (openai|local, default openai),
# JUDGE_MODEL (pinned id, required for openai), BASE_URL, API_KEY_ENV (default OPENAI_API_KEY), NUM_TASKS
# (default 8), MAX_RETRIES, CACHE; PYTHON (default python).
# Exit status: that of 'llavidal eval judge zeroshot' (0 all judged, 1 some judgement failed, 2 usage).
set -euo pipefail
DATASET=${1:?usage: eval_qa.sh DATASET [PRED_PATH] [OUTPUT_DIR]}
BACKBONE=${BACKBONE:-flant5}
CKPT=${CKPT:-checkpoints/lstp_$BACKBONE}
PRED_PATH=${2:-${PRED_PATH:-eval_results/$DATASET/$(basename "$CKPT")/merge.jsonl}}
OUTPUT_DIR=${3:-${OUTPUT_DIR:-$(dirname "$PRED_PATH")/judged}}
args=(eval judge zeroshot --pred_path "$PRED_PATH" --output_dir "$OUTPUT_DIR" --judge "${JUDGE:-openai}"
      --api_key_env "${API_KEY_ENV:-OPENAI_API_KEY}" --concurrency "${NUM_TASKS:-8}")
[ -n "${JUDGE_MODEL:-}" ] && args+=(--judge_model "$JUDGE_MODEL")
[ -n "${BASE_URL:-}" ] && args+=(--base_url "$BASE_URL")
[ -n "${MAX_RETRIES:-}" ] && args+=(--max_retries "$MAX_RETRIES")
[ -n "${CACHE:-}" ] && args+=(--cache "$CACHE")
exec "${PYTHON:-python}" -m llavidal "${args[@]}" "${@:4}"
