#!/usr/bin/env bash
# Zero-shot QA inference in chunks, as LSTP-Chat's eval/scripts/run_qa_*.sh: one 'llavidal eval infer'
# process per chunk (one per GPU), then the chunks merged into one file.
#
# Usage: bash eval/scripts/run_qa.sh DATASET [CKPT] [OUTPUT_DIR] [more 'llavidal eval infer' flags]
# DATASET     msvd, msrvtt or activitynet (any name works with DATA_DIR set)
# CKPT        weights written by 'llavidal train' (default checkpoints/$BACKBONE)
# OUTPUT_DIR  default eval_results/$DATASET/$(basename CKPT); it receives merge.jsonl (our rows, resumable)
#             and merge.json (LSTP's and Video-ChatGPT's rows {id, question, answer, pred}), which
#             eval/scripts/eval_qa_$DATASET.sh judges.
# Environment: DATA_DIR (default data/<MSVD-QA|MSRVTT-QA|ActivityNet-QA>) holding test_q.json, test_a.json
# and features/ (video features by video stem); BACKBONE (flant5 or vicuna, set by the _vicuna scripts; only
# names the default CKPT); BASE_MODEL (the base LLM, when the weights do not name a reachable one); CHUNKS
# (default: one per GPU in CUDA_VISIBLE_DEVICES, else 1); DEVICE, DTYPE, BATCH_SIZE (8), MAX_NEW_TOKENS
# (256), LIMIT; PYTHON (default python).
# Exit status: 0 when every chunk ran and the merge is complete, 1 otherwise (rerun: done rows are kept).
set -euo pipefail
DATASET=${1:?usage: run_qa.sh DATASET [CKPT] [OUTPUT_DIR]}
BACKBONE=${BACKBONE:-flant5}
CKPT=${2:-${CKPT:-checkpoints/lstp_$BACKBONE}}
OUTPUT_DIR=${3:-${OUTPUT_DIR:-eval_results/$DATASET/$(basename "$CKPT")}}
case $DATASET in
  msvd) default_data=data/MSVD-QA ;;
  msrvtt) default_data=data/MSRVTT-QA ;;
  activitynet) default_data=data/ActivityNet-QA ;;
  *) default_data=data/$DATASET ;;
esac
DATA_DIR=${DATA_DIR:-$default_data}
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=',' read -ra GPULIST <<< "$CUDA_VISIBLE_DEVICES"
else
  GPULIST=()
fi
CHUNKS=${CHUNKS:-$(( ${#GPULIST[@]} > 0 ? ${#GPULIST[@]} : 1 ))}
LLAVIDAL=("${PYTHON:-python}" -m llavidal)
data=(--benchmark zeroshot_qa --records "$DATA_DIR/test_q.json" --answers "$DATA_DIR/test_a.json" --task "$DATASET"
      --output "$OUTPUT_DIR/merge.jsonl")
infer=(--weights "$CKPT" --video_folder "$DATA_DIR/features" --batch_size "${BATCH_SIZE:-8}"
       --max_new_tokens "${MAX_NEW_TOKENS:-256}")
[ -n "${BASE_MODEL:-}" ] && infer+=(--base_model "$BASE_MODEL")
[ -n "${DEVICE:-}" ] && infer+=(--device "$DEVICE")
[ -n "${DTYPE:-}" ] && infer+=(--dtype "$DTYPE")
[ -n "${LIMIT:-}" ] && data+=(--limit "$LIMIT")
mkdir -p "$OUTPUT_DIR"

pids=()
for IDX in $(seq 0 $((CHUNKS - 1))); do
  gpu=()
  [ ${#GPULIST[@]} -gt 0 ] && gpu=(env CUDA_VISIBLE_DEVICES="${GPULIST[$((IDX % ${#GPULIST[@]}))]}")
  # Each chunk is one rank of WORLD_SIZE=CHUNKS (no rendezvous): it writes merge.rank{IDX}.jsonl
  RANK=$IDX WORLD_SIZE=$CHUNKS LOCAL_RANK=0 "${gpu[@]}" "${LLAVIDAL[@]}" eval infer "${data[@]}" "${infer[@]}" \
    "${@:4}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
# Merge every chunk's rows into merge.jsonl (idempotent) and write merge.json in LSTP's row shape.
"${LLAVIDAL[@]}" eval infer "${data[@]}" --merge_only --videochatgpt_json || status=1
exit $status
