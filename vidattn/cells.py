"""Where the patch grid's cells lie in the model input, and grid maps brought back to pixels.

A ``p x p`` patch every ``s`` pixels (``s = p`` unless patches overlap, ``presets.with_stride``):
an input side of ``n`` pixels holds ``1 + (n - p) // s`` cells, and cell ``i`` is the patch
``[i s, i s + p)``, centred on input pixel ``i s + p / 2``. Every drawing, seed and query that
goes between pixels and cells goes through here, so a finer grid needs nothing else.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["INTERPOLATIONS", "cell_centres", "cell_index", "grid_shape", "map_to_frame"]

INTERPOLATIONS = {  # INTER_NEAREST_EXACT: pixel centres, like the other two (INTER_NEAREST is not)
    "nearest": cv2.INTER_NEAREST_EXACT, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
}


def grid_shape(input_hw, patch: int, stride: int | None = None) -> tuple[int, int]:
    """The grid ``(gh, gw)`` of an input ``(H, W)``: ``1 + (side - p) // s`` (``side // p``
    without overlap)."""
    s = stride or patch
    return tuple(1 + (int(side) - patch) // s for side in input_hw)


def cell_centres(count: int, patch: int, stride: int | None = None) -> np.ndarray:
    """Input-pixel coordinates ``(count,)`` float64 of the centres of a row of cells."""
    return np.arange(count) * (stride or patch) + patch / 2


def cell_index(coords, count: int, patch: int, stride: int | None = None) -> np.ndarray:
    """The cell ``(...)`` int64 whose centre is nearest each input coordinate ``coords``
    (``floor(c / p)`` without overlap: the patch the pixel is in), clipped to ``0..count - 1``
    (pixels past the grid, in a pad or cut, take the last cell)."""
    s = stride or patch
    index = np.floor((np.asarray(coords, np.float64) - patch / 2) / s + 0.5).astype(np.int64)
    return np.clip(index, 0, count - 1)


def map_to_frame(attention_map, frame_hw, resized_hw, patch_size: int, interpolation="linear",
                 stride: int | None = None):
    """Upsample grid maps onto the frame they came from: ``(..., gh, gw)`` -> float32
    ``(..., H, W)``, with ``frame_hw = (H, W)`` (one map, a stack of heads, a batch of stacks).

    The geometry of ``preprocess.video_geometry``: the frame was resized to ``resized_hw`` =
    ``(rh, rw)`` and padded bottom/right to the model input; grid cell ``(i, j)`` is the patch
    ``[i*s, i*s + p) x [j*s, j*s + p)`` of the input, ``p`` the patch size and ``s`` the
    ``stride`` (the patch size when patches do not overlap), so its centre is input pixel
    ``i*s + p/2``. So frame pixel centre ``y + 0.5``, at input row ``(y + 0.5) * rh / H``, lies
    at grid coordinate ``((y + 0.5) * rh / H - p/2) / s`` counted between cell centres (columns
    alike): one affine warp, whose outside (the pad's cells, and the ``(p - s) / 2`` margin
    that overlapping patches leave) takes the nearest cell. For a still image (no padding) pass
    ``resized_hw=None``: the input the grid covers, ``(g - 1) * s + p`` on each side.

    interpolation: ``"linear"`` (smooth, stays within the map's range), ``"cubic"`` (smoother,
    may overshoot a little; ``apply_colormap`` clips), or ``"nearest"`` (DINO's blocky cells).
    uint8 maps (masks as 0/255) stay uint8, a quarter of the memory traffic; others become float32.
    """
    maps = np.asarray(attention_map)
    maps = maps if maps.dtype == np.uint8 else maps.astype(np.float32, copy=False)
    if maps.ndim < 2:
        raise ValueError(f"maps must be (..., gh, gw), got {maps.shape}")
    gh, gw = maps.shape[-2:]
    h, w = frame_hw
    p, s = patch_size, stride or patch_size
    covered = ((gh - 1) * s + p, (gw - 1) * s + p)
    rh, rw = covered if resized_hw is None else resized_hw
    if not (0 < rh <= covered[0] and 0 < rw <= covered[1]):
        raise ValueError(f"resized size {rh}x{rw} does not fit a {gh}x{gw} grid of {p}")
    out = np.empty((*maps.shape[:-2], h, w), maps.dtype)
    flag = INTERPOLATIONS[interpolation]
    if s == p:
        # cv2.resize with explicit factors (no dsize) maps output pixel x to source coordinate
        # (x + 0.5) / fx - 0.5, exactly this affine, with replicated borders; the output covers
        # the whole grid (the pad too), so crop it. Several times faster than warpAffine.
        fy, fx = h * p / rh, w * p / rw
        for src, dst in zip(maps.reshape(-1, gh, gw), out.reshape(-1, h, w)):
            dst[:] = cv2.resize(src, None, fx=fx, fy=fy, interpolation=flag)[:h, :w]
        return out
    # pixel indices (centres at integers) -> grid indices: x -> (x + 0.5) * rw / (w s) - p / 2s
    affine = np.array([[rw / (w * s), 0, (0.5 * rw / w - p / 2) / s],
                       [0, rh / (h * s), (0.5 * rh / h - p / 2) / s]])
    flag = cv2.INTER_NEAREST if flag == cv2.INTER_NEAREST_EXACT else flag  # warps round
    for src, dst in zip(maps.reshape(-1, gh, gw), out.reshape(-1, h, w)):
        dst[:] = cv2.warpAffine(src, affine, (w, h), flags=flag | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
    return out
