"""Every preset of the table, as timm's ``test_model_default_cfgs`` does: it builds, its checkpoint
layout has the shapes of the same model in Hugging Face ``transformers``, its normalisation is the
one its weights were trained with, its cache file is found where torch hub or the Hugging Face
cache keeps it, and ``vidattn models`` lists it."""

from __future__ import annotations

import dataclasses
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

import vidattn
from tests.support.checkpoints import canonical_from_hf, hf_config
from tests.support.clip import hf_vision, timm_state_dict
from tests.support.families import hf_dinov2, hf_dinov3, official_dinov2, official_dinov3
from vidattn import cli
from vidattn.errors import VidattnError
from vidattn.models import hub
from vidattn.models.presets import PRESETS, get_preset
from vidattn.models.vit import export_state_dict
from vidattn.preprocess import normalize

# The input normalisation of each preset's weights, as the reference libraries name it: the
# official DINO and DeiT code normalise with ImageNet's mean and std (Hugging Face's
# IMAGENET_DEFAULT), Google's ViT checkpoints with 0.5 / 0.5 (IMAGENET_STANDARD, [-1, 1]).
TRAINED_WITH = {
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "minus_one_one": (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
    "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}
EXPECTED_NORMALIZATION = {name: "imagenet" for name in PRESETS} | {
    "vit_b16": "minus_one_one", "siglip2_vitb16": "minus_one_one",
    "siglip2_so400m14": "minus_one_one",
    **{n: "clip" for n in ("clip_vitb32", "clip_vitb16", "clip_vitl14", "openclip_vitb16_laion2b")},
}


def hf_shapes(preset) -> dict[str, tuple]:
    """Canonical names -> shapes of the same model built by ``transformers`` (on the meta device:
    no memory), with the classifier heads the preset has, mapped onto the official names by the
    tests' own mapping (tests/support)."""
    from transformers import ViTModel

    with torch.device("meta"):
        if preset.family == "dinov2":
            official = official_dinov2(hf_dinov2(preset))
            return {k: tuple(v.shape) for k, v in official.items() if k != "mask_token"}
        if preset.family == "dinov3":
            official = official_dinov3(hf_dinov3(preset))
            return _dinov3_canonical({k: tuple(v.shape) for k, v in official.items()})
        if preset.family in ("clip", "siglip"):
            return {k: tuple(v.shape) for k, v in timm_state_dict(hf_vision(preset)).items()}
        model = ViTModel(hf_config(preset), add_pooling_layer=False)
    shapes = {k: tuple(v.shape) for k, v in canonical_from_hf(model).items()}
    if preset.num_class_tokens == 2:
        shapes["dist_token"] = shapes["cls_token"]
        shapes["pos_embed"] = (1, preset.num_tokens, preset.embed_dim)
    for head in ("head", "head_dist")[: preset.num_class_tokens if preset.num_classes else 0]:
        shapes[f"{head}.weight"] = (preset.num_classes, preset.embed_dim)
        shapes[f"{head}.bias"] = (preset.num_classes,)
    return shapes


def _dinov3_canonical(shapes):
    """Official DINOv3 names -> canonical: storage tokens are registers, SwiGLU's w1 and w2 are
    fused into w12 (doubled rows), the mask token is not used."""
    out = {}
    for key, shape in shapes.items():
        if key == "mask_token" or ".mlp.w2." in key:
            continue
        if ".mlp.w1." in key:
            key, shape = key.replace(".w1.", ".w12."), (2 * shape[0], *shape[1:])
        out["register_tokens" if key == "storage_tokens" else key] = shape
    return out


@pytest.fixture(scope="module")
def listing():
    result = CliRunner().invoke(cli.main, ["models"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_with_the_reference_layout(name):
    """Built with random weights, its layout has the reference's names and shapes, and it runs
    (eagerly) on a small non-square input (positions resized, or RoPE on a 2x3 grid). Two blocks
    are built, not all of them: every block has one layout, so the rest would only repeat them
    (a giant's forty take a minute and gigabytes to build), and the depth is the table's."""
    preset = dataclasses.replace(get_preset(name), depth=2)
    model = vidattn.load_model(preset, weights="random")
    state = export_state_dict(model.backbone)
    assert {k: v.shape for k, v in state.items()} == hf_shapes(preset)
    assert model.is_random and model.preset is preset
    p = preset.patch_size
    out = model.backbone(np.zeros((1, 2 * p, 3 * p, 3), np.float32), attention="last")  # eager
    tokens = preset.num_prefix_tokens + 6
    assert out["features"].shape == (1, preset.embed_dim)
    assert out["attention"][0].shape == (1, preset.num_heads, tokens, tokens)
    assert ("logits" in out) == bool(preset.num_classes)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_normalises_as_its_weights_were_trained(name):
    preset = get_preset(name)
    assert preset.preprocessing == EXPECTED_NORMALIZATION[name]
    mean, std = TRAINED_WITH[preset.preprocessing]
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(-1, 3)
    want = (pixels / 255.0 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(normalize(pixels, preset.preprocessing), want, atol=1e-5)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_weights_are_found_in_the_caches(name, tmp_path, monkeypatch, listing):
    """Where each preset's weights are looked for, and found without any network access."""
    from huggingface_hub import constants

    preset = get_preset(name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    if preset.packaged_weights:
        assert hub.cached_weights(preset) == "bundled"
        assert hub.resolve(preset).is_file()
    elif preset.weights_url:
        assert hub.cached_weights(preset) is None
        official = preset.weights_url.rsplit("/", 1)[1]  # torch.hub names the file so
        target = tmp_path / "torch" / "hub" / "checkpoints" / official
        target.parent.mkdir(parents=True)
        target.write_bytes(b"PK")
        assert hub.cached_weights(preset) == "torch hub" and hub.resolve(preset) == target
    elif preset.hf_repo:
        assert hub.cached_weights(preset) is None
        target = _hf_cached(tmp_path / "hf", preset.hf_repo, preset.hf_file)
        assert hub.cached_weights(preset) == "hugging face" and hub.resolve(preset) == target
    else:
        with pytest.raises(VidattnError, match="no public download address"):
            hub.resolve(preset)
    assert f"\n{name} " in listing and f"  {name} " in listing  # table row and source line
    assert cli.source_of(preset) in listing


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


def _hf_cached(cache, repo, filename):
    """Lay ``filename`` of ``repo`` out as huggingface_hub's cache does: a snapshot of the commit
    that ``refs/main`` names."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"{}")
    return target


def test_official_pth_in_torch_hub_cache_is_loaded_offline(tmp_path, monkeypatch):
    """A user who ran DINO's own ``torch.hub.load`` has the .pth in torch hub's cache: vidattn
    loads it from there and never downloads."""
    tiny = dataclasses.replace(get_preset("dino_vits16"), name="tiny", embed_dim=64, depth=2,
                               num_heads=4)
    source = vidattn.load_model(tiny, weights="random", seed=5)
    state = {k: torch.from_numpy(v) for k, v in export_state_dict(source.backbone).items()}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    target = hub.torch_hub_dir() / tiny.weights_url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    model = vidattn.load_model(tiny)
    assert model.weights_label == "tiny (official)" and not model.is_random
    x = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(model.run(x)["features"], source.run(x)["features"], atol=1e-6)
    assert not (tmp_path / "vidattn-home").exists()  # nothing downloaded into vidattn's cache
