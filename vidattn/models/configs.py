"""A model read from its own checkpoint and config files: ``--model PATH|hf:ORG/NAME``.

``read_model(source)`` turns what a publisher ships beside its weights into a :class:`Preset`,
each field as the publisher's own code reads it (``ReadPreset.origins`` says where each came
from; ``describe`` prints it). One table per source format maps config fields to Preset fields,
with the defaults of the code that reads that config when a file omits a key:

- Hugging Face ``config.json`` by ``model_type`` (``_HF``): ``vit`` (``ViTModel``,
  ``ViTForImageClassification``, Phikon's iBOT ViT), ``dinov2`` (RAD-DINO),
  ``dinov2_with_registers``, ``dinov3_vit``, ``clip_vision_model`` / ``clip`` and
  ``siglip_vision_model`` / ``siglip`` (the vision tower of ``vision_config``);
  ``preprocessor_config.json`` for the preprocessing.
- timm's hub layout (``config.json`` with ``architecture``, ``model_args``, ``pretrained_cfg``):
  the architecture's own arguments (``TIMM_ARCHITECTURES``, timm's ``vision_transformer.py``)
  updated by ``model_args`` (UNI, Virchow 2, Prov-GigaPath, H-optimus).
- OpenCLIP's ``open_clip_config.json`` (``model_cfg.vision_cfg``, ``preprocess_cfg``).
- No config at all: an official DINO, DINOv2 or DINOv3 ``.pth``, whose tensor shapes give
  depth, width, patch, registers, LayerScale, the feed-forward and the position grid
  (``_from_shapes``). Heads are not in the shapes: DINOv3's RoPE periods give the head width;
  DINO and DINOv2 define 64-wide heads at every size their code has, and that rule is used.

Positions are resampled as that code does (``Preset.pos_resize``): transformers' ViT, DINOv2,
CLIP and SigLIP interpolate by size (bicubic), ``Dinov2WithRegisters`` by size with
antialiasing, timm's ``resample_abs_pos_embed`` and OpenCLIP's ``resize_pos_embed`` antialiased,
official DINO and DINOv2 by scale factor with the 0.1 offset (DINOv2 with registers: antialiased).

Deliberate differences, both where the publisher's code refuses other input sizes: timm without
``dynamic_img_size`` (vidattn resamples as timm's dynamic path does), and OpenCLIP, which resizes
positions only when loading weights into a model of another size (``resize_pos_embed``,
antialiased: vidattn does the same at run time).

Whatever cannot be determined, contradicts itself (a width not divisible by the heads, a config
disagreeing with the weights' patch embedding or block count) or is a variant the backbone does
not compute is one line naming the file and the field: never a guess.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from vidattn.errors import VidattnError
from vidattn.models.formats import load_tensor
from vidattn.models.presets import PRESETS, Preset
from vidattn.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ReadPreset", "TIMM_ARCHITECTURES", "describe", "is_model_source", "read_model"]

HUB = "hf:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
REQUIRED = object()  # a Key without a default: the file must give it


@dataclass(frozen=True)
class ReadPreset(Preset):
    """A :class:`Preset` read from a model's own files; ``origins``: ``(field, where)`` pairs
    saying which file and key (or which code's default, or which tensor) gave each field."""

    origins: tuple = field(default=(), compare=False)


@dataclass(frozen=True)
class Key:
    """One config field: ``key`` (dotted for nesting) gives Preset ``field`` through
    ``convert``; ``default`` is what the publisher's code takes when the file omits it. A
    ``field`` starting with ``_`` is an input of the format's ``derive`` rule; ``field`` None is
    a switch the backbone has only one setting of (``default``): another value is refused."""

    key: str
    field: str | None
    default: object = REQUIRED
    convert: Callable | None = None


@dataclass(frozen=True)
class Format:
    """A source format: whose ``code`` reads it, its ``keys``, the Preset fields that code
    fixes (``fixed``), and ``derive``: ``values -> {field: value}`` for what the code computes
    from several keys (widths by its rounding rule)."""

    code: str
    keys: tuple
    fixed: dict
    derive: Callable | None = None


# ------------------------------------------------------------------------------- conversions

_ACTIVATIONS = {  # publishers' activation names -> Preset.act
    "gelu": "gelu", "GELU": "gelu", "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "QuickGELU": "quick_gelu",
}  # fmt: skip
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic"}  # PIL codes -> keras
_TIMM_RESAMPLE = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
                  "lanczos": "lanczos3"}
_NAMED_NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                         "minus_one_one": ((0.5,) * 3, (0.5,) * 3), "clip": (CLIP_MEAN, CLIP_STD)}


def _act(name, key="activation"):
    name = str(name).rsplit(".", 1)[-1]  # timm may give "torch.nn.GELU"
    if name not in _ACTIVATIONS:
        raise ValueError(f"{key} {name!r} is not an activation the backbone computes "
                         f"({', '.join(sorted(set(_ACTIVATIONS)))})")
    return _ACTIVATIONS[name]


def _side(value):
    """An image or patch size: an int, or a square ``[h, w]``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{list(value)} is not square (only square sizes are supported)")
        value = value[0]
    return _positive(value)


def _positive(value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return value


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{value!r} is not a positive number")
    return float(value)


def _is_set(value):
    """LayerScale from an init value: present unless None."""
    return value is not None


def normalization(mean, std):
    """A preprocessing ``(mean, std)`` -> its name in ``preprocess.NORMALIZATIONS`` where it is
    one of those, else the pair of RGB triples (``Preset.preprocessing``)."""
    mean, std = (tuple(float(x) for x in v) for v in (mean, std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean {mean} / std {std} are not three channels with positive std")
    for name, (m, s) in _NAMED_NORMALIZATIONS.items():
        if np.allclose(mean, m, rtol=0, atol=1e-7) and np.allclose(std, s, rtol=0, atol=1e-7):
            return name
    return mean, std


# ------------------------------------------------------------------------ Hugging Face tables


def _hf_common(dim, depth, heads, eps, image, patch):
    """The keys every transformers vision config shares, with that model's defaults."""
    return (
        Key("hidden_size", "embed_dim", dim, _positive),
        Key("num_hidden_layers", "depth", depth, _positive),
        Key("num_attention_heads", "num_heads", heads, _positive),
        Key("layer_norm_eps", "layer_norm_eps", eps, _number),
        Key("image_size", "image_size", image, _side),
        Key("patch_size", "patch_size", patch, _side),
        Key("num_channels", None, 3),
    )


def _dinov2_mlp(v):
    """``Dinov2MLP`` (``int(D * mlp_ratio)``) or ``Dinov2SwiGLUFFN``: two thirds of that,
    rounded up to a multiple of 8 (transformers' and the official code's rule)."""
    hidden = int(v["embed_dim"] * v["_mlp_ratio"])
    if v["_swiglu"]:
        return {"mlp": "swiglu", "mlp_hidden": (int(hidden * 2 / 3) + 7) // 8 * 8}
    return {"mlp_hidden": hidden, "act": _act(v["_hidden_act"], "hidden_act")}


def _dinov3_mlp(v):
    """``DINOv3ViTGatedMLP`` (``use_gated_mlp``) is SwiGLU of ``intermediate_size`` and needs
    ``hidden_act`` silu; ``DINOv3ViTMLP`` is the activation named."""
    if v["_gated"]:
        if v["_hidden_act"] != "silu":
            raise ValueError(f"a gated feed-forward with hidden_act {v['_hidden_act']!r} "
                             "(the backbone's SwiGLU is silu)")
        return {"mlp": "swiglu"}
    return {"act": _act(v["_hidden_act"], "hidden_act")}


def _siglip_head(v):
    if not v["_head"]:
        raise ValueError("vision_use_head false: a SigLIP tower without its pooling head has no "
                         "class token to summarise it")
    return {"pool": "map"}


_DINOV2_KEYS = (Key("mlp_ratio", "_mlp_ratio", 4, _number), Key("use_swiglu_ffn", "_swiglu", False),
                Key("hidden_act", "_hidden_act", "gelu"), Key("qkv_bias", None, True))
_HF = {  # model_type -> how transformers reads that config.json
    "vit": Format("transformers ViTModel", _hf_common(768, 12, 12, 1e-12, 224, 16) + (
        Key("intermediate_size", "mlp_hidden", 3072, _positive),
        Key("hidden_act", "act", "gelu", _act), Key("qkv_bias", None, True),
    ), {"family": "vit", "pos_resize": "size",
        "preprocessing": "minus_one_one"}),  # ViTImageProcessor's default: mean = std = 0.5
    "dinov2": Format("transformers Dinov2Model", _hf_common(768, 12, 12, 1e-6, 224, 14)
                     + _DINOV2_KEYS,
                     {"family": "dinov2", "layer_scale": True, "pos_resize": "size"}, _dinov2_mlp),
    "dinov2_with_registers": Format(
        "transformers Dinov2WithRegistersModel", _hf_common(768, 12, 12, 1e-6, 224, 16)
        + _DINOV2_KEYS + (Key("num_register_tokens", "num_register_tokens", 4, _count),),
        {"family": "dinov2", "layer_scale": True, "pos_resize": "antialias"}, _dinov2_mlp),
    "dinov3_vit": Format("transformers DINOv3ViTModel", _hf_common(384, 12, 6, 1e-5, 224, 16) + (
        Key("intermediate_size", "mlp_hidden", 1536, _positive),
        Key("hidden_act", "_hidden_act", "gelu"), Key("use_gated_mlp", "_gated", False),
        Key("rope_theta", "rope_base", 100.0, _number),
        Key("num_register_tokens", "num_register_tokens", 0, _count),
        Key("query_bias", None, True), Key("key_bias", None, False), Key("value_bias", None, True),
        Key("proj_bias", None, True), Key("mlp_bias", None, True),
    ), {"family": "dinov3", "layer_scale": True, "position": "rope", "mask_k_bias": True},
        _dinov3_mlp),
    "clip_vision_model": Format("transformers CLIPVisionModel",
                                _hf_common(768, 12, 12, 1e-5, 224, 32) + (
        Key("intermediate_size", "mlp_hidden", 3072, _positive),
        Key("hidden_act", "act", "quick_gelu", _act),
    ), {"family": "clip", "pre_norm": True, "patch_bias": False, "pos_resize": "size",
        "preprocessing": "clip"}),
    "siglip_vision_model": Format("transformers SiglipVisionModel",
                                  _hf_common(768, 12, 12, 1e-6, 224, 16) + (
        Key("intermediate_size", "mlp_hidden", 3072, _positive),
        Key("hidden_act", "act", "gelu_pytorch_tanh", _act),
        Key("vision_use_head", "_head", True),
    ), {"family": "siglip", "num_class_tokens": 0, "pos_resize": "size",
        "preprocessing": "minus_one_one"}, _siglip_head),
}  # fmt: skip
# DINOv3's pos_embed_shift, _jitter and _rescale are augmentations transformers applies only in
# training: not read. Dropout and drop-path rates likewise.
_HF_TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}  # vision_config
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_PREPROCESSOR = "preprocessor_config.json"

# --------------------------------------------------------------------------------- timm tables

# timm's vision_transformer.py: each registered name's own arguments (``model_args`` in the
# file's hub config update them, as ``timm.create_model(name, **model_args)`` does).
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
          "large": (1024, 24, 16), "huge": (1280, 32, 16)}
_DINOV2 = {"init_values": 1e-5}
_REG4 = {"reg_tokens": 4, "no_embed_class": True}
_TIMM_SWIGLU_G = {"mlp_ratio": 2.66667 * 2, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}


def _timm(size, patch, **extra):
    dim, depth, heads = _SIZES[size]
    return {"patch_size": patch, "embed_dim": dim, "depth": depth, "num_heads": heads, **extra}


TIMM_ARCHITECTURES = {
    **{f"vit_{size}_patch{p}_{res}": _timm(size, p) for size, p, res in (
        ("tiny", 16, 224), ("tiny", 16, 384), ("small", 32, 224), ("small", 32, 384),
        ("small", 16, 224), ("small", 16, 384), ("small", 8, 224), ("base", 32, 224),
        ("base", 32, 384), ("base", 16, 224), ("base", 16, 384), ("base", 8, 224),
        ("large", 32, 224), ("large", 32, 384), ("large", 16, 224), ("large", 16, 384),
        ("large", 14, 224), ("huge", 14, 224))},
    "vit_giant_patch14_224": {"patch_size": 14, "embed_dim": 1408, "mlp_ratio": 48 / 11,
                              "depth": 40, "num_heads": 16},
    "vit_gigantic_patch14_224": {"patch_size": 14, "embed_dim": 1664, "mlp_ratio": 64 / 13,
                                 "depth": 48, "num_heads": 16},
    **{f"vit_{size}_patch14{reg}_dinov2": _timm(size, 14, **_DINOV2, **extra)
       for size in ("small", "base", "large") for reg, extra in (("", {}), ("_reg4", _REG4))},
    **{f"vit_giant_patch14{reg}_dinov2": {"patch_size": 14, "embed_dim": 1536, "depth": 40,
                                          "num_heads": 24, **_DINOV2, **_TIMM_SWIGLU_G, **extra}
       for reg, extra in (("", {}), ("_reg4", _REG4))},
}  # fmt: skip


def _timm_mlp(v):
    """timm's ``Block``: the feed-forward of ``hidden_features=int(D * mlp_ratio)``: ``Mlp``
    with ``act_layer``; ``SwiGLUPacked`` (``GluMlp``, ``gate_last=False``, SiLU): ``fc1`` of
    that width, the gate its first half, ``fc2`` of half of it; ``SwiGLU``: split ``fc1_g``,
    ``fc1_x`` of that width."""
    hidden = int(v["embed_dim"] * v["_mlp_ratio"])
    layer = str(v["_mlp_layer"]).rsplit(".", 1)[-1]
    act = str(v["_act_layer"] or "gelu").rsplit(".", 1)[-1]
    out = {"patch_bias": not v["pre_norm"]}  # timm: bias=not pre_norm
    if layer == "Mlp":
        return {**out, "mlp_hidden": hidden, "act": _act(act, "act_layer")}
    if layer not in ("SwiGLUPacked", "SwiGLU") or act.lower() not in ("silu", "swish"):
        raise ValueError(f"mlp_layer {layer} with act_layer {act} (supported: Mlp; SwiGLUPacked "
                         "or SwiGLU with SiLU)")
    if layer == "SwiGLUPacked" and hidden % 2:
        raise ValueError(f"SwiGLUPacked of odd width {hidden}")
    packed = layer == "SwiGLUPacked"
    return {**out, "mlp": "swiglu", "mlp_hidden": hidden // 2 if packed else hidden}


def _timm_pool(v):
    """The features are the final-normed class token: ``global_pool`` token (or none, ``""``),
    which needs ``class_token``."""
    if v["_pool"] not in ("token", ""):
        raise ValueError(f"global_pool {v['_pool']!r} (supported: token, or none)")
    if not v["num_class_tokens"]:
        raise ValueError("class_token false: no class token to read the features from")
    return {}


_TIMM = Format("timm VisionTransformer", (
    Key("img_size", "image_size", 224, _side), Key("patch_size", "patch_size", 16, _side),
    Key("embed_dim", "embed_dim", 768, _positive), Key("depth", "depth", 12, _positive),
    Key("num_heads", "num_heads", 12, _positive), Key("mlp_ratio", "_mlp_ratio", 4.0, _number),
    Key("init_values", "layer_scale", None, _is_set),
    Key("class_token", "num_class_tokens", True, int),
    Key("reg_tokens", "num_register_tokens", 0, _count), Key("pre_norm", "pre_norm", False, bool),
    Key("mlp_layer", "_mlp_layer", "Mlp"), Key("act_layer", "_act_layer", None),
    Key("global_pool", "_pool", "token"), Key("num_classes", "num_classes", 1000, _count),
    Key("no_embed_class", "_no_embed_class", False), Key("dynamic_img_size", "_dynamic", False),
    Key("qkv_bias", None, True), Key("qk_norm", None, False), Key("proj_bias", None, True),
    Key("final_norm", None, True), Key("fc_norm", None, None), Key("pos_embed", None, "learn"),
    Key("norm_layer", None, None), Key("in_chans", None, 3),
), {"family": "vit", "pos_resize": "antialias", "layer_norm_eps": 1e-6},
    lambda v: {**_timm_mlp(v), **_timm_pool(v)})  # fmt: skip
_TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

# ------------------------------------------------------------------------------ OpenCLIP table

_VISION = "model_cfg.vision_cfg."


def _openclip_derive(v):
    """OpenCLIP's ``VisionTransformer``: ``heads = width // head_width``, the feed-forward
    ``int(width * mlp_ratio)``, QuickGELU where the model config says ``quick_gelu``."""
    if v["embed_dim"] % v["_head_width"]:
        raise ValueError(f"width {v['embed_dim']} is not a multiple of head_width "
                         f"{v['_head_width']}")
    return {"num_heads": v["embed_dim"] // v["_head_width"],
            "mlp_hidden": int(v["embed_dim"] * v["_mlp_ratio"]),
            "act": "quick_gelu" if v["_quick_gelu"] else "gelu"}


_OPENCLIP = Format("OpenCLIP VisionTransformer", (
    Key(_VISION[:-1], "_vision_cfg"),  # open_clip's hub loader needs it; its fields have defaults
    Key(_VISION + "width", "embed_dim", 768, _positive),
    Key(_VISION + "layers", "depth", 12, _positive),
    Key(_VISION + "patch_size", "patch_size", 16, _side),
    Key(_VISION + "image_size", "image_size", 224, _side),
    Key(_VISION + "head_width", "_head_width", 64, _positive),
    Key(_VISION + "mlp_ratio", "_mlp_ratio", 4.0, _number),
    Key(_VISION + "ls_init_value", "layer_scale", None, _is_set),
    Key("model_cfg.quick_gelu", "_quick_gelu", False),
    Key("preprocess_cfg.mean", "_mean", CLIP_MEAN), Key("preprocess_cfg.std", "_std", CLIP_STD),
    Key("preprocess_cfg.interpolation", "resample", "bicubic", lambda n: _TIMM_RESAMPLE[n]),
    *(Key(_VISION + name, None, default) for name, default in (
        ("timm_model_name", None), ("attentional_pool", False), ("no_ln_pre", False),
        ("pos_embed_type", "learnable"), ("final_ln_after_pool", False), ("pool_type", "tok"),
        ("act_kwargs", None), ("norm_kwargs", None), ("input_patchnorm", False))),
), {"family": "clip", "pre_norm": True, "patch_bias": False, "layer_norm_eps": 1e-5,
    "pos_resize": "antialias"},
    lambda v: {**_openclip_derive(v), "preprocessing": normalization(v["_mean"], v["_std"])})
_OPENCLIP_CONFIG = "open_clip_config.json"
_OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")



# ------------------------------------------------------------------------------------ reading


def _lookup(config, key):
    """``(found, value)`` of a dotted ``key`` in nested dicts."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _apply(fmt: Format, config: dict, origin_of: Callable, path) -> tuple[dict, dict]:
    """``(fields, origins)``: the Preset fields ``config`` gives by ``fmt``'s table, then what
    the code fixes and derives. ``origin_of(key)`` names where a key that is there was read."""
    values, origins = {}, {}
    for k in fmt.keys:
        found, raw = _lookup(config, k.key)
        if not found and k.default is REQUIRED:
            raise VidattnError(f"{fmt.code} config has no {k.key}", path)
        raw = raw if found else k.default
        if k.field is None:
            if raw != k.default:
                raise VidattnError(f"{k.key}={json.dumps(raw)} is not supported ({fmt.code} is "
                                   f"computed with {json.dumps(k.default)} only)", path)
            continue
        try:
            values[k.field] = raw if k.convert is None else k.convert(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise VidattnError(f"{k.key}: {exc}", path) from None
        origins[k.field] = origin_of(k.key) if found else f"{fmt.code}'s default"
    values.update(fmt.fixed)
    origins.update({name: f"fixed by {fmt.code}" for name in fmt.fixed})
    if fmt.derive is not None:
        try:
            derived = fmt.derive(values)
        except (ValueError, TypeError) as exc:
            raise VidattnError(str(exc), path) from None
        values.update(derived)
        origins.update({name: f"{fmt.code}'s rule" for name in derived})
    return ({k: v for k, v in values.items() if not k.startswith("_")},
            {k: v for k, v in origins.items() if not k.startswith("_")})


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as exc:
        raise VidattnError(f"cannot read ({exc.strerror or exc})", path) from None
    except (ValueError, RecursionError) as exc:
        raise VidattnError(f"is not valid JSON ({exc})", path) from None
    if not isinstance(config, dict):
        raise VidattnError("is not a JSON object", path)
    return config


def _hf_config(config: dict, path) -> tuple[dict, dict]:
    """A transformers ``config.json`` -> ``(fields, origins)``; ``clip`` and ``siglip`` by their
    ``vision_config``."""
    model_type = config.get("model_type")
    prefix = ""
    if isinstance(model_type, str) and model_type in _HF_TOWERS:
        if not isinstance(config.get("vision_config", {}), dict):
            raise VidattnError("vision_config is not an object", path)
        config, prefix, model_type = config.get("vision_config", {}), "vision_config.", \
            _HF_TOWERS[model_type]
    if not isinstance(model_type, str) or model_type not in _HF:
        raise VidattnError(f"model_type {model_type!r} is not one vidattn reads (known: "
                           f"{', '.join([*_HF, *_HF_TOWERS])}, or timm's and OpenCLIP's configs)",
                           path)
    fields, origins = _apply(_HF[model_type], config, lambda k: f"config.json {prefix}{k}", path)
    return fields, origins


def _hf_labels(config: dict, path) -> tuple[dict, dict]:
    """``ViTForImageClassification``'s head: ``id2label`` ordered by index. Other classifiers
    (DINOv2's reads the CLS and the mean patch token) are refused."""
    architectures = config.get("architectures")
    architectures = architectures if isinstance(architectures, list) else []
    heads = [a for a in architectures if str(a).endswith("ForImageClassification")]
    if not heads:
        return {}, {}
    if heads != ["ViTForImageClassification"]:
        raise VidattnError(f"architectures {heads}: only ViTForImageClassification's head (on the "
                           "CLS token) is computed", path)
    labels = config.get("id2label")
    if not isinstance(labels, dict) or not labels:
        raise VidattnError("ViTForImageClassification without id2label", path)
    try:
        by_index = {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise VidattnError("id2label has a key that is not an index", path) from None
    if sorted(by_index) != list(range(len(by_index))):
        raise VidattnError(f"id2label indices are not 0..{len(by_index) - 1}", path)
    names = tuple(by_index[i] for i in range(len(by_index)))
    return ({"num_classes": len(names), "class_names": names},
            {"num_classes": "config.json id2label", "class_names": "config.json id2label"})


def _hf_preprocessing(config: dict, path) -> tuple[dict, dict]:
    """``preprocessor_config.json``: ``image_mean``/``image_std`` (on 0..1 pixels:
    ``do_rescale`` by 1/255), ``resample`` (PIL's codes -> ``keras.ops.image.resize``'s names)
    and the ``size`` it resizes to (shown by ``describe``)."""
    fields, origins, where = {}, {}, "preprocessor_config.json"
    if config.get("do_rescale", True) and not np.isclose(config.get("rescale_factor", 1 / 255),
                                                         1 / 255):
        raise VidattnError(f"rescale_factor {config['rescale_factor']} (only 1/255 is "
                           "supported: means and stds on 0..1 pixels)", path)
    if "image_mean" in config or "image_std" in config or config.get("do_normalize") is False:
        mean, std = config.get("image_mean"), config.get("image_std")
        if config.get("do_normalize", True) is False:
            mean, std = (0.0,) * 3, (1.0,) * 3
        if mean is None or std is None:
            raise VidattnError("has image_mean or image_std but not both", path)
        try:
            fields["preprocessing"] = normalization(mean, std)
        except (ValueError, TypeError) as exc:
            raise VidattnError(f"image_mean/image_std: {exc}", path) from None
        origins["preprocessing"] = f"{where} image_mean, image_std"
    if "resample" in config:
        if config["resample"] not in _PIL_RESAMPLE:
            raise VidattnError(f"resample {config['resample']!r} (supported PIL filters: "
                               f"{_PIL_RESAMPLE})", path)
        fields["resample"] = _PIL_RESAMPLE[config["resample"]]
        origins["resample"] = f"{where} resample"
    for key in ("size", "crop_size"):
        if key in config:
            origins[f"_{key}"] = f"{where} {key} {json.dumps(config[key])} (not used: vidattn " \
                                 "sizes every input itself)"
    return fields, origins


def _timm_config(config: dict, path) -> tuple[dict, dict]:
    """timm's hub ``config.json``: the architecture's arguments, then the file's ``num_classes``
    and ``global_pool``, then ``model_args``; ``img_size`` defaults to ``pretrained_cfg``'s
    ``input_size`` as ``timm.create_model`` takes it; mean, std and interpolation from
    ``pretrained_cfg``; class names from ``label_names``."""
    arch = config.get("architecture")
    if not isinstance(arch, str) or arch not in TIMM_ARCHITECTURES:
        raise VidattnError(f"timm architecture {arch!r} is not one vidattn reads (known: the "
                           f"vision_transformer names {', '.join(TIMM_ARCHITECTURES)})", path)
    model_args = config.get("model_args") or {}
    pretrained = config.get("pretrained_cfg") or {}
    if not isinstance(model_args, dict) or not isinstance(pretrained, dict):
        raise VidattnError("model_args and pretrained_cfg must be objects", path)
    merged, where = dict(TIMM_ARCHITECTURES[arch]), dict.fromkeys(TIMM_ARCHITECTURES[arch],
                                                                  f"timm's {arch}")
    if isinstance(pretrained.get("input_size"), list) and pretrained["input_size"]:
        merged["img_size"] = pretrained["input_size"][-1]
        where["img_size"] = "config.json pretrained_cfg.input_size"
    for key in ("num_classes", "global_pool"):
        if key in config:
            merged[key], where[key] = config[key], f"config.json {key}"
    merged.update(model_args)
    where.update({k: f"config.json model_args.{k}" for k in model_args})
    fields, origins = _apply(_TIMM, merged, where.get, path)
    if "mean" in pretrained or "std" in pretrained:
        try:
            fields["preprocessing"] = normalization(pretrained.get("mean"), pretrained.get("std"))
        except (ValueError, TypeError) as exc:
            raise VidattnError(f"pretrained_cfg mean/std: {exc}", path) from None
        origins["preprocessing"] = "config.json pretrained_cfg.mean, std"
    if "interpolation" in pretrained:
        if not isinstance(pretrained["interpolation"], str) \
                or pretrained["interpolation"] not in _TIMM_RESAMPLE:
            raise VidattnError(f"pretrained_cfg.interpolation {pretrained['interpolation']!r}",
                               path)
        fields["resample"] = _TIMM_RESAMPLE[pretrained["interpolation"]]
        origins["resample"] = "config.json pretrained_cfg.interpolation"
    labels = config.get("label_names")
    if isinstance(labels, list) and fields["num_classes"] and len(labels) == fields["num_classes"]:
        fields["class_names"] = tuple(str(n) for n in labels)
        origins["class_names"] = "config.json label_names"
    if not merged.get("dynamic_img_size"):
        origins["_dynamic"] = ("timm refuses other input sizes without dynamic_img_size; vidattn "
                               "resamples the positions as timm's dynamic path does")
    if merged.get("no_embed_class"):
        origins["_no_embed_class"] = "no_embed_class: prefix tokens have no positions"
    elif fields["num_register_tokens"]:
        origins["_registers"] = ("the registers' positions are added to the register tokens "
                                 "(timm never resamples them)")
    return fields, origins


def _openclip_config(config: dict, path) -> tuple[dict, dict]:
    """OpenCLIP's ``open_clip_config.json``: its image tower (``model_cfg.vision_cfg``) and
    ``preprocess_cfg``. A tower built by timm (``timm_model_name``) or a ResNet is refused."""
    if isinstance(_lookup(config, _VISION + "layers")[1], (list, tuple)):
        raise VidattnError("model_cfg.vision_cfg.layers is a list: a ResNet tower, not a ViT", path)
    return _apply(_OPENCLIP, config, lambda k: f"{_OPENCLIP_CONFIG} {k}", path)


# ------------------------------------------------------------------- official files, by shape

_BLOCK = re.compile(r"blocks\.(\d+)\.")
HEAD_WIDTH = 64  # DINO's and DINOv2's heads at every size their code defines (S, B, L, g)


def _official_family(tensors) -> str:
    if {"storage_tokens", "rope_embed.periods"} & set(tensors):
        return "dinov3"
    if {"register_tokens", "mask_token"} & set(tensors) or any(".ls1." in k for k in tensors):
        return "dinov2"
    return "vit"


def _from_shapes(path) -> tuple[dict, dict]:
    """An official DINO, DINOv2 or DINOv3 checkpoint without config -> ``(fields, origins)``
    from its tensors' shapes (the few tensors read are small: the patch embedding, tokens,
    positions, periods and block 0's first feed-forward matrix). Official releases are torch
    files; a ``.safetensors`` without config (timm's and Hugging Face's need one: their head
    widths vary) is refused rather than guessed."""
    from vidattn.models import families
    from vidattn.models.formats import sniff
    from vidattn.models.state_dict import network_tensors

    if sniff(Path(path)) == "safetensors":
        raise VidattnError("is a safetensors file without config.json beside it: only official "
                           "DINO/DINOv2/DINOv3 .pth files are read without a config", path)
    with network_tensors(path) as raw:
        family = _official_family(raw)
        tensors = families.get("dinov2").to_canonical(raw, None, path) if family == "dinov2" \
            else {("register_tokens" if k == "storage_tokens" else k): v for k, v in raw.items()}

        def shape(name):
            return load_tensor(tensors[name]).shape if name in tensors else None

        fields, origins = {"family": family}, {"family": f"tensor names ({family})"}

        def found(name, value, where):
            fields[name], origins[name] = value, where

        patch = shape("patch_embed.proj.weight")
        if patch is None or len(patch) != 4 or patch[1] != 3 or patch[2] != patch[3]:
            raise VidattnError(f"cannot tell the patch size and width: patch_embed.proj.weight is "
                               f"{patch or 'missing'} (expected (D, 3, p, p))", path)
        d, p = int(patch[0]), int(patch[2])
        found("embed_dim", d, "shape of patch_embed.proj.weight")
        found("patch_size", p, "shape of patch_embed.proj.weight")
        blocks = {int(m[1]) for k in tensors if (m := _BLOCK.match(k))}
        if not blocks:
            raise VidattnError("has no transformer blocks (blocks.{i}.*)", path)
        found("depth", max(blocks) + 1, "count of blocks.{i}")
        found("layer_scale", "blocks.0.ls1.gamma" in tensors, "presence of blocks.0.ls1.gamma")
        if "register_tokens" in tensors:
            found("num_register_tokens", int(shape("register_tokens")[1]),
                  "shape of " + ("storage_tokens" if family == "dinov3" else "register_tokens"))
        for name, rows in (("w12", 2), ("w1", 1)):
            if (w := shape(f"blocks.0.mlp.{name}.weight")) is not None:
                found("mlp", "swiglu", f"presence of blocks.0.mlp.{name}")
                found("mlp_hidden", int(w[0]) // rows, f"shape of blocks.0.mlp.{name}.weight")
                break
        else:
            if (w := shape("blocks.0.mlp.fc1.weight")) is None:
                raise VidattnError("cannot tell the feed-forward: blocks.0.mlp has neither fc1, "
                                   "w12 nor w1", path)
            found("mlp_hidden", int(w[0]), "shape of blocks.0.mlp.fc1.weight")
        if family == "dinov3":
            _dinov3_shapes(tensors, d, found, path)
        else:
            _learned_shapes(tensors, family, d, p, found, path)
    return fields, origins


def _dinov3_shapes(tensors, d, found, path):
    """DINOv3: heads from the stored RoPE periods (``head_dim / 4`` of them), the base from
    their spacing (``period_k = base ** (4 k / head_dim)``)."""
    if "rope_embed.periods" not in tensors:
        raise VidattnError("cannot tell the heads: a DINOv3 checkpoint without "
                           "rope_embed.periods", path)
    periods = load_tensor(tensors["rope_embed.periods"]).astype(np.float64)
    head_dim = 4 * len(periods)
    if not head_dim or d % head_dim:
        raise VidattnError(f"width {d} is not a multiple of the head width {head_dim} that the "
                           f"{len(periods)} rope_embed.periods give", path)
    found("num_heads", d // head_dim, f"shape of rope_embed.periods (head width {head_dim})")
    if len(periods) > 1:
        found("rope_base", float(periods[1] ** (head_dim / 4)), "rope_embed.periods")
    found("position", "rope", "DINOv3 code")
    found("mask_k_bias", "blocks.0.attn.qkv.bias_mask" in tensors,
          "presence of blocks.0.attn.qkv.bias_mask")
    found("layer_norm_eps", 1e-5, "DINOv3 code")


def _learned_shapes(tensors, family, d, p, found, path):
    """DINO and DINOv2: the grid from ``pos_embed``, the heads by their code's 64-wide rule."""
    pos = load_tensor(tensors["pos_embed"]).shape if "pos_embed" in tensors else None
    if "cls_token" not in tensors or pos is None or len(pos) != 3:
        raise VidattnError("cannot tell the tokens: cls_token or pos_embed (1, 1 + g*g, D) is "
                           "missing", path)
    g = math.isqrt(pos[1] - 1)
    if g * g != pos[1] - 1:
        raise VidattnError(f"pos_embed has {pos[1]} rows: not a class token plus a square grid",
                           path)
    found("image_size", g * p, f"shape of pos_embed ({g} x {g} patches)")
    if d % HEAD_WIDTH:
        raise VidattnError(f"cannot tell the heads: width {d} is not a multiple of the "
                           f"{HEAD_WIDTH}-wide heads of DINO's and DINOv2's code", path)
    found("num_heads", d // HEAD_WIDTH, f"width / {HEAD_WIDTH} (DINO's and DINOv2's heads are "
                                        f"{HEAD_WIDTH} wide at every size: not in the shapes)")
    registers = "register_tokens" in tensors
    found("pos_resize", "antialias" if registers else "offset",
          "official DINOv2 with registers" if registers
          else f"official {'DINOv2' if family == 'dinov2' else 'DINO'} code")


# --------------------------------------------------------------------------------- sources


def _first(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _local_formats(folder: Path):
    """``(config name, reader, weight file names)`` of the config formats found in ``folder``,
    preferred first: a Hugging Face or timm ``config.json``, then OpenCLIP's."""
    found = []
    if (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
        found.append(("config.json", config, _TIMM_WEIGHTS if "architecture" in config
                      else _HF_WEIGHTS))
    if (folder / _OPENCLIP_CONFIG).is_file():
        found.append((_OPENCLIP_CONFIG, _read_json(folder / _OPENCLIP_CONFIG), _OPENCLIP_WEIGHTS))
    return found


def _from_config(name: str, config: dict, path, preprocessor: dict | None):
    """``(fields, origins, code)`` of a config file called ``name``."""
    if name == _OPENCLIP_CONFIG:
        fields, origins = _openclip_config(config, path)
        return fields, origins, _OPENCLIP.code
    if "architecture" in config:
        fields, origins = _timm_config(config, path)
        return fields, origins, _TIMM.code
    fields, origins = _hf_config(config, path)
    labels, label_origins = _hf_labels(config, path)
    fields.update(labels)
    origins.update(label_origins)
    if preprocessor is not None:
        more, more_origins = _hf_preprocessing(preprocessor, path.parent / _HF_PREPROCESSOR)
        fields.update(more)
        origins.update(more_origins)
    else:
        origins.setdefault("_preprocessor", f"no {_HF_PREPROCESSOR}: preprocessing is the "
                                            "format's default")
    model_type = config.get("model_type")
    return fields, origins, _HF[_HF_TOWERS.get(model_type, model_type)].code


class _Read(NamedTuple):
    """What a source gave: the Preset ``fields`` and their ``origins``, the model's ``name``,
    whose ``code`` it is and where it was read (``where``), the ``config`` file named in errors,
    and the weights: a local file (``weights``) or a Hub file name (``hf_file``)."""

    fields: dict
    origins: dict
    name: str
    code: str
    where: str
    config: object
    weights: Path | None = None
    hf_file: str | None = None


def _read_local(source: str) -> _Read:
    """What a folder, or a checkpoint file in one, gives."""
    path = Path(source).expanduser()
    if not path.exists():
        raise VidattnError("does not exist (expected a model folder, a checkpoint file, or "
                           "hf:ORG/NAME)", path)
    folder, given = (path, None) if path.is_dir() else (path.parent, path)
    formats = sorted(_local_formats(folder), key=lambda f: given is None or given.name not in f[2])
    for config_name, config, weight_names in formats:  # a named file's own format first
        weights = given or _first(folder, weight_names)
        if weights is None:
            if any(folder.glob("*.index.json")):
                raise VidattnError("holds sharded weights (*.index.json): not supported; save "
                                   "them as one file", folder)
            continue
        preprocessor = (_read_json(folder / _HF_PREPROCESSOR)
                        if (folder / _HF_PREPROCESSOR).is_file() else None)
        fields, origins, code = _from_config(config_name, config, folder / config_name,
                                             preprocessor)
        return _Read(fields, origins, folder.resolve().name, code, str(folder),
                     folder / config_name, weights)
    if given is None:
        found = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            configs = [n for n, _, _ in _local_formats(folder)]
            what = (f"{' and '.join(configs)} but no weights file beside it" if configs
                    else f"{len(found)} checkpoint files and no config.json")
            raise VidattnError(f"has {what} (name the checkpoint file itself)", folder)
        given = found[0]
    fields, origins = _from_shapes(given)
    return _Read(fields, origins, given.stem, "official checkpoint read by its shapes",
                 str(given), given, given)


def _hub_file(repo: str, name: str) -> Path | None:
    """``name`` of Hub repository ``repo`` through ``huggingface_hub`` (its cache,
    ``HF_HUB_OFFLINE``); None where the repository has no such file."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError)

    from vidattn.models.hub import check_reachable

    try:
        if not constants.HF_HUB_OFFLINE:
            check_reachable(constants.ENDPOINT)
        return Path(hf_hub_download(repo, name))
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError)
        if constants.HF_HUB_OFFLINE:
            raise VidattnError(f"{HUB}{repo}: {name} is not in the Hugging Face cache and "
                               "HF_HUB_OFFLINE is set") from None
        raise VidattnError(f"{HUB}{repo}: cannot fetch {name} (the Hub cannot be reached)") \
            from None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise VidattnError(f"{HUB}{repo}: no such repository on the Hugging Face Hub (or it is "
                           "private: log in with `hf auth login`)") from None
    except (OSError, HfHubHTTPError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise VidattnError(f"{HUB}{repo}: cannot fetch {name} ({reason})") from None


def _hub_weights(repo: str, names) -> str:
    """Which of ``names`` the repository holds: one already cached, else (online) the first
    the Hub has, else the first name (resolving it later says what is missing)."""
    from huggingface_hub import constants, file_exists, try_to_load_from_cache

    for name in names:
        if isinstance(try_to_load_from_cache(repo, name), str):
            return name
    if not constants.HF_HUB_OFFLINE:
        try:
            return next((n for n in names if file_exists(repo, n)), names[0])
        except (OSError, ValueError):
            pass
    return names[0]


def _read_hub(repo: str) -> _Read:
    """What ``hf:ORG/NAME`` gives (the weights are fetched when the model is loaded)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise VidattnError(f"{HUB}{repo}: expected hf:ORG/NAME")
    for config_name, weight_names in (("config.json", None), (_OPENCLIP_CONFIG, _OPENCLIP_WEIGHTS)):
        path = _hub_file(repo, config_name)
        if path is None:
            continue
        config = _read_json(path)
        if weight_names is None:
            weight_names = _TIMM_WEIGHTS if "architecture" in config else _HF_WEIGHTS
        preprocessor = None
        if "architecture" not in config and config_name == "config.json":
            found = _hub_file(repo, _HF_PREPROCESSOR)
            preprocessor = None if found is None else _read_json(found)
        fields, origins, code = _from_config(config_name, config, path, preprocessor)
        return _Read(fields, origins, repo.split("/")[1], code, f"{HUB}{repo}",
                     f"{HUB}{repo} {config_name}", hf_file=_hub_weights(repo, weight_names))
    raise VidattnError(f"{HUB}{repo}: has neither config.json nor {_OPENCLIP_CONFIG}")


# ------------------------------------------------------------------------- checks and entry


def _check(preset: Preset, weights: Path):
    """What is cheap to check against the weights before a model is built (and a wrong config
    would otherwise allocate for): the patch embedding's shape (width, patch), the block count,
    the register tokens, the feed-forward width and the learned position grid."""
    from vidattn.models import families
    from vidattn.models.state_dict import network_tensors

    if preset.family not in families.FAMILIES:
        raise VidattnError(f"needs the {preset.family!r} checkpoint family, which this vidattn "
                           "does not have", weights)
    with network_tensors(weights) as raw:
        tensors = families.get(preset.family).to_canonical(raw, preset, weights)
        d, p = preset.embed_dim, preset.patch_size
        if "patch_embed.proj.weight" in tensors:
            shape = load_tensor(tensors["patch_embed.proj.weight"]).shape
            if tuple(shape) != (d, 3, p, p):
                raise VidattnError(f"the config says width {d} and patch {p}, but the patch "
                                   f"embedding is {tuple(shape)}", weights)
        blocks = {int(m[1]) for k in tensors if (m := _BLOCK.match(k))}
        if blocks and max(blocks) + 1 != preset.depth:
            raise VidattnError(f"the config says {preset.depth} blocks, the weights hold "
                               f"{max(blocks) + 1}", weights)
        rows = (load_tensor(tensors["register_tokens"]).shape[1]
                if "register_tokens" in tensors else 0)
        if rows != preset.num_register_tokens:
            raise VidattnError(f"the config says {preset.num_register_tokens} register tokens, "
                               f"the weights hold {rows}", weights)
        for name, factor in (("fc1", 1), ("w12", 2)):  # GELU's fc1, SwiGLU's fused gate and up
            if f"blocks.0.mlp.{name}.weight" in tensors:
                rows = load_tensor(tensors[f"blocks.0.mlp.{name}.weight"]).shape[0]
                if rows != factor * preset.hidden:
                    raise VidattnError(f"the config says a feed-forward width of "
                                       f"{preset.hidden}, the weights' is {rows // factor}",
                                       weights)
        if preset.position == "learned" and "pos_embed" in tensors:
            rows = load_tensor(tensors["pos_embed"]).shape[1]
            if rows != preset.num_class_tokens + preset.grid_size**2:
                raise VidattnError(f"the config says image size {preset.image_size} (a "
                                   f"{preset.grid_size} x {preset.grid_size} grid), but "
                                   f"pos_embed has {rows} rows", weights)


def _check_fields(fields: dict, path):
    """Contradictions within the fields: a width the heads do not divide, a RoPE head width
    not a multiple of 4, an image size that is not a whole number of patches."""
    d, heads = fields["embed_dim"], fields["num_heads"]
    if d % heads:
        raise VidattnError(f"hidden size {d} is not divisible by {heads} heads", path)
    if fields.get("position") == "rope" and (d // heads) % 4:
        raise VidattnError(f"head width {d // heads} is not a multiple of 4, as RoPE needs", path)
    if fields.get("image_size", 224) % fields["patch_size"]:
        raise VidattnError(f"image size {fields.get('image_size', 224)} is not a multiple of the "
                           f"patch size {fields['patch_size']}", path)


def read_model(source: str) -> ReadPreset:
    """The :class:`ReadPreset` of a model source: a local folder (or a checkpoint file in one)
    with its config files, an official ``.pth`` without config, or ``hf:ORG/NAME`` (config
    files fetched through ``huggingface_hub``; the weights when the model is loaded). Raises a
    one-line VidattnError naming the file and the field for whatever cannot be read."""
    source = str(source)
    read = _read_hub(source[len(HUB):]) if source.startswith(HUB) else _read_local(source)
    _check_fields(read.fields, read.config)
    if read.weights is None:
        weights = {"hf_repo": source[len(HUB):], "hf_file": read.hf_file}
    else:
        weights = {"weights_path": str(read.weights)}
    ordered = sorted(read.origins.items(), key=lambda item: item[0].startswith("_"))  # notes last
    preset = ReadPreset(
        name=read.name, description=f"{read.code}: {read.where}", weights_format=read.code,
        licence="as its publisher states", **weights, **read.fields, origins=tuple(ordered))
    if read.weights is not None:
        _check(preset, read.weights)
    return preset


def is_model_source(name: str) -> bool:
    """Whether a ``--model`` value names a model source (a folder, a checkpoint file,
    ``hf:ORG/NAME``) rather than a preset: a preset name never is one."""
    name = str(name)
    if name in PRESETS:
        return False
    return (name.startswith((HUB, ".", "~", "/")) or "/" in name or "\\" in name
            or name.endswith(CHECKPOINT_SUFFIXES) or Path(name).exists())


_SHOWN = ("family", "patch_size", "embed_dim", "depth", "num_heads", "mlp", "mlp_hidden", "act",
          "layer_scale", "pre_norm", "patch_bias", "pool", "num_class_tokens",
          "num_register_tokens", "position", "pos_resize", "rope_base", "mask_k_bias",
          "layer_norm_eps", "image_size", "num_classes", "class_names", "preprocessing",
          "resample")


def describe(preset: Preset) -> list[str]:
    """Lines for ``vidattn models --inspect``: where the model came from, every field the
    backbone uses with its value and where that was read (``ReadPreset.origins``; a field
    nothing gave is the backbone's default, which is also the format's code's: every way that
    code differs is in the format's table), then notes on what is computed differently."""
    origins = dict(getattr(preset, "origins", ()))
    code = preset.weights_format or "vidattn"
    weights = preset.weights_path or (f"{HUB}{preset.hf_repo} ({preset.hf_file})"
                                      if preset.hf_repo else preset.weights_url)
    lines = [f"{preset.name}: {preset.description}", f"  weights: {weights or 'none'}"]
    for name in _SHOWN:
        if name == "rope_base" and preset.position != "rope":
            continue
        if name == "pos_resize" and preset.position != "learned":
            continue
        if name == "act" and preset.mlp == "swiglu":  # SwiGLU's gate is SiLU
            continue
        value = getattr(preset, name)
        if name == "class_names" and value:
            value = f"{len(value)}: {', '.join(value[:5])}{', ...' if len(value) > 5 else ''}"
        elif name == "mlp_hidden":
            value = preset.hidden
        elif name == "num_heads":
            value = f"{value} (head width {preset.head_dim})"
        elif name == "image_size" and preset.position == "learned":
            value = f"{value} ({preset.grid_size} x {preset.grid_size} position grid)"
        lines.append(f"  {name}: {value}  [{origins.get(name, 'default: ' + code)}]")
    lines += [f"  note: {text}" for key, text in origins.items() if key.startswith("_")]
    return lines
