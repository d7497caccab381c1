"""Random Hugging Face CLIP and SigLIP vision towers for tests, with peaked attention, and the
same weights written as OpenAI's ``CLIPModel`` files, OpenCLIP's state dicts and timm's files
hold them.

The OpenCLIP and timm layouts are produced here from the live ``transformers`` modules by a
mapping written for the tests (OpenCLIP's ``VisionTransformer`` names, timm's
``vit_*_clip_*``/``vit_*_siglip_*`` names), independently of vidattn's readers, so that reading
each file back through vidattn and comparing outputs checks the readers.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from tests.support.families import _peak
from vidattn.models.presets import Preset

ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def hf_vision(preset: Preset):
    """A ``CLIPVisionModel`` or ``SiglipVisionModel`` shaped like ``preset``, as initialised."""
    config_cls, model_cls = ((CLIPVisionConfig, CLIPVisionModel) if preset.family == "clip"
                             else (SiglipVisionConfig, SiglipVisionModel))
    return model_cls(config_cls(
        hidden_size=preset.embed_dim, intermediate_size=preset.hidden,
        num_hidden_layers=preset.depth, num_attention_heads=preset.num_heads,
        image_size=preset.image_size, patch_size=preset.patch_size,
        hidden_act=ACTS[preset.act], layer_norm_eps=preset.layer_norm_eps,
        attn_implementation="eager"))


def peaky_reference(preset, seed=0, qk_gain=1.2):
    """A random ``CLIPVisionModel`` or ``SiglipVisionModel`` shaped like ``preset``: attention
    peaked (``_peak``), every LayerNorm's scale, the class embedding, positions and probe off
    their initial values, and the head's query and key rows scaled 1.5 times as much as the
    blocks' (one probe over a few dozen keys needs larger logits to peak)."""
    torch.manual_seed(seed)
    model = hf_vision(preset)
    model = _peak(model, [layer.self_attn for layer in model.encoder.layers], seed, qk_gain)
    d = preset.embed_dim
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith(("class_embedding", "position_embedding.weight", "probe")):
                param.normal_(0.0, 1.0)
            elif name.endswith("in_proj_weight"):
                param[: 2 * d].normal_(0.0, 1.5 * qk_gain / d**0.5)
    return model


def reference_run(model, images):
    """The reference's forward: ``(features (N, D), [attention (N, heads, T, T)], patch tokens
    (N, P, D) after the final norm, probe attention (N, heads, 1, P) or None)``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
        tokens = out.last_hidden_state
        probe = None
        if isinstance(model, CLIPVisionModel):  # its last_hidden_state is not normed
            tokens = model.post_layernorm(tokens[:, 1:])
        else:
            head = model.head
            query = head.probe.repeat(len(x), 1, 1)
            probe = head.attention(query, tokens, tokens, need_weights=True,
                                   average_attn_weights=False)[1].numpy()
    return (out.pooler_output.numpy(), [a.numpy() for a in out.attentions], tokens.numpy(),
            probe)


def resize_as_openclip(model):
    """Make the reference ``CLIPVisionModel`` resize its position table as OpenCLIP does when
    a model is made at another image size (``open_clip``'s ``resize_pos_embed``): the class
    row kept, the grid by ``interpolate(size=grid, mode="bicubic", antialias=True,
    align_corners=False)``, where transformers' CLIP interpolates without antialiasing."""
    embeddings = model.embeddings

    def interpolate(tokens, height, width):
        table = embeddings.position_embedding.weight
        old, p, dim = int(round((len(table) - 1) ** 0.5)), embeddings.patch_size, table.shape[1]
        grid = table[1:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=(height // p, width // p),
                                               mode="bicubic", antialias=True,
                                               align_corners=False)
        return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(-1, dim)])[None]

    embeddings.interpolate_pos_encoding = interpolate
    return model


def clip_model_file(model, path):
    """The vision half of a ``CLIPModel`` safetensors as the hub holds it: ``vision_model.``
    names beside a text tower, the projections, ``logit_scale`` and the ``position_ids``."""
    sd = {f"vision_model.{k}": v.clone() for k, v in model.state_dict().items()}
    d = model.config.hidden_size
    sd.update({"text_model.embeddings.token_embedding.weight": torch.randn(10, d),
               "visual_projection.weight": torch.randn(8, d),
               "text_projection.weight": torch.randn(8, d), "logit_scale": torch.tensor(2.6),
               "vision_model.embeddings.position_ids": torch.arange(65)[None]})
    save_file(sd, path)
    return path


def openclip_state_dict(model) -> dict:
    """The same weights as an OpenCLIP ``state_dict()`` (OpenCLIP's ``VisionTransformer``
    names and layouts: ``conv1``, ``class_embedding`` (D,), ``positional_embedding`` (T, D),
    fused ``in_proj``, ``c_fc``/``c_proj``, the joint-space ``proj``), with a text tower's
    entries beside it (``positional_embedding`` at the top level too), written for the tests
    independently of vidattn's reader."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = model.config.hidden_size
    out = {
        "visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["embeddings.class_embedding"],
        "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
        "visual.proj": torch.randn(d, 8),
        "positional_embedding": torch.randn(77, d), "logit_scale": torch.tensor(2.6),
        "token_embedding.weight": torch.randn(10, d),
    }
    for ours, hf in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for wb in ("weight", "bias"):
            out[f"visual.{ours}.{wb}"] = sd[f"{hf}.{wb}"]
    for i in range(model.config.num_hidden_layers):
        hf, ours = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for wb in ("weight", "bias"):
            out[f"{ours}attn.in_proj_{wb}"] = torch.cat(
                [sd[f"{hf}self_attn.{n}_proj.{wb}"] for n in "qkv"])
            for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("self_attn.out_proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj")):
                out[f"{ours}{b}.{wb}"] = sd[f"{hf}{a}.{wb}"]
    return out


def timm_state_dict(model) -> dict:
    """The same weights under timm's names (``vit_*_clip_*``, ``vit_*_siglip_*``: vidattn's
    canonical layout): tokens and positions with their leading axes, q/k/v fused, the SigLIP
    head's ``in_proj`` split into ``attn_pool.q`` and ``attn_pool.kv``."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = model.config.hidden_size
    out = {"pos_embed": sd["embeddings.position_embedding.weight"][None]}
    renamed = {"post_layernorm": "norm", "pre_layrnorm": "norm_pre",
               "embeddings.patch_embedding": "patch_embed.proj", "head.layernorm": "attn_pool.norm",
               "head.attention.out_proj": "attn_pool.proj", "head.mlp.fc1": "attn_pool.mlp.fc1",
               "head.mlp.fc2": "attn_pool.mlp.fc2"}
    for i in range(model.config.num_hidden_layers):
        hf, ours = f"encoder.layers.{i}.", f"blocks.{i}."
        renamed.update({hf + "layer_norm1": ours + "norm1", hf + "layer_norm2": ours + "norm2",
                        hf + "self_attn.out_proj": ours + "attn.proj",
                        hf + "mlp.fc1": ours + "mlp.fc1", hf + "mlp.fc2": ours + "mlp.fc2"})
        for wb in ("weight", "bias"):
            out[f"{ours}attn.qkv.{wb}"] = torch.cat(
                [sd[f"{hf}self_attn.{n}_proj.{wb}"] for n in "qkv"])
    for hf, ours in renamed.items():
        for wb in ("weight", "bias"):
            if f"{hf}.{wb}" in sd:
                out[f"{ours}.{wb}"] = sd[f"{hf}.{wb}"]
    if "embeddings.class_embedding" in sd:
        out["cls_token"] = sd["embeddings.class_embedding"].reshape(1, 1, d)
    if "head.probe" in sd:
        out["attn_pool.latent"] = sd["head.probe"]
        for wb in ("weight", "bias"):
            fused = sd[f"head.attention.in_proj_{wb}"]
            out[f"attn_pool.q.{wb}"], out[f"attn_pool.kv.{wb}"] = fused[:d], fused[d:]
    return {k: v.contiguous() for k, v in out.items()}
