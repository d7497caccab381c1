"""CLIP (OpenAI's QuickGELU and OpenCLIP's GELU) and SigLIP image towers, exact to Hugging Face.

- Parity with ``transformers``' ``CLIPVisionModel`` and ``SiglipVisionModel`` (eager attention)
  on random peaked weights, read through vidattn from the publishers' file layouts (a
  ``CLIPModel`` safetensors with its text half, ``save_pretrained`` files, an OpenCLIP state
  dict), at the native size, a smaller one and a non-square one (``interpolate_pos_encoding``;
  for OpenCLIP's weights, OpenCLIP's own antialiased resize of the position table):
  every block's attention within 1e-5, the features (``pooler_output``) and patch tokens, the
  MAP head's probe attention (from the head's own ``nn.MultiheadAttention``) against
  ``attention="cls"``, and rollout from the probe against the full product.
- Geometry: a SigLIP-shaped model whose probe attends to red patches maps them where they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vidattn
from tests.support.clip import (clip_model_file, openclip_state_dict, peaky_reference,
                                reference_run, resize_as_openclip, timm_state_dict)
from tests.support.study import study_rollout
from vidattn.attention import (class_rows, cls_maps, head_mean, peak_location, rollout_map,
                               rollout_matrix)
from vidattn.errors import VidattnError
from vidattn.models.api import Model, build_backbone
from vidattn.models.presets import PRESETS
from vidattn.models.vit import export_state_dict, load_state_dict

TINY = dict(embed_dim=64, depth=2, num_heads=4, mlp_hidden=128, patch_size=8, image_size=64)
OPENAI = dataclasses.replace(PRESETS["clip_vitb16"], name="tiny_clip", **TINY)
OPENCLIP = dataclasses.replace(PRESETS["openclip_vitb16_laion2b"], name="tiny_openclip", **TINY)
SIGLIP = dataclasses.replace(PRESETS["siglip2_vitb16"], name="tiny_siglip", **TINY)
SIZES = [(64, 64), (48, 48), (48, 80)]  # native 8x8 grid, smaller, non-square (6 x 10)
@pytest.fixture(scope="module", params=["openai", "openclip", "siglip"])
def pair(request, tmp_path_factory):
    """(reference, ours) read from the layout each publisher ships: OpenAI's ``CLIPModel``
    safetensors, an OpenCLIP ``torch.save`` state dict, SigLIP's ``save_pretrained`` file."""
    preset = {"openai": OPENAI, "openclip": OPENCLIP, "siglip": SIGLIP}[request.param]
    reference = peaky_reference(preset).eval()
    folder = tmp_path_factory.mktemp(preset.name)
    if request.param == "openai":
        path = clip_model_file(reference, folder / "model.safetensors")
    elif request.param == "openclip":
        path = folder / "open_clip_pytorch_model.bin"
        torch.save(openclip_state_dict(reference), path)
        resize_as_openclip(reference)  # (our preset's pos_resize "antialias")
    else:
        reference.save_pretrained(folder)
        path = folder / "model.safetensors"
    return reference, vidattn.load_model(preset, weights=path)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_attention_features_and_tokens_match_hugging_face(pair, size):
    reference, ours = pair
    images = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
    features, attn, tokens, probe = reference_run(reference, images)
    out = ours.run(images, attention="all", tokens=True)
    assert attn[-1].max() > 0.3, "attention too uniform for a meaningful parity test"
    assert len(out["attention"]) == len(attn) == 2
    for block, (a, b) in enumerate(zip(out["attention"], attn)):
        np.testing.assert_allclose(a, b, atol=1e-5 * b.max(), rtol=0, err_msg=f"block {block}")
    np.testing.assert_allclose(out["features"], features, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["patch_tokens"], tokens, atol=1e-5, rtol=0)
    if probe is None:
        assert "pool_attention" not in out
    else:
        assert probe.max() > 0.3, "probe attention too uniform for a meaningful parity test"
        np.testing.assert_allclose(out["pool_attention"], probe, atol=1e-5 * probe.max(), rtol=0)


@pytest.mark.parametrize("size", SIZES[1:], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cls_rows_and_rollout_match_hugging_face(pair, size):
    """``attention="cls"`` is the class token's rows of the last block, or the probe's; the
    in-graph rollout row is the full product of the reference's attention, started from e_0 or
    from the probe's head-mean row."""
    reference, ours = pair
    images = np.random.default_rng(3).normal(size=(2, *size, 3)).astype(np.float32)
    _, attn, _, probe = reference_run(reference, images)
    grid = ours.preset.grid_at(size)
    n_prefix = ours.preset.num_prefix_tokens
    cls = ours.run(images, attention="cls")
    want_rows = attn[-1][:, :, :1] if probe is None else probe
    np.testing.assert_allclose(cls["attention"][0], want_rows, atol=1e-5 * want_rows.max(),
                               rtol=0)
    np.testing.assert_array_equal(class_rows(cls), cls["attention"][0])
    rolled = ours.run(images, rollout=True)
    if probe is None:
        want = study_rollout(attn, n_prefix, grid)
    else:
        row = np.einsum("nt,nts->ns", probe.mean(axis=1)[:, 0], rollout_matrix(attn))
        want = row.reshape(len(row), *grid) / row.max(axis=1)[:, None, None]
    np.testing.assert_allclose(rollout_map(rolled["rollout"], n_prefix, grid), want, atol=1e-5,
                               rtol=0)


def test_chunked_rollout_from_the_probe_is_the_same(pair):
    """The chunked path (each block's attention recomputed in query chunks) starts from the
    same row as the one-piece path."""
    _, ours = pair
    images = np.random.default_rng(5).normal(size=(1, 48, 80, 3)).astype(np.float32)
    whole = ours.backbone(images, rollout=True)["rollout"]
    chunked = ours.backbone(images, rollout=True, chunk=16)["rollout"]
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-6, rtol=0)


def test_cls_all_is_refused_for_an_attention_pooled_model(pair):
    _, ours = pair
    images = np.zeros((1, 64, 64, 3), np.float32)
    if ours.preset.pool == "map":
        with pytest.raises(VidattnError, match="no class token"):
            ours.run(images, attention="cls_all")
    else:
        assert len(ours.run(images, attention="cls_all")["attention"]) == ours.preset.depth


@pytest.mark.parametrize("preset", [OPENAI, SIGLIP], ids=lambda p: p.name)
def test_every_file_layout_of_one_model_gives_the_same_weights(tmp_path, preset):
    """One model read from its Hugging Face file (``save_pretrained``; for CLIP also a
    ``CLIPModel`` file with the text half), from timm's names, and for CLIP from an OpenCLIP
    state dict (the names OpenAI's own checkpoints share, here inside a ``state_dict``
    wrapper) holds the same weights; timm's file is the canonical layout itself."""
    reference = peaky_reference(preset, seed=2)
    reference.save_pretrained(tmp_path)
    save_file(timm_state_dict(reference), tmp_path / "timm.safetensors")
    files = [tmp_path / "model.safetensors", tmp_path / "timm.safetensors"]
    if preset.family == "clip":
        files.append(clip_model_file(reference, tmp_path / "clip_model.safetensors"))
        torch.save({"state_dict": openclip_state_dict(reference)}, tmp_path / "openclip.pt")
        files.append(tmp_path / "openclip.pt")
    states = [export_state_dict(vidattn.load_model(preset, weights=f).backbone) for f in files]
    want = {k: v.numpy() for k, v in timm_state_dict(reference).items()}
    assert ("patch_embed.proj.bias" in want) == preset.patch_bias
    for path, state in zip(files, states):
        assert state.keys() == want.keys(), path.name
        for name, value in want.items():
            np.testing.assert_array_equal(state[name], value, err_msg=f"{path.name} {name}")


def planted_siglip(gain=6.0) -> Model:
    """A SigLIP-shaped model (no class token, MAP head) whose probe attends to red patches: the
    patch projection writes each patch's redness into channel 0 and a constant 1 into channel 1;
    the blocks add nothing; the probe's query is a constant and every key dimension the normed
    redness, so the probe's logits grow with redness (as ``tests/support/planted.py`` plants
    the CLS row)."""
    preset = dataclasses.replace(SIGLIP, name="planted_siglip", image_size=128)
    backbone = build_backbone(preset)
    state = {k: np.zeros_like(v) for k, v in export_state_dict(backbone).items()}
    d, p = preset.embed_dim, preset.patch_size
    state["patch_embed.proj.weight"][0] = np.array([1.0, -0.5, -0.5])[:, None, None] / p**2
    state["patch_embed.proj.bias"][1] = 1.0
    for name in state:
        if name.endswith("norm.weight") or name.endswith(("norm1.weight", "norm2.weight")):
            state[name][:] = 1.0
    state["attn_pool.q.bias"][:] = gain
    state["attn_pool.kv.weight"][:d, 0] = 1.0
    load_state_dict(backbone, state, source="planted")
    return Model(preset, backbone, "planted (test weights)")


def test_planted_probe_attention_peaks_on_the_red_patches():
    model = planted_siglip()
    images = np.zeros((2, 64, 96, 3), np.float32)  # a 8 x 12 grid, grey
    spots = [(2, 9), (6, 1)]
    for image, (r, c) in zip(images, spots):
        image[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = (1.0, -1.0, -1.0)
    grid = model.preset.grid_at(images.shape[1:3])
    out = model.run(images, attention="cls", rollout=True)
    maps = head_mean(cls_maps(class_rows(out), 0, grid))
    rolled = rollout_map(out["rollout"], 0, grid)
    for i, spot in enumerate(spots):
        assert peak_location(maps[i]) == spot
        assert maps[i][spot] > 0.5  # most of the probe's attention, not a near tie
        assert peak_location(rolled[i]) == spot


def test_the_probes_and_the_viewer_read_the_probe_as_the_class_query():
    """The heads probe maps the probe's attention, and the image viewer stores it as its first,
    virtual query row (the "CLS" button): in the last block, and in rollout as the row the
    model's own rollout returns, so the viewer's probe rollout peaks where the probe looks."""
    from vidattn.probes import head_maps
    from vidattn.viewer.image import viewer_rows

    model = planted_siglip()
    image = np.zeros((1, 64, 96, 3), np.float32)
    image[0, 16:24, 72:80] = (1.0, -1.0, -1.0)  # patch (2, 9)
    grid = model.preset.grid_at(image.shape[1:3])
    out = model.run(image, attention="all", rollout=True)
    assert peak_location(head_mean(head_maps(model, out, grid))[0]) == (2, 9)
    rows, rollout = viewer_rows(out, 0)
    assert len(rows) == model.preset.depth and rows[-1].shape == (4, 1 + 96, 96)
    np.testing.assert_allclose(rows[-1][:, 0], out["pool_attention"][0, :, 0], atol=1e-7)
    assert not rows[0][:, 0].any()  # the probe reads only the last block's output
    np.testing.assert_allclose(rollout[0], out["rollout"][0], atol=1e-6)
    np.testing.assert_allclose(rollout[1:].sum(axis=1), 1, atol=1e-6)  # rows of J
    assert peak_location(rollout[0].reshape(grid)) == (2, 9)
