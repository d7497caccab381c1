"""Write the bundled samples: a few photographs, a short video with camera motion, and the toy
classifier's synthetic scene and clip.

    .venv/bin/python scripts/make_samples.py [--out samples]

Every picture comes from scikit-image's ``skimage.data`` (installed with the test extras), whose
photographs are public domain or CC0 (``samples/README.md`` lists each source and licence). The
video ``tour.mp4`` is 6 s of 640x360 at 24 fps: three shots, each a smooth pan/zoom across one
photograph (the crop window eases between two positions), joined by half-second cross-fades;
H.264 yuv420p through PyAV, single-threaded so the bytes are the same on every run.

For the toy ``demo_classifier`` (``vidattn.demo.classes``): ``scene.png``, one two-object scene
of two classes (:func:`vidattn.demo.classes.pair_scenes`), and ``shapes.mp4``, 3 s of its four
classes moving, where the two large objects trade sizes so that the top class changes halfway.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image
from skimage import data

from vidattn.demo.classes import CLASS_HUES, CLASSES, pair_scenes
from vidattn.demo.scenes import SHAPES, _background
from vidattn.demo.tracks import _objects
from vidattn.io import atomic_path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, FPS = 640, 360, 24
SHOT_FRAMES, FADE_FRAMES = 56, 12  # 3 shots of 56 frames, 2 fades of 12: 144 frames, 6 s
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SCENE_SEED, SCENE_SIZE = 2, 224  # scene.png: 224, the size vidattn image runs at by default
CLIP_HEIGHT, CLIP_WIDTH, CLIP_FRAMES = 224, 400, 72  # shapes.mp4: 3 s at 24 fps


@dataclass(frozen=True)
class Shot:
    """A camera move over one photograph: the crop window (centre x, centre y, width, all in
    source pixels; height follows from 16:9) eases from ``start`` to ``end``."""

    photo: str
    start: tuple[float, float, float]
    end: tuple[float, float, float]


SHOTS = (
    Shot("chelsea", start=(225, 150, 440), end=(190, 120, 250)),  # zoom in on the cat's face
    Shot("coffee", start=(190, 200, 360), end=(410, 210, 380)),  # pan across the table
    Shot("rocket", start=(320, 160, 260), end=(320, 215, 600)),  # pull back from the launch pad
)


def _ease(t):
    """Smoothstep: 0 -> 1 with zero speed at both ends (a camera that starts and stops)."""
    return t * t * (3 - 2 * t)


def render_shot(photo: np.ndarray, shot: Shot, frames: int) -> np.ndarray:
    """Frames ``(frames, HEIGHT, WIDTH, 3)`` uint8 of the shot's camera move over ``photo``
    ``(H, W, 3)``: each frame is an affine resample (bilinear) of the current crop window."""
    out = np.empty((frames, HEIGHT, WIDTH, 3), np.uint8)
    start, end = np.array(shot.start), np.array(shot.end)
    for i in range(frames):
        cx, cy, w = start + (end - start) * _ease(i / (frames - 1))
        scale = w / WIDTH  # source pixels per output pixel
        src_from_out = np.array(
            [[scale, 0, cx - scale * WIDTH / 2], [0, scale, cy - scale * HEIGHT / 2]]
        )
        out[i] = cv2.warpAffine(
            photo, src_from_out, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
    return out


def tour_frames() -> np.ndarray:
    """All frames of the sample video, ``(N, HEIGHT, WIDTH, 3)`` uint8: the shots in order, each
    cross-faded into the next over ``FADE_FRAMES``."""
    shots = [render_shot(getattr(data, s.photo)(), s, SHOT_FRAMES) for s in SHOTS]
    video = shots[0].astype(np.float32)
    ramp = ((np.arange(FADE_FRAMES) + 1) / (FADE_FRAMES + 1))[:, None, None, None]
    for shot in shots[1:]:
        shot = shot.astype(np.float32)
        fade = video[-FADE_FRAMES:] * (1 - ramp) + shot[:FADE_FRAMES] * ramp
        video = np.concatenate([video[:-FADE_FRAMES], fade, shot[FADE_FRAMES:]])
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def shapes_frames(seed: int = 1) -> np.ndarray:
    """The toy classifier's clip, ``(CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, 3)`` uint8: one object
    of each class over one background, none ever touching. Two large ones, left and right, bob
    up and down while the left shrinks from 0.2 to 0.1 of the height and the right grows as
    much (the scene's class, its largest object, changes at the midpoint); two small ones
    drift along the top and bottom."""
    h, w = CLIP_HEIGHT, CLIP_WIDTH
    t = np.linspace(0, 1, CLIP_FRAMES)[:, None]
    wave = np.sin(2 * np.pi * t)
    rows = h * np.concatenate([0.5 + 0.06 * wave, 0.5 - 0.06 * wave, np.full_like(t, 0.18),
                               np.full_like(t, 0.82)], axis=1)
    cols = w * np.concatenate([np.full_like(t, 0.27), np.full_like(t, 0.73), 0.5 + 0.1 * wave,
                               0.5 - 0.1 * wave], axis=1)
    radii = h * np.concatenate([0.2 - 0.1 * t, 0.1 + 0.1 * t, np.full((len(t), 2), 0.08)], 1)
    classes = [0, 2, 1, 3]  # red disc, blue triangle (large); green square, yellow blob (small)
    hues = [list(CLASS_HUES.values())[c] for c in classes]
    background = _background(np.random.default_rng(seed), w)[:h]
    frames, _ = _objects(background, np.stack([rows, cols], -1), radii, hues,
                         [SHAPES[c] for c in classes], seed)
    return frames


def write_video(frames: np.ndarray, path: Path):
    """Encode uint8 RGB frames ``(N, H, W, 3)`` as H.264 yuv420p MP4 at ``FPS`` (CRF 23)."""

    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.codec_context.thread_count = 1  # multi-threaded x264 output varies run to run
        stream.options = {"crf": "23", "preset": "medium"}
        for i, frame in enumerate(frames):
            packet_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            packet_frame.pts = i
            container.mux(stream.encode(packet_frame))
        container.mux(stream.encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "samples")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        photo = Image.fromarray(getattr(data, name)())
        with atomic_path(out / f"{name}.jpg") as tmp:
            photo.save(tmp, quality=90)
    write_video(tour_frames(), out / "tour.mp4")
    scene = pair_scenes(1, SCENE_SEED, SCENE_SIZE)
    with atomic_path(out / "scene.png") as tmp:
        Image.fromarray(scene.images[0]).save(tmp, format="png")
    print("scene.png: a " + " and a ".join(CLASSES[c] for c in scene.labels[0]))
    write_video(shapes_frames(), out / "shapes.mp4")
    for path in sorted(out.glob("*.jpg")) + [out / "tour.mp4", out / "scene.png",
                                              out / "shapes.mp4"]:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
