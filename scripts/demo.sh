#!/usr/bin/env bash
# Render the bundled sample video into out/ (every head, the head mean, DINO's masks, a browser
# viewer) and probe the sample photos. Creates (or reuses) the virtualenv and installs vidattn
# first; needs only Python.
#
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$PY" -m pip install --quiet --disable-pip-version-check -e .
mkdir -p out
VIDEO=$(ls samples/*.mp4 2>/dev/null | head -n 1 || true)
if [ -z "$VIDEO" ]; then
  VIDEO=out/clip.mp4
  "$PY" scripts/make_demo_clip.py "$VIDEO"
fi
if [ -f vidattn/data/demo_vit.safetensors ]; then
  MODEL=(--model demo)
else
  echo "demo weights not bundled in this checkout: using an untrained model (labelled RANDOM)"
  MODEL=(--model dino_vits16 --weights random)
fi
vidattn() { "$VENV/bin/vidattn" "$@"; }
vidattn video "$VIDEO" -o out/demo_heads.mp4 "${MODEL[@]}" --view heads --overwrite
vidattn video "$VIDEO" -o out/demo_mean.mp4 "${MODEL[@]}" --view mean --smooth 2 --overwrite
vidattn video "$VIDEO" -o out/demo_masks.mp4 "${MODEL[@]}" --view masks --overwrite
vidattn video "$VIDEO" --viewer out/demo_viewer "${MODEL[@]}" --viewer-rollout --overwrite
PHOTOS=(samples/*.jpg)
if [ -e "${PHOTOS[0]}" ]; then
  vidattn image "${PHOTOS[@]}" -o out/photos "${MODEL[@]}" --overwrite
fi
echo
echo "Done: out/demo_heads.mp4, out/demo_mean.mp4, out/demo_masks.mp4, the browser viewer"
echo "out/demo_viewer/index.html (open it from the disk), and out/photos/index.html for the photos"
