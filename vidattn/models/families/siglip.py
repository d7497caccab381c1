"""The SigLIP family: the image towers of Google's SigLIP and SigLIP 2 (fixed resolution:
Hugging Face's ``SiglipModel`` architecture), with their attention-pooling ("MAP") head.

Canonical layout (timm's ``vit_*_siglip_*`` names, torch layouts; no class token)::

    pos_embed (1, g*g, D)      patch_embed.proj.{weight (D, 3, p, p), bias (D,)}
    blocks.{i}.norm1/norm2.{weight,bias} (D,)
    blocks.{i}.attn.qkv.weight (3D, D), .bias (3D,)        rows q, k, v; heads contiguous
    blocks.{i}.attn.proj.{weight (D, D), bias}             blocks.{i}.mlp.fc1/fc2.{weight,bias}
    norm.{weight,bias} (D,)                                (post_layernorm)
    attn_pool.latent (1, 1, D)                             the probe
    attn_pool.q.{weight (D, D), bias}    attn_pool.kv.{weight (2D, D), bias}   rows k, v
    attn_pool.proj.{weight (D, D), bias}                   attn_pool.norm.{weight,bias}
    attn_pool.mlp.fc1/fc2.{weight,bias}

timm's files are already in it. Hugging Face ``SiglipVisionModel``/``SiglipModel`` safetensors
(``vision_model.`` prefix or none; the encoder named as CLIP's: ``families.clip``) are renamed:
``head.probe`` -> ``attn_pool.latent``, ``head.attention.in_proj_weight`` ``(3D, D)`` (and its
bias) split into ``q`` (the first D rows) and ``kv`` (the other 2D: keys, then values),
``head.attention.out_proj`` -> ``attn_pool.proj``, ``head.layernorm`` -> ``attn_pool.norm``,
``head.mlp`` -> ``attn_pool.mlp``; the text tower, ``logit_scale`` and ``logit_bias`` dropped.
"""

from __future__ import annotations

import re

from vidattn.models.families.clip import HF_MARKER, batch_axis, hugging_face
from vidattn.models.families.keys import renames, transformed

_WB = r"\.(weight|bias)"
_HEAD_RENAMES = renames([
    (r"head\.probe", "attn_pool.latent"),
    (r"head\.attention\.out_proj" + _WB, r"attn_pool.proj.\1"),
    (r"head\.layernorm" + _WB, r"attn_pool.norm.\1"),
    (r"head\.mlp\.(fc[12])" + _WB, r"attn_pool.mlp.\1.\2"),
])
_IN_PROJ = re.compile(r"head\.attention\.in_proj_(weight|bias)")


def _split_in_proj(tensors):
    """``head.attention.in_proj_*`` (rows q, k, v) -> ``attn_pool.q.*`` and ``attn_pool.kv.*``."""
    out = {}
    for key, value in tensors.items():
        if m := _IN_PROJ.fullmatch(key):
            out[f"attn_pool.q.{m[1]}"] = transformed(value, lambda a: a[: len(a) // 3])
            out[f"attn_pool.kv.{m[1]}"] = transformed(value, lambda a: a[len(a) // 3 :])
        else:
            out[key] = value
    return out


def to_canonical(tensors, preset, path):
    """Hugging Face SigLIP names -> canonical; timm's pass unchanged."""
    if any(HF_MARKER.match(k) for k in tensors):
        tensors = _split_in_proj(hugging_face(tensors, path, _HEAD_RENAMES))
    return batch_axis(tensors)
