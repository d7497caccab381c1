"""Two trackers that need no ViT, to read label propagation's scores against.

``copy_first``: the first mask in every frame (what a tracker that does nothing scores: high on
still objects, low on moving ones). ``farneback``: the previous frame's labels warped into each
frame by OpenCV's dense optical flow (Farnebäck), computed backwards from the frame to the one
before it, so every pixel looks up where it came from (nearest label, no holes).
"""

from __future__ import annotations

import cv2
import numpy as np

FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5,
             "poly_sigma": 1.2, "flags": 0}  # OpenCV's documented example settings


def copy_first(first, n_frames: int) -> np.ndarray:
    """The first labels ``(H, W)`` repeated -> ``(n_frames, H, W)`` uint8."""
    return np.repeat(np.asarray(first, np.uint8)[None], n_frames, axis=0)


def farneback(frames, first) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 RGB and the first labels ``(H, W)`` -> labels
    ``(T, H, W)`` uint8, each frame's warped from the previous one's by the backward flow."""
    frames = np.asarray(frames)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    h, w = grey[0].shape
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    labels = [np.asarray(first, np.uint8)]
    for prev, cur in zip(grey, grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(cur, prev, None, **FARNEBACK)  # cur -> prev
        labels.append(cv2.remap(labels[-1], cols + flow[..., 0], rows + flow[..., 1],
                                cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0))
    return np.stack(labels)
