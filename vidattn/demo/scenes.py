"""Procedural scenes (objects on cluttered backgrounds) and the object-attention bar.

The demo model (``scripts/train_demo_model.py``) is trained on these scenes and
``tests/test_demo_model.py`` checks it on fresh ones, so both draw them, and measure attention,
with the code here. A scene is a few solid shapes (discs, rotated squares, triangles, blobs) in
saturated colours over a background of low-frequency noise, stripes or a gradient sprinkled with
small specks; its boolean mask marks the object pixels: the ground truth of where a model that
"finds the object" should look.

Everything is drawn with whole-array numpy operations (one pass per object, none per pixel) from
a ``numpy.random.Generator``, so a seed fixes every scene exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("disc", "square", "triangle", "blob")


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes.

    Attributes:
        images: uint8 ``(N, S, S, 3)`` RGB; ``(N, V, S, S, 3)`` from :func:`make_views`.
        masks: bool ``(N, S, S)``, true on object pixels (objects drawn at least half opaque).
        shapes: int ``(N, max_objects)``, index into :data:`SHAPES` of each object, -1 where a
            scene has fewer objects; the largest object first.
        hues: float ``(N, max_objects)`` in 0..1, each object's hue, NaN where absent.
    """

    images: np.ndarray
    masks: np.ndarray
    shapes: np.ndarray
    hues: np.ndarray


def _hsv_to_rgb(h, s, v):
    """HSV in 0..1 (arrays of one shape) -> RGB in 0..1, shape ``h.shape + (3,)``."""
    k = (np.array([5.0, 3.0, 1.0]) + np.asarray(h)[..., None] * 6.0) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.asarray(v)[..., None] * (1.0 - np.asarray(s)[..., None] * ramp)


def _smooth_noise(rng, size, cells):
    """Value noise ``(size, size)`` in 0..1: a ``cells x cells`` random lattice, bilinearly
    upsampled (separable interpolation matrices, no per-pixel loop)."""
    lattice = rng.random((cells + 1, cells + 1))
    pos = np.linspace(0, cells, size)
    lo = np.minimum(pos.astype(int), cells - 1)
    frac = pos - lo
    interp = np.zeros((size, cells + 1))
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    return interp @ lattice @ interp.T


def _background(rng, size):
    """Cluttered background ``(size, size, 3)`` in 0..1: noise, stripes or a gradient between two
    muted colours, plus small specks (1-2 px) that are texture, not objects."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = rng.integers(3)
    if kind == 0:
        t = _smooth_noise(rng, size, int(rng.integers(2, 7)))
    elif kind == 1:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        wave = np.sin(2 * np.pi * freq * along + rng.uniform(0, 7))
        t = 0.5 + 0.5 * np.tanh(rng.uniform(0.5, 4) * wave)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / (np.ptp(t) + 1e-9)
    colours = _hsv_to_rgb(rng.random(2), rng.uniform(0.0, 0.5, 2), rng.uniform(0.25, 0.85, 2))
    image = colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]
    image += rng.normal(0, 0.03, (size, size, 1))  # fine grain
    n_specks = int(rng.integers(size // 4, size))
    ys, xs = rng.integers(0, size - 1, (2, n_specks))
    speck_colours = _hsv_to_rgb(
        rng.random(n_specks), rng.uniform(0, 0.6, n_specks), rng.random(n_specks)
    )
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))[: int(rng.integers(1, 5))]:
        image[ys + dy, xs + dx] = speck_colours
    return image


def _object_alpha(rng, shape, size, centre, radius):
    """Anti-aliased coverage ``(size, size)`` in 0..1 of one object, from an (approximate) signed
    distance in pixels: ``alpha = clip(0.5 - sdf, 0, 1)``."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = yy - centre[0], xx - centre[1]
    theta = rng.uniform(0, 2 * np.pi)
    if shape == "disc":
        sdf = np.hypot(dy, dx) - radius
    elif shape == "square":
        c, s = np.cos(theta), np.sin(theta)
        u, v = np.abs(c * dx + s * dy), np.abs(-s * dx + c * dy)
        half = radius * 0.85
        sdf = np.maximum(u, v) - half
    elif shape == "triangle":
        # Max of the signed distances to the three edge lines: exact inside, close outside.
        normals = theta + np.array([0.0, 2, 4]) * np.pi / 3
        proj = dx[..., None] * np.cos(normals) + dy[..., None] * np.sin(normals)
        sdf = proj.max(axis=-1) - radius * 0.6
    else:  # blob: a disc whose radius wobbles with the angle (three random harmonics)
        angle = np.arctan2(dy, dx)
        k = np.arange(2, 5)
        amplitude = rng.uniform(0.05, 0.18, 3)
        wobble = (amplitude * np.cos(k * angle[..., None] + rng.uniform(0, 7, 3))).sum(-1)
        sdf = np.hypot(dy, dx) - radius * (1 + wobble)
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _render(rng, n, size, max_objects, views, radius):
    """Draw ``n`` object layouts, each over ``views`` independent backgrounds.

    Returns images uint8 ``(n, views, size, size, 3)``, masks bool ``(n, size, size)``, shapes
    int ``(n, max_objects)`` and object hues float ``(n, max_objects)`` (NaN where absent).
    """
    images = np.empty((n, views, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    shapes = np.full((n, max_objects), -1, int)
    hues = np.full((n, max_objects), np.nan)
    for i in range(n):
        k = int(rng.integers(1, max_objects + 1))
        radii = np.sort(rng.uniform(*radius, k) * size)  # smallest first: the largest on top
        layers = []  # (alpha (S, S, 1), colour (S, 1, 3)) per object, bottom to top
        for j, r in enumerate(radii):
            shape = int(rng.integers(len(SHAPES)))
            centre = rng.uniform(r * 0.8, size - r * 0.8, 2)
            alpha, colour, hue = object_layer(rng, SHAPES[shape], size, centre, r)
            layers.append((alpha, colour))
            shapes[i, k - 1 - j], hues[i, k - 1 - j] = shape, hue
        for v in range(views):
            images[i, v] = composite(_background(rng, size), layers)
        masks[i] = np.max([alpha[..., 0] for alpha, _ in layers], axis=0) >= 0.5
    return images, masks, shapes, hues


def object_layer(rng, shape: str, size: int, centre, radius: float, hue: float | None = None):
    """One object of ``shape`` (a name in :data:`SHAPES`) at ``centre`` (row, col, pixels) of
    ``radius`` pixels, a random orientation and a saturated colour of ``hue`` (0..1; None:
    random) lit from above or below -> ``(alpha (S, S, 1) in 0..1, colour (S, 1, 3) in 0..1,
    hue)``, for :func:`composite`. Shared by every scene generator, so all objects look alike."""
    alpha = _object_alpha(rng, shape, size, centre, radius)[..., None]
    hue = rng.random() if hue is None else hue
    colour = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    yy = np.arange(size)[:, None, None] / size
    shade = 1 + rng.uniform(-0.5, 0.5) * (yy - centre[0] / size)  # lit from above/below
    return alpha, np.clip(colour * shade, 0, 1), hue


def composite(background: np.ndarray, layers) -> np.ndarray:
    """Blend ``layers`` (``(alpha, colour)`` pairs from :func:`object_layer`, bottom to top)
    over a background ``(S, S, 3)`` in 0..1 -> uint8 ``(S, S, 3)``."""
    image = background
    for alpha, colour in layers:
        image = image * (1 - alpha) + colour * alpha
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def make_scenes(
    rng: np.random.Generator, n: int, size: int = 64, max_objects: int = 2, radius=(0.12, 0.24)
) -> Scenes:
    """Draw ``n`` scenes of ``size x size`` pixels, each with 1..``max_objects`` objects.

    Object radii are drawn from ``radius`` (fractions of the side; the default 12-24 % makes an
    object cover several 8-pixel patches at 64 px); the largest object is drawn on top. Objects
    have flat saturated colours with a slight shading gradient; backgrounds are muted, textured.
    """
    images, masks, shapes, hues = _render(rng, n, size, max_objects, 1, radius)
    return Scenes(images[:, 0], masks, shapes, hues)


def make_views(
    rng: np.random.Generator, n: int, views: int, size: int = 64, max_objects: int = 2,
    radius=(0.12, 0.24),
) -> Scenes:
    """``n`` scenes like :func:`make_scenes`'s, each rendered over ``views`` different
    backgrounds: images uint8 ``(n, views, size, size, 3)``, one mask per scene. Self-supervised
    training takes its views of one scene from these, so what stays the same between views is
    the objects, not the background (as in photographs, where the object is what crops of one
    picture share)."""
    return Scenes(*_render(rng, n, size, max_objects, views, radius))


# ------------------------------------------------------------------------------- the attention bar


def patch_cover(masks: np.ndarray, patch: int) -> np.ndarray:
    """The share of each ``patch x patch`` cell that ``masks`` ``(N, H, W)`` covers: float
    ``(N, H // patch, W // patch)``, the ViT's patch grid."""
    n, h, w = masks.shape
    return masks.reshape(n, h // patch, patch, w // patch, patch).mean(axis=(2, 4))


def object_patches(masks: np.ndarray, patch: int) -> np.ndarray:
    """Which patches are "object": bool ``(N, gh * gw)``, patches row by row (the ViT's token
    order), true where the mask covers at least half of the ``patch x patch`` pixels."""
    return patch_cover(masks, patch).reshape(len(masks), -1) >= 0.5


def cls_patch_attention(model, images: np.ndarray) -> np.ndarray:
    """Last-block CLS attention over the patches, ``(N, gh * gw)``, each row summing to 1.

    The head-mean of the CLS query row, restricted to patch tokens and renormalised (the CLS
    token's attention to itself and to other class tokens is dropped). ``images`` are uint8
    ``(N, H, W, 3)``, normalised here as the model's preset says.
    """
    from vidattn.preprocess import normalize

    out = model.run(normalize(images, model.preset.preprocessing), attention="cls")
    row = out["attention"][-1].mean(axis=1)[:, 0, model.preset.num_prefix_tokens :]
    return row / row.sum(axis=1, keepdims=True)


def object_attention_share(model, images: np.ndarray, masks: np.ndarray) -> float:
    """The bar: mean over scenes of the share of CLS patch attention that falls on object
    patches (:func:`cls_patch_attention` summed over :func:`object_patches`). A model blind to
    the objects scores about :func:`object_area_share`; one that looks only at them scores 1."""
    attention = cls_patch_attention(model, images)
    return float((attention * object_patches(masks, model.preset.patch_size)).sum(axis=1).mean())


def object_area_share(masks: np.ndarray, patch: int) -> float:
    """Mean fraction of patches that are object patches: what uniform attention would score."""
    return float(object_patches(masks, patch).mean())
