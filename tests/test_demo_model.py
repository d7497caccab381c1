"""The bundled demo model looks at objects; the scenes and bar metric that judge it are right."""


import numpy as np
import pytest

import vidattn
from vidattn.demo.scenes import (
    make_scenes,
    make_views,
    object_area_share,
    object_attention_share,
    object_patches,
)
from vidattn.models.presets import get_preset

HELD_OUT_SEED = 4242  # training draws from seed 0, its report from 20240601


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(np.random.default_rng(HELD_OUT_SEED), 40)


def test_demo_model_attends_to_objects(scenes):
    model = vidattn.load_model("demo")  # the weights shipped in vidattn/data
    share = object_attention_share(model, scenes.images, scenes.masks)
    assert share >= 0.6


def test_random_model_does_not(scenes):
    model = vidattn.load_model("demo", weights="random")
    area = object_area_share(scenes.masks, model.preset.patch_size)
    share = object_attention_share(model, scenes.images, scenes.masks)
    assert 0.05 < area < 0.4  # objects are neither absent nor the whole picture
    assert share <= area + 0.1


class _Planted:
    """Stands in for a Model: CLS attention of one head put on chosen patches, plus some on the
    CLS token itself (which the metric must drop)."""

    def __init__(self, patch_weights):
        self.preset = get_preset("demo")
        self.weights = patch_weights  # (N, patches)

    def run(self, images, attention):
        n, patches = self.weights.shape
        probs = np.zeros((n, 2, 1 + patches, 1 + patches), np.float32)
        probs[:, :, 0, 0] = 0.5
        probs[:, :, 0, 1:] = (0.5 * self.weights / self.weights.sum(axis=1, keepdims=True))[:, None]
        return {"attention": [probs]}


def test_bar_metric_on_planted_attention(scenes):
    objects = object_patches(scenes.masks, 8).astype(np.float32)
    on, off = _Planted(objects), _Planted(1 - objects)
    uniform = _Planted(np.ones_like(objects))
    assert object_attention_share(on, scenes.images, scenes.masks) == pytest.approx(1.0)
    assert object_attention_share(off, scenes.images, scenes.masks) == pytest.approx(0.0)
    assert object_attention_share(uniform, scenes.images, scenes.masks) == pytest.approx(
        object_area_share(scenes.masks, 8), abs=1e-6
    )


def test_object_patches_threshold_is_half_coverage():
    masks = np.zeros((1, 16, 16), bool)
    masks[0, :8, :4] = True  # exactly half of patch (0, 0)
    masks[0, 8:, 8:11] = True  # 3/8 of patch (1, 1)
    np.testing.assert_array_equal(object_patches(masks, 8), [[True, False, False, False]])


def test_scenes_are_deterministic_and_masks_mark_the_objects(scenes):
    again = make_scenes(np.random.default_rng(HELD_OUT_SEED), 40)
    np.testing.assert_array_equal(again.images, scenes.images)
    np.testing.assert_array_equal(again.masks, scenes.masks)
    assert scenes.images.shape == (40, 64, 64, 3) and scenes.images.dtype == np.uint8
    assert scenes.masks.any(axis=(1, 2)).all()
    assert ((scenes.shapes[:, 0] >= 0) & (scenes.shapes[:, 0] < 4)).all()


def test_views_share_objects_not_backgrounds():
    """Views of one scene differ in background only: the object pixels the mask marks (nearly all
    fully opaque) are the same in every view, the rest almost never."""
    views = make_views(np.random.default_rng(1), 6, 3)
    assert views.images.shape == (6, 3, 64, 64, 3)
    masks = views.masks
    same = (views.images[:, 1:] == views.images[:, :1]).all(axis=-1)  # (N, views - 1, S, S)
    on_objects = same.transpose(1, 0, 2, 3)[:, masks]
    off_objects = same.transpose(1, 0, 2, 3)[:, ~masks]
    assert on_objects.mean() > 0.9
    assert off_objects.mean() < 0.1
