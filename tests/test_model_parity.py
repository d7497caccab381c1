"""Numerical parity of the Keras ViT with Hugging Face ``transformers`` (torch, eager attention),
on random peaked weights converted through the real loader from ``save_pretrained`` files."""

import dataclasses

import numpy as np
import pytest

import vidattn
from tests.support.checkpoints import hf_forward, peaky_hf_vit
from tests.support.study import study_rollout
from vidattn.attention import rollout_map
from vidattn.models.presets import get_preset

# ViT-S/16 shapes that resize their positions as Hugging Face's ViTModel does (by size; the DINO
# presets resize as the official DINO code does: tests/test_families.py checks each family's way)
VIT_S16 = dataclasses.replace(get_preset("dino_vits16"), name="vit_s16", pos_resize="size")
SMALL = dataclasses.replace(VIT_S16, name="tiny", embed_dim=64, depth=3, num_heads=4)
SIZES = [(224, 224), (160, 288)]  # square, and a non-square grid (10 x 18) with interpolation


@pytest.fixture(scope="module", params=[SMALL, VIT_S16], ids=lambda p: p.name)
def pair(request, tmp_path_factory):
    preset = request.param
    reference = peaky_hf_vit(preset)
    folder = tmp_path_factory.mktemp(preset.name)
    reference.save_pretrained(folder)  # writes model.safetensors
    ours = vidattn.load_model(preset, weights=folder / "model.safetensors")
    return reference, ours


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_attention_and_features_match_hugging_face(pair, size):
    reference, ours = pair
    images = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
    ref_features, ref_attn = hf_forward(reference, images)
    out = ours.run(images, attention="all")

    assert ref_attn[-1].max() > 0.3, "attention too uniform for a meaningful parity test"
    assert len(out["attention"]) == len(ref_attn)
    for block, (a, b) in enumerate(zip(out["attention"], ref_attn)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=f"block {block}")
    np.testing.assert_allclose(out["features"], ref_features, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_in_graph_rollout_matches_study_product_of_hugging_face_attention(pair, size):
    """The rollout row the compiled model computes equals the study's full T x T product over
    every block of the reference implementation's attention."""
    reference, ours = pair
    images = np.random.default_rng(3).normal(size=(2, *size, 3)).astype(np.float32)
    _, ref_attn = hf_forward(reference, images)
    grid = (size[0] // ours.preset.patch_size, size[1] // ours.preset.patch_size)
    want = study_rollout(ref_attn, ours.preset.num_class_tokens, grid)
    out = ours.run(images, rollout=True)
    assert out["attention"] == [] and out["rollout"].shape == (2, ref_attn[0].shape[-1])
    got = rollout_map(out["rollout"], ours.preset.num_class_tokens, grid)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_last_mode_returns_only_the_last_block(pair):
    _, ours = pair
    images = np.random.default_rng(2).normal(size=(1, 160, 288, 3)).astype(np.float32)
    every = ours.run(images, attention="all")["attention"]
    last = ours.run(images, attention="last")["attention"]
    none = ours.run(images, attention="none")
    assert len(last) == 1 and none["attention"] == []
    np.testing.assert_allclose(last[0], every[-1], atol=1e-6)
    np.testing.assert_allclose(none["features"], ours.run(images)["features"], atol=1e-6)


@pytest.mark.parametrize("kind", ["token", "key", "query", "value"])
def test_facets_match_hugging_face(pair, kind):
    """One block's patch features of each facet: the keys, queries and values its attention
    projects (Hugging Face's k_proj, q_proj, v_proj outputs, heads side by side) and its output
    tokens under the final norm (Hugging Face's hidden state through its layernorm)."""
    import torch

    reference, ours = pair
    block = 1
    images = np.random.default_rng(4).normal(size=(2, 160, 288, 3)).astype(np.float32)
    seen = {}
    attention = reference.layers[block].attention
    projection = {"key": attention.k_proj, "query": attention.q_proj, "value": attention.v_proj}
    hook = None
    if kind != "token":
        hook = projection[kind].register_forward_hook(lambda m, i, o: seen.update(out=o))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = reference(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        want = (reference.layernorm(out.hidden_states[block + 1]) if kind == "token"
                else seen["out"])[:, 1:].numpy()
    if hook is not None:
        hook.remove()
    got = ours.run(images, facet=(block, kind))["facet_tokens"]
    assert got.shape == want.shape == (2, 10 * 18, ours.preset.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
