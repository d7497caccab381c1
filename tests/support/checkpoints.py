"""Random Hugging Face ViT checkpoints for tests, with attention made far from uniform.

Near-uniform attention (what a 0.02-std initialisation gives) would let a wrong model pass a
parity test, so the query and key projections are scaled until the largest last-block attention
probability is well above 0.3.
"""

from __future__ import annotations

import torch
from transformers import ViTConfig, ViTModel

from vidattn.models.presets import Preset


def hf_config(preset: Preset) -> ViTConfig:
    """The Hugging Face ``ViTConfig`` with the same shape as ``preset``."""
    return ViTConfig(
        hidden_size=preset.embed_dim,
        num_hidden_layers=preset.depth,
        num_attention_heads=preset.num_heads,
        intermediate_size=preset.hidden,
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        layer_norm_eps=preset.layer_norm_eps,
        hidden_act="gelu",
        qkv_bias=True,
        attn_implementation="eager",
    )


def peaky_hf_vit(preset: Preset, seed=0, qk_gain=1.2) -> ViTModel:
    """A random ``ViTModel`` shaped like ``preset`` whose attention is peaked but not saturated
    (largest probabilities around 0.6 to 0.8: saturated softmax would hide errors too)."""
    qk_std = qk_gain / preset.embed_dim**0.5
    torch.manual_seed(seed)
    model = ViTModel(hf_config(preset), add_pooling_layer=False).eval()
    with torch.no_grad():
        for layer in model.layers:
            for lin in (layer.attention.q_proj, layer.attention.k_proj):
                lin.weight.normal_(0.0, qk_std)
        model.embeddings.position_embeddings.normal_(0.0, 1.0)
        model.embeddings.cls_token.normal_(0.0, 1.0)
    return model


def hf_forward(model: ViTModel, images_nhwc):
    """Run the Hugging Face reference; returns (features (N, D), [attention (N, h, T, T)])."""
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
    return out.last_hidden_state[:, 0].numpy(), [a.numpy() for a in out.attentions]


def canonical_from_hf(model: ViTModel) -> dict:
    """The same weights under timm/DINO names as torch tensors (what an official .pth holds),
    read from the live module (transformers 5 names), independently of vidattn's reader."""
    sd = model.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(len(model.layers)):
        hf, ours = f"layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            qkv = [sd[f"{hf}attention.{n}_proj.{part}"] for n in "qkv"]
            out[f"{ours}attn.qkv.{part}"] = torch.cat(qkv, 0)
            out[f"{ours}attn.proj.{part}"] = sd[f"{hf}attention.o_proj.{part}"]
            out[f"{ours}norm1.{part}"] = sd[f"{hf}layernorm_before.{part}"]
            out[f"{ours}norm2.{part}"] = sd[f"{hf}layernorm_after.{part}"]
            out[f"{ours}mlp.fc1.{part}"] = sd[f"{hf}mlp.fc1.{part}"]
            out[f"{ours}mlp.fc2.{part}"] = sd[f"{hf}mlp.fc2.{part}"]
    return {k: v.clone().contiguous() for k, v in out.items()}
