"""The input trees of the batch tests (local and Ray) and what they read back from OUTDIR."""

from __future__ import annotations

import json

import av
import numpy as np
from PIL import Image

from tests.support.videos import make_truncated_copy, make_video
from vidattn import batch as vb

FRAMES = 10


def image(path, seed=0):
    """A 80x48 noise image with a red block (the planted model attends to red)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (48, 80, 3), np.uint8)
    pixels[8:24, 40:60] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def video(path, seed=0, size=(96, 64), n_frames=FRAMES):
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_video(path, n_frames=n_frames, size=size, seed=seed).path


def frames(path) -> int:
    """Frames decoded from the video at ``path``."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def manifest(outdir) -> list[dict]:
    """Every parseable line of the manifest, in order."""
    lines = []
    for line in (outdir / vb.MANIFEST).read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def make_tree(src):
    """Videos and images in three levels of folders, a truncated video, a text file named .jpg,
    a .txt file (ignored) and a hidden folder (passed over) -> ``(videos, images)``: 10 files to
    do, 8 of them good."""
    videos = [video(src / "a.mp4", 1), video(src / "sub" / "b.mp4", 2),
              video(src / "sub" / "deep" / "c.mov", 3)]
    images = [image(src / name, i) for i, name in enumerate(
        ["p1.png", "p2.jpg", "sub/p3.png", "sub/deep/p4.jpg", "sub/deep/p5.bmp"])]
    make_truncated_copy(videos[0], src / "sub" / "broken.mp4", 0.5)
    (src / "sub" / "notes.jpg").write_text("not an image")
    (src / "readme.txt").write_text("ignored")
    video(src / ".hidden" / "h.mp4")
    return videos, images
