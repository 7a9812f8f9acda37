#!/usr/bin/env bash
# ADL descriptions (Charades-Desc, TSU-Desc): the five judge criteria (x20, 0-100) and their mean.
#
# Usage: evaluate_all_benchmark_descriptions.sh PRED_PATH OUTPUT_DIR [JUDGE_MODEL] [more 'llavidal eval judge' flags]
#    or: set PRED_PATH, OUTPUT_DIR (and JUDGE_MODEL) in the environment.
# PRED_PATH: predictions from 'llavidal eval infer --benchmark adl_descriptions' or an upstream file of
# {video_name, Q, A, pred, cons_Q1, cons_Q2, pred1, pred2} records.
# Judge settings from the environment: JUDGE (openai|local, default openai), JUDGE_MODEL (pinned id,
# required for openai), BASE_URL (local OpenAI-compatible server: vLLM, llama.cpp, Ollama), API_KEY_ENV
# (default OPENAI_API_KEY; the key is read from that variable by Python, never passed here), NUM_TASKS
# (concurrency, default 8), MAX_RETRIES (per judge call, default 4), CACHE (sqlite judge cache), RECORDS
# (benchmark file, when the predictions do not carry them), VIDEO_ROOT (for the gallery's video links).
# Exit status: that of 'llavidal eval judge descriptions': 0 when every judgement was made, 1 when any
# failed (an unreachable judge, failed prediction rows; results are written either way), 2 on a usage error.
set -euo pipefail
PRED_PATH=${1:-${PRED_PATH:-}}
OUTPUT_DIR=${2:-${OUTPUT_DIR:-}}
JUDGE_MODEL=${3:-${JUDGE_MODEL:-}}
if [ -z "$PRED_PATH" ] || [ -z "$OUTPUT_DIR" ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
args=(judge descriptions --pred_path "$PRED_PATH" --output_dir "$OUTPUT_DIR"
      --judge "${JUDGE:-openai}" --api_key_env "${API_KEY_ENV:-OPENAI_API_KEY}" --concurrency "${NUM_TASKS:-8}")
[ -n "$JUDGE_MODEL" ] && args+=(--judge_model "$JUDGE_MODEL")
[ -n "${BASE_URL:-}" ] && args+=(--base_url "$BASE_URL")
[ -n "${MAX_RETRIES:-}" ] && args+=(--max_retries "$MAX_RETRIES")
[ -n "${CACHE:-}" ] && args+=(--cache "$CACHE")
[ -n "${RECORDS:-}" ] && args+=(--records "$RECORDS")
[ -n "${VIDEO_ROOT:-}" ] && args+=(--video_root "$VIDEO_ROOT")
# exec: the judge's exit status is this script's
exec "${PYTHON:-python}" -m llavidal.eval.commands "${args[@]}" "${@:4}"
