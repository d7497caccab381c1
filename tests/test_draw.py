"""vidattn.draw: matplotlib-exact colours, map-to-frame geometry, blends, layouts, captions."""

import matplotlib
import numpy as np
import pytest

from vidattn.draw import (
    apply_colormap,
    caption,
    colormap_lut,
    grid,
    grid_shape,
    map_to_frame,
    mask_overlay,
    overlay,
    side_by_side,
)
from vidattn.errors import VidattnError


def random_frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["inferno", "viridis", "jet"])
def test_colormap_matches_matplotlib(name):
    values = np.concatenate([[0, 1, 0.5, 1 / 256, 255 / 256], np.random.default_rng(0).random(500)])
    values = values.astype(np.float32)
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and colormap_lut(name) is lut
    want = matplotlib.colormaps[name](values, bytes=True)[:, :3]
    np.testing.assert_array_equal(apply_colormap(values, lut), want)
    # out-of-range values clip to the ends
    np.testing.assert_array_equal(apply_colormap(np.array([-0.3, 1.7]), lut), lut[[0, 255]])


def test_unknown_colormap_is_a_user_error():
    with pytest.raises(VidattnError, match="no_such_map"):
        colormap_lut("no_such_map")


def cell_box(r, c, frame_hw, resized_hw, p):
    """Frame-pixel box [y0, y1) x [x0, x1) covered by grid cell (r, c), clipped to the frame."""
    (h, w), (rh, rw) = frame_hw, resized_hw
    y0, y1 = r * p * h / rh, min(h, (r + 1) * p * h / rh)
    x0, x1 = c * p * w / rw, min(w, (c + 1) * p * w / rw)
    return y0, y1, x0, x1


GEOMETRIES = [  # (grid_hw, patch, resized_hw or None, frame_hw)
    ((4, 4), 16, None, (64, 64)),  # still image: the frame is the model input
    ((3, 5), 16, None, (48, 80)),  # non-square, no padding
    ((4, 7), 16, (60, 100), (135, 241)),  # padded bottom/right, odd frame larger than the input
    ((5, 3), 8, (37, 17), (29, 13)),  # padded, frame smaller than the input
]


@pytest.mark.parametrize("grid_hw,p,resized_hw,frame_hw", GEOMETRIES)
@pytest.mark.parametrize("interpolation", ["linear", "cubic", "nearest"])
def test_hot_cell_lands_in_its_frame_box(grid_hw, p, resized_hw, frame_hw, interpolation):
    gh, gw = grid_hw
    rh, rw = resized_hw or (gh * p, gw * p)
    for r in range(gh):
        for c in range(gw):
            m = np.zeros(grid_hw, np.float32)
            m[r, c] = 1
            up = map_to_frame(m, frame_hw, resized_hw, p, interpolation)
            assert up.shape == frame_hw and up.dtype == np.float32
            y, x = np.unravel_index(np.argmax(up), frame_hw)
            y0, y1, x0, x1 = cell_box(r, c, frame_hw, (rh, rw), p)
            assert y0 - 0.5 <= y + 0.5 <= y1 + 0.5 and x0 - 0.5 <= x + 0.5 <= x1 + 0.5, (r, c)


@pytest.mark.parametrize("grid_hw,p,resized_hw,frame_hw", GEOMETRIES)
def test_linear_ramp_maps_exactly(grid_hw, p, resized_hw, frame_hw):
    """Bilinear interpolation reproduces a ramp, so every frame pixel's value is its grid
    coordinate: (y + 0.5) * rh / (H * p) - 0.5 cells, clamped to the cell centres (to cv2's
    1/32-cell interpolation precision). The padded cells past rh never show."""
    gh, gw = grid_hw
    rh, rw = resized_hw or (gh * p, gw * p)
    rows = np.broadcast_to(np.arange(gh, dtype=np.float32)[:, None], grid_hw)
    cols = np.broadcast_to(np.arange(gw, dtype=np.float32)[None, :], grid_hw)
    up = map_to_frame(np.stack([rows, cols]), frame_hw, resized_hw, p)
    assert up.shape == (2, *frame_hw)
    want_r = np.clip((np.arange(frame_hw[0]) + 0.5) * rh / (frame_hw[0] * p) - 0.5, 0, gh - 1)
    want_c = np.clip((np.arange(frame_hw[1]) + 0.5) * rw / (frame_hw[1] * p) - 0.5, 0, gw - 1)
    np.testing.assert_allclose(up[0], np.broadcast_to(want_r[:, None], frame_hw), atol=1 / 32)
    np.testing.assert_allclose(up[1], np.broadcast_to(want_c[None, :], frame_hw), atol=1 / 32)
    # a stack is the same as its maps one by one
    np.testing.assert_array_equal(up[1], map_to_frame(cols, frame_hw, resized_hw, p))


def test_map_to_frame_rejects_sizes_that_do_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        map_to_frame(np.zeros((4, 4)), (100, 100), (65, 64), 16)


def test_overlay_weights_colour_by_heat():
    h, w, alpha = 31, 45, 0.6
    frame = random_frame(h, w)
    heat = np.zeros((h, w), np.float32)
    heat[:, 30:] = 1.0
    heat[:, 20:30] = 0.5
    lut = colormap_lut("inferno")
    out = overlay(frame, heat, lut, alpha)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :20], frame[:, :20])  # alpha * heat == 0: untouched
    full = (1 - alpha) * frame[:, 30:] + alpha * lut[255].astype(np.float64)
    np.testing.assert_allclose(out[:, 30:], full, atol=1)
    half = (1 - alpha / 2) * frame[:, 20:30] + alpha / 2 * lut[128].astype(np.float64)
    np.testing.assert_allclose(out[:, 20:30], half, atol=1)
    assert np.array_equal(overlay(frame, heat, lut, 0.0), frame)


def test_mask_overlay_tints_inside_and_outlines():
    frame = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 15:35] = True
    color = (0, 255, 255)
    out = mask_overlay(frame, mask, color, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_allclose(out[15:25, 20:30], np.broadcast_to([50, 178, 178], (10, 10, 3)),
                               atol=1)
    np.testing.assert_array_equal(out[:5], frame[:5])  # far from the mask: untouched
    assert np.all(out[10, 15:35, 1] > 200)  # the outline runs along the mask's top edge
    plain = mask_overlay(frame, mask, color, alpha=0.5, outline=False)
    np.testing.assert_array_equal(plain[~mask], frame[~mask])


@pytest.mark.parametrize("count,panel_hw,want", [
    (6, (224, 224), (2, 3)), (6, (180, 320), (3, 2)), (12, (180, 320), (4, 3)),
    (12, (224, 224), (3, 4)), (1, (50, 70), (1, 1)), (5, (100, 100), (2, 3)),
])
def test_grid_shape(count, panel_hw, want):
    assert grid_shape(count, panel_hw) == want


def test_grid_places_panels_row_by_row():
    panels = [np.full((7, 11, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    out = grid(panels, cols=3, pad=2, bg=255)
    assert out.shape == (2 * 7 + 2, 3 * 11 + 2 * 2, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        cell = out[r * 9 : r * 9 + 7, c * 13 : c * 13 + 11]
        assert np.all(cell == 10 * (i + 1)), i
    assert np.all(out[9:, 26:] == 255) and np.all(out[7:9] == 255)  # empty cell and gap
    assert np.array_equal(grid(panels[:1]), panels[0])
    with pytest.raises(ValueError):
        grid([panels[0], np.zeros((8, 11, 3), np.uint8)])


def test_side_by_side():
    a, b = random_frame(21, 33), random_frame(21, 10, 1)
    out = side_by_side(a, b, pad=3)
    assert out.shape == (21, 33 + 3 + 10, 3)
    assert np.array_equal(out[:, :33], a) and np.array_equal(out[:, 36:], b)
    assert side_by_side(a, random_frame(42, 20)).shape == (21, 33 + 2 + 10, 3)  # b halved


@pytest.mark.parametrize("corner", ["tl", "tr", "bl", "br"])
@pytest.mark.parametrize("hw", [(101, 157), (720, 1280)])
def test_caption_draws_in_its_corner(corner, hw):
    img = np.full((*hw, 3), 128, np.uint8)
    assert caption(img, "head 3\nblock 11", corner) is img  # in place
    ys, xs = np.nonzero(np.any(img != 128, axis=-1))
    assert len(ys) > 0
    h, w = hw
    top, left = corner[0] == "t", corner[1] == "l"
    assert (ys.max() < h / 2) if top else (ys.min() > h / 2)
    assert (xs.max() < w / 2) if left else (xs.min() > w / 2)
    assert (ys.min() == 0) if top else (ys.max() == h - 1)  # the box sits in the corner
    assert np.any(img == 255)  # white text on the darkened box
    with pytest.raises(ValueError):
        caption(img[:, ::2], "x")  # not contiguous: cannot draw in place
