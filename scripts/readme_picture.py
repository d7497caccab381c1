#!/usr/bin/env python
"""Make the README's picture from what ``scripts/demo.sh`` rendered: a frame of the heads view
above a frame of the masks view and a frame of the mean view, as one JPEG.

    python scripts/readme_picture.py [--out docs/readme.jpg] [--time 1.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidattn.draw import grid  # noqa: E402
from vidattn.video.reader import read_frames  # noqa: E402

VIDEOS = ("demo_heads.mp4", "demo_masks.mp4", "demo_mean.mp4")


def frame_at(path: Path, t: float) -> np.ndarray:
    """The first frame of ``path`` shown at or after ``t`` seconds."""
    frame = next(read_frames(path, start=t, max_frames=1), None)
    if frame is None:
        sys.exit(f"{path}: no frame at {t} s; run bash scripts/demo.sh first")
    return frame.image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=Path, default=ROOT / "out")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "readme.jpg")
    parser.add_argument("--time", type=float, default=1.0, help="seconds into the videos")
    parser.add_argument("--width", type=int, default=960)
    args = parser.parse_args()
    heads, masks, mean = (frame_at(args.renders / name, args.time) for name in VIDEOS)
    half = (args.width - 2) // 2
    below = grid([cv2.resize(img, (half, round(img.shape[0] * half / img.shape[1])),
                             interpolation=cv2.INTER_AREA) for img in (masks, mean)], cols=2)
    top = cv2.resize(heads, (below.shape[1], round(heads.shape[0] * below.shape[1] / heads.shape[1])),
                     interpolation=cv2.INTER_AREA)
    picture = np.concatenate([top, np.zeros((2, top.shape[1], 3), np.uint8), below])
    cv2.imwrite(str(args.out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"{args.out}: {picture.shape[1]}x{picture.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
