"""DINOv2 (with and without registers) and DINOv3, exact to the code their weights come from.

- Parity with Hugging Face eager attention on random peaked weights, every block's attention
  within 1e-5, at the native size, a smaller square size and two non-square sizes
  (``Dinov2WithRegistersModel``, ``DINOv3ViTModel``), read through vidattn from the files
  ``save_pretrained`` writes.
- DINOv2 without registers: Hugging Face resizes its positions by size, the official code by
  scale factor with an offset; so the resampling is checked against the official call, made here
  with ``torch.nn.functional.interpolate`` as the official code makes it (1e-6), for every
  family's resize, and the model against Hugging Face at the native size.
- The official ``.pth``, Hugging Face and timm files of one model give the same outputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vidattn
from tests.support.families import (
    hf_run,
    official_dinov2,
    official_dinov3,
    peaky_hf_dinov2,
    peaky_hf_dinov3,
    timm_dinov2,
    tiny_dinov2,
    tiny_dinov3,
)
from vidattn.errors import VidattnError
from vidattn.models.layers import apply_rope
from vidattn.models.position import rope_periods, rope_sin_cos
from vidattn.models.presets import PRESETS, get_preset

# (H, W): native (8x8 grid at patch 14), a smaller square, and two non-square sizes
DINOV2_SIZES = [(112, 112), (70, 70), (84, 140), (154, 56)]
DINOV3_SIZES = [(64, 64), (48, 48), (64, 112), (128, 32)]  # RoPE: no native grid


def _images(size, n=2, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *size, 3)).astype(np.float32)


def _pair(preset, reference, folder):
    reference.save_pretrained(folder)
    return reference, vidattn.load_model(preset, weights=folder / "model.safetensors")


def assert_same_run(ours, reference, images, atol=1e-5):
    """Every block's attention, the CLS features and the patch tokens match the reference."""
    ref_features, ref_attn, ref_tokens = hf_run(reference, images)
    out = ours.run(images, attention="all", tokens=True)
    assert ref_attn[-1].max() > 0.3, "attention too uniform for a meaningful parity test"
    assert len(out["attention"]) == len(ref_attn)
    for block, (a, b) in enumerate(zip(out["attention"], ref_attn)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"block {block}")
    np.testing.assert_allclose(out["features"], ref_features, atol=atol, rtol=0)
    np.testing.assert_allclose(out["patch_tokens"], ref_tokens, atol=atol, rtol=0)


@pytest.fixture(scope="module", params=[False, True], ids=["mlp", "swiglu"])
def dinov2_reg(request, tmp_path_factory):
    preset = tiny_dinov2(registers=True, swiglu=request.param)
    return _pair(preset, peaky_hf_dinov2(preset), tmp_path_factory.mktemp(preset.name))


@pytest.fixture(scope="module", params=[False, True], ids=["mlp", "swiglu"])
def dinov3(request, tmp_path_factory):
    preset = tiny_dinov3(swiglu=request.param)
    return _pair(preset, peaky_hf_dinov3(preset), tmp_path_factory.mktemp(preset.name))


@pytest.mark.parametrize("size", DINOV2_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dinov2_with_registers_matches_hugging_face(dinov2_reg, size):
    reference, ours = dinov2_reg
    assert ours.preset.num_prefix_tokens == 5
    assert_same_run(ours, reference, _images(size))


@pytest.mark.parametrize("size", DINOV3_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dinov3_matches_hugging_face(dinov3, size):
    reference, ours = dinov3
    assert_same_run(ours, reference, _images(size))


def test_dinov2_without_registers_matches_hugging_face_at_native_size(tmp_path):
    for swiglu in (False, True):
        preset = tiny_dinov2(swiglu=swiglu)
        reference, ours = _pair(preset, peaky_hf_dinov2(preset), tmp_path / preset.name)
        assert_same_run(ours, reference, _images((112, 112)))


def _official_resize(pos_embed, grid, mode, n_cls=1):
    """The patch positions resized as each family's own code calls ``interpolate``."""
    patch = torch.from_numpy(pos_embed[:, n_cls:])
    m = int(patch.shape[1] ** 0.5)
    patch = patch.reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if mode == "offset":  # DINO v1 and DINOv2 without registers (interpolate_offset=0.1)
        scale = ((grid[0] + 0.1) / m, (grid[1] + 0.1) / m)
        out = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    elif mode == "antialias":  # DINOv2 with registers; timm's resample_abs_pos_embed
        out = F.interpolate(patch, size=grid, mode="bicubic", antialias=True)
    else:  # Hugging Face ViTModel / Dinov2Model
        out = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
    out = out.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).numpy()
    return np.concatenate([pos_embed[:, :n_cls], out], axis=1)


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg",
                                  "vit_b16", "deit_b16_distilled"])
def test_position_resize_is_the_familys_own(name):
    """Each preset resizes as the code its weights come from (1e-6 of the official call), at a
    smaller square, two non-square and a larger grid; the native grid is left as it is."""
    preset = get_preset(name)
    model = vidattn.load_model(preset, weights="random", seed=3)
    pos = np.asarray(model.backbone.pos_embed.numpy())
    n_cls, native = preset.num_class_tokens, preset.grid_size
    for grid in [(native, native), (native - 3,) * 2, (9, 23), (native + 5, 4), (40, 40)]:
        got = np.asarray(model.backbone.position_embeddings(grid))
        want = pos if grid == (native, native) else _official_resize(pos, grid, preset.pos_resize,
                                                                     n_cls)
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=f"{name} {grid}")


def test_each_family_resizes_as_its_code_says():
    assert {n: p.pos_resize for n, p in PRESETS.items() if p.position == "learned"} == {
        **{n: "offset" for n in ("dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8")},
        **{f"dinov2_vit{s}14": "offset" for s in "sblg"},
        **{f"dinov2_vit{s}14_reg": "antialias" for s in "sblg"},
        "vit_b16": "size", "deit_b16": "antialias", "deit_b16_distilled": "antialias",
        "demo": "size", "demo_classifier": "size",
        **{n: "size" for n in ("clip_vitb32", "clip_vitb16", "clip_vitl14", "siglip2_vitb16",
                               "siglip2_so400m14")},
        "openclip_vitb16_laion2b": "antialias",
    }


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_dinov2_official_hf_and_timm_files_agree(tmp_path, registers, swiglu):
    preset = tiny_dinov2(registers, swiglu)
    reference = peaky_hf_dinov2(preset, seed=4)
    reference.save_pretrained(tmp_path / "hf")
    official = official_dinov2(reference)
    torch.save(official, tmp_path / "official.pth")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in official.items()}, "epoch": 3},
               tmp_path / "training.pth")
    from safetensors.torch import save_file

    save_file(timm_dinov2(official), str(tmp_path / "timm.safetensors"))
    images = _images((84, 140))
    runs = {name: vidattn.load_model(preset, weights=tmp_path / name).run(images, attention="all")
            for name in ("hf/model.safetensors", "official.pth", "training.pth",
                         "timm.safetensors")}
    want = runs.pop("hf/model.safetensors")
    for name, got in runs.items():
        np.testing.assert_allclose(got["features"], want["features"], atol=1e-5, err_msg=name)
        for a, b in zip(got["attention"], want["attention"]):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_dinov3_official_and_hf_files_agree(tmp_path, swiglu):
    """The official file's stored key bias is masked away and its periods are used: with the
    exact periods it computes what Hugging Face computes."""
    preset = tiny_dinov3(swiglu)
    reference = peaky_hf_dinov3(preset, seed=5)
    reference.save_pretrained(tmp_path / "hf")
    torch.save(official_dinov3(reference), tmp_path / "official.pth")
    images = _images((64, 112))
    hf = vidattn.load_model(preset, weights=tmp_path / "hf" / "model.safetensors")
    official = vidattn.load_model(preset, weights=tmp_path / "official.pth")
    want, got = hf.run(images, attention="all"), official.run(images, attention="all")
    np.testing.assert_allclose(got["features"], want["features"], atol=1e-5)
    for a, b in zip(got["attention"], want["attention"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert_same_run(official, reference, images)


def test_dinov3_uses_the_periods_its_file_holds(tmp_path):
    """Official DINOv3 files may store periods rounded to bfloat16; the official model uses what
    it loads, and so does vidattn (Hugging Face recomputes them exactly)."""
    preset = tiny_dinov3()
    reference = peaky_hf_dinov3(preset, seed=6)
    exact = rope_periods(preset.head_dim, preset.rope_base)
    rounded = torch.tensor(exact).to(torch.bfloat16).float()
    assert not np.array_equal(rounded.numpy(), exact)
    torch.save(official_dinov3(reference, periods=rounded), tmp_path / "rounded.pth")
    torch.save(official_dinov3(reference), tmp_path / "exact.pth")
    model = vidattn.load_model(preset, weights=tmp_path / "rounded.pth")
    np.testing.assert_array_equal(model.backbone.periods.numpy(), rounded.numpy())
    images = _images((64, 112))
    hf_attention = hf_run(reference, images)[1][-1]
    errors = {name: np.abs(vidattn.load_model(preset, weights=tmp_path / f"{name}.pth").run(
        images, attention="last")["attention"][0] - hf_attention).max()
        for name in ("rounded", "exact")}
    assert errors["exact"] < 1e-5 < errors["rounded"] and errors["rounded"] > 10 * errors["exact"]


def test_rope_rotates_the_patches_and_leaves_the_prefix_tokens_exactly():
    """The class and storage tokens' rows of the RoPE tables are the identity, bit for bit, and
    the patches are rotated as Hugging Face's ``apply_rotary_pos_emb`` rotates them (which
    splits the prefix off instead)."""
    from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

    n, prefix, grid, heads, head_dim = 2, 5, (3, 4), 2, 16
    t = prefix + grid[0] * grid[1]
    periods = rope_periods(head_dim, 100.0)
    qk = np.random.default_rng(0).normal(size=(n, t, 2, heads, head_dim)).astype(np.float32)
    ours = np.asarray(apply_rope(qk, *rope_sin_cos(periods, grid, prefix)))
    sin, cos = (torch.from_numpy(np.array(a)) for a in rope_sin_cos(periods, grid))
    q, k = (torch.from_numpy(qk[:, :, i]).permute(0, 2, 1, 3) for i in (0, 1))
    want = [a.permute(0, 2, 1, 3).numpy() for a in apply_rotary_pos_emb(q, k, cos, sin)]
    np.testing.assert_array_equal(ours[:, :prefix], qk[:, :prefix])
    for i in (0, 1):
        np.testing.assert_allclose(ours[:, :, i], want[i], atol=1e-6, rtol=0)
    assert np.abs(ours[:, prefix:] - qk[:, prefix:]).max() > 0.1  # the patches did turn


def test_dinov3_presets_are_gated():
    """No public address: one line, at once, saying where the weights are requested."""
    for name in ("dinov3_vits16", "dinov3_vith16plus"):
        with pytest.raises(VidattnError, match="ai.meta.com.*--weights PATH"):
            vidattn.load_model(name)


def test_checkpoint_of_another_family_is_refused(tmp_path):
    preset = tiny_dinov2(registers=True)
    torch.save(official_dinov2(peaky_hf_dinov2(preset)), tmp_path / "reg.pth")
    with pytest.raises(VidattnError, match="unexpected: register_tokens"):
        vidattn.load_model(tiny_dinov2(registers=False), weights=tmp_path / "reg.pth")
    with pytest.raises(VidattnError, match="unexpected: blocks.0.ls1.gamma"):
        vidattn.load_model(dataclasses.replace(preset, layer_scale=False, family="vit",
                                               name="no_ls"), weights=tmp_path / "reg.pth")
