#!/usr/bin/env bash
# Test-only dependencies, installed by `make test` (and so by CI):
# - Debian's chromium + playwright's Python package for the demo's browser test (playwright drives the
#   system chromium; it never downloads a browser);
# - a real VP9 video of a person (PyPI sports2d's demo.mp4) for extraction tests on real footage;
# - the objectron SSD detector's npm package in the npm cache, for the detector test.
# Each is optional: a test whose asset is missing is skipped with the reason.
set -u
PY=${1:-python3}
"$PY" -m pip install --quiet 'playwright>=1.40' 'pytest-timeout>=2.3' || echo "warning: playwright not installed; the browser test will be skipped"
"$PY" -m pip install --quiet --no-deps sports2d || echo "warning: sports2d not installed; real-video tests will be skipped"
"$PY" -m pip install --quiet decord || echo "warning: decord not installed; the decord fast-path test will be skipped"
if command -v npm >/dev/null 2>&1; then
  npm cache add @mediapipe/objectron >/dev/null 2>&1 || echo "warning: @mediapipe/objectron not cached; the SSD detector test will be skipped"
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped"
  else
    echo "note: chromium not found and not installable here; the browser test will be skipped"
  fi
fi
exit 0
