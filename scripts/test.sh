#!/usr/bin/env bash
# Run the test suite: creates (or reuses) a virtualenv, installs vidattn with its test and ray
# extras (Ray for the `batch --ray` tests), runs pytest. Works on a machine that has only
# Python 3.10+.
#
#   bash scripts/test.sh [pytest args...]
#
# The venv lives in $VIDATTN_VENV (default: .venv in the repository). torch is pinned to the
# CPU build: an unpinned torch would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# The viewer tests drive Debian's headless Chromium: install it where it is missing and we can
# (CI runs as root on a fresh machine: about 75 s for apt-get update and install).
if [ -z "${VIDATTN_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the viewer tests (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: the viewer tests need Chromium: apt-get install chromium, or set VIDATTN_CHROMIUM" >&2
  fi
fi
"$PY" -m pip install --quiet --disable-pip-version-check "torch==${VIDATTN_TORCH:-2.13.0}"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,ray]"
exec "$PY" -m pytest "$@"
