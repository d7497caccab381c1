"""What an explanation explains (issue 25): the embedding target of the headless presets (the
cosine similarity of the CLS feature to a reference image's, pytorch-grad-cam issue 221) against
torch's autograd, and where it points; distilled DeiT's three heads against timm's inference (the
mean of the two heads' logits); a planted classifier whose class depends on one region only; the
memory planner of the backward pass; and the bad inputs, each one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vidattn
from tests.support.checkpoints import peaky_hf_vit
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.models import memory
from vidattn.models.presets import get_preset
from vidattn.options import EXPLAIN_HEADS, ImageOptions
from vidattn.relevance.methods import METHODS, backward_pass, explain_maps
from vidattn.relevance.targets import Embedding

ROOT = Path(__file__).resolve().parent.parent
# DINO's shapes, positions resized by size as Hugging Face's ViTModel does (as test_model_parity)
TINY_DINO = dataclasses.replace(get_preset("dino_vits16"), name="tiny_dino", embed_dim=64,
                                depth=2, num_heads=4, pos_resize="size")
TINY_DISTILLED = dataclasses.replace(get_preset("deit_b16_distilled"), name="tiny_distilled",
                                     embed_dim=32, depth=2, num_heads=2, num_classes=10)
# The class-specific methods that must find the planted region, by name: those of issue 25 that
# are not yet in METHODS are xfailed with that reason, never skipped silently.
CLASS_SPECIFIC = ("generic", "transformer-attribution", "attnlrp")


def _needs(method):
    return pytest.param(method, marks=pytest.mark.xfail(
        method not in METHODS, reason=f"{method} is not in relevance.methods.METHODS yet",
        strict=True))


# -- the embedding target against torch ------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_pair(tmp_path_factory):
    """A random headless ViT with peaked attention, as Hugging Face's ``ViTModel`` and as ours;
    its values and outputs at unit gain and a faint class token, so that the CLS feature is made
    of the image (a cosine near 1 everywhere would leave gradients near 0)."""
    reference = peaky_hf_vit(TINY_DINO)
    with torch.no_grad():
        for layer in reference.layers:
            for lin in (layer.attention.v_proj, layer.attention.o_proj):
                lin.weight.normal_(0.0, 1.0 / TINY_DINO.embed_dim**0.5)
        reference.embeddings.cls_token.mul_(0.05)
    folder = tmp_path_factory.mktemp("dino")
    reference.save_pretrained(folder)
    return reference, vidattn.load_model(TINY_DINO, weights=folder / "model.safetensors")


def torch_similarity(model, images, reference_images):
    """The cosine similarity of each image's CLS feature to its reference image's, and the
    generic map ``(N, P)`` of its gradient (Chefer's ``generate_relevance``), with torch's
    autograd: ``(cosines (N,), maps (N, P), attention gradients [(N, heads, T, T)])``."""
    def pixels(a):
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    with torch.no_grad():
        ref = model(pixel_values=pixels(reference_images),
                    interpolate_pos_encoding=True).last_hidden_state[:, 0]
    out = model(pixel_values=pixels(images), output_attentions=True,
                interpolate_pos_encoding=True)
    for a in out.attentions:
        a.retain_grad()
    cos = torch.nn.functional.cosine_similarity(out.last_hidden_state[:, 0], ref, dim=-1)
    cos.sum().backward()
    t = out.attentions[0].shape[-1]
    relevance = torch.eye(t, dtype=torch.float64).expand(len(images), t, t).clone()
    for a in out.attentions:
        relevance = relevance + (a.grad.double() * a.detach().double()).clamp(min=0).mean(
            dim=1) @ relevance
    return (cos.detach().numpy(), relevance[:, 0, 1:].numpy(),
            [a.grad.numpy() for a in out.attentions])


@pytest.mark.parametrize("shared", [True, False], ids=["one-reference", "one-per-image"])
def test_the_embedding_target_matches_torch_autograd(dino_pair, shared):
    """The generic map of the embedding target, and the attention gradients it comes from,
    equal torch's autograd of the cosine similarity within 1e-4 of their maximum (96x160: a
    non-square grid), with one reference for the batch or one per image."""
    reference, ours = dino_pair
    rng = np.random.default_rng(4)
    images = rng.normal(size=(2, 96, 160, 3)).astype(np.float32)
    refs = rng.normal(size=(1 if shared else 2, 64, 64, 3)).astype(np.float32)
    want_cos, want_map, want_grads = torch_similarity(
        reference, images, np.repeat(refs, 2, 0) if shared else refs)
    got, ps = explain_maps(ours, images, "generic", target=Embedding.of(ours, refs))
    assert got.shape == (2, 6, 10) and ps.row == (0,) and ps.logits.shape == (2, 1)
    np.testing.assert_allclose(ps.logits[:, 0], want_cos, atol=1e-5)
    assert want_map.max() > 0 and abs(want_cos).max() < 0.999  # a map, and not at the optimum
    scale = np.abs(want_map).max(axis=1, keepdims=True)
    assert (np.abs(got.reshape(2, -1) - want_map) <= 1e-4 * scale).all()
    for g, w in zip(ps.grads, want_grads):
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max()


def test_an_image_explained_against_itself_is_zero(dino_pair):
    """The similarity to itself is the maximum, 1, where its gradient is 0: every gradient map
    is 0 (the documented caveat of --explain-reference)."""
    _, ours = dino_pair
    x = np.random.default_rng(6).normal(size=(1, 64, 64, 3)).astype(np.float32)
    got, ps = explain_maps(ours, x, "generic", target=Embedding.of(ours, x))
    assert abs(ps.logits[0, 0] - 1) < 1e-5 and max(np.abs(g).max() for g in ps.grads) < 1e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_the_embedding_map_peaks_where_the_reference_is_planted(seed):
    """A distinctive 16x16 patch planted at each of the 16 places of a flat 64x64 image (faint
    noise on it), the reference that patch tiled over the input (a crop of it, enlarged): the
    gradient methods' maps peak at the patch, 16 times of 16, on a random headless model.
    Chefer's attention baseline is not among them: it weights the near-uniform attention of
    random weights by one number per head, and so has no reason to find it (1 of 16 here)."""
    model = vidattn.load_model(dataclasses.replace(TINY_DINO, image_size=64), weights="random",
                               seed=seed)
    rng = np.random.default_rng(seed)
    patch = rng.normal(size=(16, 16, 3)).astype(np.float32)
    images = np.broadcast_to(rng.normal(size=3), (16, 64, 64, 3)) + rng.normal(
        0, 0.1, (16, 64, 64, 3))
    for at in range(16):
        r, c = divmod(at, 4)
        images[at, 16 * r: 16 * r + 16, 16 * c: 16 * c + 16] = patch
    target = Embedding.of(model, np.tile(patch, (4, 4, 1))[None])
    for method in ("generic", "grad-rollout", "gradcam", "attnlrp"):
        maps, _ = explain_maps(model, images.astype(np.float32), method, target=target)
        assert (maps.reshape(16, -1).argmax(axis=1) == np.arange(16)).all(), method


# -- distilled DeiT's heads ------------------------------------------------------------------------


def test_distilled_heads_and_their_mean_as_timm_infers():
    """timm's ``VisionTransformerDistilled`` predicts, in eval, ``(head(cls) + head_dist(dist))
    / 2``: our ``mean`` explains exactly that logit (the model's own ``logits``), so its
    gradients are the mean of the two heads' (linearity), and its maps read the mean of the CLS
    and distillation rows of the relevance built from them; the three heads' maps differ."""
    model = vidattn.load_model(TINY_DISTILLED, weights="random", seed=3)
    x = np.random.default_rng(2).normal(size=(2, 64, 96, 3)).astype(np.float32)
    timm = model.run(x)["logits"]
    ps = {head: backward_pass(model, x, 4, head) for head in EXPLAIN_HEADS}
    assert [ps[h].row for h in EXPLAIN_HEADS] == [(0,), (1,), (0, 1)]
    np.testing.assert_allclose(ps["mean"].logits, timm, atol=1e-6)
    np.testing.assert_allclose(ps["mean"].logits, (ps["cls"].logits + ps["dist"].logits) / 2,
                               atol=1e-6)
    assert not np.allclose(ps["cls"].logits, ps["dist"].logits, atol=1e-4)
    assert (backward_pass(model, x, "top1").target == timm.argmax(axis=1)).all()
    for name in ("grads", "token_grads"):
        mean, cls, dist = (np.asarray(getattr(ps[h], name)) for h in ("mean", "cls", "dist"))
        np.testing.assert_allclose(mean, (cls + dist) / 2, atol=1e-6 * np.abs(mean).max())
    n_prefix, t = TINY_DISTILLED.num_prefix_tokens, ps["mean"].attention[0].shape[-1]
    relevance = np.broadcast_to(np.eye(t), (2, t, t)).copy()
    for a, g_cls, g_dist in zip(ps["mean"].attention, ps["cls"].grads, ps["dist"].grads):
        relevance += np.maximum(a * (g_cls + g_dist) / 2.0, 0).mean(axis=1) @ relevance
    maps = {h: METHODS["generic"](ps[h], n_prefix) for h in EXPLAIN_HEADS}
    want = relevance[:, [0, 1], n_prefix:].mean(axis=1)
    np.testing.assert_allclose(maps["mean"], want, atol=1e-4 * np.abs(want).max())
    for a, b in (("cls", "dist"), ("cls", "mean"), ("dist", "mean")):
        assert not np.allclose(maps[a], maps[b], rtol=1e-2), (a, b)


# -- a planted classifier --------------------------------------------------------------------------

PLANTED = dataclasses.replace(get_preset("vit_b16"), name="planted", image_size=64, embed_dim=64,
                              depth=2, num_heads=4, num_classes=2)
GATES, READS = (0, 1), (2, 3)  # the feature dimensions of the planted path, per class


def planted_classifier(region: int, seed: int = 0):
    """A classifier whose class is the sign of one patch's content along a direction ``u``.

    The patch projection writes ``u . pixels`` into feature GATES[0] and its opposite into
    GATES[1] of every patch, and nothing else; every patch but ``region`` gets a large random
    position embedding, so its norm1 output (LayerNorm: divided by the token's deviation)
    keeps almost nothing of that content, while ``region``'s gets a small one. Queries and keys
    are 0 (every attention is uniform: rollout sees no region), the values read the GATES, the
    projection writes them into READS, the feed-forwards are off, and class k's logit reads
    READS[k]. Returns the model and ``u`` ``(p, p, 3)``."""
    model = vidattn.load_model(PLANTED, weights="random", seed=seed)
    rng = np.random.default_rng(seed)
    layout, d, p, g = model.backbone.checkpoint_layout(), PLANTED.embed_dim, 16, 4
    planted = list(GATES + READS)

    def put(name, value):
        slot = layout[name]
        slot.variable.assign(slot.to_keras(np.asarray(value, np.float32).reshape(slot.shape)))

    u = rng.normal(size=(3, p, p))
    u /= np.linalg.norm(u)
    kernel = np.zeros((d, 3, p, p))
    kernel[GATES[0]], kernel[GATES[1]] = u, -u
    put("patch_embed.proj.weight", kernel)
    pos = rng.normal(0, 6.0, (1, 1 + g * g, d))
    pos[0, 0] = 0
    pos[0, 1 + region] = rng.normal(0, 0.2, d)
    pos[..., planted] = 0
    put("pos_embed", pos)
    cls = rng.normal(size=d)
    cls[planted] = 0
    put("cls_token", cls)
    for i in range(PLANTED.depth):
        qkv = np.zeros((3 * d, d))
        qkv[2 * d + np.array(GATES), GATES] = 1.0
        proj = np.zeros((d, d))
        proj[READS, GATES] = 1.0
        put(f"blocks.{i}.attn.qkv.weight", qkv)
        put(f"blocks.{i}.attn.proj.weight", proj)
        put(f"blocks.{i}.mlp.fc2.weight", np.zeros((d, PLANTED.hidden)))
    head = np.zeros((2, d))
    head[[0, 1], READS] = 4.0
    put("head.weight", head)
    return model, u.transpose(1, 2, 0)


@pytest.fixture(scope="module", params=[6, 13], ids=lambda r: f"region{r}")
def planted(request):
    """The planted classifier, and four noise images whose region holds +-3u: classes 0, 1, 0,
    1, whatever the other patches hold."""
    region = request.param
    model, u = planted_classifier(region)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 64, 64, 3)).astype(np.float32)
    r, c = divmod(region, 4)
    box = (slice(None), slice(16 * r, 16 * r + 16), slice(16 * c, 16 * c + 16))
    x[box] += 3 * np.array([1, -1, 1, -1])[:, None, None, None] * u
    redrawn = rng.normal(size=x.shape).astype(np.float32)
    redrawn[box] = x[box]
    for images in (x, redrawn):  # the premise: the class is the region's, and only its
        assert (model.run(images)["logits"].argmax(axis=1) == [0, 1, 0, 1]).all()
    return model, x, region


@pytest.mark.parametrize("method", [_needs(m) for m in CLASS_SPECIFIC])
def test_class_specific_maps_peak_on_the_region_the_class_depends_on(planted, method):
    """Each image's top class is decided by one patch: every class-specific method's map peaks
    there, at least twice the next patch. Rollout is not asked to: the attention is uniform, and
    so is rollout (shown, so that this test is not one an attention map would pass)."""
    model, x, region = planted
    maps, ps = explain_maps(model, x, method)
    flat = maps.reshape(4, -1)
    assert ps.target.tolist() == [0, 1, 0, 1]
    assert (flat.argmax(axis=1) == region).all(), flat.argmax(axis=1)
    ranked = np.sort(flat, axis=1)
    assert (ranked[:, -1] > 2 * np.maximum(ranked[:, -2], 0)).all()
    uniform, _ = explain_maps(model, x, "rollout")
    np.testing.assert_allclose(uniform, uniform.mean(), rtol=1e-5)


# -- the memory planner ----------------------------------------------------------------------------


def test_the_backward_pass_is_planned_lowered_and_refused():
    """The backward pass holds every block's attention and its gradient: more than a forward
    returning every block's attention. A budget for two and a half images takes two per call
    (the same maps as one call of four); one for half an image is refused before any work, one
    line naming the budget and the largest input that fits."""
    p = TINY_DINO
    one = memory.backward_estimate(p, (64, 96), 1)
    assert memory.backward_estimate(p, (64, 96), 4) == 4 * one
    assert one > memory.estimate(p, (64, 96), 1, "all") > 0
    assert memory.explain_plan(p, (64, 96), 4, budget=10 * one).batch == 4
    lowered = memory.explain_plan(p, (64, 96), 4, budget=int(2.5 * one))
    assert (lowered.batch, lowered.chunk) == (2, None) and lowered.bytes <= 2.5 * one
    model = vidattn.load_model(p, weights="random")
    x = np.random.default_rng(0).normal(size=(4, 64, 96, 3)).astype(np.float32)
    target = Embedding.of(model, x[::-1].copy())  # one reference per image: split with them
    whole, ps = explain_maps(model, x, "generic", target=target)
    tight = dataclasses.replace(model, memory_budget=int(2.5 * one))
    split, ps_split = explain_maps(tight, x, "generic", target=target)
    # the same to float32's rounding (a batch of 2 sums in another order than one of 4)
    np.testing.assert_allclose(split, whole, atol=1e-5 * np.abs(whole).max(), rtol=0)
    np.testing.assert_allclose(ps_split.logits, ps.logits, atol=1e-6)
    for a, b in zip(ps_split.grads, ps.grads):
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max(), rtol=0)
    small = dataclasses.replace(model, memory_budget=one // 2)
    with pytest.raises(VidattnError) as err:
        explain_maps(small, x, "generic", target=target)
    words = str(err.value)
    assert "\n" not in words and "backward pass" in words and "over the memory budget" in words
    assert "largest square input that fits is" in words


# -- bad input -------------------------------------------------------------------------------------


def _write(path, seed=0, size=(48, 64)):
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def headless():
    return vidattn.load_model(dataclasses.replace(TINY_DINO, embed_dim=32, num_heads=2),
                              weights="random")


@reliability(("`vidattn image --probes explain` on a preset without a classifier head (DINO) and "
              "no --explain-reference; `vidattn.explain` on one without reference=",
              "one error line before any image is read, saying how to give a reference image; "
              "no output (with other probes: explain skipped, the same line in probes.json)"),
             ("`--explain-reference` naming a missing file, a folder or a file that is not an "
              "image", "one error line naming the file, before any image is probed; no output"))
def test_a_headless_explanation_needs_a_reference_and_says_how(headless, tmp_path):
    from vidattn.probes import probe_images

    image = _write(tmp_path / "a.png")
    how = "give a reference image (--explain-reference PATH, or reference= in vidattn.explain)"
    for run in (lambda: probe_images(headless, [image], tmp_path / "out",
                                     ImageOptions(probes="explain", size=32)),
                lambda: vidattn.explain(image, headless, size=32)):
        with pytest.raises(VidattnError) as err:
            run()
        assert how in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "out").rglob("*.*"))
    both = vidattn.probe(image, headless, probes="explain,heads", size=32)
    assert how in both.record["skipped"]["explain"] and "explain" not in both.record
    (tmp_path / "text.png").write_text("not an image")
    for bad in (tmp_path / "missing.png", tmp_path, tmp_path / "text.png"):
        opts = ImageOptions(probes="explain,heads", size=32, explain_reference=str(bad))
        with pytest.raises(VidattnError) as err:
            probe_images(headless, [image], tmp_path / "out", opts)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
        assert not any((tmp_path / "out").rglob("*.*"))


def test_the_reference_probe_writes_its_similarity(headless, tmp_path):
    """``--explain-reference`` on a headless preset: one row, "similarity to b.png" with its
    cosine (the map equal to ``explain_maps`` of the same target), the reference in
    probes.json, and the figure."""
    from vidattn.preprocess import preprocess_image
    from vidattn.relevance.targets import reference_target

    image, ref = _write(tmp_path / "a.png", 1), _write(tmp_path / "b.png", 2)
    result = vidattn.explain(image, headless, method="generic,gradcam", reference=ref, size=32)
    e = result.explanation
    assert e.maps.shape == (1, 2, 2, 2) and e.classes[0]["name"] == "similarity to b.png"
    x = preprocess_image(np.asarray(Image.open(image)), headless.preset.preprocessing, 32)
    want, ps = explain_maps(headless, x, "gradcam", target=reference_target(headless, ref, 32))
    np.testing.assert_allclose(e.maps[0, 1], want[0], rtol=1e-6)
    assert e.classes[0]["similarity"] == pytest.approx(float(ps.logits[0, 0]), abs=1e-6)
    result.save(tmp_path / "out")
    assert result.record["explain"]["reference"] == str(ref)
    assert (tmp_path / "out" / "a" / "explain.png").stat().st_size > 0


def test_transformer_attribution_refuses_the_embedding_target(headless):
    """Chefer's LRP propagates a class's one-hot from the head: the embedding target is one
    error line (AttnLRP, a gradient times input, explains it as the other gradient methods)."""
    if "transformer-attribution" not in METHODS:
        pytest.xfail("transformer-attribution is not in METHODS yet")
    x = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(VidattnError, match="explains classes, not an embedding") as err:
        explain_maps(headless, x, "transformer-attribution", target=Embedding.of(headless, x))
    assert "\n" not in str(err.value)


_EVERY_METHOD = """
import dataclasses, json, numpy as np, vidattn
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset
from vidattn.relevance.methods import METHODS, explain_maps
from vidattn.relevance.targets import Embedding
small = dict(embed_dim=32, depth=2, num_heads=2)
models = {"classifier": vidattn.load_model(dataclasses.replace(
              get_preset("vit_b16"), name="c", num_classes=5, **small), weights="random"),
          "headless": vidattn.load_model(dataclasses.replace(
              get_preset("dino_vits16"), name="h", **small), weights="random")}
models["headless"].backbone.class_tokens[0].assign(np.zeros((1, 1, 32)))  # features: the image's
x = np.random.default_rng(0).normal(size=(2, 32, 48, 3)).astype(np.float32)
got = {}
for kind, model in models.items():
    target = Embedding.of(model, x[:1]) if kind == "headless" else None
    for method in METHODS:
        try:
            maps, _ = explain_maps(model, x, method, target=target)
            got[f"{kind} {method}"] = float(np.abs(maps).max())
        except VidattnError as err:
            got[f"{kind} {method}"] = str(err)
print(json.dumps(got))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_every_method_runs_on_every_backend(backend):
    """Every method of METHODS, on a classifier and (with a reference) on a headless preset,
    on each Keras backend in its own process: a finite map (a method's positive part may be 0
    everywhere), or (transformer-attribution with the embedding target) its one error line;
    each map's maximum the same on every backend, to 2e-3 of itself or 1e-6 of the largest (the
    float32 rounding of a gradient near 0). JAX runs where it is installed."""
    if backend == "jax":
        pytest.importorskip("jax")
    proc = subprocess.run([sys.executable, "-c", _EVERY_METHOD], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": backend})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(got) == 2 * len(METHODS)
    for name, value in got.items():
        if isinstance(value, str):
            assert name == "headless transformer-attribution" and "\n" not in value, (name, value)
        else:
            assert np.isfinite(value) and value >= 0, (name, value)
    assert sum(v > 0 for v in got.values() if not isinstance(v, str)) >= 2 * len(METHODS) - 3
    _BACKEND_MAXIMA[backend] = got
    floor = 1e-6 * max(v for v in got.values() if not isinstance(v, str))
    for other, values in _BACKEND_MAXIMA.items():
        for name, value in values.items():
            if not isinstance(value, str):
                assert abs(got[name] - value) <= 2e-3 * abs(value) + floor, (backend, other, name)


_BACKEND_MAXIMA: dict = {}  # each backend's maxima, compared with those run before it
