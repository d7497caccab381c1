"""The bundled toy classifier (``demo_classifier``) names the class of fresh scenes, its class
explanations lie on the explained class's object, and its model card states what is measured."""

import re
from pathlib import Path

import numpy as np
import pytest

import vidattn
from vidattn.demo.classes import (
    CLASSES,
    HELD_OUT_SEED,
    PRESET,
    accuracy,
    labelled_scenes,
    map_share,
    pair_scenes,
)
from vidattn.preprocess import normalize
from vidattn.relevance.methods import METHODS, explain_maps
from vidattn.relevance.targets import class_names

CARD = Path(vidattn.__file__).parent / "data" / "README.md"
N_HELD_OUT, N_PAIRS = 200, 16
MIN_ACCURACY = 0.9
CLASS_AGNOSTIC = ("rollout",)  # attention only: the same map whatever the class
# Chefer's attention baseline fails here: on 16 pairs its map for one class lies on the *other*
# object in 28 of 32 cases (last-block CLS attention weighted by mean gradients per head).
FAILS = ("attention",)
SENSITIVE = [m for m in METHODS if m not in CLASS_AGNOSTIC + FAILS]  # every other method
MIN_OWN_SHARE = {"gradcam": 0.3}  # class-sensitive but diffuse (~0.38 on its own object)


@pytest.fixture(scope="module")
def model():
    return vidattn.load_model(PRESET)  # the weights shipped in vidattn/data


@pytest.fixture(scope="module")
def pairs():
    return pair_scenes(N_PAIRS, HELD_OUT_SEED)


def _card_accuracy():
    found = re.search(r"held-out accuracy \| \*\*([0-9.]+)\*\* on (\d+) scenes, seed (\d+)",
                      CARD.read_text())
    assert found, "the model card states the held-out accuracy"
    return float(found[1]), int(found[2]), int(found[3])


def test_bundled_classifier_names_held_out_classes_as_the_card_says(model):
    stated, n, seed = _card_accuracy()
    assert (n, seed) == (N_HELD_OUT, HELD_OUT_SEED)
    measured = accuracy(model, labelled_scenes(N_HELD_OUT, HELD_OUT_SEED))
    assert measured >= MIN_ACCURACY
    assert measured == pytest.approx(stated, abs=0.011)  # a near-tie may flip on another backend


def test_random_classifier_is_labelled_and_near_chance():
    model = vidattn.load_model(PRESET, weights="random")
    assert model.is_random
    assert accuracy(model, labelled_scenes(100, HELD_OUT_SEED)) < 0.5


def test_class_names_are_the_presets_own(model):
    assert class_names(model.preset) == list(CLASSES)
    assert model.preset.num_classes == len(CLASSES) == 4


def _maps_for_each_object(model, pairs, method):
    """Per scene and object k, the share of the map explaining object k's class that lies on
    object k and on the other object: two ``(N, 2)`` arrays."""
    x = normalize(pairs.images, model.preset.preprocessing)
    own, other = np.zeros((N_PAIRS, 2)), np.zeros((N_PAIRS, 2))
    for k in range(2):
        for c in np.unique(pairs.labels[:, k]):
            rows = np.flatnonzero(pairs.labels[:, k] == c)
            maps, ps = explain_maps(model, x[rows], method, target=int(c))
            assert (ps.target == c).all()
            own[rows, k] = map_share(maps, pairs.masks[rows, k], model.preset.patch_size)
            other[rows, k] = map_share(maps, pairs.masks[rows, 1 - k], model.preset.patch_size)
    return own, other


@pytest.mark.parametrize("method", SENSITIVE)
def test_each_class_map_lies_on_its_own_object(model, pairs, method):
    """Two objects of different classes: the map for A is mostly on A, the map for B on B."""
    own, other = _maps_for_each_object(model, pairs, method)
    assert (own > other).mean() >= 0.8
    assert own.mean() >= MIN_OWN_SHARE.get(method, 0.5)
    assert other.mean() <= 0.2


def test_class_agnostic_rollout_cannot_tell_the_objects_apart(model, pairs):
    """Rollout's map is the same whichever class it explains, so on each scene it favours the
    same object for both: the sensitivity test above would fail it."""
    own, other = _maps_for_each_object(model, pairs, "rollout")
    np.testing.assert_allclose(own[:, 0], other[:, 1])
    assert ((own > other).sum(axis=1) <= 1).all()


def test_scenes_are_deterministic_and_masks_are_the_class_objects():
    a, b = labelled_scenes(12, 7), labelled_scenes(12, 7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a.images.shape == (12, 96, 96, 3) and a.images.dtype == np.uint8
    assert a.masks.shape == (12, 96, 96) and a.masks.any(axis=(1, 2)).all()
    p = pair_scenes(12, 7)
    assert p.masks.shape == (12, 2, 96, 96)
    assert (p.labels[:, 0] != p.labels[:, 1]).all()
    assert not (p.masks[:, 0] & p.masks[:, 1]).any()  # objects never overlap


def test_map_share_on_planted_maps():
    masks = np.zeros((1, 16, 16), bool)
    masks[0, :8, :8] = True  # patch (0, 0) of a 2x2 grid
    on = np.array([[[1.0, 0], [0, 0]]])
    assert map_share(on, masks, 8) == pytest.approx([1.0])
    assert map_share(1 - on, masks, 8) == pytest.approx([0.0])
    assert map_share(np.ones((1, 2, 2)), masks, 8) == pytest.approx([0.25])
    assert map_share(-on, masks, 8) == pytest.approx([0.0])  # negatives count as nothing
