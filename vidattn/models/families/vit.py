"""The ViT family: DINO v1, the supervised ViT and DeiT (with or without distillation token).

Canonical layout (the official DINO release and timm's ``VisionTransformer``, torch layouts)::

    cls_token (1, 1, D)        dist_token (1, 1, D)        pos_embed (1, 1 [+1] + g*g, D)
    patch_embed.proj.weight (D, 3, p, p)                   patch_embed.proj.bias (D,)
    blocks.{i}.norm1/norm2.{weight,bias} (D,)
    blocks.{i}.attn.qkv.weight (3D, D), .bias (3D,)        rows q, k, v; heads contiguous
    blocks.{i}.attn.proj.{weight (D, D), bias}             blocks.{i}.mlp.fc1/fc2.{weight,bias}
    norm.{weight,bias} (D,)    head.{weight (C, D), bias}  head_dist.{weight, bias}

The official DINO ``.pth`` and timm's safetensors are nearly in it (:func:`timm_layout` moves
timm's register tokens, prefix positions and SwiGLU feed-forwards into place). Hugging Face
``ViTModel``/``ViTForImageClassification``/``DeiT*`` files (``vit.``/``deit.`` prefixes,
``encoder.layer.{i}...``, separate query/key/value) are renamed and their q, k, v fused.
"""

from __future__ import annotations

import re

import numpy as np

from vidattn.errors import VidattnError
from vidattn.models.families.keys import concat, rename, renames, transformed
from vidattn.models.formats import load_tensor

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


_TIMM_MLP = re.compile(r"(blocks\.\d+\.mlp\.)(fc1|fc2|fc1_g)\.(weight|bias)")
_TIMM_SWIGLU = {"fc1": "w12", "fc2": "w3"}


def timm_layout(tensors, preset, path=None):
    """timm's ``VisionTransformer`` names -> canonical, for ``preset`` (None: only the rename of
    ``reg_token``). Canonical names pass unchanged.

    - ``reg_token`` -> ``register_tokens``.
    - Prefix positions: timm's ``pos_embed`` covers ``[class tokens, registers, patches]``, or
      the patches alone (``no_embed_class``); the canonical one covers the class tokens and the
      patches. Register positions are folded into the register tokens (timm adds them once and
      never resamples prefix positions, so ``token + position`` is the same sum), and a
      ``no_embed_class`` file gets zero class positions (its class tokens have none). Which
      layout a file has is told by ``pos_embed``'s length when it is read.
    - SwiGLU (``preset.mlp == "swiglu"``): ``SwiGLUPacked``'s fused ``mlp.fc1`` (the gate in its
      first half: ``gate_last=False``) is ``w12`` as it stands, the split ``SwiGLU``'s ``fc1_g``
      and ``fc1_x`` fuse into it, gate first; ``fc2`` is ``w3``.
    """
    tensors = dict(tensors)
    if "reg_token" in tensors:
        tensors["register_tokens"] = tensors.pop("reg_token")
    if preset is None:
        return tensors
    n_cls, n_reg = preset.num_class_tokens, preset.num_register_tokens
    folded = n_cls + n_reg + preset.grid_size**2  # timm's length with prefix positions
    if "pos_embed" in tensors and preset.position == "learned":
        pos = tensors["pos_embed"]

        def class_and_patches(p):
            if p.shape[1] == folded and n_reg:
                return np.concatenate([p[:, :n_cls], p[:, n_cls + n_reg:]], axis=1)
            if p.shape[1] == preset.grid_size**2 and n_cls:
                return np.concatenate([np.zeros_like(p[:, :n_cls]), p], axis=1)
            return p  # the canonical length, or another: load_state_dict reports that

        def with_positions(reg):
            p = load_tensor(pos)
            return reg + p[:, n_cls:n_cls + n_reg] if p.shape[1] == folded and n_reg else reg

        tensors["pos_embed"] = transformed(pos, class_and_patches)
        if "register_tokens" in tensors:
            tensors["register_tokens"] = transformed(tensors["register_tokens"], with_positions)
    if preset.mlp != "swiglu":
        return tensors
    out = {}
    for key, value in tensors.items():
        m = _TIMM_MLP.fullmatch(key)
        if m is None:
            out[key] = value
        elif m[2] == "fc1_g":
            up = f"{m[1]}fc1_x.{m[3]}"
            if up not in tensors:
                raise VidattnError(f"{key} has no matching {up}", path)
            out[f"{m[1]}w12.{m[3]}"] = concat([value, tensors[up]])
        else:
            out[f"{m[1]}{_TIMM_SWIGLU[m[2]]}.{m[3]}"] = value
    return {k: v for k, v in out.items() if ".mlp.fc1_x." not in k or
            k.replace(".fc1_x.", ".fc1_g.") not in tensors}  # fused into w12 above


def to_canonical(tensors, preset, path):
    """Hugging Face ViT/DeiT names -> canonical; DINO files pass unchanged, timm's through
    :func:`timm_layout`."""
    if not any(_HF_MARKER.match(k) for k in tensors):
        return timm_layout(tensors, preset, path)
    tensors = {re.sub(r"^(vit|deit)\.", "", k): v for k, v in tensors.items()}
    return rename(tensors, HF_RENAMES, HF_QKV, _HF_UNUSED, path)
