#!/usr/bin/env bash
# PLLaVA's scripts/demo.sh: the Gradio video chat demo ('llavidal demo').
#
# Usage: bash scripts/demo.sh [MODEL_DIR] [WEIGHTS_DIR] [more 'llavidal demo' flags]
# MODEL_DIR    with WEIGHTS_DIR: the base LLM folder (--model-name); alone: the weights folder written by
#              'llavidal train' (it names its base model). Default MODELS/pllava-7b, as PLLaVA.
# WEIGHTS_DIR  the weights written by 'llavidal train' (--projection_path); default: MODEL_DIR.
# Environment: HOST (default 127.0.0.1; 0.0.0.0 exposes the demo to your network), PORT (default 7860),
# DEVICE, DTYPE, PYTHON (default python). Frames are sampled as the weights' video features were made
# (their recorded recipe), not by a --num_frames flag; LoRA weights load with the alpha they were trained with.
set -euo pipefail
model_dir=${1:-${model_dir:-MODELS/pllava-7b}}
weight_dir=${2:-${weight_dir:-}}
args=(demo --projection_path "${weight_dir:-$model_dir}" --host "${HOST:-127.0.0.1}" --port "${PORT:-7860}")
[ -n "$weight_dir" ] && args+=(--model-name "$model_dir")
[ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
[ -n "${DTYPE:-}" ] && args+=(--dtype "$DTYPE")
exec "${PYTHON:-python}" -m llavidal "${args[@]}" "${@:3}"
