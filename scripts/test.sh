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
"$PY" -m pip install --quiet --disable-pip-version-check "torch==${VIDATTN_TORCH:-2.13.0}"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,ray]"
exec "$PY" -m pytest "$@"
