"""Class-specific explanations (``vidattn.explain``) against the references' formulas written
in torch on Hugging Face's ViT classifier, with the attention's and the tokens' gradients from
torch's autograd; each map within 1e-4 of its maximum, at 224 and at a non-square size. The LRP
methods against the references' rules written in torch: Chefer's relprop with autograd's
``gradprop`` (``layers_ours.py``), lxt's rules as autograd functions and gradient hooks."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import ViTForImageClassification

import vidattn
from tests.support.checkpoints import hf_config
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.relevance import lrp
from vidattn.relevance.methods import DEFAULT_DISCARD, METHODS, backward_pass, explain_maps
from vidattn.models.presets import get_preset
from vidattn.options import ImageOptions

TINY = dataclasses.replace(get_preset("vit_b16"), name="tiny_classifier", embed_dim=64, depth=3,
                           num_heads=4, num_classes=10)
SIZES = [(224, 224), (96, 160)]
LRP = ("transformer-attribution", "attnlrp", "cp-lrp")  # their own reference test below


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
    for name in set(METHODS) - set(LRP):
        got, ps = explain_maps(ours, images, name)
        assert got.shape == (2, *grid) and (ps.target == top).all(), name
        flat = got.reshape(2, -1)
        # a map that is 0 everywhere would match anything close to 0: every map has a peak
        # (but this random model's attention baseline is all negative, so 0, at 96x160)
        assert want[name].max() > 0 or (name == "attention" and size != (224, 224)), name
        scale = np.abs(want[name]).max(axis=1, keepdims=True)
        assert (np.abs(flat - want[name]) <= 1e-4 * scale).all(), name


def _safe_divide(a, b):
    """``layers_ours.safe_divide``."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def _gradprop(fn, inputs, r):
    """``RelPropSimple``: each input times autograd's gradient of ``fn`` weighted by ``R / Z``."""
    inputs = [x.detach().requires_grad_(True) for x in inputs]
    z = fn(*inputs)
    grads = torch.autograd.grad(z, inputs, _safe_divide(r, z))
    return [x.detach() * g for x, g in zip(inputs, grads)]


def _linear(x, weight, r):
    """``Linear.relprop`` at alpha 1 (beta 0), ``weight`` ``(out, in)``, the bias ignored."""
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    a, b = _gradprop(lambda px, nx: F.linear(px, pw) + F.linear(nx, nw),
                     [x.clamp(min=0), x.clamp(max=0)], r)
    return a + b


def _add(a, b, r):
    """``Add.relprop``, its sums over the whole tensor (one image: the reference's batch 1)."""
    ra, rb = _gradprop(torch.add, [a, b], r)
    total = ra.sum().abs() + rb.sum().abs()
    return (ra * _safe_divide(_safe_divide(ra.sum().abs(), total) * r.sum(), ra.sum()),
            rb * _safe_divide(_safe_divide(rb.sum().abs(), total) * r.sum(), rb.sum()))


def _clone(x, r1, r2):
    """``Clone.relprop`` of a tensor used twice: autograd sums both branches' ``R / Z``."""
    x = x.detach().requires_grad_(True)
    (c,) = torch.autograd.grad([x * 1, x * 1], [x], [_safe_divide(r1, x), _safe_divide(r2, x)])
    return x.detach() * c


class _Identity(torch.autograd.Function):
    """lxt's ``identity_rule_implicit`` on GELU: gelu forward, ``gelu(x) / (x + 1e-10)`` back."""

    @staticmethod
    def forward(ctx, x):
        y = F.gelu(x)
        ctx.save_for_backward(y / (x + 1e-10))
        return y

    @staticmethod
    def backward(ctx, grad):
        return ctx.saved_tensors[0] * grad


def _torch_forward(model, pixels, rules=None):
    """Hugging Face's ViT classifier written out with its own modules, keeping what the LRP
    rules need; ``rules``: lxt's forwards (std-detached LayerNorm, GELU identity rule, and
    ``attnlrp``: q, k gradients / 4 and v / 2, lxt's attention wrapper; ``cp-lrp``: q, k
    detached)."""
    def norm(layer, x):
        if rules is None:
            return layer(x)
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + layer.eps).sqrt()
        return centred / std.detach() * layer.weight + layer.bias

    x = model.vit.embeddings(pixels, interpolate_pos_encoding=True)
    n, t, d = x.shape
    blocks = []
    for layer in model.vit.layers:
        att, rec = layer.attention, {"x": x}
        rec["h1"] = h1 = norm(layer.layernorm_before, x)
        q, k, v = (proj(h1).view(n, t, -1, att.head_dim).transpose(1, 2)
                   for proj in (att.q_proj, att.k_proj, att.v_proj))
        if rules == "attnlrp":
            for tensor, factor in ((q, 4), (k, 4), (v, 2)):
                tensor.register_hook(lambda g, f=factor: g / f)
        elif rules == "cp-lrp":
            q, k = q.detach(), k.detach()
        a = torch.softmax(q @ k.transpose(-1, -2) * att.scaling, dim=-1)
        if a.requires_grad:
            a.retain_grad()
        rec.update(q=q, k=k, v=v, a=a, o=(a @ v).transpose(1, 2).reshape(n, t, d))
        rec["y1"] = att.o_proj(rec["o"])
        rec["mid"] = x + rec["y1"]
        rec["h2"] = norm(layer.layernorm_after, rec["mid"])
        f = layer.mlp.fc1(rec["h2"])
        rec["g"] = F.gelu(f) if rules is None else _Identity.apply(f)
        rec["y2"] = layer.mlp.fc2(rec["g"])
        x = rec["mid"] + rec["y2"]
        blocks.append(rec)
    normed = norm(model.vit.layernorm, x)
    return blocks, normed, model.classifier(normed[:, 0])


def chefer_lrp(model, image, start_layer=0):
    """``generate_LRP(method="transformer_attribution")`` on one image ``(1, 3, H, W)``: the
    relprop of every layer, then ``(grad ⊙ attn_cam)⁺`` head means rolled out with ``I``."""
    blocks, normed, logits = _torch_forward(model, image)
    top = int(logits.argmax())
    logits[0, top].backward()
    r = _linear(normed[:, 0], model.classifier.weight,
                torch.eye(logits.shape[-1], dtype=logits.dtype)[[top]])
    (r,) = _gradprop(lambda z: z.index_select(1, torch.tensor([0])), [normed], r[:, None])
    cams = []
    for layer, rec in zip(reversed(model.vit.layers), reversed(blocks)):
        att = layer.attention
        r_res, r_mlp = _add(rec["mid"], rec["y2"], r)
        r_mlp = _linear(rec["h2"], layer.mlp.fc1.weight,
                        _linear(rec["g"], layer.mlp.fc2.weight, r_mlp))
        r_res, r_attn = _add(rec["x"], rec["y1"], _clone(rec["mid"], r_res, r_mlp))
        r_attn = _linear(rec["o"], att.o_proj.weight, r_attn)
        r_attn = r_attn.view(*r_attn.shape[:2], -1, att.head_dim).transpose(1, 2)
        cam, r_v = (c / 2 for c in _gradprop(lambda a, v: torch.einsum("bhij,bhjd->bhid", a, v),
                                             [rec["a"], rec["v"]], r_attn))
        r_q, r_k = (c / 2 for c in _gradprop(lambda q, k: torch.einsum("bhid,bhjd->bhij", q, k),
                                             [rec["q"], rec["k"]], cam))
        r_qkv = torch.cat([c.transpose(1, 2).flatten(2) for c in (r_q, r_k, r_v)], -1)
        weight = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
        r = _clone(rec["x"], r_res, _linear(rec["h1"], weight, r_qkv))
        cams.append(cam)
    eye = torch.eye(normed.shape[1], dtype=normed.dtype)
    joint = None
    for rec, cam in list(zip(blocks, reversed(cams)))[start_layer:]:
        step = (rec["a"].grad * cam).clamp(min=0)[0].mean(0) + eye
        joint = step if joint is None else step @ joint
    return joint[0, 1:].detach().numpy(), top


def lxt_lrp(model, images, rules):
    """lxt's gradient x input at the pixels under ``rules``, summed over the channels (its ViT
    example) and over each patch's pixels -> ``(N, P)``, and the top classes."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    _, _, logits = _torch_forward(model, pixels, rules)
    top = logits.argmax(-1)
    logits[torch.arange(len(top)), top].sum().backward()
    heat = (pixels * pixels.grad).sum(1).detach().numpy()  # (N, H, W)
    p = model.config.patch_size
    n, h, w = heat.shape
    return heat.reshape(n, h // p, p, w // p, p).sum(axis=(2, 4)).reshape(n, -1), top.numpy()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_lrp_methods_match_their_reference(pair, size):
    """transformer-attribution against Chefer's relprop run image by image (their batch 1),
    attnlrp and cp-lrp against lxt's rules, on a batch of 2; the torch forward written out is
    Hugging Face's model (its logits)."""
    reference, ours = pair
    reference = copy.deepcopy(reference).double()
    images = np.random.default_rng(size[0]).normal(size=(2, *size, 3)).astype(np.float32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    with torch.no_grad():
        want_logits = reference(pixel_values=x, interpolate_pos_encoding=True).logits
        np.testing.assert_allclose(_torch_forward(reference, x)[2], want_logits, atol=1e-9)
    chefer = [chefer_lrp(reference, x[i : i + 1]) for i in range(len(x))]
    want = {"transformer-attribution": (np.stack([m for m, _ in chefer]),
                                        np.array([c for _, c in chefer]))}
    for rules in ("attnlrp", "cp-lrp"):
        want[rules] = lxt_lrp(reference, images.astype(np.float64), rules)
    for name in LRP:
        got, ps = explain_maps(ours, images, name)
        wanted, top = want[name]
        assert (ps.target == top).all() and np.abs(wanted).max() > 0, name
        scale = np.abs(wanted).max(axis=1, keepdims=True)
        assert (np.abs(got.reshape(2, -1) - wanted) <= 1e-4 * scale).all(), name


def test_chefer_relevance_is_conserved_block_by_block(pair):
    """Every rule of Chefer's relprop conserves the relevance's sum (the alpha-beta linears
    where an output has a positive contribution, which random weights give everywhere): the
    one-hot's 1 at every block's input and output, per image, a batch of 2; and on a distilled
    DeiT's mean head, whose two halves split it by the Add rule, and on its distillation head."""
    _, ours = pair
    images = np.random.default_rng(3).normal(size=(2, 64, 96, 3)).astype(np.float32)
    distilled = vidattn.load_model(dataclasses.replace(TINY, name="tiny_distilled",
                                                       num_class_tokens=2), weights="random")
    for model, head in ((ours, "cls"), (distilled, "mean"), (distilled, "dist")):
        ps = backward_pass(model, images, None, head)
        cams, relevances = lrp.relprop(model, lrp.trace(model, images), ps.target, ps.row)
        assert len(cams) == TINY.depth and len(relevances) == TINY.depth + 1
        for r in relevances:
            np.testing.assert_allclose(r.reshape(2, -1).sum(axis=1), 1.0, atol=1e-6)
        if head == "mean":  # both class tokens hold a share
            assert (np.abs(relevances[-1][:, :2].sum(axis=2)) > 1e-3).all()


def test_a_batch_is_its_images_one_by_one(pair):
    """Chefer's Add sums over the whole tensor (their batch 1); ours per image."""
    _, ours = pair
    images = np.random.default_rng(4).normal(size=(2, 48, 64, 3)).astype(np.float32)
    for name in LRP:
        both, _ = explain_maps(ours, images, name)
        for i in range(2):
            alone, _ = explain_maps(ours, images[i : i + 1], name)
            np.testing.assert_allclose(both[i], alone[0], rtol=1e-5, atol=1e-6 * np.abs(
                alone).max())


def test_cp_lrp_conserves_the_logit_without_biases():
    """CP-LRP's rules (linears at gradient x input, GELU's identity rule, LayerNorm's constant
    deviation, attention a constant) conserve: with every bias, the class token and the
    position embeddings zero, the pixels' relevances sum to the explained logit. (AttnLRP's
    softmax rule does not conserve, and is not asked to.)"""
    model = vidattn.load_model(dataclasses.replace(TINY, name="tiny_unbiased"), weights="random")
    for w in (model.backbone.class_tokens[0], model.backbone.pos_embed):
        w.assign(np.zeros(w.shape, np.float32))
    for block in model.backbone.blocks:  # LayerNorm's scale random: not a free pass
        block.norm1.gamma.assign(np.random.default_rng(1).uniform(0.5, 2, block.norm1.gamma.shape)
                                 .astype(np.float32))
    images = np.random.default_rng(5).normal(size=(2, 64, 96, 3)).astype(np.float32)
    got, ps = explain_maps(model, images, "cp-lrp")
    logit = ps.logits[np.arange(2), ps.target]
    assert (np.abs(logit) > 1e-3).all()
    np.testing.assert_allclose(got.reshape(2, -1).sum(axis=1), logit, rtol=1e-4)


@pytest.mark.parametrize("change, words", [
    ({"layer_scale": True}, "has LayerScale"),
    ({"mlp": "swiglu", "mlp_hidden": 128}, "has a SwiGLU feed-forward"),
])
@pytest.mark.parametrize("method", LRP)
def test_a_block_the_lrp_rules_do_not_cover_is_one_line(method, change, words):
    model = vidattn.load_model(dataclasses.replace(TINY, name="tiny_odd", **change),
                               weights="random")
    with pytest.raises(VidattnError) as err:
        explain_maps(model, np.zeros((1, 32, 32, 3), np.float32), method)
    message = str(err.value)
    assert message.startswith(f"--explain-method {method}: its LRP rules cover plain ViT/DeiT "
                              "blocks") and words in message and "\n" not in message


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
         "reference and 96x160"], cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:]


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
    assert skipped.record["skipped"]["explain"].startswith(
        "the model has no classifier head, so no class to explain: give a reference image")


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
