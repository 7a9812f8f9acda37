#!/usr/bin/env bash
# ADL descriptions (Charades-Desc, TSU-Desc): the five judge criteria (x20, 0-100) and their mean.
#
# Usage: evaluate_all_benchmark_descriptions.sh PRED_PATH OUTPUT_DIR [JUDGE_MODEL]
#    or: set PRED_PATH, OUTPUT_DIR (and JUDGE_MODEL) in the environment.
# PRED_PATH: predictions from 'llavidal eval infer --benchmark adl_descriptions' or an upstream file of
# {video_name, Q, A, pred, cons_Q1, cons_Q2, pred1, pred2} records.
# Judge settings from the environment: JUDGE (openai|local, default openai), JUDGE_MODEL (pinned id,
# required for openai), BASE_URL (local OpenAI-compatible server: vLLM, llama.cpp, Ollama), API_KEY_ENV
# (default OPENAI_API_KEY; the key is read from that variable by Python, never passed here), NUM_TASKS
# (concurrency, default 8), CACHE (sqlite judge cache), RECORDS (benchmark file, when the predictions
# do not carry their records), VIDEO_ROOT (for the gallery's video links).
set -euo pipefail
PRED_PATH=${1:-${PRED_PATH:-}}
OUTPUT_DIR=${2:-${OUTPUT_DIR:-}}
JUDGE_MODEL=${3:-${JUDGE_MODEL:-}}
if [ -z "$PRED_PATH" ] || [ -z "$OUTPUT_DIR" ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
args=(judge descriptions --pred_path "$PRED_PATH" --output_dir "$OUTPUT_DIR"
      --judge "${JUDGE:-openai}" --api_key_env "${API_KEY_ENV:-OPENAI_API_KEY}" --concurrency "${NUM_TASKS:-8}")
[ -n "$JUDGE_MODEL" ] && args+=(--judge_model "$JUDGE_MODEL")
[ -n "${BASE_URL:-}" ] && args+=(--base_url "$BASE_URL")
[ -n "${CACHE:-}" ] && args+=(--cache "$CACHE")
[ -n "${RECORDS:-}" ] && args+=(--records "$RECORDS")
[ -n "${VIDEO_ROOT:-}" ] && args+=(--video_root "$VIDEO_ROOT")
exec "${PYTHON:-python}" -m llavidal.eval.commands "${args[@]}"
