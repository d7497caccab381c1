"""A ViT whose attention is planted: every query, the CLS one included, attends to red patches.

How: the patch projection writes each patch's "redness" (mean R minus half of G and B) into
channel 0 and a constant 1 into channel 1. After LayerNorm, channel 0 is large and positive only
for red patches. Keys copy channel 0 into every head; queries are a constant bias; so the logits
are proportional to redness. Values, the attention output and the MLP are zero, so every block
sees the same tokens and plants the same attention: rollout must peak on the red patches too.

``local_head=True`` makes the last head look from each patch at its own neighbourhood instead: the
position embeddings carry a code of each patch's row and column (cosines and sines of two
frequencies, and their negatives, so LayerNorm only scales them) in the channels of the last head,
whose queries and keys are that code. So a grey patch's row in that head peaks on the patch
itself, and the CLS token (no code) spreads that head's attention evenly.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from vidattn.models.api import Model, build_backbone, labelled
from vidattn.models.presets import get_preset, with_stride
from vidattn.models.vit import export_state_dict, load_state_dict


def _position_code(grid, width):
    """``(grid * grid, width)``: per patch (row by row) cos and sin of its row and column at two
    frequencies, then the same negated (zero sum, equal norms); ``width`` is 16."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    waves = [f(w * pos) for w in (np.pi / grid, np.pi / 4) for pos in (rows, cols)
             for f in (np.cos, np.sin)]
    code = np.stack(waves, axis=1)
    return np.concatenate([code, -code], axis=1)[:, :width]


def planted_model(patch=16, depth=2, heads=2, dim=32, grid=14, gain=6.0, name="planted",
                  registers=0, precision="fp32", local_head=False, local_gain=4.0,
                  colour_tokens=False) -> Model:
    """The planted model; with ``registers``, that many register tokens after CLS (as DINOv2's)
    that look redder than any patch, so they draw most of the attention: maps must still peak on
    the red patches, since registers never appear in them. ``local_head``: see above.

    ``colour_tokens``: the patch projection also writes each patch's mean red, green and blue
    (of the normalised input) into channels 2, 3 and 4, so the output patch tokens are known:
    ``LayerNorm([redness, 1, R, G, B, 0, ...] + position)`` (the blocks add nothing). A red
    object's patches lie along one direction, a grey background's along another, and noise in
    the picture is noise in the tokens (``planted_tokens`` computes them)."""
    preset = dataclasses.replace(
        get_preset("dino_vits16"), name=name, patch_size=patch, embed_dim=dim, depth=depth,
        num_heads=heads, image_size=grid * patch, num_register_tokens=registers,
    )
    hidden = preset.hidden
    redness = np.zeros((dim, 3, patch, patch), np.float32)
    redness[0] = np.array([1.0, -0.5, -0.5])[:, None, None] / patch**2
    if colour_tokens:
        for c in range(3):
            redness[2 + c, c] = 1.0 / patch**2
    proj_bias = np.zeros(dim, np.float32)
    proj_bias[1] = 1.0
    state = {
        "cls_token": np.zeros((1, 1, dim), np.float32),
        "pos_embed": np.zeros((1, 1 + grid * grid, dim), np.float32),
        "patch_embed.proj.weight": redness,
        "patch_embed.proj.bias": proj_bias,
        "norm.weight": np.ones(dim, np.float32),
        "norm.bias": np.zeros(dim, np.float32),
    }
    state["cls_token"][0, 0, 1] = 1.0
    if registers:
        state["register_tokens"] = np.zeros((1, registers, dim), np.float32)
        state["register_tokens"][0, :, :2] = (6.0, 1.0)  # redder than pure red (4.2): 3/4 of it
    qkv_w = np.zeros((3 * dim, dim), np.float32)
    qkv_b = np.zeros(3 * dim, np.float32)
    qkv_b[:dim] = gain  # every query: a constant
    qkv_w[dim : 2 * dim, 0] = 1.0  # every key dimension: the normalised redness
    if local_head:
        width = dim // heads  # the last head's channels: [dim - width, dim)
        last = slice(dim - width, dim)
        state["pos_embed"][0, 1:, last] = _position_code(grid, width)
        qkv_b[last] = 0.0
        qkv_w[last, last] = local_gain * np.eye(width)  # queries: the code
        qkv_w[dim + dim - width : 2 * dim] = 0.0
        qkv_w[dim + dim - width : 2 * dim, last] = np.eye(width)  # keys: the code
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": np.ones(dim, np.float32), b + "norm1.bias": np.zeros(dim, np.float32),
            b + "norm2.weight": np.ones(dim, np.float32), b + "norm2.bias": np.zeros(dim, np.float32),
            b + "attn.qkv.weight": qkv_w, b + "attn.qkv.bias": qkv_b,
            b + "attn.proj.weight": np.zeros((dim, dim), np.float32),
            b + "attn.proj.bias": np.zeros(dim, np.float32),
            b + "mlp.fc1.weight": np.zeros((hidden, dim), np.float32),
            b + "mlp.fc1.bias": np.zeros(hidden, np.float32),
            b + "mlp.fc2.weight": np.zeros((dim, hidden), np.float32),
            b + "mlp.fc2.bias": np.zeros(dim, np.float32),
        })
    backbone = build_backbone(preset, precision)
    load_state_dict(backbone, state, source="planted")
    return Model(preset, backbone, labelled("planted (test weights)", precision),
                 precision=precision)


def planted_tokens(images, patch=16) -> np.ndarray:
    """What ``planted_model(colour_tokens=True)`` returns as ``patch_tokens`` for preprocessed
    ``images`` ``(N, H, W, 3)`` (dim 32, no local head): ``(N, gh * gw, 32)``, computed here
    with numpy (the embedding, LayerNorm with eps 1e-6)."""
    n, h, w, _ = images.shape
    means = images.reshape(n, h // patch, patch, w // patch, patch, 3).mean((2, 4))
    means = means.reshape(n, -1, 3).astype(np.float64)
    x = np.zeros((*means.shape[:2], 32))
    x[..., 0] = means @ np.array([1.0, -0.5, -0.5])
    x[..., 1] = 1.0
    x[..., 2:5] = means
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-6)


class Dawdling:
    """A model that dawdles on one planted file: every call on a batch ``width`` pixels wide (as
    the model sees it) first appends a line naming the Ray actor it runs in to ``log``, then
    sleeps ``seconds``. Anything else is the wrapped ``model``'s. A test reads the log to kill
    the worker in the middle of that file."""

    def __init__(self, model, width: int, seconds: float, log):
        self.model, self.width, self.seconds, self.log = model, width, seconds, log

    def __getattr__(self, name):
        return getattr(self.model, name)

    def run(self, images, *args, **kwargs):
        if np.shape(images)[2] == self.width:
            import ray

            with open(self.log, "a", encoding="utf-8") as log:
                log.write(f"{ray.get_runtime_context().get_actor_name()}\n")
            time.sleep(self.seconds)
        return self.model.run(images, *args, **kwargs)


def dawdling_planted_model(width: int, seconds: float, log, **planted) -> Dawdling:
    """``planted_model(**planted)``, slow on batches ``width`` pixels wide (``Dawdling``)."""
    return Dawdling(planted_model(**planted), width, seconds, log)


def strided(model: Model, stride: int) -> Model:
    """``model`` with the same weights and overlapping patches ``stride`` apart
    (``presets.with_stride``), as ``load_model(..., stride=stride)`` builds it."""
    preset = with_stride(model.preset, stride)
    backbone = build_backbone(preset, model.precision)
    load_state_dict(backbone, export_state_dict(model.backbone), source="planted")
    return Model(preset, backbone, model.weights_label, precision=model.precision)
