"""Synthetic tracking sequences in the DAVIS 2017 layout, with exactly known masks.

The tests and ``scripts/bench.py --only track`` score tracking here, where DAVIS cannot be
downloaded: objects of the demo model's synthetic world (``scenes``: solid shapes over cluttered
backgrounds) that move, cross (the nearer one hiding the other) and grow, and, given photographs,
pans across each with an object planted in it that moves with the picture. ``write_davis`` lays
them out as DAVIS ships them (``ImageSets/2017/<split>.txt``, ``JPEGImages/480p/<seq>/00000.jpg``,
``Annotations/480p/<seq>/00000.png`` with the DAVIS palette), so ``vidattn track-eval`` reads
them as it reads DAVIS.

A sequence is ``frames`` uint8 ``(T, H, W, 3)`` and ``masks`` uint8 ``(T, H, W)``: 0 background,
object ids from 1, each pixel the id of the nearest object covering it at least half.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidattn.demo.scenes import _background, _hsv_to_rgb, _object_alpha
from vidattn.io import write_bytes_atomic
from vidattn.track.davis import write_mask

SYNTHETIC = ("moving", "crossing", "scaling")  # the sequences drawn from nothing but a seed
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Sequence:
    """One sequence: ``name``, ``frames`` ``(T, H, W, 3)`` uint8 and ``masks`` ``(T, H, W)``."""

    name: str
    frames: np.ndarray
    masks: np.ndarray


def _objects(background, paths, radii, hues, shapes, seed) -> tuple[np.ndarray, np.ndarray]:
    """Draw objects over one background ``(H, W, 3)`` in 0..1 at their positions ``paths``
    ``(T, K, 2)`` (row, col) and radii ``(T, K)``, the later objects in front -> frames
    ``(T, H, W, 3)`` uint8 and masks ``(T, H, W)`` (ids 1..K). Each object keeps its shape and
    orientation (its own generator, reseeded every frame)."""
    h, w = background.shape[:2]
    side = max(h, w)
    frames = np.empty((len(paths), h, w, 3), np.uint8)
    masks = np.zeros((len(paths), h, w), np.uint8)
    for t in range(len(paths)):
        image = background.copy()
        for k in range(paths.shape[1]):
            rng = np.random.default_rng([seed, k])
            alpha = _object_alpha(rng, shapes[k], side, paths[t, k], radii[t, k])[:h, :w]
            colour = _hsv_to_rgb(hues[k], 0.85, 0.9)
            image = image * (1 - alpha[..., None]) + colour * alpha[..., None]
            masks[t][alpha >= 0.5] = k + 1
        frames[t] = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return frames, masks


def synthetic(name: str, n_frames: int = 24, size=(144, 256), seed: int = 0) -> Sequence:
    """One of ``SYNTHETIC``, ``size`` ``(H, W)``: "moving", a blob crossing the frame on a
    curve; "crossing", two shapes passing each other, the second in front; "scaling", a disc
    growing to three times its size and back."""
    h, w = size
    rng = np.random.default_rng([seed, SYNTHETIC.index(name)])
    background = _background(rng, max(h, w))[:h, :w]
    t = np.linspace(0, 1, n_frames)[:, None]
    r = 0.12 * h
    if name == "moving":
        paths = np.stack([h * (0.35 + 0.3 * np.sin(np.pi * t)), w * (0.15 + 0.7 * t)], -1)
        radii, hues, shapes = np.full((n_frames, 1), r), [0.6], ["blob"]
    elif name == "crossing":
        left, right = w * (0.15 + 0.7 * t), w * (0.85 - 0.7 * t)
        paths = np.stack([np.stack([np.full_like(t, 0.45 * h), left], -1)[:, 0],
                          np.stack([np.full_like(t, 0.55 * h), right], -1)[:, 0]], 1)
        radii, hues, shapes = np.full((n_frames, 2), r), [0.0, 0.33], ["disc", "square"]
    elif name == "scaling":
        paths = np.broadcast_to([[[h / 2, w / 2]]], (n_frames, 1, 2))
        radii = r * (1 + 2 * np.sin(np.pi * t))
        hues, shapes = [0.15], ["disc"]
    else:
        raise ValueError(f"no synthetic sequence {name!r}; expected one of {SYNTHETIC}")
    frames, masks = _objects(background, np.asarray(paths, float), np.asarray(radii, float),
                             hues, shapes, seed)
    return Sequence(name, frames, masks)


def pan(photo, n_frames: int = 24, size=(144, 256), seed: int = 0) -> Sequence:
    """A window of ``size`` panning across the photograph at ``photo`` (scaled to 1.5 times the
    window's width; left to right, a little down) with a disc planted in the picture, which
    moves with it and stays in view: ``pan-<photo stem>``."""
    path = Path(photo)
    with Image.open(path) as im:
        picture = np.asarray(im.convert("RGB"), np.float64) / 255
    h, w = size
    scale = max(h / picture.shape[0], 1.5 * w / picture.shape[1])
    ph, pw = int(np.ceil(picture.shape[0] * scale)), int(np.ceil(picture.shape[1] * scale))
    picture = np.asarray(Image.fromarray(np.uint8(picture * 255)).resize((pw, ph),
                                                                        Image.BICUBIC)) / 255
    drop = min(ph - h, h // 4)  # the vertical travel: the disc stays in view all the way
    top = (ph - h - drop) // 2
    disc = np.array([top + (h + drop) / 2, pw / 2])
    origins = np.stack([np.linspace(top, top + drop, n_frames),
                        np.linspace(0, pw - w, n_frames)], -1).astype(int)
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    masks = np.zeros((n_frames, h, w), np.uint8)
    for i, (y, x) in enumerate(origins):
        window = picture[y:y + h, x:x + w]
        seq = _objects(window, (disc - (y, x))[None, None], np.array([[0.15 * h]]), [0.83],
                       ["disc"], seed)
        frames[i], masks[i] = seq[0][0], seq[1][0]
    return Sequence(f"pan-{path.stem}", frames, masks)


def write_davis(root, sequences, split: str = "val") -> Path:
    """Lay ``sequences`` out under ``root`` as DAVIS 2017 does (see the module docstring)."""
    root = Path(root)
    for seq in sequences:
        frames_dir = root / "JPEGImages" / "480p" / seq.name
        masks_dir = root / "Annotations" / "480p" / seq.name
        frames_dir.mkdir(parents=True, exist_ok=True)
        masks_dir.mkdir(parents=True, exist_ok=True)
        for t, (frame, mask) in enumerate(zip(seq.frames, seq.masks)):
            Image.fromarray(frame).save(frames_dir / f"{t:05d}.jpg", quality=JPEG_QUALITY)
            write_mask(masks_dir / f"{t:05d}.png", mask)
    names = "".join(f"{seq.name}\n" for seq in sequences)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(root / "ImageSets" / "2017" / f"{split}.txt", names.encode())
    return root
