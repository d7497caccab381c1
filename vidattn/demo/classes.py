"""Labelled synthetic scenes for the ``demo_classifier`` preset: a class is a shape in a colour
(a red disc, a green square, a blue triangle, a yellow blob), and a scene's class is that of its
one large object, drawn among smaller distractors of other classes.

So a supervised toy model has something to explain and the explanation has a ground truth: the
class object's mask says where a map of "why this class" should lie, and scenes of two objects of
different classes (:func:`pair_scenes`) say where each class's map should lie. The objects and
backgrounds are those of ``scenes`` (:func:`scenes.object_layer`, :func:`scenes.composite`).
Shape and colour both tell the class: a first try with shape alone (random colours) stayed at
chance for 200-300 steps, more than a few CPU minutes allow, so each class has its hue too
(a ViT this small learns colour first; the model card says so). Objects never overlap
(placement keeps a gap between them), so every mask is the object's whole silhouette.

Everything is drawn with whole-array numpy operations from one seed: ``labelled_scenes(n, seed)``
is the same on every run, and training (``supervised``) draws from a seed no evaluation uses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vidattn.demo.scenes import (
    SHAPES,
    _background,
    composite,
    object_layer,
    patch_cover,
)

CLASS_HUES = {"red": 0.0, "green": 0.33, "blue": 0.62, "yellow": 0.14}  # class i: SHAPES[i]
CLASSES = tuple(f"{colour} {shape}" for colour, shape in zip(CLASS_HUES, SHAPES))
HUE_JITTER = 0.03  # each object's hue within this of its class's
PRESET = "demo_classifier"
MAIN_RADIUS = (0.16, 0.24)  # the class object's radius, fraction of the side
DISTRACTOR_RADIUS = (0.06, 0.10)  # at most half the class object's: "the large one" is clear
DISTRACTORS = (1, 3)  # how many, inclusive
PAIR_RADIUS = (0.13, 0.18)  # both objects of a two-object scene (two fit side by side)
GAP = 2.0  # pixels kept between objects
HELD_OUT_SEED = 4242  # the tests' and the model card's held-out scenes (training uses others)


class LabelledScenes(NamedTuple):
    """Scenes with one class object: ``images`` uint8 ``(N, S, S, 3)``, ``labels`` int64
    ``(N,)`` (index into :data:`CLASSES`), ``masks`` bool ``(N, S, S)``: the class object's
    pixels (coverage at least one half), not the distractors'."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


class PairScenes(NamedTuple):
    """Scenes of two objects of different classes, alike in size: ``images`` uint8
    ``(N, S, S, 3)``, ``labels`` int64 ``(N, 2)``, ``masks`` bool ``(N, 2, S, S)``, object k's
    pixels in ``masks[:, k]``."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def image_size() -> int:
    """The classifier's training resolution (the preset table holds it)."""
    from vidattn.models.presets import get_preset

    return get_preset(PRESET).image_size


def _place(rng, radius, size, placed, candidates=64):
    """A centre (row, col) for an object of ``radius`` inside the image, clear of the ``placed``
    ``[(centre, radius)]`` by :data:`GAP`: the first of ``candidates`` uniform draws that is,
    else the one with the most room."""
    centres = rng.uniform(radius + 1, size - radius - 1, (candidates, 2))
    if not placed:
        return centres[0]
    others = np.array([c for c, _ in placed])  # (K, 2)
    reach = np.array([r for _, r in placed]) + radius + GAP
    room = (np.linalg.norm(centres[:, None] - others[None], axis=-1) - reach).min(axis=1)
    clear = np.flatnonzero(room >= 0)
    return centres[clear[0] if len(clear) else np.argmax(room)]


def _scene(rng, size, classes, radii):
    """One scene of objects of ``classes`` (indices into :data:`CLASSES`) of ``radii``
    (pixels), placed in that order apart from each other -> image uint8 ``(S, S, 3)`` and each
    object's mask bool ``(K, S, S)``."""
    placed, layers = [], []
    jitter = rng.uniform(-1, 1, len(classes)) * HUE_JITTER
    hues = np.array(list(CLASS_HUES.values()))[classes] + jitter
    for c, hue, r in zip(classes, hues % 1.0, radii):
        centre = _place(rng, r, size, placed)
        placed.append((centre, r))
        alpha, colour, _ = object_layer(rng, SHAPES[c], size, centre, r, hue)
        layers.append((alpha, colour))
    image = composite(_background(rng, size), layers)
    return image, np.stack([alpha[..., 0] >= 0.5 for alpha, _ in layers])


def _others(rng, label, k):
    """``k`` classes other than ``label`` (repeats allowed), int ``(k,)``."""
    return (label + rng.integers(1, len(CLASSES), k)) % len(CLASSES)


def draw_labelled(rng: np.random.Generator, n: int, size: int) -> LabelledScenes:
    """:func:`labelled_scenes` from a Generator (training draws its stream from one)."""
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    labels = rng.integers(len(CLASSES), size=n)
    for i, label in enumerate(labels):
        k = int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))
        radii = np.concatenate([rng.uniform(*MAIN_RADIUS, 1), rng.uniform(*DISTRACTOR_RADIUS, k)])
        classes = np.concatenate([[label], _others(rng, label, k)])
        images[i], object_masks = _scene(rng, size, classes, radii * size)
        masks[i] = object_masks[0]
    return LabelledScenes(images, labels.astype(np.int64), masks)


def labelled_scenes(n: int, seed: int = HELD_OUT_SEED, size: int | None = None) -> LabelledScenes:
    """``n`` scenes of ``size`` pixels (default: the classifier's), each one class object
    (radius :data:`MAIN_RADIUS` of the side, class uniform over :data:`CLASSES`) among
    :data:`DISTRACTORS` smaller objects of other classes, over the ``scenes`` backgrounds; the
    same for the same ``seed``. Returns :class:`LabelledScenes` (images, labels, masks of the
    class object)."""
    return draw_labelled(np.random.default_rng(seed), n, size or image_size())


def pair_scenes(n: int, seed: int = HELD_OUT_SEED, size: int | None = None) -> PairScenes:
    """``n`` scenes of two objects of two different classes, both of radius
    :data:`PAIR_RADIUS`, side by side without touching: the class-sensitivity check (the map
    explaining one class should lie on that class's object). Returns :class:`PairScenes`."""
    rng = np.random.default_rng([seed, 2])  # not labelled_scenes' stream of the same seed
    size = size or image_size()
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, 2, size, size), bool)
    first = rng.integers(len(CLASSES), size=n)
    labels = np.stack([first, _others(rng, first, n)], axis=1)
    for i in range(n):
        images[i], masks[i] = _scene(rng, size, labels[i], rng.uniform(*PAIR_RADIUS, 2) * size)
    return PairScenes(images, labels.astype(np.int64), masks)


def predict(model, images: np.ndarray) -> np.ndarray:
    """The model's class of each uint8 image ``(N, H, W, 3)`` (normalised as its preset says):
    int64 ``(N,)``."""
    from vidattn.preprocess import normalize

    logits = model.run(normalize(images, model.preset.preprocessing))["logits"]
    return np.argmax(logits, axis=1)


def accuracy(model, scenes: LabelledScenes) -> float:
    """Share of ``scenes`` whose class the model names."""
    return float((predict(model, scenes.images) == scenes.labels).mean())


def map_share(maps: np.ndarray, masks: np.ndarray, patch: int) -> np.ndarray:
    """How much of each map lies on its mask: ``maps`` ``(N, gh, gw)`` (negatives count as 0)
    and pixel ``masks`` ``(N, S, S)`` -> float ``(N,)`` in 0..1, the map's mass weighted by the
    share of each patch the mask covers (:func:`scenes.patch_cover`), over its whole mass. A
    map spread evenly scores the mask's area share; 0 for an all-zero map."""
    positive = np.maximum(np.asarray(maps, np.float64), 0)
    total = positive.sum(axis=(1, 2))
    on = (positive * patch_cover(masks, patch)).sum(axis=(1, 2))
    return np.divide(on, total, out=np.zeros_like(on), where=total > 0)
