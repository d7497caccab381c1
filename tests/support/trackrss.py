"""``python -m tests.support.trackrss FOLDER FRAMES``: track a planted square through FRAMES
480x854 frames written into FOLDER, with a patch-8 model and the dino protocol's defaults, in a
fresh process; prints JSON: the peak RSS (MiB) once the context is full and at the end.

A process of its own, so the peak is this track's alone: ``VmHWM``, the peak of this process's
own memory since its ``exec`` (``getrusage``'s ``ru_maxrss`` keeps the forking parent's, the
test session's, peak across ``exec``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FULL_CONTEXT = 9  # the seed frame, then 8 frames: the context (first + 7 previous) is full
FRAME_HW = (480, 854)


def peak_mib() -> float:
    """This process's peak resident memory in MiB (``VmHWM`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_frames(folder: Path, count: int) -> None:
    """A textured background (no two patches alike) and a red square moving 6 px a frame."""
    rng = np.random.default_rng(0)
    base = rng.integers(40, 160, (*FRAME_HW, 3)).astype(np.uint8)
    for i in range(count):
        frame = base.copy()
        frame[200:280, 100 + 6 * i:180 + 6 * i] = (230, 30, 30)
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=90)


def main(folder: str, count: str) -> None:
    from tests.support.planted import planted_model
    from vidattn.options import TrackOptions
    from vidattn.runtime import keep_freed_memory
    from vidattn.track.frames import open_source
    from vidattn.track.pipeline import propagated, protocol_of
    from vidattn.track.seeds import Seed

    keep_freed_memory()  # as the command does
    folder = Path(folder)
    write_frames(folder, int(count))
    model = planted_model(patch=8, dim=32, depth=2, grid=28, colour_tokens=True)
    opts = TrackOptions(progress=False)
    peaks, area = [], 0
    for item in propagated(model, open_source(folder), Seed(points=[(140.0, 240.0)]),
                           protocol_of(model, opts), opts):
        peaks.append(peak_mib())
        area = int((item.labels == 1).sum())
    print(json.dumps({"frames": len(peaks), "grid": list(item.probs.shape[1:]),
                      "full_context_mib": peaks[FULL_CONTEXT], "end_mib": peaks[-1],
                      "last_area": area}))


if __name__ == "__main__":
    main(*sys.argv[1:])
