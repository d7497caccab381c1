"""Where a patch is, told to the model: learned position embeddings resampled to any patch grid,
each family exactly as its own code does it, and DINOv3's axial rotary embedding (RoPE).

Learned embeddings are trained on a square ``M x M`` grid. For a ``gh x gw`` grid each family's
code resamples them bicubically, but three different ways (``RESIZES``), and the differences show
in peaked attention:

- ``"offset"``: official DINO and DINOv2 without registers: ``interpolate(scale_factor=((gh +
  0.1) / M, (gw + 0.1) / M), mode="bicubic")``. The output has ``gh x gw`` cells, but the kernel
  samples at the given scale, not at ``M / gh``: output cell ``o`` reads source coordinate
  ``(o + 0.5) / s - 0.5`` with ``s = (gh + 0.1) / M``.
- ``"size"``: Hugging Face ``ViTModel`` and ``Dinov2Model``: ``interpolate(size=(gh, gw),
  mode="bicubic", align_corners=False)``.
- ``"antialias"``: DINOv2 with registers, and timm (``resample_abs_pos_embed``, DeiT):
  ``interpolate(size=(gh, gw), mode="bicubic", antialias=True)``, a different kernel
  (``a = -0.5``, widened when shrinking, normalised) even when enlarging.

Each is one ``(n_out, n_in)`` matrix per axis (``resize_matrix``), so resampling is two small
matmuls in the model's graph. Every family skips resampling on its native grid.

RoPE (DINOv3, ``rope_sin_cos``): no learned positions; each patch's query and key are rotated by
angles ``2 pi c / period`` of its centre ``c`` (scaled to [-1, 1] on each axis separately), with
``head_dim / 4`` periods ``base ** (4 k / head_dim)`` per axis.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from vidattn.backend import ops

__all__ = ["RESIZES", "resize_matrix", "rope_coords", "rope_periods", "rope_sin_cos"]

RESIZES = ("offset", "size", "antialias")
OFFSET = 0.1  # official DINO's interpolate_offset


def _cubic(x, a):
    """Keys' cubic convolution kernel at distances ``x`` (torch uses a = -0.75, and -0.5 when
    antialiasing)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _sampled(n_in: int, n_out: int, inverse_scale: float) -> np.ndarray:
    """torch's plain bicubic (a = -0.75, ``align_corners=False``): output ``o`` reads source
    coordinate ``(o + 0.5) * inverse_scale - 0.5``, four taps, indices clamped at the borders
    (border taps pile up on the edge cell)."""
    src = (np.arange(n_out) + 0.5) * inverse_scale - 0.5
    base = np.floor(src)
    frac = src - base
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for tap in range(-1, 3):
        idx = np.clip(base + tap, 0, n_in - 1).astype(int)
        np.add.at(m, (rows, idx), _cubic(frac - tap, -0.75))
    return m


def _antialiased(n_in: int, n_out: int) -> np.ndarray:
    """torch's bicubic with ``antialias=True`` (its separable PIL-style path): a = -0.5, the
    support widened by the shrink factor, taps outside the input dropped and the rest
    normalised to sum to 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    centre = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum((centre - support + 0.5).astype(int), 0)  # int(): truncation, as torch
    hi = np.minimum((centre + support + 0.5).astype(int), n_in)
    src = np.arange(n_in)
    taps = _cubic((src[None, :] - centre[:, None] + 0.5) / stretch, -0.5)
    taps = np.where((src >= lo[:, None]) & (src < hi[:, None]), taps, 0.0)
    return taps / taps.sum(axis=1, keepdims=True)


@lru_cache(maxsize=128)
def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """``(n_out, n_in)`` float32 bicubic resampling weights along one axis, as the family's code
    resamples its position embeddings (``mode`` in ``RESIZES``, see the module docstring)."""
    if mode == "offset":
        return _sampled(n_in, n_out, n_in / (n_out + OFFSET)).astype(np.float32)
    if mode == "size":
        return _sampled(n_in, n_out, n_in / n_out).astype(np.float32)
    if mode == "antialias":
        return _antialiased(n_in, n_out).astype(np.float32)
    raise ValueError(f"unknown position-embedding resize {mode!r}; expected one of {RESIZES}")


def rope_periods(head_dim: int, base: float) -> np.ndarray:
    """DINOv3's RoPE periods ``(head_dim / 4,)`` float32: ``base ** (4 k / head_dim)``.

    The official code stores them in the checkpoint (``rope_embed.periods``) and uses what it
    loads; Hugging Face and timm compute them, exactly these values, at run time."""
    k = np.arange(head_dim // 4, dtype=np.float32)
    return np.asarray(base, np.float32) ** (2 * k / (head_dim // 2))


@lru_cache(maxsize=64)
def rope_coords(gh: int, gw: int) -> np.ndarray:
    """Patch centres ``(gh * gw, 2)`` float32 (row, column), row by row, each axis scaled to
    [-1, 1] on its own (DINOv3's ``normalize_coords="separate"``): ``2 (i + 0.5) / n - 1``."""
    rows = np.arange(0.5, gh, dtype=np.float32) / np.float32(gh)
    cols = np.arange(0.5, gw, dtype=np.float32) / np.float32(gw)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
    return 2 * grid - 1


def rope_sin_cos(periods, grid_hw, num_prefix=0):
    """``(sin, cos)``, each ``(num_prefix + gh * gw, head_dim)`` float32, for ``periods``
    ``(head_dim / 4,)``.

    Angles ``2 pi c / p`` for each centre coordinate ``c`` (row, then column) and period ``p``,
    laid out ``[rows, columns]`` and tiled twice, so that dimension ``j`` and ``j + head_dim / 2``
    share an angle: the rotate-half pairing of DINOv3 (``layers.apply_rope``). The first
    ``num_prefix`` rows (class and storage tokens, which DINOv3 does not rotate) have angle 0:
    ``sin = 0``, ``cos = 1`` turn the rotation into the identity, exactly, so the tokens are
    rotated in one piece instead of split and joined again."""
    coords = ops.convert_to_tensor(rope_coords(*grid_hw))
    angles = 2 * math.pi * coords[:, :, None] / ops.cast(periods, "float32")[None, None, :]
    angles = ops.reshape(angles, (coords.shape[0], -1))
    angles = ops.concatenate([angles, angles], axis=-1)
    sin, cos = ops.sin(angles), ops.cos(angles)
    if num_prefix:
        sin = ops.pad(sin, [(num_prefix, 0), (0, 0)])
        cos = ops.pad(cos, [(num_prefix, 0), (0, 0)], constant_values=1.0)
    return sin, cos
