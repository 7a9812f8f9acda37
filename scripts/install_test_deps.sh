#!/usr/bin/env bash
# Test-only dependencies: the browser test of the demo needs Debian's chromium and playwright's
# Python package (which drives the system chromium; no browser download).
set -u
PY=${1:-python3}
"$PY" -m pip install --quiet 'playwright>=1.40' pytest-timeout || echo "warning: playwright not installed; the browser test will be skipped"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped"
  else
    echo "note: chromium not found and not installable here; the browser test will be skipped"
  fi
fi
exit 0
