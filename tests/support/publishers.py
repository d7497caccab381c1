"""Model folders exactly as their publishers ship them, with tiny random weights, each with the
``transformers`` model that is the reference for it.

Every ``publish_*(folder)`` writes the config files and the checkpoint in the publisher's own
layout and naming (``save_pretrained`` for Hugging Face models; for timm and OpenCLIP the names
their ``state_dict()`` has, written independently of vidattn's readers) and returns
``(reference, native_hw, other_hw)``: a ``transformers`` model computing what the published
model computes (eval mode, eager attention, peaked), its native input size, and a non-square
size at which it computes the same (None where the reference cannot: see each function).
Sizes are tiny: depth 2, width 64, 4 or 2 heads, images 32 to 56.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.support.families import _peak, official_dinov2, official_dinov3

DIM, DEPTH = 64, 2
RAD_DINO_MEAN, RAD_DINO_STD = (0.5307,) * 3, (0.2583,) * 3  # RAD-DINO's preprocessor config


def _eager(config_cls, **kwargs):
    return config_cls(attn_implementation="eager", **kwargs)


def _write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2))


def _hf(model, folder: Path, attention_layers, seed=0, preprocessor=None):
    """Peak ``model``'s attention, ``save_pretrained`` it (and a ``preprocessor_config.json``)."""
    _peak(model, attention_layers, seed, qk_gain=1.2)
    model.save_pretrained(folder)
    if preprocessor is not None:
        _write_json(folder / "preprocessor_config.json", preprocessor)
    return model


def publish_rad_dino(folder: Path):
    """RAD-DINO's layout: a ``Dinov2Model`` (patch 14, 4 heads, a 4x4 grid at 56) and a
    ``BitImageProcessor`` config with its own mean and std, bicubic."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(_eager(Dinov2Config, hidden_size=DIM, num_hidden_layers=DEPTH,
                               num_attention_heads=4, image_size=56, patch_size=14))
    _hf(model, folder, [layer.attention for layer in model.encoder.layer], preprocessor={
        "image_processor_type": "BitImageProcessor", "do_resize": True, "resample": 3,
        "size": {"shortest_edge": 518}, "do_center_crop": True,
        "crop_size": {"height": 518, "width": 518}, "do_rescale": True,
        "rescale_factor": 0.00392156862745098, "do_normalize": True,
        "image_mean": list(RAD_DINO_MEAN), "image_std": list(RAD_DINO_STD)})
    return model, (56, 56), (42, 70)


def publish_phikon(folder: Path):
    """Phikon's layout: an iBOT ``ViTModel`` with its pooler, ImageNet mean and std, bilinear."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    model = ViTModel(_eager(ViTConfig, hidden_size=DIM, num_hidden_layers=DEPTH,
                            num_attention_heads=4, intermediate_size=4 * DIM, image_size=32,
                            patch_size=8, layer_norm_eps=1e-12))
    _hf(model, folder, [layer.attention for layer in model.layers], seed=1, preprocessor={
        "image_processor_type": "ViTImageProcessor", "resample": 2, "do_rescale": True,
        "rescale_factor": 0.00392156862745098, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "size": {"height": 224, "width": 224}})
    return model, (32, 32), (24, 40)


def publish_vit_classifier(folder: Path, labels=("cat", "dog", "teapot")):
    """A ``ViTForImageClassification`` with ``id2label`` (2 heads, a 6x6 grid at 48)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(2)
    model = ViTForImageClassification(_eager(
        ViTConfig, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=2,
        intermediate_size=3 * DIM, image_size=48, patch_size=8,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}))
    _hf(model, folder, [layer.attention for layer in model.vit.layers], seed=2)
    return model, (48, 48), (32, 56)


def publish_dinov2_registers(folder: Path):
    """A ``Dinov2WithRegistersModel``: 4 registers, SwiGLU (DINOv2's width rule), 2 heads."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(3)
    model = Dinov2WithRegistersModel(_eager(
        Dinov2WithRegistersConfig, hidden_size=DIM, num_hidden_layers=DEPTH,
        num_attention_heads=2, image_size=56, patch_size=14, use_swiglu_ffn=True,
        num_register_tokens=4))
    _hf(model, folder, [layer.attention for layer in model.encoder.layer], seed=3)
    return model, (56, 56), (42, 56)


def publish_dinov3(folder: Path):
    """A ``DINOv3ViTModel``: 4 storage tokens, gated (SwiGLU) feed-forward, heads of 16."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(4)
    model = DINOv3ViTModel(_eager(
        DINOv3ViTConfig, hidden_size=DIM, intermediate_size=96, num_hidden_layers=DEPTH,
        num_attention_heads=4, patch_size=16, image_size=32, num_register_tokens=4,
        use_gated_mlp=True, hidden_act="silu"))
    _hf(model, folder, [layer.attention for layer in model.model.layer], seed=4)
    return model, (32, 32), (32, 48)


def _timm_reference(seed, patch, image, mlp_ratio=4, swiglu=False, registers=0):
    """A ``Dinov2WithRegistersModel``: architecturally timm's ``VisionTransformer`` with
    LayerScale (``init_values``), eps 1e-6, and, like ``resample_abs_pos_embed``, positions
    resized by size with antialiasing; ``registers`` 0 is timm without registers."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    model = Dinov2WithRegistersModel(_eager(
        Dinov2WithRegistersConfig, hidden_size=DIM, num_hidden_layers=DEPTH,
        num_attention_heads=4, image_size=image, patch_size=patch, mlp_ratio=mlp_ratio,
        use_swiglu_ffn=swiglu, num_register_tokens=registers))
    return _peak(model, [layer.attention for layer in model.encoder.layer], seed, 1.2)


def _timm_config(architecture, model_args, input_size=224):
    return {"architecture": architecture, "num_classes": 0, "num_features": DIM,
            "global_pool": "token", "model_args": model_args,
            "pretrained_cfg": {"tag": "test", "input_size": [3, input_size, input_size],
                               "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225], "num_classes": 0}}


def _tensors(state: dict) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def publish_uni(folder: Path):
    """UNI's layout: timm ``vit_large_patch16_224`` with ``init_values`` 1e-5 and
    ``dynamic_img_size`` (its hub ``config.json``), timm-named ``model.safetensors``."""
    reference = _timm_reference(5, patch=8, image=48)
    state = official_dinov2(reference)  # timm's names for this architecture, mask token aside
    state.pop("mask_token")
    state.pop("register_tokens")  # the reference's empty (1, 0, D): timm has none
    save_file(_tensors(state), folder / "model.safetensors")
    _write_json(folder / "config.json", _timm_config("vit_large_patch16_224", {
        "img_size": 48, "patch_size": 8, "embed_dim": DIM, "depth": DEPTH, "num_heads": 4,
        "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}))
    return reference, (48, 48), (32, 56)


def publish_virchow2(folder: Path):
    """Virchow 2's layout: timm ``vit_huge_patch14_224`` with 4 registers whose positions are in
    ``pos_embed`` (no ``no_embed_class``), ``SwiGLUPacked`` (``fc1`` packs the gate first, then
    the value; ``fc2`` half as wide) with ``torch.nn.SiLU``. Its reference holds the registers
    with their positions added, which is what timm adds at every size."""
    reference = _timm_reference(6, patch=14, image=56, swiglu=True, registers=4)
    hidden = reference.config.hidden_size * reference.config.mlp_ratio
    hidden = (int(hidden * 2 / 3) + 7) // 8 * 8  # HF's rule; timm's mlp_ratio gives 2x it
    state = official_dinov2(reference)
    state.pop("mask_token")
    torch.manual_seed(6)
    reg_pos = torch.randn(1, 4, DIM)
    state["reg_token"] = state.pop("register_tokens") - reg_pos
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], reg_pos,
                                    state["pos_embed"][:, 1:]], dim=1)
    for key in [k for k in state if ".mlp.w" in k]:
        state[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = \
            state.pop(key)
    save_file(_tensors(state), folder / "model.safetensors")
    _write_json(folder / "config.json", _timm_config("vit_huge_patch14_224", {
        "img_size": 56, "patch_size": 14, "embed_dim": DIM, "depth": DEPTH, "num_heads": 4,
        "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 2 * hidden / DIM,
        "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU",
        "global_pool": "", "dynamic_img_size": True}))
    return reference, (56, 56), (42, 70)


def publish_openclip(folder: Path):
    """OpenCLIP's layout: ``open_clip_config.json`` and ``open_clip_pytorch_model.bin``
    (``torch.save`` of the whole CLIP's state dict, text tower included) of a ViT with exact
    GELU. The reference is a ``CLIPVisionModel`` with ``hidden_act`` gelu: OpenCLIP's image tower
    (``ln_pre``, no patch bias, eps 1e-5). Native size only: OpenCLIP resizes positions only when
    loading a checkpoint into a model of another size."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(7)
    model = CLIPVisionModel(_eager(CLIPVisionConfig, hidden_size=DIM, intermediate_size=4 * DIM,
                                   num_hidden_layers=DEPTH, num_attention_heads=2, image_size=32,
                                   patch_size=8, hidden_act="gelu"))
    _peak(model, [layer.self_attn for layer in model.encoder.layers], 7, 1.2)
    sd = model.state_dict()
    v, state = "visual.", {}
    state[v + "conv1.weight"] = sd["embeddings.patch_embedding.weight"]
    state[v + "class_embedding"] = sd["embeddings.class_embedding"]
    state[v + "positional_embedding"] = sd["embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for wb in ("weight", "bias"):
            state[f"{v}{ours}.{wb}"] = sd[f"{theirs}.{wb}"]
    for i in range(DEPTH):
        hf, oc = f"encoder.layers.{i}.", f"{v}transformer.resblocks.{i}."
        state[oc + "attn.in_proj_weight"] = torch.cat(
            [sd[f"{hf}self_attn.{n}_proj.weight"] for n in "qkv"])
        state[oc + "attn.in_proj_bias"] = torch.cat(
            [sd[f"{hf}self_attn.{n}_proj.bias"] for n in "qkv"])
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                             ("mlp.c_proj", "mlp.fc2")):
            for wb in ("weight", "bias"):
                state[f"{oc}{ours}.{wb}"] = sd[f"{hf}{theirs}.{wb}"]
    state[v + "proj"] = torch.randn(DIM, 32)
    state["text_projection"] = torch.randn(DIM, 32)  # the text tower, to be dropped
    state["token_embedding.weight"] = torch.randn(100, DIM)
    state["logit_scale"] = torch.tensor(4.6)
    torch.save(_tensors(state), folder / "open_clip_pytorch_model.bin")
    _write_json(folder / "open_clip_config.json", {
        "model_cfg": {"embed_dim": 32, "vision_cfg": {
            "image_size": 32, "layers": DEPTH, "width": DIM, "patch_size": 8,
            "head_width": DIM // 2}, "text_cfg": {"context_length": 77, "vocab_size": 100,
                                                "width": DIM, "heads": 2, "layers": 1}},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}})
    return model, (32, 32), None


def publish_official_dinov2(path: Path, registers=False):
    """An official DINOv2 ``.pth`` (no config) of a size no preset has: width 128 (heads of 64,
    as DINOv2's code defines every size), a 4x4 grid at 56."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, \
        Dinov2WithRegistersModel

    torch.manual_seed(8)
    config_cls, model_cls = ((Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers
                             else (Dinov2Config, Dinov2Model))
    extra = {"num_register_tokens": 4} if registers else {}
    model = model_cls(_eager(config_cls, hidden_size=128, num_hidden_layers=DEPTH,
                             num_attention_heads=2, image_size=56, patch_size=14, **extra))
    _peak(model, [layer.attention for layer in model.encoder.layer], 8, 1.2)
    torch.save(_tensors(official_dinov2(model)), path)
    return model


def publish_official_dinov3(path: Path):
    """An official DINOv3 ``.pth`` of a size no preset has: width 96 in 3 heads of 32 (8 RoPE
    periods say so), 4 storage tokens, GELU feed-forward of 192."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(9)
    model = DINOv3ViTModel(_eager(
        DINOv3ViTConfig, hidden_size=96, intermediate_size=192, num_hidden_layers=DEPTH,
        num_attention_heads=3, patch_size=16, num_register_tokens=4))
    _peak(model, [layer.attention for layer in model.model.layer], 9, 1.2)
    torch.save(_tensors(official_dinov3(model)), path)
    return model


def publish_clip(folder: Path):
    """A Hugging Face ``CLIPModel`` (``model_type`` clip, the image tower in ``vision_config``,
    QuickGELU), text tower and projections included; the reference is its ``vision_model``."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(10)
    model = CLIPModel(_eager(
        CLIPConfig, projection_dim=32,
        vision_config={"hidden_size": DIM, "intermediate_size": 4 * DIM, "num_hidden_layers":
                       DEPTH, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100}))
    vision = model.vision_model.eval()
    _hf(model, folder, [layer.self_attn for layer in vision.encoder.layers], seed=10,
        preprocessor={"image_processor_type": "CLIPImageProcessor", "resample": 3,
                      "image_mean": [0.48145466, 0.4578275, 0.40821073],
                      "image_std": [0.26862954, 0.26130258, 0.27577711]})
    return vision, (32, 32), (24, 40)


def publish_siglip(folder: Path):
    """A Hugging Face ``SiglipVisionModel``: no class token, the attention-pooling head, tanh
    GELU, pixels to [-1, 1]."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(11)
    model = SiglipVisionModel(_eager(
        SiglipVisionConfig, hidden_size=DIM, intermediate_size=3 * DIM, num_hidden_layers=DEPTH,
        num_attention_heads=4, image_size=32, patch_size=8))
    _hf(model, folder, [layer.self_attn for layer in model.encoder.layers],
        seed=11, preprocessor={"image_processor_type": "SiglipImageProcessor", "resample": 2,
                               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    return model, (32, 32), (24, 40)


PUBLISHERS = {  # folder name -> the publisher of that layout (all with a transformers reference)
    "rad_dino": publish_rad_dino, "phikon": publish_phikon,
    "vit_classifier": publish_vit_classifier, "dinov2_registers": publish_dinov2_registers,
    "dinov3": publish_dinov3, "clip": publish_clip, "siglip": publish_siglip,
    "uni": publish_uni, "virchow2": publish_virchow2, "openclip": publish_openclip,
}


def rewrite_json(path: Path, **changes):
    """Change a published config in place: ``key__subkey=value`` for nested keys, None to
    delete a key (for the tests and fuzz entries of bad configs)."""
    config = json.loads(path.read_text())
    for dotted, value in changes.items():
        node, *keys = config, *dotted.split("__")
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    path.write_text(json.dumps(config))
