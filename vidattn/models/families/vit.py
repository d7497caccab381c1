"""The ViT family: DINO v1, the supervised ViT and DeiT (with or without distillation token).

Canonical layout (the official DINO release and timm's ``VisionTransformer``, torch layouts)::

    cls_token (1, 1, D)        dist_token (1, 1, D)        pos_embed (1, 1 [+1] + g*g, D)
    patch_embed.proj.weight (D, 3, p, p)                   patch_embed.proj.bias (D,)
    blocks.{i}.norm1/norm2.{weight,bias} (D,)
    blocks.{i}.attn.qkv.weight (3D, D), .bias (3D,)        rows q, k, v; heads contiguous
    blocks.{i}.attn.proj.{weight (D, D), bias}             blocks.{i}.mlp.fc1/fc2.{weight,bias}
    norm.{weight,bias} (D,)    head.{weight (C, D), bias}  head_dist.{weight, bias}

The official DINO ``.pth`` and timm's safetensors are already in it. Hugging Face
``ViTModel``/``ViTForImageClassification``/``DeiT*`` files (``vit.``/``deit.`` prefixes,
``encoder.layer.{i}...``, separate query/key/value) are renamed and their q, k, v fused.
"""

from __future__ import annotations

import re

from vidattn.models.families.keys import rename, renames

_LAYER, _WB = r"encoder\.layer\.(\d+)\.", r"\.(weight|bias)"
HF_RENAMES = renames([  # Hugging Face ViT/DeiT names (after the vit./deit. prefix) -> canonical
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection" + _WB, r"patch_embed.proj.\1"),
    (_LAYER + r"layernorm_before" + _WB, r"blocks.\1.norm1.\2"),
    (_LAYER + r"layernorm_after" + _WB, r"blocks.\1.norm2.\2"),
    (_LAYER + r"attention\.output\.dense" + _WB, r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"intermediate\.dense" + _WB, r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"output\.dense" + _WB, r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm" + _WB, r"norm.\1"),
    (r"(?:cls_)?classifier" + _WB, r"head.\1"),
    (r"distillation_classifier" + _WB, r"head_dist.\1"),
])
HF_QKV = re.compile(_LAYER + r"attention\.attention\.(query|key|value)" + _WB)
_HF_UNUSED = re.compile(r"pooler\.|embeddings\.mask_token$")  # not part of the forward pass
_HF_MARKER = re.compile(r"((vit|deit)\.)?embeddings\.patch_embeddings\.")


def to_canonical(tensors, preset, path):
    """Hugging Face ViT/DeiT names -> canonical; DINO and timm files pass unchanged."""
    if not any(_HF_MARKER.match(k) for k in tensors):
        return tensors
    tensors = {re.sub(r"^(vit|deit)\.", "", k): v for k, v in tensors.items()}
    return rename(tensors, HF_RENAMES, HF_QKV, _HF_UNUSED, path)
