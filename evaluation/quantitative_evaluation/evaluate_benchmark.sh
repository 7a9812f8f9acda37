#!/usr/bin/env bash
# Video-ChatGPT benchmark, all five criteria in one judged run.
#
# Usage: evaluate_benchmark.sh GENERIC_PRED TEMPORAL_PRED CONSISTENCY_PRED OUTPUT_DIR
#    or: set GENERIC_PRED, TEMPORAL_PRED, CONSISTENCY_PRED, OUTPUT_DIR in the environment.
# Judge settings from the environment: JUDGE (openai|local, default openai), JUDGE_MODEL (pinned id,
# required for openai), BASE_URL (local OpenAI-compatible server), API_KEY_ENV (default OPENAI_API_KEY;
# the key itself is read from that variable by Python, never passed here), NUM_TASKS (concurrency, 8),
# CACHE (sqlite judge cache), VIDEO_ROOT (for the gallery's video links).
set -euo pipefail
GENERIC_PRED=${1:-${GENERIC_PRED:-}}
TEMPORAL_PRED=${2:-${TEMPORAL_PRED:-}}
CONSISTENCY_PRED=${3:-${CONSISTENCY_PRED:-}}
OUTPUT_DIR=${4:-${OUTPUT_DIR:-}}
if [ -z "$GENERIC_PRED" ] || [ -z "$OUTPUT_DIR" ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
args=(judge videochatgpt --pred_path "$GENERIC_PRED" --output_dir "$OUTPUT_DIR"
      --judge "${JUDGE:-openai}" --api_key_env "${API_KEY_ENV:-OPENAI_API_KEY}" --concurrency "${NUM_TASKS:-8}")
[ -n "$TEMPORAL_PRED" ] && args+=(--temporal_pred_path "$TEMPORAL_PRED")
[ -n "$CONSISTENCY_PRED" ] && args+=(--consistency_pred_path "$CONSISTENCY_PRED")
[ -n "${JUDGE_MODEL:-}" ] && args+=(--judge_model "$JUDGE_MODEL")
[ -n "${BASE_URL:-}" ] && args+=(--base_url "$BASE_URL")
[ -n "${CACHE:-}" ] && args+=(--cache "$CACHE")
[ -n "${VIDEO_ROOT:-}" ] && args+=(--video_root "$VIDEO_ROOT")
exec "${PYTHON:-python}" -m llavidal.eval.commands "${args[@]}"
