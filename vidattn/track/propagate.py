"""Label propagation between video frames, in bounded memory (see ``protocols`` for the two
references it follows).

For every patch ``q`` of the current frame and every patch ``k`` of the context frames (the seed
frame and the ``context`` frames before the current one), the affinity is the cosine of their
features, restricted to ``k`` within the neighbourhood of ``q``'s position. Per query, the
``topk`` largest affinities over all context frames together are kept (and every value equal to
the k-th: both references keep ``>=`` the k-th), weighted (``exp(cos / T)`` normalised, or a
softmax of ``cos / T``) and used to average the context frames' label probabilities.

The references form the whole ``hw x hw`` affinity, and DINO an ``hw x hw`` neighbourhood mask
per context frame: 1.3 GB at 480p through a patch-8 model with 8 context frames. Here the queries
go in tiles of the patch grid; a tile needs only the keys within the neighbourhood's reach of it,
so it forms ``(queries, keys in reach x t)`` and nothing larger; the tile size follows a byte
budget. The values computed are the references' (the same products, the same mask, the same
top-k rule), only fewer of them at a time.

The affinity, its top-k and the weighted average run in ``keras.ops``, on the model's device;
the context buffers stay on the host, where the model returns its features.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vidattn.backend import ops
from vidattn.cells import cell_index, map_to_frame
from vidattn.features import unit_rows
from vidattn.track.protocols import Protocol

DEFAULT_BUDGET = 256 * 2**20  # bytes of working memory for one chunk of queries
BYTES_PER_AFFINITY = 8  # working bytes per (query, key) pair of a chunk: two float32


def neighbourhood(protocol: Protocol, query_rc, key_rc) -> np.ndarray | None:
    """bool ``(nq, nk)``: key position within the neighbourhood of query position (positions
    ``(n, 2)`` of grid rows and columns); None when the protocol has no neighbourhood."""
    r = protocol.neighbourhood
    if not r:
        return None
    d = np.abs(query_rc[:, None, :] - key_rc[None, :, :])
    if protocol.shape == "square":
        return d.max(-1) <= r
    return (d * d).sum(-1) <= r * r


class Propagator:
    """Propagates labels into each next frame from the seed frame and the frames before it.

    ``first_tokens`` ``(gh * gw, D)``: the seed frame's patch features; ``first_probs``
    ``(C, gh, gw)``: its one-hot labels (``protocols.seed_probs``). ``step(tokens)`` takes the
    next frame's features and returns its probabilities ``(C, gh, gw)`` float32 (before any
    post-processing), then keeps that frame (normalised features and probabilities) in the
    context, dropping the oldest beyond ``protocol.context``.

    The context lives in two fixed buffers, ``(gh * gw, 1 + context, D)`` features and
    ``(gh * gw, 1 + context, C)`` probabilities, slot 0 the seed frame and the others reused in
    turn, so that a tile's keys of every context frame come out as one block and its affinity is
    one matrix product ``(nq, D) @ (D, nk * t)``. The order of the context frames does not
    matter: the top-k and the weighted average are over all of them together. The tiles and
    their neighbourhood masks are planned once for the full context and reused every frame."""

    def __init__(self, protocol: Protocol, grid_hw, first_tokens, first_probs,
                 budget_bytes: int | None = None):
        self.protocol, self.grid_hw = protocol, tuple(grid_hw)
        gh, gw = self.grid_hw
        first = unit_rows(first_tokens)
        self.channels = len(first_probs)
        slots = 1 + protocol.context
        self.feats = np.empty((gh * gw, slots, first.shape[1]), np.float32)
        self.probs = np.empty((gh * gw, slots, self.channels), np.float32)
        self.feats[:, 0] = first
        self.probs[:, 0] = np.asarray(first_probs, np.float32).reshape(self.channels, -1).T
        self.filled, self.next_slot = 1, 1
        self.chunks = self._plan(slots, budget_bytes or DEFAULT_BUDGET)

    def _plan(self, slots: int, budget: int) -> list[tuple[tuple, tuple, object]]:
        """The query tiles: ``((r0, r1, c0, c1) of the queries, the same of their keys, the
        neighbourhood mask (nq, nk, 1) as a bool tensor or None)``. A tile's keys are the grid
        window within the neighbourhood's reach of it, so a tile the size of the reach needs
        about four times the keys one query needs, not the whole rows. Tiles shrink (the longer
        side halved) until a tile's ``(nq, nk * t)`` arrays (the affinity and its masked copy:
        ``BYTES_PER_AFFINITY`` each) fit ``budget``."""
        gh, gw = self.grid_hw
        r = self.protocol.neighbourhood
        reach_h, reach_w = (r, r) if r else (gh, gw)
        th, tw = (min(gh, max(4, r)), min(gw, max(4, r))) if r else (gh, gw)

        def cost(th, tw):
            return (th * tw * min(gh, th + 2 * reach_h) * min(gw, tw + 2 * reach_w) * slots
                    * BYTES_PER_AFFINITY)

        while cost(th, tw) > budget and th * tw > 1:
            th, tw = (max(1, th // 2), tw) if th >= tw else (th, max(1, tw // 2))
        rows, cols = np.indices((gh, gw))
        rc = np.stack([rows, cols], -1)
        tiles = []
        for r0 in range(0, gh, th):
            for c0 in range(0, gw, tw):
                q = (r0, min(gh, r0 + th), c0, min(gw, c0 + tw))
                k = (max(0, q[0] - reach_h), min(gh, q[1] + reach_h),
                     max(0, q[2] - reach_w), min(gw, q[3] + reach_w))
                inside = neighbourhood(self.protocol, rc[q[0]:q[1], q[2]:q[3]].reshape(-1, 2),
                                       rc[k[0]:k[1], k[2]:k[3]].reshape(-1, 2))
                tiles.append((q, k, None if inside is None
                              else ops.convert_to_tensor(inside[:, :, None])))
        return tiles

    def step(self, tokens) -> np.ndarray:
        """The next frame's probabilities ``(C, gh, gw)`` (see the class docstring)."""
        gh, gw = self.grid_hw
        t, c = self.filled, self.channels
        query = unit_rows(tokens)
        grid_q = query.reshape(gh, gw, -1)
        grid_f = self.feats.reshape(gh, gw, *self.feats.shape[1:])
        grid_p = self.probs.reshape(gh, gw, *self.probs.shape[1:])
        out = np.empty((gh, gw, c), np.float32)
        for (r0, r1, c0, c1), (k0, k1, l0, l1), inside in self.chunks:
            keys = grid_f[k0:k1, l0:l1, :t]
            out[r0:r1, c0:c1] = self._chunk(
                grid_q[r0:r1, c0:c1].reshape(-1, query.shape[1]),
                keys.reshape(-1, t, keys.shape[-1]),
                grid_p[k0:k1, l0:l1, :t].reshape(-1, t, c), inside).reshape(r1 - r0, c1 - c0, c)
        out = out.reshape(gh * gw, c)
        slot = self.next_slot
        self.feats[:, slot], self.probs[:, slot] = query, out
        self.filled = min(self.filled + 1, self.feats.shape[1])
        self.next_slot = slot + 1 if slot + 1 < self.feats.shape[1] else 1
        return np.ascontiguousarray(out.T.reshape(c, gh, gw))

    def _chunk(self, query, feats, probs, inside) -> np.ndarray:
        """Queries ``(nq, D)`` against keys ``(nk, t, D)`` with probabilities ``(nk, t, C)`` and
        the mask ``(nq, nk, 1)`` (or None) -> ``(nq, C)``, in ``keras.ops`` on the backend's
        device.

        Both references weight the kept affinities by a softmax of ``cos / T``: DINO as
        ``exp(cos / T)`` divided by its sum (the same numbers, without the max subtracted),
        DINOv3 as a softmax, then renormalising the result. Outside the neighbourhood is -inf,
        below any kept value, as DINO's 0 is below any ``exp``. A query keeps its ``topk``
        largest affinities (``top_k``'s values and indices), unless the next value equals the
        k-th: those rare rows are redone with every tied value kept (``_with_ties``)."""
        p = self.protocol
        nk, t, d = feats.shape
        cos = ops.matmul(ops.convert_to_tensor(query),
                         ops.transpose(ops.convert_to_tensor(feats.reshape(nk * t, d))))
        if inside is not None:
            cos = ops.reshape(ops.where(inside, ops.reshape(cos, (len(query), nk, t)),
                                        np.float32(-np.inf)), (len(query), nk * t))
        k = min(p.topk, nk * t)
        values, index = ops.top_k(cos, min(k + 1, nk * t))  # one more, to see ties
        weights = ops.softmax(values[:, :k] / np.float32(p.temperature), axis=1)  # (nq, k)
        flat = ops.convert_to_tensor(probs.reshape(nk * t, -1))
        result = ops.convert_to_numpy(
            ops.einsum("qk,qkc->qc", weights, ops.take(flat, index[:, :k], axis=0)))
        values = ops.convert_to_numpy(values)
        tied = np.zeros(len(query), bool) if k == nk * t else (
            (values[:, k] == values[:, k - 1]) & (values[:, k] > -np.inf))
        if tied.any():
            rows = np.flatnonzero(tied)
            result[rows] = self._with_ties(ops.convert_to_numpy(ops.take(cos, rows, axis=0)),
                                           probs.reshape(nk * t, -1))
        if p.weighting == "softmax":  # "should already sum to 1, but just in case"
            result /= result.sum(1, keepdims=True)
        return result

    def _with_ties(self, cos, probs) -> np.ndarray:
        """Affinity rows ``(n, N)`` and probabilities ``(N, C)`` -> ``(n, C)``, keeping every
        value at or above each row's k-th largest (both references' ``>=``)."""
        k = min(self.protocol.topk, cos.shape[1])
        kth = -np.sort(-cos, axis=1)[:, k - 1:k]
        top = np.where(cos >= kth, cos, -np.inf)
        weights = np.exp((top - top.max(1, keepdims=True)) / np.float32(self.protocol.temperature))
        return (weights / weights.sum(1, keepdims=True)) @ probs


def labels_from_probs(protocol: Protocol, probs, patch: int, frame_hw,
                      stride: int | None = None) -> np.ndarray:
    """A frame's propagated probabilities ``(C, gh, gw)`` -> its labels ``(H, W)`` uint8 at
    the frame's size, post-processed as the protocol's code does:

    - dino: bilinear upsampling by the patch (``F.interpolate(scale_factor=p, mode="bilinear",
      align_corners=False)``: OpenCV's ``INTER_LINEAR`` with the same factors is the same
      sampling), then per object ``(x - min) / max(x - min)`` where its max > 0 (a constant
      positive map divides 0 by 0 there: NaN, which ``torch.max`` takes as the largest, so that
      object wins; here +inf), argmax, and PIL's nearest resize to the frame;
    - dinov3: nearest upsampling to the frame, per object min-max (NaN -> 0), argmax. Nearest
      upsampling only repeats grid values, so the min-max and the argmax are taken on the grid
      and the labels then upsampled: the same labels, without the ``(C, H, W)`` floats.

    With overlapping patches ``stride`` apart, which neither protocol defines, the upsampling
    goes through the cells' centres (``cells``): bilinear onto the model input (dino), or the
    nearest cell to each frame pixel (dinov3).
    """
    probs = np.asarray(probs, np.float32)
    fh, fw = frame_hw
    s = stride or patch
    covered = tuple((g - 1) * s + patch for g in probs.shape[1:])  # the input, (gh * p, gw * p)
    if protocol.name == "dino":
        up = map_to_frame(probs, covered, None, patch, "linear", stride)
        top = up.reshape(len(up), -1).max(1)
        low = up.reshape(len(up), -1).min(1)
        span = (top - low)[:, None, None]
        scaled = np.where(top[:, None, None] > 0,
                          np.divide(up - low[:, None, None], span, out=np.full_like(up, np.inf),
                                    where=span > 0), up)
        labels = np.argmax(scaled, 0).astype(np.uint8)
        return np.asarray(Image.fromarray(labels).resize((fw, fh), Image.NEAREST))
    low = probs.reshape(len(probs), -1).min(1)[:, None, None]
    span = probs.reshape(len(probs), -1).max(1)[:, None, None] - low
    scaled = np.divide(probs - low, span, out=np.zeros_like(probs), where=span > 0)
    grid = np.argmax(scaled, 0).astype(np.uint8)
    gh, gw = grid.shape
    if s != patch:
        rows = cell_index((np.arange(fh) + 0.5) * covered[0] / fh, gh, patch, s)
        cols = cell_index((np.arange(fw) + 0.5) * covered[1] / fw, gw, patch, s)
    else:  # torch "nearest"
        rows = np.minimum((np.arange(fh) * (gh / fh)).astype(np.int64), gh - 1)
        cols = np.minimum((np.arange(fw) * (gw / fw)).astype(np.int64), gw - 1)
    return np.ascontiguousarray(grid[rows[:, None], cols[None, :]])

