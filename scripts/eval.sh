#!/usr/bin/env bash
# Every benchmark of PLLaVA's scripts/eval.sh, with 'llavidal eval': MVBench, VCG bench (generic, temporal,
# consistency), zero-shot QA (MSVD, MSRVTT, ActivityNet, TGIF) and recaption (Inter4K).
#
# Usage: bash scripts/eval.sh [MODEL_DIR] [WEIGHTS_DIR] [SAVE_DIR]
#    or: set model_dir, weight_dir, SAVE_DIR in the environment (PLLaVA's variable names).
# MODEL_DIR    base LLM folder (default MODELS/pllava-7b, as PLLaVA). With WEIGHTS_DIR it is passed as the
#              base model; alone it is the weights folder written by 'llavidal train' (which names its base).
# WEIGHTS_DIR  weights written by 'llavidal train' (default: MODEL_DIR).
# SAVE_DIR     results (default test_results/test_pllava_7b): one folder per benchmark (mvbench, vcgbench,
#              videoqa_<DATASET>, recaption) holding the predictions (*.jsonl, resumable: rerun to finish a
#              cut run) and the scores (report.md, *_results.json); bash scripts/gallery.sh SAVE_DIR shows them.
# Data, PLLaVA's DATAS layout under DATA_DIR (default DATAS); each benchmark folder holds the video
# features of its videos in features/ ({video stem}.safetensors|.pkl, from 'llavidal extract video'):
#   DATA_DIR/MVBench/json/<task>.json                       {video, question, candidates, answer}
#   DATA_DIR/VCGBench/Zero_Shot_QA/{generic,temporal,consistency}_qa.json   {video_name, Q, A} / Q1, Q2
#   DATA_DIR/VideoQA/<DATASET>/test_q.json + test_a.json     ActivityNet-QA pair of files
#   DATA_DIR/Recaption/Inter4K/annotations.json             {video_name, caption}
# Other settings from the environment: BENCHMARKS (default "mvbench vcgbench videoqabench recaption"),
# VIDEOQA_DATASETS (default "MSVD_Zero_Shot_QA MSRVTT_Zero_Shot_QA ActivityNet TGIF_Zero_Shot_QA"),
# BATCH_SIZE (8), MAX_NEW_TOKENS (100 for MVBench as upstream, 256 for QA, 400 for recaption), DEVICE,
# DTYPE, LIMIT (the first N records of each file, for smoke runs); the judge as in evaluation/README.md: JUDGE
# (openai|local, default openai), JUDGE_MODEL (pinned id, required for openai), BASE_URL, API_KEY_ENV,
# NUM_TASKS, CACHE. PYTHON (default python) runs 'python -m llavidal'.
# Exit status: 0 when every benchmark ran and was scored, 1 when any failed (the others still run).
set -uo pipefail
model_dir=${1:-${model_dir:-MODELS/pllava-7b}}
weight_dir=${2:-${weight_dir:-}}
SAVE_DIR=${3:-${SAVE_DIR:-test_results/test_pllava_7b}}
DATA_DIR=${DATA_DIR:-DATAS}
BENCHMARKS=${BENCHMARKS:-mvbench vcgbench videoqabench recaption}
VIDEOQA_DATASETS=${VIDEOQA_DATASETS:-MSVD_Zero_Shot_QA MSRVTT_Zero_Shot_QA ActivityNet TGIF_Zero_Shot_QA}
LLAVIDAL=("${PYTHON:-python}" -m llavidal)

model=(--weights "${weight_dir:-$model_dir}" --batch_size "${BATCH_SIZE:-8}")
[ -n "$weight_dir" ] && model+=(--base_model "$model_dir")
[ -n "${DEVICE:-}" ] && model+=(--device "$DEVICE")
[ -n "${DTYPE:-}" ] && model+=(--dtype "$DTYPE")
[ -n "${LIMIT:-}" ] && model+=(--limit "$LIMIT")
judge=(--judge "${JUDGE:-openai}" --api_key_env "${API_KEY_ENV:-OPENAI_API_KEY}" --concurrency "${NUM_TASKS:-8}")
[ -n "${JUDGE_MODEL:-}" ] && judge+=(--judge_model "$JUDGE_MODEL")
[ -n "${BASE_URL:-}" ] && judge+=(--base_url "$BASE_URL")
[ -n "${CACHE:-}" ] && judge+=(--cache "$CACHE")

failed=()
step() {  # step NAME COMMAND...: run, note a failure, go on
  local name=$1
  shift
  echo "== $name: $*"
  "$@" || failed+=("$name")
}

for benchmark in $BENCHMARKS; do
  case $benchmark in
    mvbench)
      out=$SAVE_DIR/mvbench
      step mvbench-infer "${LLAVIDAL[@]}" eval infer --benchmark mvbench --records "$DATA_DIR/MVBench/json" \
        --video_folder "$DATA_DIR/MVBench/features" --output "$out/predictions.jsonl" \
        --max_new_tokens "${MAX_NEW_TOKENS:-100}" "${model[@]}"
      step mvbench-score "${LLAVIDAL[@]}" eval mcq --benchmark mvbench --predictions "$out/predictions.jsonl" \
        --output_dir "$out"
      ;;
    vcgbench)
      out=$SAVE_DIR/vcgbench
      for split in generic temporal consistency; do
        step "vcgbench-$split-infer" "${LLAVIDAL[@]}" eval infer --benchmark videochatgpt \
          --records "$DATA_DIR/VCGBench/Zero_Shot_QA/${split}_qa.json" --video_folder "$DATA_DIR/VCGBench/features" \
          --output "$out/${split}_qa.jsonl" --max_new_tokens "${MAX_NEW_TOKENS:-256}" "${model[@]}"
      done
      step vcgbench-judge "${LLAVIDAL[@]}" eval judge videochatgpt --pred_path "$out/generic_qa.jsonl" \
        --temporal_pred_path "$out/temporal_qa.jsonl" --consistency_pred_path "$out/consistency_qa.jsonl" \
        --output_dir "$out" "${judge[@]}"
      ;;
    videoqabench)
      for dataset in $VIDEOQA_DATASETS; do
        out=$SAVE_DIR/videoqa_$dataset
        data=$DATA_DIR/VideoQA/$dataset
        step "$dataset-infer" "${LLAVIDAL[@]}" eval infer --benchmark zeroshot_qa --records "$data/test_q.json" \
          --answers "$data/test_a.json" --task "$dataset" --video_folder "$data/features" \
          --output "$out/predictions.jsonl" --max_new_tokens "${MAX_NEW_TOKENS:-256}" "${model[@]}"
        step "$dataset-judge" "${LLAVIDAL[@]}" eval judge zeroshot --pred_path "$out/predictions.jsonl" \
          --output_dir "$out" "${judge[@]}"
      done
      ;;
    recaption)
      out=$SAVE_DIR/recaption
      data=$DATA_DIR/Recaption/Inter4K
      step recaption-infer "${LLAVIDAL[@]}" eval infer --benchmark recaption --records "$data/annotations.json" \
        --video_folder "$data/features" --output "$out/predictions.jsonl" \
        --max_new_tokens "${MAX_NEW_TOKENS:-400}" "${model[@]}"
      step recaption-judge "${LLAVIDAL[@]}" eval judge descriptions --benchmark recaption \
        --pred_path "$out/predictions.jsonl" --output_dir "$out" "${judge[@]}"
      ;;
    *)
      echo "scripts/eval.sh: unknown benchmark '$benchmark' in BENCHMARKS; use mvbench, vcgbench, videoqabench, recaption" >&2
      failed+=("$benchmark")
      ;;
  esac
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "scripts/eval.sh: failed: ${failed[*]} (results of the others are in $SAVE_DIR)" >&2
  exit 1
fi
echo "scripts/eval.sh: every benchmark done; results in $SAVE_DIR (bash scripts/gallery.sh $SAVE_DIR)"
