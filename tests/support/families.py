"""Random DINOv2 and DINOv3 models in Hugging Face ``transformers`` (the reference), with peaked
attention, and the same weights written the way the official repositories and timm write them.

The official and timm layouts are produced here from the live ``transformers`` modules by a
mapping written for the tests (the names in ``facebookresearch/dinov2``, ``dinov3`` and timm's
``checkpoint_filter_fn``), independently of vidattn's readers, so that reading each file back
through vidattn and comparing outputs checks the readers.
"""

from __future__ import annotations

import dataclasses

import torch

from vidattn.models.presets import Preset, get_preset

TINY_DINOV3 = dataclasses.replace(  # heads of 16, so RoPE has 4 periods per axis
    get_preset("dinov3_vits16"), name="tiny_dinov3", embed_dim=64, depth=2, num_heads=4,
    mlp_hidden=256)


def tiny_dinov2(registers=False, swiglu=False) -> Preset:
    """A 2-block DINOv2 with 4 heads of 12 at 112 (an 8x8 native grid), with the switches of the
    released models; ``swiglu`` as the giant, its width by DINOv2's rounding rule."""
    base = get_preset("dinov2_vits14_reg" if registers else "dinov2_vits14")
    dim = 48
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8 if swiglu else None
    return dataclasses.replace(
        base, name=f"tiny_dinov2{'_reg' if registers else ''}{'_swiglu' if swiglu else ''}",
        embed_dim=dim, depth=2, num_heads=4, image_size=112, mlp="swiglu" if swiglu else "gelu",
        mlp_hidden=hidden)


def tiny_dinov3(swiglu=False) -> Preset:
    return dataclasses.replace(TINY_DINOV3, name=f"tiny_dinov3{'_swiglu' if swiglu else ''}",
                               mlp="swiglu" if swiglu else "gelu")


def _peak(model, attention_layers, seed, qk_gain):
    """Scale the query and key weights so attention is peaked but not saturated, and move every
    parameter off its initial value (LayerScale 1.0, zero registers would hide mistakes)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lambda1"):
                param.uniform_(0.5, 1.5)
            elif "token" in name or "position_embeddings" in name:
                param.normal_(0.0, 1.0)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
        for attn in attention_layers:
            for lin in (attn.q_proj, attn.k_proj):
                lin.weight.normal_(0.0, qk_gain / lin.weight.shape[1] ** 0.5)
    return model.eval()


def hf_dinov2(preset: Preset):
    """A ``Dinov2Model`` (or ``Dinov2WithRegistersModel``) shaped like ``preset``, as initialised."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    registers = preset.num_register_tokens
    config_cls, model_cls = ((Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers
                             else (Dinov2Config, Dinov2Model))
    extra = {"num_register_tokens": registers} if registers else {}
    config = config_cls(
        hidden_size=preset.embed_dim, num_hidden_layers=preset.depth,
        num_attention_heads=preset.num_heads, image_size=preset.image_size,
        patch_size=preset.patch_size, use_swiglu_ffn=preset.mlp == "swiglu",
        layer_norm_eps=preset.layer_norm_eps, attn_implementation="eager", **extra)
    return model_cls(config)


def peaky_hf_dinov2(preset: Preset, seed=0, qk_gain=1.2):
    """A random ``Dinov2Model`` (or ``Dinov2WithRegistersModel``) shaped like ``preset``, its
    attention peaked."""
    torch.manual_seed(seed)
    model = hf_dinov2(preset)
    return _peak(model, [layer.attention for layer in model.encoder.layer], seed, qk_gain)


def hf_dinov3(preset: Preset):
    """A ``DINOv3ViTModel`` shaped like ``preset`` (4 storage tokens, RoPE base 100)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    swiglu = preset.mlp == "swiglu"
    config = DINOv3ViTConfig(
        hidden_size=preset.embed_dim, intermediate_size=preset.hidden,
        num_hidden_layers=preset.depth, num_attention_heads=preset.num_heads,
        patch_size=preset.patch_size, num_register_tokens=preset.num_register_tokens,
        rope_theta=preset.rope_base, layer_norm_eps=preset.layer_norm_eps,
        use_gated_mlp=swiglu, hidden_act="silu" if swiglu else "gelu",
        attn_implementation="eager")
    return DINOv3ViTModel(config)


def peaky_hf_dinov3(preset: Preset, seed=0, qk_gain=1.2):
    """A random ``DINOv3ViTModel`` shaped like ``preset``, its attention peaked."""
    torch.manual_seed(seed)
    model = hf_dinov3(preset)
    return _peak(model, [layer.attention for layer in model.model.layer], seed, qk_gain)


def hf_run(model, images_nhwc):
    """The reference's forward: ``(CLS features (N, D), [attention (N, heads, T, T)],
    patch tokens (N, P, D))``, all after the final norm."""
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True)
    tokens = out.last_hidden_state
    prefix = tokens.shape[1] - (x.shape[2] // model.config.patch_size) * (
        x.shape[3] // model.config.patch_size)
    return (tokens[:, 0].numpy(), [a.numpy() for a in out.attentions],
            tokens[:, prefix:].numpy())


def _linear(sd, src, dst, out, bias=True):
    out[f"{dst}.weight"] = sd[f"{src}.weight"]
    if bias:
        out[f"{dst}.bias"] = sd[f"{src}.bias"]


def official_dinov2(model) -> dict:
    """The official ``.pth`` state dict of a ``transformers`` DINOv2 (live 5.x module names):
    ``facebookresearch/dinov2``'s names, q/k/v fused, SwiGLU's gate and up fused into ``w12``."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    for i in range(len(model.encoder.layer)):
        hf, ours = f"encoder.layer.{i}.", f"blocks.{i}."
        for wb in ("weight", "bias"):
            out[f"{ours}attn.qkv.{wb}"] = torch.cat(
                [sd[f"{hf}attention.{n}_proj.{wb}"] for n in "qkv"])
            for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attention.o_proj", "attn.proj"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                         ("mlp.down_proj", "mlp.w3")):
                if f"{hf}{a}.{wb}" in sd:
                    out[f"{ours}{b}.{wb}"] = sd[f"{hf}{a}.{wb}"]
            if f"{hf}mlp.gate_proj.{wb}" in sd:
                out[f"{ours}mlp.w12.{wb}"] = torch.cat(
                    [sd[f"{hf}mlp.gate_proj.{wb}"], sd[f"{hf}mlp.up_proj.{wb}"]])
        out[f"{ours}ls1.gamma"] = sd[f"{hf}layer_scale1.lambda1"]
        out[f"{ours}ls2.gamma"] = sd[f"{hf}layer_scale2.lambda1"]
    return out


def timm_dinov2(official: dict) -> dict:
    """The same weights as timm's ``checkpoint_filter_fn`` leaves them: no mask token; SwiGLU as
    ``mlp.fc1``/``fc2``; with registers ``reg_token`` and the CLS position folded into the token
    (``no_embed_class``: ``pos_embed`` holds the patches only)."""
    out = {}
    for key, value in official.items():
        if key == "mask_token":
            continue
        out[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = value
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:].contiguous()
    return out


def official_dinov3(model, periods=None) -> dict:
    """The official DINOv3 ``.pth`` state dict of a ``transformers`` ``DINOv3ViTModel``:
    ``storage_tokens``, q/k/v fused with the key bias stored as noise and masked out by
    ``bias_mask`` (as LinearKMaskedBias keeps it), ``rope_embed.periods`` (``periods``, default
    the exact values Hugging Face computes), SwiGLU as ``w1``/``w2``/``w3``."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = model.config.hidden_size
    head_dim = d // model.config.num_attention_heads
    if periods is None:
        periods = model.config.rope_theta ** (torch.arange(head_dim // 4) * 4 / head_dim)
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "storage_tokens": sd["embeddings.register_tokens"],
        "mask_token": sd["embeddings.mask_token"][0],
        "rope_embed.periods": torch.as_tensor(periods, dtype=torch.float32),
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"],
    }
    mask = torch.ones(3 * d)
    mask[d : 2 * d] = 0
    for i in range(model.config.num_hidden_layers):
        hf, ours = f"model.layer.{i}.", f"blocks.{i}."
        out[f"{ours}attn.qkv.weight"] = torch.cat(
            [sd[f"{hf}attention.{n}_proj.weight"] for n in "qkv"])
        noise = torch.randn_like(sd[f"{hf}attention.q_proj.bias"])  # a key bias to be masked
        out[f"{ours}attn.qkv.bias"] = torch.cat(
            [sd[f"{hf}attention.q_proj.bias"], noise, sd[f"{hf}attention.v_proj.bias"]])
        out[f"{ours}attn.qkv.bias_mask"] = mask
        names = (("norm1", "norm1"), ("norm2", "norm2"), ("attention.o_proj", "attn.proj"))
        if model.config.use_gated_mlp:
            names += (("mlp.gate_proj", "mlp.w1"), ("mlp.up_proj", "mlp.w2"),
                      ("mlp.down_proj", "mlp.w3"))
        else:
            names += (("mlp.up_proj", "mlp.fc1"), ("mlp.down_proj", "mlp.fc2"))
        for a, b in names:
            _linear(sd, hf + a, ours + b, out)
        out[f"{ours}ls1.gamma"] = sd[f"{hf}layer_scale1.lambda1"]
        out[f"{ours}ls2.gamma"] = sd[f"{hf}layer_scale2.lambda1"]
    return out
