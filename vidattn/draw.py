"""Attention maps into pictures: colormaps, map-to-frame geometry (``cells.map_to_frame``),
overlays, grids, captions.

Images are uint8 RGB ``(H, W, 3)`` arrays of any size (odd sizes included); maps are float arrays
with values in [0, 1] (``attention.normalize_maps``). Each operation is one or two cv2/numpy calls
over whole arrays, fast enough to run on every video frame.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from vidattn.cells import map_to_frame
from vidattn.errors import VidattnError

__all__ = [
    "apply_colormap",
    "caption",
    "colormap_lut",
    "draw_masks",
    "grid",
    "grid_shape",
    "head_colors",
    "map_to_frame",
    "mask_overlay",
    "overlay",
    "side_by_side",
]

@functools.lru_cache(maxsize=None)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a read-only ``(256, 3)`` uint8 RGB lookup table (cached).

    Entry i is matplotlib's own uint8 colour for ``i / 255`` (``cmap(x, bytes=True)``), so
    ``apply_colormap`` reproduces matplotlib exactly for its 256-colour maps (inferno, viridis,
    magma, jet, turbo, ...). Raises VidattnError for an unknown name.
    """
    import matplotlib  # only here: the rest of this module does not need it

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise VidattnError(f"unknown colormap {name!r} (try inferno, viridis, jet)") from None
    lut = np.ascontiguousarray(cmap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3])
    lut.flags.writeable = False
    return lut


def head_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated RGB colours, one per head (evenly spaced hues)."""
    hues = colormap_lut("hsv")[np.linspace(0, 255, count, endpoint=False).astype(int)]
    return [tuple(int(c) for c in rgb) for rgb in hues]


def apply_colormap(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Colour float values in [0, 1] ``(...)`` through a ``(256, 3)`` LUT -> uint8 ``(..., 3)``.

    Index ``floor(256 * v)`` clipped to 0..255, matplotlib's own rule; values outside [0, 1]
    (bicubic overshoot) clip to the ends. The lookup is ``cv2.applyColorMap`` with the LUT as a
    user colormap (a plain table lookup, whatever the channel order), about 7x numpy's ``take``.
    """
    values = np.asarray(values, dtype=np.float32)
    index = np.clip(values * 256, 0, 255).astype(np.uint8).reshape(-1, values.shape[-1] or 1)
    colors = cv2.applyColorMap(index, lut.reshape(256, 1, 3))
    return colors.reshape(*values.shape, 3)


def overlay(frame: np.ndarray, heat: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """Heat-weighted colour blend: uint8 ``(H, W, 3)`` frame, float ``(H, W)`` heat -> new image.

    Each pixel mixes ``w = alpha * heat`` of the heat's colour into ``1 - w`` of the frame. Where
    the heat is 0 the frame shows untouched; where it is 1, ``alpha`` of it is colour. So the
    attention reads as a glow on the scene, and a colormap's dark low end (inferno's black) never
    darkens the unattended parts of the video. Heat outside [0, 1] is clipped.
    """
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    return blend(frame, apply_colormap(heat, lut), heat * np.float32(alpha))


def blend(frame: np.ndarray, colours: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two uint8 ``(H, W, 3)`` images: ``weight`` ``(H, W)`` (clipped to
    [0, 1]) of ``colours`` into ``1 - weight`` of ``frame`` -> uint8 ``(H, W, 3)``."""
    weight = np.clip(np.asarray(weight, dtype=np.float32), 0, 1)
    if frame.shape != (*weight.shape, 3) or colours.shape != frame.shape:
        raise ValueError(f"frame {frame.shape}, colours {colours.shape} and weight "
                         f"{weight.shape} sizes differ")
    return cv2.blendLinear(frame, colours, 1 - weight, weight)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped) -> uint8 0..255, rounded."""
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


OUTLINE_TRACE_PX = 180  # mask outlines are traced on a grid about this size on the short side


def _line_width(shape) -> int:
    """Stroke width in pixels, growing with the image: 1 up to ~375 px on the short side."""
    return max(1, round(min(shape[:2]) / 250))


def mask_overlay(frame, mask, color=(0, 255, 255), alpha=0.5, outline=True) -> np.ndarray:
    """DINO's mask display: uint8 ``(H, W, 3)`` frame, bool ``(H, W)`` mask -> new image.

    Inside the mask, ``alpha`` of the frame is replaced by ``color`` (RGB, 0..255); with
    ``outline`` the region's contours (holes included) are drawn in ``color`` too. Masks from
    ``attention.threshold_masks`` live on the patch grid: ``draw_masks`` brings them to the frame.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    if frame.shape != (*mask.shape, 3):
        raise ValueError(f"frame {frame.shape} and mask {mask.shape} sizes differ")
    out = frame.copy()
    _tint(out, mask.view(np.uint8), color, alpha, outline)
    return out


def _tint(out, mask8, color, alpha, outline):
    """``mask_overlay`` in place on ``out``, for a uint8 0/1 mask. Only the mask's bounding box
    is blended, and written back through the mask with ``cv2.copyTo``: a small region costs
    little even on a 4K frame. The outline is traced on every step-th pixel: a contour with step
    times fewer points, drawn with anti-aliased lines step times faster, within step / 2 pixels
    of the exact boundary."""
    x, y, w, h = cv2.boundingRect(mask8)
    if not w:
        return
    box = out[y : y + h, x : x + w]  # a view: cv2.copyTo writes into out
    # one pass: each pixel p -> (1 - alpha) * p + alpha * color, as a 3x4 colour transform
    blend = np.hstack([np.eye(3) * (1 - alpha), alpha * np.asarray(color, float)[:, None]])
    cv2.copyTo(cv2.transform(box, blend), mask8[y : y + h, x : x + w], box)
    if outline:
        step = max(1, min(mask8.shape) // OUTLINE_TRACE_PX)
        coarse = np.ascontiguousarray(mask8[step // 2 :: step, step // 2 :: step])
        contours, _ = cv2.findContours(coarse, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        contours = [c * step + step // 2 for c in contours]
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), _line_width(out.shape),
                         cv2.LINE_AA)


def draw_masks(frame, masks, colors, alpha: float, patch_size: int, resized_hw=None,
               interpolation="linear", stride: int | None = None) -> np.ndarray:
    """Grid masks ``(k, gh, gw)`` bool onto a uint8 ``(H, W, 3)`` frame -> new image: mask i
    tinted and outlined in ``colors[i]`` as ``mask_overlay`` does, later masks on top. Each mask
    is brought to the frame by ``map_to_frame`` (same geometry arguments) as 0/255 uint8 and cut
    at half, so "linear" rounds the cells' corners and "nearest" keeps DINO's square cells."""
    masks = np.asarray(masks, dtype=bool).astype(np.uint8) * np.uint8(255)
    regions = map_to_frame(masks, frame.shape[:2], resized_hw, patch_size, interpolation, stride)
    out = frame.copy()
    for region, color in zip(regions, colors):
        _tint(out, (region >= 128).view(np.uint8), color, alpha, outline=True)
    return out


def draw_labels(frame, labels, palette, alpha: float) -> np.ndarray:
    """Object labels ``(H, W)`` uint8 (0 background) onto a uint8 ``(H, W, 3)`` frame -> new
    image: each object tinted and outlined in its ``palette[id]`` colour (``mask_overlay``)."""
    out = frame.copy()
    for obj in np.flatnonzero(np.bincount(labels.ravel(), minlength=1)[1:]) + 1:
        _tint(out, (labels == obj).view(np.uint8), palette[obj], alpha, outline=True)
    return out


def grid_shape(count: int, panel_hw, cols=None, pad: int = 2) -> tuple[int, int]:
    """``(rows, cols)`` for ``count`` panels of ``panel_hw``.

    Default: the column count whose mosaic is closest to a 4:3 landscape (on a log scale; ties go
    to more columns). Rows x cols: 6 square heads -> 2x3, 6 heads of 16:9 video -> 3x2, 12 heads
    of 16:9 -> 4x3, 12 square -> 3x4.
    """
    if cols is None:
        ph, pw = panel_hw

        def misfit(c):
            r = math.ceil(count / c)
            return abs(math.log((c * pw + (c - 1) * pad) / (r * ph + (r - 1) * pad) / (4 / 3))), -c

        cols = min(range(1, count + 1), key=misfit)
    return math.ceil(count / cols), cols


def grid(panels, cols=None, pad: int = 2, bg: int = 0) -> np.ndarray:
    """Tile same-sized uint8 ``(H, W, 3)`` panels row by row -> one uint8 image.

    ``pad`` pixels of ``bg`` between panels (not around them: one panel comes back as itself);
    empty cells of the last row are ``bg``. ``cols`` defaults to ``grid_shape``'s choice.
    """
    panels = [np.asarray(p) for p in panels]
    if not panels or any(p.shape != panels[0].shape for p in panels):
        raise ValueError(f"grid needs panels of one shape, got {[p.shape for p in panels]}")
    h, w, ch = panels[0].shape
    rows, cols = grid_shape(len(panels), (h, w), cols, pad)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, ch), bg, dtype=panels[0].dtype)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = panel
    return out


def side_by_side(a: np.ndarray, b: np.ndarray, pad: int = 2, bg: int = 0) -> np.ndarray:
    """``a`` left, ``b`` right, ``pad`` columns of ``bg`` between; ``b`` is resized (aspect kept)
    to ``a``'s height when the heights differ."""
    if b.shape[0] != a.shape[0]:
        width = max(1, round(b.shape[1] * a.shape[0] / b.shape[0]))
        shrink = a.shape[0] < b.shape[0]
        b = cv2.resize(b, (width, a.shape[0]),
                       interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    gap = np.full((a.shape[0], pad, a.shape[2]), bg, dtype=a.dtype)
    return np.concatenate([a, gap, b], axis=1)


def caption(img: np.ndarray, text: str, corner: str = "tl") -> np.ndarray:
    """Write ``text`` (lines split on newlines) into a corner of ``img`` IN PLACE; returns ``img``.

    White anti-aliased text on a darkened box, sized with the image (about 1/30 of the short side
    per line, never below a legible 9 px), so it reads on any background. ``corner``: "tl", "tr",
    "bl" or "br". ``img`` must be a writeable C-contiguous uint8 ``(H, W, 3)`` array (a frame
    you own; pass ``img.copy()`` to keep the original). Text beyond ASCII depends on OpenCV's
    built-in font (OpenCV 4 draws "?" for it).
    """
    if corner not in ("tl", "tr", "bl", "br"):
        raise ValueError(f"corner must be tl, tr, bl or br, got {corner!r}")
    if img.dtype != np.uint8 or not (img.flags.c_contiguous and img.flags.writeable):
        raise ValueError("caption draws in place: img must be a writeable C-contiguous uint8 array")
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.4, min(img.shape[:2]) / 720)
    thick = max(1, round(scale * 1.5))
    lines = text.split("\n")
    sizes = [cv2.getTextSize(line, font, scale, thick) for line in lines]
    line_h = max(h + base for (_, h), base in sizes)
    margin = max(2, line_h // 4)
    box_w = max(w for (w, _), _ in sizes) + 2 * margin
    box_h = len(lines) * (line_h + margin) + margin
    x0 = 0 if corner[1] == "l" else max(0, img.shape[1] - box_w)
    y0 = 0 if corner[0] == "t" else max(0, img.shape[0] - box_h)
    box = img[y0 : y0 + box_h, x0 : x0 + box_w]
    box[:] = box // 3  # darken: a third of the background's brightness
    for i, (line, ((_, h), _)) in enumerate(zip(lines, sizes)):
        y = y0 + margin + i * (line_h + margin) + h  # putText's y is the text's baseline
        cv2.putText(img, line, (x0 + margin, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return img
