#!/usr/bin/env bash
# PLLaVA's scripts/gallery.sh: browse and compare evaluation results ('llavidal gallery').
#
# Usage: bash scripts/gallery.sh [SAVE_DIR] [more 'llavidal gallery' flags]
# SAVE_DIR  a folder of result folders, e.g. what scripts/eval.sh wrote (default test_results, as PLLaVA);
#           pick two runs in the page to compare their answers sample by sample.
# Environment: HOST (default 127.0.0.1), PORT (default 7861), VIDEO_FOLDER (the videos, for playback),
# PYTHON (default python).
set -euo pipefail
SAVE_DIR=${1:-${SAVE_DIR:-test_results}}
args=(gallery "$SAVE_DIR" --host "${HOST:-127.0.0.1}" --port "${PORT:-7861}")
[ -n "${VIDEO_FOLDER:-}" ] && args+=(--video_folder "$VIDEO_FOLDER")
exec "${PYTHON:-python}" -m llavidal "${args[@]}" "${@:2}"
