#!/usr/bin/env bash
# Video-ChatGPT benchmark, all five criteria in one judged run.
#
# Usage: evaluate_benchmark.sh GENERIC_PRED TEMPORAL_PRED CONSISTENCY_PRED OUTPUT_DIR [more 'llavidal eval judge' flags]
#    or: set GENERIC_PRED, TEMPORAL_PRED, CONSISTENCY_PRED, OUTPUT_DIR in the environment.
# The prediction files are ours ('llavidal eval infer') or Video-ChatGPT's (video_name/Q/A/pred, pred1/pred2).
# Judge settings from the environment: JUDGE (openai|local, default openai), JUDGE_MODEL (pinned id,
# required for openai), BASE_URL (local OpenAI-compatible server), API_KEY_ENV (default OPENAI_API_KEY;
# the key itself is read from that variable by Python, never passed here), NUM_TASKS (concurrency, 8),
# MAX_RETRIES (per judge call, default 4), CACHE (sqlite judge cache), VIDEO_ROOT (gallery video links).
# Exit status: that of 'llavidal eval judge videochatgpt': 0 when every judgement was made, 1 when any
# failed (results are written either way), 2 on a usage error.
set -euo pipefail
GENERIC_PRED=${1:-${GENERIC_PRED:-}}
TEMPORAL_PRED=${2:-${TEMPORAL_PRED:-}}
CONSISTENCY_PRED=${3:-${CONSISTENCY_PRED:-}}
OUTPUT_DIR=${4:-${OUTPUT_DIR:-}}
if [ -z "$GENERIC_PRED" ] || [ -z "$OUTPUT_DIR" ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
args=(judge videochatgpt --pred_path "$GENERIC_PRED" --output_dir "$OUTPUT_DIR"
      --judge "${JUDGE:-openai}" --api_key_env "${API_KEY_ENV:-OPENAI_API_KEY}" --concurrency "${NUM_TASKS:-8}")
[ -n "$TEMPORAL_PRED" ] && args+=(--temporal_pred_path "$TEMPORAL_PRED")
[ -n "$CONSISTENCY_PRED" ] && args+=(--consistency_pred_path "$CONSISTENCY_PRED")
[ -n "${JUDGE_MODEL:-}" ] && args+=(--judge_model "$JUDGE_MODEL")
[ -n "${BASE_URL:-}" ] && args+=(--base_url "$BASE_URL")
[ -n "${MAX_RETRIES:-}" ] && args+=(--max_retries "$MAX_RETRIES")
[ -n "${CACHE:-}" ] && args+=(--cache "$CACHE")
[ -n "${VIDEO_ROOT:-}" ] && args+=(--video_root "$VIDEO_ROOT")
# exec: the judge's exit status is this script's
exec "${PYTHON:-python}" -m llavidal.eval.commands "${args[@]}" "${@:5}"
