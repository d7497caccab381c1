"""A planted classifier: a tiny vit_b16 whose class is decided by one region, the red patches,
while its attention is uniform, so no attention map can say where that region is.

Queries and keys are zero (uniform attention); the patch projection writes each patch's redness
(mean R minus half of G and B) into channel 0 and a constant 1 into channel 1; the values copy
the normed redness and the attention output puts it into channel 2; the head reads the CLS
token's channel 2 for class "red" (class "grey": 0). So red in the picture makes "red" win, and
the red logit's gradient with respect to each attention entry is that patch's redness: a
gradient method's map (generic, gradcam) peaks on the red patches and a class-agnostic one
(rollout) is flat.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vidattn.models.api import Model, build_backbone
from vidattn.models.presets import get_preset
from vidattn.models.vit import load_state_dict

CLASSES = ("red", "grey")


def planted_classifier(dim=32, depth=2, heads=2, gain=8.0) -> Model:
    """The classifier of the module docstring: a vit_b16 of ``dim`` x ``depth``, two classes."""
    preset = dataclasses.replace(
        get_preset("vit_b16"), name="planted_classifier", embed_dim=dim, depth=depth,
        num_heads=heads, num_classes=len(CLASSES), class_names=CLASSES)
    p, hidden = preset.patch_size, preset.hidden

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    def ones(n):
        return np.ones(n, np.float32)

    redness = zeros(dim, 3, p, p)  # channel 0: mean R - (G + B) / 2
    redness[0] = np.array([1.0, -0.5, -0.5])[:, None, None] / p**2
    bias = zeros(dim)
    bias[1] = 1.0  # channel 1: a constant, so LayerNorm keeps redness' sign
    qkv_w = zeros(3 * dim, dim)  # queries, keys 0: uniform attention
    qkv_w[2 * dim, 0] = 1.0  # value channel 0: the normed redness
    proj = zeros(dim, dim)
    proj[2, 0] = 1.0  # the attention output's redness lands in channel 2
    head = np.zeros((len(CLASSES), dim), np.float32)
    head[0, 2] = gain  # "red": the CLS token's channel 2; "grey": 0
    cls = zeros(1, 1, dim)
    cls[0, 0, 1] = 1.0
    state = {"cls_token": cls, "pos_embed": zeros(1, 1 + 14 * 14, dim),
             "patch_embed.proj.weight": redness, "patch_embed.proj.bias": bias,
             "norm.weight": ones(dim), "norm.bias": zeros(dim),
             "head.weight": head, "head.bias": zeros(len(CLASSES))}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": ones(dim), b + "norm1.bias": zeros(dim),
            b + "norm2.weight": ones(dim), b + "norm2.bias": zeros(dim),
            b + "attn.qkv.weight": qkv_w, b + "attn.qkv.bias": zeros(3 * dim),
            b + "attn.proj.weight": proj, b + "attn.proj.bias": zeros(dim),
            b + "mlp.fc1.weight": zeros(hidden, dim), b + "mlp.fc1.bias": zeros(hidden),
            b + "mlp.fc2.weight": zeros(dim, hidden), b + "mlp.fc2.bias": zeros(dim),
        })
    backbone = build_backbone(preset)
    load_state_dict(backbone, state, source="planted")
    return Model(preset, backbone, "planted (test weights)")
