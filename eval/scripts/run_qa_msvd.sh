#!/usr/bin/env bash
# LSTP-Chat's eval/scripts/run_qa_msvd.sh (Flan-T5 backbone): bash eval/scripts/run_qa_msvd.sh [CKPT] [OUTPUT_DIR]
# See run_qa.sh for the settings (DATA_DIR, CHUNKS, BASE_MODEL, ...).
exec bash "$(dirname "$0")/run_qa.sh" msvd "$@"
