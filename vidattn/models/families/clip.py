"""The CLIP family: the image towers of OpenAI's CLIP and LAION's OpenCLIP (ViT-B/32, B/16, L/14).

Canonical layout (timm's ``vit_*_clip_*`` names, torch layouts)::

    cls_token (1, 1, D)        pos_embed (1, 1 + g*g, D)
    patch_embed.proj.weight (D, 3, p, p)                   (no bias: CLIP's conv1 has none)
    norm_pre.{weight,bias} (D,)                            (ln_pre, after the positions)
    blocks.{i}.norm1/norm2.{weight,bias} (D,)
    blocks.{i}.attn.qkv.weight (3D, D), .bias (3D,)        rows q, k, v; heads contiguous
    blocks.{i}.attn.proj.{weight (D, D), bias}             blocks.{i}.mlp.fc1/fc2.{weight,bias}
    norm.{weight,bias} (D,)                                (ln_post / post_layernorm)

timm's files are already in it. Also read, the text tower and the contrastive head dropped:

- Hugging Face ``CLIPVisionModel``/``CLIPModel`` safetensors: ``vision_model.`` (a
  ``CLIPModel``, or a ``CLIPVisionModel`` saved by transformers 4; transformers 5 saves none)
  ``embeddings.class_embedding`` (D,), ``embeddings.patch_embedding``,
  ``embeddings.position_embedding.weight`` (T, D), ``pre_layrnorm``,
  ``encoder.layers.{i}.layer_norm1/2``, ``self_attn.{q,k,v,out}_proj``, ``mlp.fc1/fc2``,
  ``post_layernorm``; dropped: ``text_model.*``, ``visual_projection``, ``text_projection``,
  ``logit_scale``, ``position_ids``.
- OpenCLIP state dicts (and OpenAI's own, which share the names): ``visual.conv1``,
  ``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre``,
  ``visual.transformer.resblocks.{i}.ln_1``, ``attn.in_proj_weight``/``in_proj_bias`` (already
  q, k, v), ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``visual.ln_post``;
  dropped: ``visual.proj`` (the projection into the joint image-text space: the features here
  are ``ln_post`` of the CLS token before it) and everything outside ``visual.``.

The class embedding ``(D,)`` and the positions ``(T, D)`` gain the leading axes of the canonical
shapes when they are read (``batch_axis``).
"""

from __future__ import annotations

import re

from vidattn.models.families.keys import rename, renames, transformed

_WB = r"\.(weight|bias)"
_LAYER = r"encoder\.layers\.(\d+)\."
HF_RENAMES = renames([  # Hugging Face CLIP/SigLIP vision names (vision_model. stripped)
    (r"embeddings\.class_embedding", "cls_token"),
    (r"embeddings\.patch_embedding" + _WB, r"patch_embed.proj.\1"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"pre_layrnorm" + _WB, r"norm_pre.\1"),
    (_LAYER + r"layer_norm([12])" + _WB, r"blocks.\1.norm\2.\3"),
    (_LAYER + r"self_attn\.out_proj" + _WB, r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"mlp\.(fc[12])" + _WB, r"blocks.\1.mlp.\2.\3"),
    (r"post_layernorm" + _WB, r"norm.\1"),
])
HF_QKV = re.compile(_LAYER + r"self_attn\.(q|k|v)_proj" + _WB)
HF_MARKER = re.compile(r"(vision_model\.)?embeddings\.patch_embedding\.weight$")
_HF_UNUSED = re.compile(
    r"text_model\.|(visual|text)_projection\.|logit_(scale|bias)$|embeddings\.position_ids$")

_BLOCK = r"transformer\.resblocks\.(\d+)\."
_OPENCLIP_RENAMES = renames([  # OpenCLIP / OpenAI names (visual. stripped)
    (r"class_embedding", "cls_token"),
    (r"positional_embedding", "pos_embed"),
    (r"conv1\.weight", "patch_embed.proj.weight"),
    (r"ln_pre" + _WB, r"norm_pre.\1"),
    (_BLOCK + r"ln_([12])" + _WB, r"blocks.\1.norm\2.\3"),
    (_BLOCK + r"attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (_BLOCK + r"attn\.out_proj" + _WB, r"blocks.\1.attn.proj.\2"),
    (_BLOCK + r"mlp\.c_fc" + _WB, r"blocks.\1.mlp.fc1.\2"),
    (_BLOCK + r"mlp\.c_proj" + _WB, r"blocks.\1.mlp.fc2.\2"),
    (r"ln_post" + _WB, r"norm.\1"),
])
_OPENCLIP_MARKER = re.compile(r"visual\.conv1\.weight$")
_OPENCLIP_UNUSED = re.compile(r"proj$")


def batch_axis(tensors):
    """``cls_token`` ``(D,)`` and ``pos_embed`` ``(T, D)`` as the canonical ``(1, 1, D)`` and
    ``(1, T, D)``, reshaped when read (already canonical ones are unchanged)."""
    def leading(a):
        return a.reshape(1, -1, a.shape[-1])

    return {k: transformed(v, leading) if k in ("cls_token", "pos_embed") else v
            for k, v in tensors.items()}


def hugging_face(tensors, path, extra=()):
    """Hugging Face CLIP or SigLIP vision names -> canonical: ``vision_model.`` stripped, the
    text tower and the contrastive head dropped, q/k/v fused; ``extra``: the family's own
    ``(pattern, replacement)`` pairs (``keys.renames``), tried first."""
    tensors = {k.removeprefix("vision_model."): v for k, v in tensors.items()}
    return rename(tensors, [*extra, *HF_RENAMES], HF_QKV, _HF_UNUSED, path, parts=("q", "k", "v"))


def to_canonical(tensors, preset, path):
    """OpenCLIP/OpenAI and Hugging Face CLIP names -> canonical; timm's pass unchanged."""
    if any(_OPENCLIP_MARKER.match(k) for k in tensors):
        visual = {k.removeprefix("visual."): v for k, v in tensors.items()
                  if k.startswith("visual.")}
        tensors = rename(visual, _OPENCLIP_RENAMES, unused=_OPENCLIP_UNUSED, path=path)
    elif any(HF_MARKER.match(k) for k in tensors):
        tensors = hugging_face(tensors, path)
    return batch_axis(tensors)
