"""The DINOv2 family, with and without registers (``facebookresearch/dinov2``).

Canonical layout: the official ``.pth`` (``torch.hub`` backbones, ``block_chunks=0``)::

    cls_token (1, 1, D)   pos_embed (1, 1 + 37*37, D)   register_tokens (1, 4, D)  [registers]
    patch_embed.proj.{weight (D, 3, 14, 14), bias}
    blocks.{i}.norm1, attn.qkv (rows q, k, v), attn.proj, ls1.gamma (D,), norm2, ls2.gamma
    blocks.{i}.mlp.fc1, mlp.fc2                    (S, B, L: GELU)
    blocks.{i}.mlp.w12 (2H, D), mlp.w3 (D, H)      (g: SwiGLU, the gate is w12's first H rows)
    norm.{weight,bias}

``mask_token`` (iBOT's, never used at inference) is read and dropped. Also read:

- training checkpoints saved with block chunks: ``blocks.{chunk}.{i}.`` -> ``blocks.{i}.``;
- Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` files (the Hub's names:
  ``embeddings.*``, ``encoder.layer.{i}.attention.attention.{query,key,value}``,
  ``layer_scale{1,2}.lambda1``, SwiGLU ``mlp.weights_in``/``weights_out``, ``layernorm``);
- timm's ``vit_*_patch14_dinov2`` and ``vit_*_patch14_reg4_dinov2`` (``vit.timm_layout``):
  SwiGLU as ``mlp.fc1`` (the fused w12) and ``mlp.fc2``; with registers ``reg_token`` and, as
  timm's ``no_embed_class`` layout, the CLS position folded into ``cls_token`` and ``pos_embed``
  holding patches only. The CLS position is then zero and the token already carries it: the
  same sum, ``cls + pos[0]``.
"""

from __future__ import annotations

import re

from vidattn.models.families.keys import rename, renames
from vidattn.models.families.vit import timm_layout

_LAYER, _WB = r"encoder\.layer\.(\d+)\.", r"\.(weight|bias)"
_HF_RENAMES = renames([
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection" + _WB, r"patch_embed.proj.\1"),
    (_LAYER + r"(norm[12])" + _WB, r"blocks.\1.\2.\3"),
    (_LAYER + r"attention\.output\.dense" + _WB, r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (_LAYER + r"mlp\.(fc[12])" + _WB, r"blocks.\1.mlp.\2.\3"),
    (_LAYER + r"mlp\.weights_in" + _WB, r"blocks.\1.mlp.w12.\2"),
    (_LAYER + r"mlp\.weights_out" + _WB, r"blocks.\1.mlp.w3.\2"),
    (r"layernorm" + _WB, r"norm.\1"),
])
_HF_QKV = re.compile(_LAYER + r"attention\.attention\.(query|key|value)" + _WB)
_HF_MARKER = re.compile(r"(dinov2\.)?embeddings\.patch_embeddings\.")
_UNUSED = re.compile(r"(embeddings\.)?mask_token$")
_CHUNKED = re.compile(r"blocks\.\d+\.(\d+\.)")


def to_canonical(tensors, preset, path):
    """Official, chunked, Hugging Face and timm DINOv2 names -> canonical (module docstring)."""
    if any(_HF_MARKER.match(k) for k in tensors):
        tensors = {k.removeprefix("dinov2."): v for k, v in tensors.items()}
        return rename(tensors, _HF_RENAMES, _HF_QKV, _UNUSED, path)
    tensors = {_CHUNKED.sub(r"blocks.\1", k, count=1): v for k, v in tensors.items()
               if not _UNUSED.match(k)}
    return timm_layout(tensors, preset, path)
