#!/usr/bin/env bash
# LSTP-Chat's eval/scripts/run_qa_msvd_vicuna.sh (Vicuna backbone): bash eval/scripts/run_qa_msvd_vicuna.sh [CKPT] [OUTPUT_DIR]
# See run_qa.sh for the settings (DATA_DIR, CHUNKS, BASE_MODEL, ...).
BACKBONE=vicuna exec bash "$(dirname "$0")/run_qa.sh" msvd "$@"
