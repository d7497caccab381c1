"""The DINOv3 family (``facebookresearch/dinov3``), ViT-S/16 to ViT-H+/16.

Canonical layout: the official ``.pth`` with DINOv2's names for what the two share::

    cls_token (1, 1, D)   register_tokens (1, 4, D)      (the official "storage_tokens")
    rope_embed.periods (head_dim / 4,)                   (stored; the official model uses them)
    patch_embed.proj.{weight (D, 3, 16, 16), bias}
    blocks.{i}.norm1, attn.qkv.{weight, bias, bias_mask (3D,)}, attn.proj, ls1.gamma, norm2,
    ls2.gamma, mlp.fc1/fc2 (S, B, L) or mlp.w12/w3 (S+, H+: the official w1 and w2 fused, the
    gate w1 first), norm.{weight,bias}

Read and dropped: ``mask_token`` and ``local_cls_norm`` (training only). Also read: Hugging Face
``DINOv3ViTModel`` files (``embeddings.*``, ``layer.{i}.attention.{q,k,v,o}_proj`` with no key
bias, ``layer_scale{1,2}.lambda1``, ``mlp.up_proj/down_proj`` or ``gate_proj/up_proj/down_proj``,
``norm``). Those hold neither periods nor a bias mask, because Hugging Face's code computes the
periods and has no key bias: the periods are computed as it does, the key bias is zero and its mask
keeps the query and value biases, so the model computes what ``DINOv3ViTModel`` computes.
"""

from __future__ import annotations

import re

import numpy as np

from vidattn.errors import VidattnError
from vidattn.models.families.keys import concat, constant, rename, renames
from vidattn.models.position import rope_periods

_WB = r"\.(weight|bias)"
_LAYER = r"layer\.(\d+)\."
_UNUSED = re.compile(r"(embeddings\.)?mask_token$|local_cls_norm\.")
_OFFICIAL = renames([(r"storage_tokens", "register_tokens")])
_HF_RENAMES = renames([
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.patch_embeddings" + _WB, r"patch_embed.proj.\1"),
    (_LAYER + r"(norm[12])" + _WB, r"blocks.\1.\2.\3"),
    (_LAYER + r"attention\.o_proj" + _WB, r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (_LAYER + r"mlp\.(\w+)" + _WB, r"blocks.\1.mlp.\2.\3"),
])
_HF_QKV = re.compile(_LAYER + r"attention\.(q|k|v)_proj" + _WB)
_HF_MARKER = re.compile(r"(model\.)?embeddings\.patch_embeddings\.weight$")
_MLP = re.compile(r"(blocks\.\d+\.mlp\.)(\w+)\.(weight|bias)")


def _mlp(tensors, path, names):
    """Feed-forward names -> canonical. ``names`` maps the file's names onto ``fc1``/``fc2`` or,
    for SwiGLU, onto ``gate``/``up``/``w3``: the gate's and up's rows are fused into ``w12``,
    the gate's first, as the model's ``SwiGLU`` reads it."""
    out = {}
    for key, value in tensors.items():
        m = _MLP.fullmatch(key)
        role = names.get(m[2]) if m else None
        if role is None:
            out[key] = value
        elif role == "gate":
            up = next((f"{m[1]}{n}.{m[3]}" for n, r in names.items() if r == "up"), None)
            if up not in tensors:
                raise VidattnError(f"{key} has no matching up projection", path)
            out[f"{m[1]}w12.{m[3]}"] = concat([value, tensors[up]])
        elif role != "up":
            out[f"{m[1]}{role}.{m[3]}"] = value
    return out


def _from_hugging_face(tensors, preset, path):
    """Hugging Face names -> canonical, with the query/key/value fused: the key bias, which
    ``DINOv3ViTModel`` does not have, is zero and masked; the periods are computed."""
    d = preset.embed_dim
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    for key in [k for k in tensors if re.fullmatch(_LAYER + r"attention\.q_proj\.bias", k)]:
        tensors[key.replace("q_proj", "k_proj")] = constant(np.zeros(d))
    out = rename(tensors, _HF_RENAMES, _HF_QKV, _UNUSED, path, parts=("q", "k", "v"))
    mask = np.ones(3 * d)
    mask[d : 2 * d] = 0
    for i in range(preset.depth):
        out[f"blocks.{i}.attn.qkv.bias_mask"] = constant(mask)
    out["rope_embed.periods"] = constant(rope_periods(preset.head_dim, preset.rope_base))
    names = ({"gate_proj": "gate", "up_proj": "up", "down_proj": "w3"} if preset.mlp == "swiglu"
             else {"up_proj": "fc1", "down_proj": "fc2"})
    return _mlp(out, path, names)


def to_canonical(tensors, preset, path):
    """Official and Hugging Face DINOv3 names -> canonical (module docstring)."""
    if any(_HF_MARKER.match(k) for k in tensors):
        return _from_hugging_face(tensors, preset, path)
    tensors = rename(tensors, _OFFICIAL, unused=_UNUSED, path=path)
    if preset.mlp == "swiglu":
        tensors = _mlp(tensors, path, {"w1": "gate", "w2": "up", "w3": "w3"})
    return tensors
