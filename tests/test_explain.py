"""Class-specific explanations (``vidattn.explain``) against the references' formulas written
in torch on Hugging Face's ViT classifier, with the attention's and the tokens' gradients from
torch's autograd; each map within 1e-4 of its maximum, at 224 and at a non-square size."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ViTForImageClassification

import vidattn
from tests.support.checkpoints import hf_config
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.relevance.methods import DEFAULT_DISCARD, METHODS, explain_maps
from vidattn.models.presets import get_preset
from vidattn.options import ImageOptions

TINY = dataclasses.replace(get_preset("vit_b16"), name="tiny_classifier", embed_dim=64, depth=3,
                           num_heads=4, num_classes=10)
SIZES = [(224, 224), (96, 160)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random ViT classifier with peaked attention, as Hugging Face's module and as ours."""
    torch.manual_seed(0)
    config = hf_config(TINY)
    config.num_labels = TINY.num_classes
    reference = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for layer in reference.vit.layers:
            for lin in (layer.attention.q_proj, layer.attention.k_proj):
                lin.weight.normal_(0.0, 1.2 / TINY.embed_dim**0.5)
        reference.vit.embeddings.position_embeddings.normal_(0.0, 1.0)
        reference.classifier.weight.normal_(0.0, 1.0)
    folder = tmp_path_factory.mktemp("classifier")
    reference.save_pretrained(folder)
    return reference, vidattn.load_model(TINY, weights=folder / "model.safetensors")


@pytest.fixture(scope="module")
def imagenet_tiny():
    """A tiny random model with a 1000-way head: ImageNet's class names apply."""
    return vidattn.load_model(dataclasses.replace(TINY, name="imagenet_tiny", num_classes=1000),
                              weights="random")


def reference_maps(model, images, discard=DEFAULT_DISCARD):
    """Every method's map ``(N, P)`` from the references' formulas in torch, the gradients of
    the top class's logit from autograd."""
    taken = {}

    def keep(module, inputs, output):  # returns None: the output stays as it is
        output.retain_grad()
        taken["x"] = output

    hook = model.vit.layers[-1].layernorm_before.register_forward_hook(keep)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    out = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
    hook.remove()
    for a in out.attentions:
        a.retain_grad()
    top = out.logits.argmax(-1)
    out.logits[torch.arange(len(top)), top].sum().backward()
    attn = [a.detach().double() for a in out.attentions]
    grad = [a.grad.double() for a in out.attentions]
    t = attn[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64)

    relevance = eye.expand(len(top), t, t).clone()  # generate_relevance, per image
    for a, g in zip(attn, grad):
        relevance = relevance + (g * a).clamp(min=0).mean(dim=1) @ relevance
    maps = {"generic": relevance[:, 0, 1:]}

    joint = eye.expand(len(top), t, t).clone()  # grad_rollout, each block with its gradient
    for a, g in zip(attn, grad):
        fused = (a * g).mean(dim=1).clamp(min=0)
        flat = fused.reshape(len(top), -1)
        _, low = flat.topk(int(flat.shape[-1] * discard), -1, largest=False)
        flat.scatter_(1, low, 0.0)
        step = (fused + eye) / 2
        joint = (step / step.sum(dim=-1, keepdim=True)) @ joint
    maps["grad-rollout"] = joint[:, 0, 1:]

    acts = taken["x"].detach().double()[:, 1:]  # pytorch-grad-cam on blocks[-1].norm1
    weights = taken["x"].grad.double()[:, 1:].mean(dim=1)
    maps["gradcam"] = torch.einsum("npd,nd->np", acts, weights).clamp(min=0)

    cam, g = attn[-1][:, :, 0, 1:], grad[-1][:, :, 0, 1:]  # Baselines.generate_cam_attn
    maps["attention"] = (cam * g.mean(dim=-1, keepdim=True)).mean(dim=1).clamp(min=0)

    joint = eye.expand(len(top), t, t).clone()  # compute_rollout_attention
    for a in attn:
        step = a.mean(dim=1) + eye
        joint = (step / step.sum(dim=-1, keepdim=True)) @ joint
    maps["rollout"] = joint[:, 0, 1:]
    return {k: v.numpy() for k, v in maps.items()}, top.numpy()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_method_matches_its_reference(pair, size):
    reference, ours = pair
    images = np.random.default_rng(size[1]).normal(size=(2, *size, 3)).astype(np.float32)
    want, top = reference_maps(reference, images)
    grid = (size[0] // 16, size[1] // 16)
    for name in METHODS:
        got, ps = explain_maps(ours, images, name)
        assert got.shape == (2, *grid) and (ps.target == top).all(), name
        flat = got.reshape(2, -1)
        # a map that is 0 everywhere would match anything close to 0: every map has a peak
        # (but this random model's attention baseline is all negative, so 0, at 96x160)
        assert want[name].max() > 0 or (name == "attention" and size != (224, 224)), name
        scale = np.abs(want[name]).max(axis=1, keepdims=True)
        assert (np.abs(flat - want[name]) <= 1e-4 * scale).all(), name


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_the_same_maps_on_the_other_backends(backend):
    """The parity test at the non-square size again, in a process on the torch and on the JAX
    backend (their own automatic differentiation, ``gradients.value_and_gradients``). JAX is
    not among the test requirements (its install and its eager run cost CI a minute): it runs
    where JAX is installed."""
    if backend == "jax":
        pytest.importorskip("jax")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
         "matches_its_reference and 96x160"], cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]


def test_a_named_or_numbered_class_and_its_errors(pair):
    _, ours = pair
    images = np.zeros((1, 32, 32, 3), np.float32)
    a, _ = explain_maps(ours, images, "generic", target=3)
    b, ps = explain_maps(ours, images, "generic", target="7")
    assert ps.target.tolist() == [7] and not np.allclose(a, b)
    with pytest.raises(VidattnError, match=r"class 10 is out of range: tiny_classifier has "
                                           r"classes 0\.\.9"):
        explain_maps(ours, images, "generic", target=10)
    with pytest.raises(VidattnError, match="have no names; give an index"):
        explain_maps(ours, images, "generic", target="tabby cat")
    dino = vidattn.load_model("demo", weights="random")
    with pytest.raises(VidattnError, match="demo has no classifier head"):
        explain_maps(dino, np.zeros((1, 64, 64, 3), np.float32), "generic")


def test_imagenet_names_are_matched_forgivingly():
    from vidattn.relevance.targets import resolve

    preset, logits = get_preset("vit_b16"), np.zeros((1, 1000))
    assert resolve(preset, "Tabby_Cat", logits).tolist() == [281]
    assert resolve(preset, "tiger cat", logits).tolist() == [282]
    with pytest.raises(VidattnError, match="did you mean 'tabby'"):
        resolve(preset, "taby cat", logits)


def test_the_explain_probe_writes_raw_maps_and_its_figure(pair, tmp_path):
    """``vidattn image --probes explain`` (here through ``vidattn.explain``): the top 2
    classes x 2 methods, the maps raw on the grid in probes.json, equal to ``explain_maps``; a
    preset without a head skips the probe and says why."""
    from PIL import Image

    from vidattn.preprocess import preprocess_image

    _, ours = pair
    pixels = np.random.default_rng(5).integers(0, 255, (80, 96, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "noise.png")
    result = vidattn.explain(tmp_path / "noise.png", ours, method="generic,gradcam",
                             target="top2", size=64)
    e = result.explanation
    assert e.maps.shape == (2, 2, 4, 4) and e.methods == ["generic", "gradcam"]
    probs = [c["probability"] for c in e.classes]
    assert probs == sorted(probs, reverse=True) and e.classes[0]["name"] is None
    x = preprocess_image(pixels, ours.preset.preprocessing, 64)
    want, _ = explain_maps(ours, x, "gradcam", target=e.classes[1]["class"])
    np.testing.assert_allclose(e.maps[1, 1], want[0], rtol=1e-6)
    result.save(tmp_path / "out")
    record = result.record
    assert record["explain"]["values"] == e.maps.tolist()
    assert (tmp_path / "out" / "noise" / "explain.png").stat().st_size > 0
    skipped = vidattn.probe(tmp_path / "noise.png", "demo", "random", probes="explain,heads",
                            size=64)
    assert skipped.record["skipped"] == {"explain": "the model has no classifier head, so no "
                                                    "class to explain"}


@reliability(("`vidattn image --probes explain --explain-class` with a misspelt ImageNet name, "
              "and an index past the head", "one error line before any image is read (with the "
              "nearest names for a near miss), no output"))
@pytest.mark.parametrize("target, words", [
    ("taby cat", "unknown class 'taby cat'; did you mean 'tabby'"),
    ("1000", "class 1000 is out of range: imagenet_tiny has classes 0..999"),
])
def test_a_class_that_cannot_be_is_one_line(imagenet_tiny, tmp_path, target, words):
    from vidattn.probes import probe_images

    model = imagenet_tiny
    image = Path(__file__).resolve().parent.parent / "samples" / "chelsea.jpg"
    opts = ImageOptions(probes="explain", explain_class=target, size=32)
    with pytest.raises(VidattnError) as err:
        probe_images(model, [image], tmp_path / "out", opts)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "out").rglob("*.*"))
