"""vidattn.attention against the reference study's straightforward formulas, written out here."""

import keras
import numpy as np
import pytest

from tests.support.study import random_attention, study_mean_distance, study_rollout
from vidattn.attention import (
    RunningMean,
    cls_maps,
    head_mean,
    mean_attention_distance,
    normalize_maps,
    peak_location,
    rollout_map,
    threshold_masks,
)
from vidattn.models.vit import cls_rollout


@pytest.mark.parametrize(
    "grid_hw,n_cls,patch", [((4, 4), 1, 16), ((7, 7), 1, 8), ((3, 5), 1, 16), ((5, 3), 2, 14)]
)
def test_mean_distance_matches_study_loop(grid_hw, n_cls, patch):
    rng = np.random.default_rng(0)
    attn = random_attention(rng, 2, 3, n_cls, grid_hw)
    got = mean_attention_distance(attn, n_cls, grid_hw, patch)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, study_mean_distance(attn, n_cls, grid_hw, patch), atol=1e-6)
    # float32 input (the model's output) accumulates in float64: same answer to float32 precision
    got32 = mean_attention_distance(attn.astype(np.float32), n_cls, grid_hw, patch)
    np.testing.assert_allclose(got32, got, rtol=1e-6)


def test_mean_distance_known_values():
    """Attending only to yourself is distance 0; on a 1x2 grid, only to the other patch is p."""
    eye = np.eye(1 + 6)[None, None]
    assert mean_attention_distance(eye, 1, (2, 3), 16)[0, 0] == 0
    swap = np.zeros((1, 1, 3, 3))
    swap[0, 0, 0, 0] = swap[0, 0, 1, 2] = swap[0, 0, 2, 1] = 1
    assert mean_attention_distance(swap, 1, (1, 2), 16)[0, 0] == pytest.approx(16)


def rollout(attns, n_cls, grid_hw):
    """The model's in-graph rollout, run here on given attention: head means in, maps out."""
    row = cls_rollout([a.mean(axis=1) for a in attns])
    return rollout_map(keras.ops.convert_to_numpy(row), n_cls, grid_hw)


@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("n_cls,grid_hw", [(1, (4, 4)), (2, (3, 5)), (1, (6, 2))])
def test_rollout_matches_study_full_product(depth, n_cls, grid_hw):
    rng = np.random.default_rng(depth)
    attns = [random_attention(rng, 2, 3, n_cls, grid_hw) for _ in range(depth)]
    want = study_rollout(attns, n_cls, grid_hw)
    got = rollout(attns, n_cls, grid_hw)
    assert got.shape == (2, *grid_hw) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=1e-6)
    # in float32, as the model computes it
    got32 = rollout([a.astype(np.float32) for a in attns], n_cls, grid_hw)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, atol=1e-5)


def test_rollout_block_order_matters():
    """The product is not symmetric in the blocks: reversing them must change the answer, so a
    wrong multiplication order cannot pass the parity test by accident."""
    rng = np.random.default_rng(7)
    attns = [random_attention(rng, 1, 2, 1, (3, 3)) for _ in range(3)]
    assert not np.allclose(rollout(attns, 1, (3, 3)), rollout(attns[::-1], 1, (3, 3)), atol=1e-3)


def test_rollout_map_checks_the_row_length():
    with pytest.raises(ValueError, match=r"\(N, 17\)"):
        rollout_map(np.ones((1, 16)), 1, (4, 4))


@pytest.mark.parametrize("keep", [0.6, 0.3, 0.9])
def test_threshold_masks_keep_share_and_are_minimal(keep):
    rng = np.random.default_rng(1)
    maps = cls_maps(random_attention(rng, 3, 4, 1, (5, 6)), 1, (5, 6))
    masks = threshold_masks(maps, keep)
    assert masks.shape == maps.shape and masks.dtype == bool
    for m, k in zip(maps.reshape(-1, 30), masks.reshape(-1, 30)):
        share = m / m.sum()
        assert share[k].sum() >= keep
        assert share[k].sum() - share[k].min() < keep  # without its weakest patch: too little
        assert share[k].min() >= share[~k].max()  # the strongest patches, not any set


def test_threshold_masks_dino_convention_on_known_map():
    # shares 0.4, 0.3, 0.2, 0.1: keep 0.6 -> {0.4, 0.3} (0.7), keep 0.7 -> same (cumsum of the
    # rest is 0.3, not > 0.3), keep 0.75 -> three patches
    m = np.array([[[[0.1, 0.4], [0.2, 0.3]]]])
    np.testing.assert_array_equal(threshold_masks(m, 0.6)[0, 0], [[False, True], [False, True]])
    np.testing.assert_array_equal(threshold_masks(m, 0.75)[0, 0], [[False, True], [True, True]])
    with pytest.raises(ValueError):
        threshold_masks(m, 0)


def test_cls_maps_geometry_on_non_square_grid():
    gh, gw, n_cls = 3, 5, 2
    attn = np.full((1, 2, n_cls + gh * gw, n_cls + gh * gw), 0.01)
    attn[0, 0, 0, n_cls + 1 * gw + 4] = 1  # head 0: patch (1, 4)
    attn[0, 1, 0, n_cls + 2 * gw + 0] = 1  # head 1: patch (2, 0)
    attn[0, :, 1, n_cls + 0] = 5  # the distillation token's row must not be read
    maps = cls_maps(attn, n_cls, (gh, gw))
    assert maps.shape == (1, 2, gh, gw)
    assert peak_location(maps[0, 0]) == (1, 4)
    assert peak_location(maps[0, 1]) == (2, 0)
    with pytest.raises(ValueError, match="4x4 grid"):
        cls_maps(attn, n_cls, (4, 4))


def test_head_mean_and_normalize():
    maps = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(head_mean(maps), maps.mean(1))
    norm = normalize_maps(np.concatenate([maps, np.zeros((2, 1, 2, 2))], axis=1))
    np.testing.assert_allclose(norm.max(axis=(-2, -1))[:, :3], 1)
    np.testing.assert_allclose(norm[1, 2], maps[1, 2] / maps[1, 2].max())
    assert not norm[:, 3].any()  # all-zero map stays zero, no NaN


def test_running_mean():
    acc = RunningMean()
    a, b = np.arange(6.0).reshape(3, 2), np.array([[10.0, 20.0]])
    acc.add(a)
    acc.add(b)
    np.testing.assert_allclose(acc.mean, np.concatenate([a, b]).mean(0))
