"""Attention maths on the model's per-block attention probabilities, in plain numpy.

Every block's attention is a float array ``(N, heads, T, T)``: N images, each query row a softmax
over T keys, with ``T = n_prefix + gh * gw``. The ``n_prefix`` prefix tokens come first: the class
tokens (CLS; then the distillation token of distilled DeiT), then any registers (DINOv2) or storage
tokens (DINOv3); then the patches row by row over a ``gh x gw`` grid (``gh`` rows, ``gw``
columns; grids need not be square). Patch ``k`` sits at grid row ``k // gw``, column ``k % gw``.
Prefix tokens take part in attention but never appear in a map: maps, masks, rollout and mean
distance keep the patches' rows and columns only.

Nothing here loops over tokens or pixels, and nothing builds a temporary as large as a block:
videos at full resolution give thousands of tokens, and a block is then ``heads * T**2`` floats.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from vidattn.options import DEFAULT_THRESHOLD

__all__ = [
    "RunningMean",
    "class_rows",
    "cls_maps",
    "cls_share",
    "head_mean",
    "mean_attention_distance",
    "normalize_maps",
    "peak_location",
    "rollout_map",
    "rollout_matrix",
    "threshold_masks",
]


def _check(attn: np.ndarray, n_prefix: int, grid_hw) -> None:
    """Raise ValueError unless ``attn`` is ``(N, heads, T, T)`` with ``T = n_prefix + gh * gw``."""
    gh, gw = grid_hw
    t = n_prefix + gh * gw
    if attn.ndim != 4 or attn.shape[-2:] != (t, t):
        raise ValueError(
            f"attention must be (N, heads, {t}, {t}) for {n_prefix} prefix token(s) and a {gh}x{gw} "
            f"grid, got {attn.shape}"
        )


def cls_maps(attn: np.ndarray, n_prefix: int, grid_hw) -> np.ndarray:
    """Per-head CLS attention maps: ``(N, heads, R, T)`` -> ``(N, heads, gh, gw)``, where the
    ``R`` rows are the first queries' (all ``T``, or the class tokens' rows that
    ``Model.run(..., attention="cls")`` returns).

    The CLS query's row (token 0) over the patch keys, laid out on the patch grid. Pass the last
    block's attention, as DINO does: that is where the CLS token gathers the image. The prefix
    tokens' own columns are dropped, so a map sums to less than 1 (to 1 minus what CLS gives
    to the prefix tokens). Returns a view of ``attn``.
    """
    gh, gw = grid_hw
    if attn.ndim != 4 or attn.shape[-1] != n_prefix + gh * gw or attn.shape[-2] < 1:
        raise ValueError(f"attention rows must be (N, heads, R, {n_prefix + gh * gw}) for "
                         f"{n_prefix} prefix token(s) and a {gh}x{gw} grid, got {attn.shape}")
    return attn[:, :, 0, n_prefix:].reshape(attn.shape[0], attn.shape[1], *grid_hw)


def class_rows(out: dict) -> np.ndarray:
    """The attention rows a CLS map reads from ``Model.run``'s output ``out``: ``(N, heads, R,
    T)``. For a model that pools by a probe (SigLIP, ``pool="map"``: no class token) the probe's
    attention over the final tokens, ``out["pool_attention"]`` ``(N, heads, 1, T)``; else the
    last returned block's attention, ``out["attention"][-1]`` (its class rows first). Either
    goes to ``cls_maps`` as it is."""
    return out["pool_attention"] if "pool_attention" in out else out["attention"][-1]


def cls_share(attn: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Share of the CLS query's attention that goes to tokens ``start:stop``, per image and head:
    ``(N, heads, T, T)`` -> ``(N, heads)``. With the registers' range (after the class tokens)
    it is how much the CLS token reads from the registers (Darcet et al., "Vision Transformers
    Need Registers")."""
    return attn[:, :, 0, start:stop].sum(axis=-1)


def head_mean(maps: np.ndarray) -> np.ndarray:
    """Mean over heads: ``(N, heads, gh, gw)`` -> ``(N, gh, gw)``."""
    return maps.mean(axis=1)


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Scale each map (the last two axes) by its maximum, so it peaks at 1: ``(..., gh, gw)``.

    Division by the maximum rather than min-max: attention is non-negative, so 0 keeps meaning
    "no attention" and ratios between patches survive; a head that spreads its attention evenly
    stays evenly lit instead of having its small differences stretched into false contrast. It is
    also the study's rollout convention. All-zero maps stay zero. Returns float32.
    """
    maps = np.asarray(maps, dtype=np.float32)
    peak = maps.max(axis=(-2, -1), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def threshold_masks(maps: np.ndarray, keep: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """DINO's masks: per map, the smallest set of patches holding ``keep`` of its attention mass.

    ``maps`` ``(..., gh, gw)`` non-negative (e.g. ``cls_maps``) -> bool ``(..., gh, gw)``.

    DINO's convention, exactly: sort each map ascending, divide by its sum, take the cumulative
    sum, keep the patches where it exceeds ``1 - keep``. So the kept set holds at least ``keep``
    of the mass, and without its weakest patch it would hold less. Ties are broken by patch order
    (stable sort). Computed in float64 so the comparison with ``1 - keep`` is not float32 noise.
    An all-zero map keeps nothing.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    maps = np.asarray(maps)
    flat = maps.reshape(*maps.shape[:-2], -1).astype(np.float64)
    order = np.argsort(flat, axis=-1, kind="stable")
    ranked = np.take_along_axis(flat, order, axis=-1)
    total = ranked.sum(axis=-1, keepdims=True)
    share = np.cumsum(np.divide(ranked, total, out=np.zeros_like(ranked), where=total > 0), -1)
    kept = np.empty(flat.shape, dtype=bool)
    np.put_along_axis(kept, order, share > 1 - keep, axis=-1)
    return kept.reshape(maps.shape)


def rollout_map(row: np.ndarray, n_prefix: int, grid_hw) -> np.ndarray:
    """Attention rollout maps from the model's rollout rows: ``(N, T)`` -> ``(N, gh, gw)``.

    ``row`` is ``model.run(..., rollout=True)["rollout"]``, the CLS row of the rollout product
    (see ``vidattn.models.vit.cls_rollout``, which computes it in the model's graph). The study's
    map is that row over the patch tokens, laid out on the grid and divided by its maximum.
    """
    gh, gw = grid_hw
    row = np.asarray(row)
    if row.ndim != 2 or row.shape[1] != n_prefix + gh * gw:
        raise ValueError(
            f"rollout rows must be (N, {n_prefix + gh * gw}) for {n_prefix} prefix token(s) and a "
            f"{gh}x{gw} grid, got {row.shape}"
        )
    maps = row[:, n_prefix:].reshape(len(row), gh, gw)
    return maps / maps.max(axis=(-2, -1), keepdims=True)


def rollout_matrix(attns) -> np.ndarray:
    """Attention rollout of every token: one ``(N, heads, T, T)`` per block, first block first ->
    float64 ``(N, T, T)``, the study's joint matrix ``J = R_L @ ... @ R_1`` with ``R_b`` the head
    mean plus the identity, rows renormalised. Row ``t`` says how much of each input token flows
    into token ``t``'s output; row 0 is what ``rollout_map`` shows (the model computes only that
    row, in O(L T^2)). This is O(L T^3): for the image viewer's click-any-patch rollout.
    """
    joint = None
    for attn in attns:
        step = np.asarray(attn, np.float64).mean(axis=1)
        step += np.eye(step.shape[-1])
        step /= step.sum(axis=-1, keepdims=True)
        joint = step if joint is None else step @ joint
    return joint


def _grid_distances(grid_hw) -> np.ndarray:
    """Distances between the patches of a ``gh x gw`` grid, in patches: ``(gh, gw, gh, gw)``.

    Entry ``[r, c, r', c']`` is ``hypot(r - r', c - c')``. It depends only on the offset, so this
    is a zero-copy view of a ``(2gh - 1, 2gw - 1)`` table of offset distances: no ``P x P``
    matrix (P = gh * gw patches) is ever allocated, however big the grid.
    """
    gh, gw = grid_hw
    dr, dc = np.meshgrid(np.arange(1 - gh, gh), np.arange(1 - gw, gw), indexing="ij")
    # window[a, b, r', c'] = table[a + r', b + c'] = hypot(a + r' - gh + 1, b + c' - gw + 1);
    # reversing a and b (a = gh - 1 - r) gives hypot(r' - r, c' - c).
    return sliding_window_view(np.hypot(dr, dc), (gh, gw))[::-1, ::-1]


def mean_attention_distance(attn: np.ndarray, n_prefix: int, grid_hw, patch_size: int) -> np.ndarray:
    """Mean attention distance per image and head in pixels: ``(N, heads, T, T)`` -> ``(N, heads)``.

    The study's definition: drop the prefix tokens (rows and columns); for each query patch, sum
    over key patches attention x the Euclidean distance between the two patches' grid positions
    x ``patch_size``; then average over query patches. (The rows are not renormalised after the
    class columns are dropped, as in the study.) One einsum over a reshaped view of the input and
    a view of the distances (see ``_grid_distances``): no temporary of the input's size, and any
    grid shape. Returns float64.
    """
    _check(attn, n_prefix, grid_hw)
    gh, gw = grid_hw
    patches = attn[:, :, n_prefix:, n_prefix:].reshape(*attn.shape[:2], gh, gw, gh, gw)
    total = np.einsum("nhabcd,abcd->nh", patches, _grid_distances(grid_hw), dtype=np.float64)
    return total * (patch_size / (gh * gw))


class RunningMean:
    """Running mean over batches, e.g. of ``mean_attention_distance`` over many images.

    ``add(values)`` takes ``(N, ...)`` (N samples); ``mean`` is the ``(...)`` mean of every sample
    added so far, kept as a float64 sum and a count.
    """

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        batch = values.sum(axis=0)
        self.total = batch if self.total is None else self.total + batch
        self.count += values.shape[0]

    @property
    def mean(self) -> np.ndarray:
        if not self.count:
            raise ValueError("RunningMean.mean: nothing added yet")
        return self.total / self.count


def peak_location(attention_map: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the largest value of one ``(gh, gw)`` map (the first, on ties)."""
    row, col = np.unravel_index(np.argmax(attention_map), attention_map.shape)
    return int(row), int(col)
