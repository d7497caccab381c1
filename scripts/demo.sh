#!/usr/bin/env bash
# Render the bundled sample video with the bundled demo model into out/, and probe the sample
# photos. Creates (or reuses) the virtualenv and installs vidattn first; needs only Python 3.10+.
#
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$PY" -m pip install --quiet --disable-pip-version-check -e .
mkdir -p out
VIDEO=$(ls samples/*.mp4 | head -n 1)
"$VENV/bin/vidattn" video "$VIDEO" -o out/demo_heads.mp4 --model demo --view heads --overwrite
"$VENV/bin/vidattn" video "$VIDEO" -o out/demo_mean.mp4 --model demo --view mean --smooth 2 --overwrite
"$VENV/bin/vidattn" image samples/*.jpg -o out/photos --model demo --overwrite
echo
echo "Done: out/demo_heads.mp4, out/demo_mean.mp4 and out/photos/index.html"
