"""Label propagation against a dense, unwindowed formulation written from the two references'
formulas in torch (DINO's ``label_propagation`` and ``restrict_neighborhood``, the dinov3
notebook's ``propagate`` and ``make_neighborhood_mask``), on random and on planted features;
the chunked affinity equals the dense one whatever the budget; the post-processing against
``F.interpolate``; the protocols' frame and seed geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vidattn.track.propagate import Propagator, labels_from_probs
from vidattn.track.protocols import PROTOCOLS, prepare_frame, resized_hw, seed_probs, working_hw


def dense_neighbourhood(shape: str, size: int, gh: int, gw: int) -> torch.Tensor:
    """(gh*gw queries, gh*gw keys) bool, every pair formed at once."""
    ij = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1)
    ij = ij.reshape(-1, 2).float()
    diff = ij[:, None, :] - ij[None, :, :]
    if shape == "circle":
        return torch.linalg.vector_norm(diff, ord=2, dim=-1) <= size
    return diff.abs().amax(-1) <= size


def dense_step(name, feats_ctx, probs_ctx, query, grid_hw):
    """One frame by the reference formula: ``feats_ctx`` (t, hw, D), ``probs_ctx`` (t, C, hw),
    ``query`` (hw, D) -> (C, hw) float64."""
    p = PROTOCOLS[name]
    gh, gw = grid_hw
    t = len(feats_ctx)
    keys = F.normalize(torch.as_tensor(feats_ctx, dtype=torch.float64), dim=-1, p=2)
    q = F.normalize(torch.as_tensor(query, dtype=torch.float64), dim=-1, p=2)
    segs = torch.as_tensor(probs_ctx, dtype=torch.float64)
    mask = dense_neighbourhood(p.shape, p.neighbourhood, gh, gw)
    if name == "dino":  # exp(cos/0.1) * mask, keys x queries, top-k over keys of all frames
        aff = torch.exp(torch.einsum("qd,tkd->tqk", q, keys) / p.temperature) * mask
        aff = aff.transpose(2, 1).reshape(-1, gh * gw)  # (t*hw keys, hw queries)
        tk_min = torch.topk(aff, dim=0, k=p.topk).values.min(0).values
        aff[aff < tk_min] = 0
        aff = aff / aff.sum(0, keepdim=True)
        segs = segs.transpose(2, 1).reshape(-1, segs.shape[1]).T  # (C, t*hw)
        return (segs @ aff).numpy()
    dot = torch.einsum("qd,tkd->qtk", q, keys)
    dot = torch.where(mask[:, None, :], dot, -torch.inf).reshape(gh * gw, t * gh * gw)
    kth = torch.topk(dot, dim=1, k=p.topk).values[:, -1:]
    dot = torch.where(dot >= kth, dot, -torch.inf)
    weights = F.softmax(dot / p.temperature, dim=1)
    out = weights @ segs.permute(0, 2, 1).reshape(t * gh * gw, -1)  # (hw, C)
    out = out / out.sum(-1, keepdim=True)
    return out.T.numpy()


def run_both(name, tokens, first_probs, grid_hw, budget=None, context=None):
    """Propagate frames 1.. of ``tokens`` (T, hw, D) both ways -> lists of (C, hw)."""
    p = PROTOCOLS[name] if context is None else PROTOCOLS[name].with_overrides(context=context)
    gh, gw = grid_hw
    prop = Propagator(p, grid_hw, tokens[0], first_probs, budget)
    c = len(first_probs)
    ctx_feats, ctx_probs = [tokens[0]], [first_probs.reshape(c, -1)]
    ours, ref = [], []
    for tok in tokens[1:]:
        ours.append(prop.step(tok).reshape(c, -1))
        r = dense_step(name, np.stack([ctx_feats[0], *ctx_feats[1:][-p.context:]]),
                       np.stack([ctx_probs[0], *ctx_probs[1:][-p.context:]]), tok, grid_hw)
        ref.append(r)
        ctx_feats.append(tok)
        ctx_probs.append(r.astype(np.float32))
    return ours, ref


def _planted(rng, frames, gh, gw, d=32):
    """Features of a square object moving right one patch per frame over a noisy background,
    and its first-frame one-hot (2 channels)."""
    base_bg, base_obj = rng.standard_normal(d), rng.standard_normal(d)
    tokens = np.empty((frames, gh, gw, d), np.float32)
    for f in range(frames):
        tokens[f] = base_bg + 0.3 * rng.standard_normal((gh, gw, d))
        tokens[f, 3:7, 2 + f:6 + f] = base_obj + 0.3 * rng.standard_normal((4, 4, d))
    first = np.zeros((2, gh, gw), np.float32)
    first[1, 3:7, 2:6] = 1
    first[0] = 1 - first[1]
    return tokens.reshape(frames, gh * gw, d), first


@pytest.mark.parametrize("name", ["dino", "dinov3"])
@pytest.mark.parametrize("features", ["random", "planted"])
def test_propagation_matches_dense_reference(name, features):
    rng = np.random.default_rng(1)
    gh, gw = 14, 30  # wider than the neighbourhood: the mask matters
    if features == "random":
        tokens = rng.standard_normal((11, gh * gw, 24)).astype(np.float32)
        labels = rng.integers(0, 3, (gh, gw))
        first = (labels[None] == np.arange(3)[:, None, None]).astype(np.float32)
    else:
        tokens, first = _planted(rng, 11, gh, gw)
    ours, ref = run_both(name, tokens, first, (gh, gw))
    for o, r in zip(ours, ref):  # 10 frames: the context fills (7) and then slides
        np.testing.assert_allclose(o, r, atol=1e-5)
        np.testing.assert_array_equal(o.argmax(0), r.argmax(0))
    if features == "planted":  # the object moved 10 patches right and was followed
        assert ours[-1][1].reshape(gh, gw)[3:7, 12:16].min() > 0.5


@pytest.mark.parametrize("name", ["dino", "dinov3"])
def test_chunked_equals_one_chunk(name):
    """A budget so small that every patch is its own tile gives the same numbers."""
    rng = np.random.default_rng(2)
    gh, gw = 26, 14  # taller than the neighbourhood's reach: the tiles' key windows differ
    tokens = rng.standard_normal((3, gh * gw, 16)).astype(np.float32)
    first = np.zeros((3, gh, gw), np.float32)
    first[rng.integers(0, 3, (gh, gw)), *np.indices((gh, gw))] = 1
    whole = Propagator(PROTOCOLS[name], (gh, gw), tokens[0], first, budget_bytes=2**40)
    rows = Propagator(PROTOCOLS[name], (gh, gw), tokens[0], first, budget_bytes=1)
    assert len(whole.chunks) == 3 * 2 and len(rows.chunks) == gh * gw  # 12x12 tiles / 1x1
    for tok in tokens[1:]:
        np.testing.assert_allclose(rows.step(tok), whole.step(tok), atol=1e-6)


def test_ties_are_all_kept():
    """Identical features make every key tie: both references keep all of them (>= the k-th),
    so the result is the plain average of the context's labels within the neighbourhood."""
    gh, gw = 6, 6
    tokens = np.ones((2, gh * gw, 8), np.float32)
    first = np.zeros((2, gh, gw), np.float32)
    first[1, :, :3] = 1
    first[0] = 1 - first[1]
    for name in ("dino", "dinov3"):
        ours, ref = run_both(name, tokens, first, (gh, gw))
        np.testing.assert_allclose(ours[0], ref[0], atol=1e-6)
        np.testing.assert_allclose(ours[0][1], 0.5, atol=1e-6)  # the whole 6x6 is in reach


def test_dino_postprocess_matches_interpolate():
    """DINO: bilinear x patch (F.interpolate), per-object min-max, argmax, PIL nearest."""
    rng = np.random.default_rng(3)
    probs = rng.random((3, 30, 52)).astype(np.float32)
    probs[2] = 0.25  # a constant object: 0/0 there
    frame_hw = (480, 854)
    ours = labels_from_probs(PROTOCOLS["dino"], probs, 16, frame_hw)
    up = F.interpolate(torch.from_numpy(probs)[None], scale_factor=16, mode="bilinear",
                       align_corners=False, recompute_scale_factor=False)[0]
    flat = up.reshape(3, -1)
    low = flat.min(1).values[:, None, None]
    normed = up.clone()
    for c in range(3):  # DINO's norm_mask
        if up[c].max() > 0:
            normed[c] = (up[c] - low[c]) / (up[c] - low[c]).max()
    ref = torch.max(normed, dim=0)[1].numpy().astype(np.uint8)
    ref = np.asarray(Image.fromarray(ref).resize(frame_hw[::-1], 0))
    np.testing.assert_array_equal(ours, ref)


def test_dinov3_postprocess_matches_interpolate():
    """dinov3: nearest upsampling to the frame, per-object min-max (NaN -> 0), argmax."""
    rng = np.random.default_rng(4)
    probs = rng.random((4, 60, 107)).astype(np.float32)
    probs[3] = 0.5
    frame_hw = (480, 854)
    ours = labels_from_probs(PROTOCOLS["dinov3"], probs, 16, frame_hw)
    up = F.interpolate(torch.from_numpy(probs)[None], size=frame_hw, mode="nearest")[0]
    low = up.flatten(1).min(1).values[:, None, None]
    high = up.flatten(1).max(1).values[:, None, None]
    normed = torch.nan_to_num((up - low) / (high - low), nan=0.0)
    np.testing.assert_array_equal(ours, normed.argmax(0).numpy())


def test_protocol_sizes():
    p8, p16 = 8, 16
    assert resized_hw(PROTOCOLS["dino"], (480, 854), p16) == (480, 832)  # floored to 64
    assert resized_hw(PROTOCOLS["dino"], (854, 480), p16) == (832, 480)
    assert working_hw(PROTOCOLS["dino"], (480, 854), 14) == (476, 826)  # cut to the patch
    assert resized_hw(PROTOCOLS["dinov3"], (480, 854), p16) == (960, 1712)
    assert resized_hw(PROTOCOLS["dinov3"], (360, 640), p16) == (960, 1712)  # ceil(1706.7)
    image = np.random.default_rng(5).integers(0, 256, (480, 854, 3), dtype=np.uint8)
    x = prepare_frame(PROTOCOLS["dino"], image, p8)
    assert x.shape == (480, 832, 3) and x.dtype == np.float32
    # DINO's read_frame on the same pixels (OpenCV bilinear, /255, its std 0.228 for red)
    import cv2
    ref = cv2.resize(image, (832, 480)).astype(np.float32) / 255.0
    ref = (ref - [0.485, 0.456, 0.406]) / [0.228, 0.224, 0.225]
    np.testing.assert_allclose(x, ref, atol=1e-5)


def test_seed_probs_grids():
    labels = np.zeros((480, 854), np.uint8)
    labels[100:200, 300:500] = 2
    dino = seed_probs(PROTOCOLS["dino"], labels, (480, 854), 16)
    ref = np.asarray(Image.fromarray(labels).resize((832 // 16, 480 // 16), Image.NEAREST))
    assert dino.shape == (3, 30, 52)
    np.testing.assert_array_equal(dino.argmax(0), ref)
    v3 = seed_probs(PROTOCOLS["dinov3"], labels, (480, 854), 16)
    ref = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=(60, 107),
                        mode="nearest-exact")[0, 0].numpy()
    np.testing.assert_array_equal(v3.argmax(0), ref)
    assert v3[1].sum() == 0  # channel 1 exists (max + 1 channels) but is empty
