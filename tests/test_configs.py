"""Models read from their own config files (``vidattn.models.configs``): each publisher's folder
(``tests.support.publishers``) loads through ``load_model(read_model(folder))`` and computes what
the ``transformers`` model built from the same config computes, at the native and a non-square
size; official checkpoints without config are read from their shapes; what cannot be read is
one line naming the file and the field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import ViTImageProcessor

import vidattn
from tests.support import publishers
from vidattn.errors import VidattnError
from vidattn.models.configs import describe, is_model_source, read_model
from vidattn.preprocess import NORMALIZATIONS, _mean_std


def _reference(model, images):
    """The reference's attention of every block and its logits (or None)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    kwargs = {}
    if type(model).__name__.startswith(("ViT", "CLIP", "Siglip")):
        kwargs["interpolate_pos_encoding"] = True
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, **kwargs)
    return [a.numpy() for a in out.attentions], getattr(out, "logits", None)


def _assert_matches(preset, reference, sizes):
    model = vidattn.load_model(preset)
    rng = np.random.default_rng(0)
    for hw in sizes:
        images = rng.standard_normal((2, *hw, 3)).astype(np.float32)
        ours = model.run(images, attention="all")
        want, logits = _reference(reference, images)
        assert len(ours["attention"]) == len(want)
        peak = max(float(a.max()) for a in want)
        assert peak > 0.3  # peaked attention: a wrong model cannot pass by uniformity
        for block, (a, b) in enumerate(zip(ours["attention"], want)):
            np.testing.assert_allclose(a, b, atol=1e-5 * peak, rtol=0,
                                       err_msg=f"{preset.name} {hw} block {block}")
        if logits is not None:
            np.testing.assert_allclose(ours["logits"], logits.numpy(), atol=1e-4, rtol=0)


PUBLISHED = publishers.PUBLISHERS


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_folder_computes_what_its_reference_computes(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    reference, native, other = PUBLISHED[name](folder)
    preset = read_model(str(folder))
    assert preset.name == name and preset.weights_path is not None
    _assert_matches(preset, reference, [native] + ([other] if other else []))
    lines = describe(preset)
    assert any(line.startswith("  depth: 2  [") and "config" in line for line in lines), lines


def test_fields_are_read_as_each_publisher_gives_them(tmp_path):
    made = {}
    for name in PUBLISHED:
        (tmp_path / name).mkdir()
        PUBLISHED[name](tmp_path / name)
        made[name] = read_model(str(tmp_path / name))
    rad, phikon, vitc = made["rad_dino"], made["phikon"], made["vit_classifier"]
    assert (rad.family, rad.layer_scale, rad.pos_resize, rad.image_size) == ("dinov2", True,
                                                                            "size", 56)
    assert rad.preprocessing == (publishers.RAD_DINO_MEAN, publishers.RAD_DINO_STD)
    assert (rad.resample, phikon.resample, phikon.preprocessing) == ("bicubic", "bilinear",
                                                                     "imagenet")
    assert (phikon.layer_norm_eps, phikon.num_classes) == (1e-12, 0)
    assert (vitc.num_classes, vitc.class_names) == (3, ("cat", "dog", "teapot"))
    # no preprocessor_config.json: what transformers' ViTImageProcessor would then use
    processor = ViTImageProcessor()
    assert np.allclose(NORMALIZATIONS[vitc.preprocessing],
                       _mean_std(processor.image_mean, processor.image_std))
    reg = made["dinov2_registers"]
    assert (reg.num_register_tokens, reg.mlp, reg.hidden, reg.pos_resize) == (4, "swiglu", 176,
                                                                              "antialias")
    v3 = made["dinov3"]
    assert (v3.position, v3.mlp, v3.hidden, v3.num_register_tokens, v3.layer_norm_eps) == (
        "rope", "swiglu", 96, 4, 1e-5)
    uni, virchow = made["uni"], made["virchow2"]
    assert (uni.embed_dim, uni.layer_scale, uni.pos_resize, uni.image_size) == (64, True,
                                                                               "antialias", 48)
    assert (virchow.mlp, virchow.hidden, virchow.num_register_tokens) == ("swiglu", 176, 4)
    clip = made["openclip"]
    assert (clip.num_heads, clip.pre_norm, clip.patch_bias, clip.act, clip.preprocessing) == (
        2, True, False, "gelu", "clip")
    hf_clip, siglip = made["clip"], made["siglip"]
    assert (hf_clip.act, hf_clip.pre_norm, hf_clip.patch_bias, hf_clip.family) == (
        "quick_gelu", True, False, "clip")
    assert dict(hf_clip.origins)["embed_dim"] == "config.json vision_config.hidden_size"
    assert (siglip.pool, siglip.num_class_tokens, siglip.act, siglip.preprocessing) == (
        "map", 0, "gelu_tanh", "minus_one_one")
    origins = dict(virchow.origins)
    assert origins["mlp_hidden"] == "timm VisionTransformer's rule"
    assert origins["num_register_tokens"] == "config.json model_args.reg_tokens"
    assert dict(uni.origins)["depth"] == "config.json model_args.depth"


def test_timm_architecture_sizes_are_timms_own(tmp_path):
    """Without size arguments in model_args, the architecture's own definition gives them."""
    folder = tmp_path / "uni"
    folder.mkdir()
    publishers.publish_uni(folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("embed_dim", "depth", "num_heads", "patch_size", "img_size"):
        del config["model_args"][key]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(VidattnError, match="config says width 1024 and patch 16"):
        read_model(str(folder))


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
def test_official_dinov2_of_an_unknown_size_is_read_by_its_shapes(tmp_path, registers):
    path = tmp_path / "dinov2_custom.pth"
    reference = publishers.publish_official_dinov2(path, registers)
    preset = read_model(str(path))
    assert (preset.embed_dim, preset.num_heads, preset.depth, preset.patch_size,
            preset.image_size, preset.num_register_tokens, preset.layer_scale) == (
        128, 2, 2, 14, 56, 4 * registers, True)
    assert preset.pos_resize == ("antialias" if registers else "offset")
    assert any("64-wide" in line or "64 wide" in line for line in describe(preset))
    _assert_matches(preset, reference, [(56, 56)])


def test_official_dinov3_heads_come_from_its_rope_periods(tmp_path):
    path = tmp_path / "dinov3_custom.pth"
    reference = publishers.publish_official_dinov3(path)
    preset = read_model(str(tmp_path))  # the folder: its one checkpoint
    assert (preset.embed_dim, preset.num_heads, preset.hidden, preset.num_register_tokens,
            preset.position, preset.mask_k_bias) == (96, 3, 192, 4, "rope", True)
    assert preset.rope_base == pytest.approx(100.0, rel=1e-4)
    _assert_matches(preset, reference, [(32, 32), (32, 48)])


def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


_rewrite = publishers.rewrite_json


@pytest.mark.parametrize("publish,changes,words", [
    (publishers.publish_rad_dino, {"num_attention_heads": 5},
     ["config.json", "hidden size 64 is not divisible by 5 heads"]),
    (publishers.publish_rad_dino, {"model_type": "swin"}, ["config.json", "model_type 'swin'"]),
    (publishers.publish_rad_dino, {"model_type": [3, 4]}, ["config.json", "model_type [3, 4]"]),
    (publishers.publish_rad_dino, {"hidden_size": 96},
     ["model.safetensors", "width 96", "(64, 3, 14, 14)"]),
    (publishers.publish_rad_dino, {"num_hidden_layers": 3}, ["model.safetensors", "3 blocks",
                                                              "hold 2"]),
    (publishers.publish_rad_dino, {"image_size": 70},
     ["model.safetensors", "image size 70", "pos_embed has 17 rows"]),
    (publishers.publish_rad_dino, {"mlp_ratio": 3}, ["model.safetensors", "feed-forward width"]),
    (publishers.publish_rad_dino, {"qkv_bias": False},
     ["config.json", "qkv_bias=false is not supported"]),
    (publishers.publish_rad_dino, {"hidden_act": "relu"}, ["config.json", "hidden_act", "'relu'"]),
    (publishers.publish_rad_dino, {"patch_size": [14, 16]},
     ["config.json", "patch_size", "not square"]),
    (publishers.publish_virchow2, {"architecture": "eva02_large_patch14_448"},
     ["config.json", "eva02_large_patch14_448"]),
    (publishers.publish_virchow2, {"architecture": []}, ["config.json", "architecture []"]),
    (publishers.publish_virchow2, {"model_args__mlp_layer": "timm.layers.GluMlp"},
     ["config.json", "mlp_layer GluMlp"]),
    (publishers.publish_virchow2, {"model_args__global_pool": "avg"},
     ["config.json", "global_pool 'avg'"]),
    (publishers.publish_virchow2, {"model_args__qk_norm": True},
     ["config.json", "qk_norm=true is not supported"]),
    (publishers.publish_virchow2, {"model_args__reg_tokens": 2 ** 40},
     ["model.safetensors", "1099511627776 register tokens"]),
], ids=lambda v: getattr(v, "__name__", None))
def test_bad_config_is_one_line(tmp_path, publish, changes, words):
    publish(tmp_path)
    _rewrite(tmp_path / "config.json", **changes)
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(tmp_path))
    _one_line(excinfo, *words)


def test_openclip_variants_it_cannot_compute_are_refused(tmp_path):
    publishers.publish_openclip(tmp_path)
    _rewrite(tmp_path / "open_clip_config.json", model_cfg__vision_cfg__attentional_pool=True)
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(tmp_path))
    _one_line(excinfo, "open_clip_config.json", "attentional_pool")
    _rewrite(tmp_path / "open_clip_config.json", model_cfg__vision_cfg=None)
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(tmp_path))
    _one_line(excinfo, "open_clip_config.json", "has no model_cfg.vision_cfg")


def test_folder_without_weights_and_unreadable_sources_are_one_line(tmp_path):
    (tmp_path / "phikon").mkdir()
    publishers.publish_phikon(tmp_path / "phikon")
    (tmp_path / "phikon" / "model.safetensors").unlink()
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(tmp_path / "phikon"))
    _one_line(excinfo, "phikon", "no weights file")
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(tmp_path / "missing"))
    _one_line(excinfo, "missing", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(empty))
    _one_line(excinfo, "empty", "0 checkpoint files and no config.json")
    save_file({"cls_token": torch.zeros(1, 1, 8)}, empty / "model.safetensors")
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(empty))
    _one_line(excinfo, "model.safetensors", "without config.json")


def test_official_checkpoint_whose_heads_cannot_be_told_is_refused(tmp_path):
    path = tmp_path / "odd.pth"
    publishers.publish_official_dinov2(path)
    state = torch.load(path)
    state = {k: v for k, v in state.items() if k != "rope_embed.periods"}
    state["storage_tokens"] = torch.zeros(1, 4, 128)  # a DINOv3 file without its periods
    torch.save(state, path)
    with pytest.raises(VidattnError) as excinfo:
        read_model(str(path))
    _one_line(excinfo, "odd.pth", "rope_embed.periods")


def test_hub_config_comes_through_huggingface_hub_and_its_cache(tmp_path, monkeypatch):
    """A cached ``hf:`` repository is read offline from the cache; an uncached one is one line
    naming the repository."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny-dino" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    publishers.publish_rad_dino(snapshot)
    (cache / "models--org--tiny-dino" / "refs").mkdir()
    (cache / "models--org--tiny-dino" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    preset = read_model("hf:org/tiny-dino")
    assert (preset.name, preset.hf_repo, preset.hf_file, preset.weights_path) == (
        "tiny-dino", "org/tiny-dino", "model.safetensors", None)
    assert preset.preprocessing == (publishers.RAD_DINO_MEAN, publishers.RAD_DINO_STD)
    with pytest.raises(VidattnError) as excinfo:
        read_model("hf:org/not-cached")
    _one_line(excinfo, "hf:org/not-cached", "HF_HUB_OFFLINE")


def test_model_sources_are_told_from_preset_names(tmp_path):
    folder = tmp_path / "dino_vits16"
    folder.mkdir()
    assert not is_model_source("dino_vits16")  # a preset name stays a preset
    assert not is_model_source("no_such_preset")
    assert is_model_source("hf:org/name")
    assert is_model_source(str(folder))
    assert is_model_source("weights.pth")


def test_checkpoint_file_in_a_config_folder_uses_that_config(tmp_path):
    folder = tmp_path / "uni"
    folder.mkdir()
    publishers.publish_uni(folder)
    shutil.copy(folder / "model.safetensors", folder / "renamed.safetensors")
    preset = read_model(str(folder / "renamed.safetensors"))
    assert preset.weights_path.endswith("renamed.safetensors") and preset.layer_scale


def test_timm_split_swiglu_fuses_gate_first(tmp_path):
    """timm's ``SwiGLU`` (``fc1_g``, ``fc1_x``; width ``int(D * mlp_ratio)``) computes what the
    packed layout does: the Virchow-2-like folder re-saved that way matches its reference."""
    from safetensors.torch import load_file

    reference, native, other = publishers.publish_virchow2(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for key in [k for k in state if ".mlp.fc1." in k]:
        gate, up = state.pop(key).chunk(2)
        state[key.replace(".fc1.", ".fc1_g.")], state[key.replace(".fc1.", ".fc1_x.")] = gate, up
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    _rewrite(tmp_path / "config.json", model_args__mlp_layer="timm.layers.SwiGLU",
             model_args__mlp_ratio=176 / 64)
    preset = read_model(str(tmp_path))
    assert (preset.mlp, preset.hidden) == ("swiglu", 176)
    _assert_matches(preset, reference, [native, other])
