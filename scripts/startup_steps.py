#!/usr/bin/env python
"""Where the start of a short ``vidattn video`` run goes: its steps one after another, each
timed, in this fresh process (``scripts/bench.py --only startup`` runs it, with an empty
``$VIDATTN_HOME`` and again with the programs the first run compiled kept there). Prints one JSON
line. The compile step makes the very call the render makes (``MapMaker``, at the render's batch:
``frames`` when fewer than ``batch``), so the render step compiles nothing.

    python scripts/startup_steps.py PRESET CHECKPOINT CLIP BATCH FRAMES

Nothing is imported before the first step, so the first lap is what the command line pays.
"""

import json
import sys
import tempfile
import time
from pathlib import Path


def main(preset_name, checkpoint, clip, batch, frames):
    times, start = {}, time.perf_counter()

    def lap(name):
        nonlocal start
        now = time.perf_counter()
        times[name] = now - start
        start = now

    import vidattn.cli  # noqa: F401 - what the command imports before it parses arguments
    from vidattn.runtime import keep_compiled_programs, keep_freed_memory

    keep_freed_memory()  # as the command line's start does
    keep_compiled_programs()
    lap("import the command line")
    import numpy as np

    from vidattn.models.api import Model
    from vidattn.models.presets import get_preset
    from vidattn.models.state_dict import read_checkpoint
    from vidattn.models.vit import ViT, load_state_dict
    from vidattn.options import VideoOptions
    from vidattn.preprocess import video_geometry
    from vidattn.video.pipeline import MapLayout, MapMaker, render_video
    from vidattn.video.reader import probe

    lap("import Keras, its backend, the video stack")
    preset = get_preset(preset_name)
    state = read_checkpoint(checkpoint)
    lap("read the checkpoint")
    backbone = ViT(preset)
    lap("build the model")
    load_state_dict(backbone, state)
    lap("assign the weights")
    model = Model(preset, backbone, Path(checkpoint).name)
    info = probe(clip)
    geo = video_geometry(info.height, info.width, preset.patch_size)
    opts = VideoOptions(progress=False, max_frames=frames, batch_size=min(batch, frames))
    maps = MapMaker(model, opts, geo.grid_hw, MapLayout.of(model, opts))  # the render's call
    maps(np.zeros((batch, *geo.input_hw, 3), np.float32))
    lap("compile for the video's shape (first call)")
    with tempfile.TemporaryDirectory() as tmp:
        render_video(model, clip, Path(tmp) / "out.mp4", opts)
    lap(f"render {frames} frames (compiled)")
    print(json.dumps(times))


if __name__ == "__main__":
    name, checkpoint, clip, batch, frames = sys.argv[1:]
    main(name, checkpoint, clip, int(batch), int(frames))
