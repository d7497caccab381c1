"""Chefer et al.'s LRP (CVPR 2021, hila-chefer/Transformer-Explainability ``baselines/ViT``),
written out in numpy over the intermediates of our own forward, so it is the same on every
backend; and the block layouts the LRP methods cover.

``trace`` records what each rule needs (``ViT.relevance_pass(record=...)``), ``relprop`` runs
the rules from the explained class's one-hot back to the first block and returns each block's
attention relevance ``(N, heads, T, T)``, which ``methods.transformer_attribution`` weights by
the attention's gradient and rolls out. The rules, each as ``modules/layers_ours.py`` has it:

- ``Linear`` (qkv, proj, fc1, fc2, the head): alpha = 1, beta = 0, the bias ignored: the
  relevance of an output goes to the inputs in proportion to their positive contributions,
  ``R_in = x⁺ ⊙ W⁺ᵀ S + x⁻ ⊙ W⁻ᵀ S``, ``S = R / (x⁺ W⁺ + x⁻ W⁻)``;
- LayerNorm, GELU, softmax, dropout: ``RelProp``'s default, the relevance passes unchanged;
- the two attention products (``einsum``, ``RelPropSimple``): ``R_a = a ⊙ ∂Z/∂a · R / Z``,
  likewise for ``b``, each halved;
- the residual ``Add``: each summand's ``x ⊙ R / Z``, rescaled so that the two shares are as
  ``|sum|`` of each and together hold the incoming relevance's sum; ``Clone``: the sum of
  both branches' relevances (``x ⊙ R_i / x``); the class token's ``IndexSelect`` likewise;
- ``safe_divide(a, b) = a / (b + 1e-9)`` where ``b != 0``, else 0, as theirs.

Every rule but the linears' conserves the relevance's sum; the alpha-beta linear conserves it
wherever an output has a positive contribution. One difference, on purpose: their ``Add`` sums
over the whole tensor, that is over the batch (they run at batch 1); here the sums are per
image, so a batch is its images one by one.
"""

from __future__ import annotations

import numpy as np

from vidattn.backend import ops
from vidattn.errors import VidattnError

__all__ = ["SAFE_EPS", "add_relprop", "check_blocks", "clone_relprop", "linear_relprop",
           "product_relprop", "relprop", "safe_divide", "trace"]

SAFE_EPS = 1e-9  # layers_ours.safe_divide's stabiliser


def check_blocks(preset, method: str) -> None:
    """One line where ``preset``'s blocks are not the plain ViT/DeiT blocks the LRP rules are
    written for (pre-norm attention and GELU MLP, learned positions); the attnlrp forwards also
    need patches that do not overlap (their pixel relevance is summed per patch)."""
    odd = [what for what, has in (("LayerScale", preset.layer_scale),
                                  ("a SwiGLU feed-forward", preset.mlp != "gelu"),
                                  ("rotary positions", preset.position != "learned"),
                                  ("overlapping patches", preset.stride is not None
                                   and preset.stride != preset.patch_size
                                   and method != "transformer-attribution")) if has]
    if odd:
        raise VidattnError(f"--explain-method {method}: its LRP rules cover plain ViT/DeiT "
                           f"blocks, and {preset.name} has {' and '.join(odd)}")


def safe_divide(a, b):
    """``a / b`` stabilised as Chefer's ``safe_divide``: ``a / (b + 1e-9)``, 0 where b is 0."""
    den = b + SAFE_EPS
    den = np.where(den == 0, SAFE_EPS, den)
    return a / den * (b != 0)


def linear_relprop(x, kernel, r):
    """The alpha = 1, beta = 0 rule of a bias-free ``x @ kernel``: inputs ``x`` ``(..., I)``,
    ``kernel`` ``(I, O)``, output relevance ``r`` ``(..., O)`` -> ``(..., I)``."""
    px, nx = np.maximum(x, 0), np.minimum(x, 0)
    pw, nw = np.maximum(kernel, 0), np.minimum(kernel, 0)
    s = safe_divide(r, px @ pw + nx @ nw)
    return px * (s @ pw.T) + nx * (s @ nw.T)


def product_relprop(equation: str, a, b, r):
    """``RelPropSimple`` of ``Z = einsum(equation, a, b)`` (no index summed in one operand
    alone), halved as the reference halves both: ``(a ⊙ ∂Z/∂a · S / 2, b ⊙ ∂Z/∂b · S / 2)``
    with ``S = R / Z``, each the shape of its operand."""
    ins, out = equation.split("->")
    sa, sb = ins.split(",")
    s = safe_divide(r, np.einsum(equation, a, b))
    return (a * np.einsum(f"{out},{sb}->{sa}", s, b) / 2,
            b * np.einsum(f"{sa},{out}->{sb}", a, s) / 2)


def _per_image_sum(x):
    return x.reshape(len(x), -1).sum(axis=1).reshape((len(x),) + (1,) * (x.ndim - 1))


def add_relprop(a, b, r):
    """The rule of ``Z = a + b`` (``(N, ...)`` each): ``a ⊙ R / Z`` and ``b ⊙ R / Z``, each
    rescaled to its share ``|sum_a| / (|sum_a| + |sum_b|)`` of ``sum R``; the sums per image."""
    s = safe_divide(r, a + b)
    ra, rb = a * s, b * s
    sum_a, sum_b, total = _per_image_sum(ra), _per_image_sum(rb), _per_image_sum(r)
    both = np.abs(sum_a) + np.abs(sum_b)
    return (ra * safe_divide(safe_divide(np.abs(sum_a), both) * total, sum_a),
            rb * safe_divide(safe_divide(np.abs(sum_b), both) * total, sum_b))


def clone_relprop(x, r1, r2):
    """The rule of a tensor ``x`` used twice: ``x ⊙ (R_1 / x + R_2 / x)``."""
    return x * (safe_divide(r1, x) + safe_divide(r2, x))


def trace(model, images) -> dict:
    """The forward's intermediates as numpy, in the model's precision (``relprop`` widens one
    block at a time: every block's are held, about 14 T D + heads T² numbers each per image):
    ``blocks``, one dict per block (``layers.Block``), and ``normed`` ``(N, T, D)``."""
    record = {}
    model.backbone.relevance_pass(ops.convert_to_tensor(np.asarray(images, np.float32)),
                                  [None] * model.preset.depth, None, record=record)

    def numpy(t):
        return np.asarray(ops.convert_to_numpy(t))

    return {"blocks": [{k: numpy(v) for k, v in b.items()} for b in record["blocks"]],
            "normed": numpy(record["normed"])}


def _kernel(dense):
    return np.asarray(dense.kernel.numpy(), np.float64)


def _block_relprop(block, rec, r):
    """One block's relevance, from its output's ``r`` ``(N, T, D)`` -> its input's, and the
    attention's ``(N, heads, T, T)`` (``attn_cam``: the first half of the A·V product's)."""
    r_res, r_mlp = add_relprop(rec["mid"], rec["y2"], r)
    r_mlp = linear_relprop(rec["g"], _kernel(block.mlp.fc2), r_mlp)  # then GELU: unchanged
    r_mlp = linear_relprop(rec["h2"], _kernel(block.mlp.fc1), r_mlp)  # then norm2: unchanged
    r_res, r_attn = add_relprop(rec["x"], rec["y1"], clone_relprop(rec["mid"], r_res, r_mlp))
    n, t, heads, d = rec["v"].shape
    r_attn = linear_relprop(rec["o"], _kernel(block.attn.proj), r_attn).reshape(n, t, heads, d)
    cam, r_v = product_relprop("nhqk,nkhd->nqhd", rec["attn"], rec["v"], r_attn)
    r_q, r_k = product_relprop("nqhd,nkhd->nhqk", rec["q"], rec["k"], cam)  # softmax: unchanged
    r_qkv = np.stack([r_q, r_k, r_v], axis=2).reshape(n, t, 3 * heads * d)
    r_h = linear_relprop(rec["h1"], _kernel(block.attn.qkv), r_qkv)  # then norm1: unchanged
    return clone_relprop(rec["x"], r_res, r_h), cam


def relprop(model, traced: dict, target, row) -> tuple[list, list]:
    """Chefer's ``VisionTransformer.relprop`` from the one-hot of ``target`` ``(N,)`` on the
    head of the class rows ``row`` (``methods.head_rows``: (0,) CLS, (1,) distillation, (0, 1)
    their mean, whose two summands split the relevance by ``add_relprop``) -> each block's
    attention relevance ``(N, heads, T, T)``, first block first, and the token relevances
    ``(N, T, D)`` at each block's input and, last, at the last block's output."""
    heads, normed = model.backbone.heads, traced["normed"].astype(np.float64)
    onehot = np.eye(model.preset.num_classes)[np.asarray(target)]
    if len(row) == 1:
        shares = [onehot]
    else:  # timm's distilled DeiT: (head(x_0) + head_dist(x_1)) / 2, an Add of two halves
        halves = [(normed[:, i] @ _kernel(heads[i]) + heads[i].bias.numpy()) / 2 for i in row]
        shares = add_relprop(*halves, onehot)
    r = np.zeros_like(normed)
    for i, share in zip(row, shares):  # the head's Linear, then IndexSelect; the norm: unchanged
        x = normed[:, i]
        r[:, i] = x * safe_divide(linear_relprop(x, _kernel(heads[i]), share), x)
    cams, relevances = [], [r]
    for block, rec in zip(reversed(model.backbone.blocks), reversed(traced["blocks"])):
        r, cam = _block_relprop(block, {k: v.astype(np.float64) for k, v in rec.items()}, r)
        cams.append(cam)
        relevances.append(r)
    return cams[::-1], relevances[::-1]
