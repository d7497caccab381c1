"""Track seeds and sources: the rules that turn --point and --box into objects (on planted
features, so where each object must land is known), the frame <-> patch geometry, and the frame
folder reader's order and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vidattn.errors import VidattnError
from vidattn.track import seeds
from vidattn.track.frames import open_source, read_source

GRID = (6, 10)
PATCH = 8
FRAME_HW = (60, 100)  # resized to 48x80 = the 6x10 grid exactly
WORKING_HW = (48, 80)


def _planted(regions: dict[int, np.ndarray], dim=16, seed=0) -> np.ndarray:
    """Tokens ``(gh*gw, dim)``: a random background token per patch (each near the mean
    background direction), and one shared direction per planted region."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=dim)
    tokens = base + 0.3 * rng.normal(size=(GRID[0] * GRID[1], dim))
    for k, region in regions.items():
        direction = np.zeros(dim)
        direction[k] = 10.0
        tokens[region.ravel()] = direction + 0.05 * rng.normal(size=(region.sum(), dim))
    return tokens.astype(np.float32)


def _region(rows, cols) -> np.ndarray:
    mask = np.zeros(GRID, bool)
    mask[rows, cols] = True
    return mask


def _frame_xy(row, col):
    """The frame pixel at the centre of patch (row, col)."""
    return ((col + 0.5) * PATCH * FRAME_HW[1] / WORKING_HW[1],
            (row + 0.5) * PATCH * FRAME_HW[0] / WORKING_HW[0])


def test_cell_of_and_frame_labels_agree_with_the_resize():
    assert seeds.cell_of(0, 0, FRAME_HW, WORKING_HW, GRID, PATCH) == (0, 0)
    assert seeds.cell_of(99.9, 59.9, FRAME_HW, WORKING_HW, GRID, PATCH) == (5, 9)
    # pixel x=10 lies at 10*80/100 = 8 in the resized frame: the second column's first pixel
    assert seeds.cell_of(10, 0, FRAME_HW, WORKING_HW, GRID, PATCH) == (0, 1)
    assert seeds.cell_of(9.9, 0, FRAME_HW, WORKING_HW, GRID, PATCH) == (0, 0)
    grid = np.arange(60, dtype=np.uint8).reshape(GRID)
    labels = seeds.frame_labels(grid, FRAME_HW, WORKING_HW, PATCH)
    assert labels.shape == FRAME_HW
    for x, y in [(0, 0), (10, 0), (55, 33), (99, 59)]:
        assert labels[y, x] == grid[seeds.cell_of(x, y, FRAME_HW, WORKING_HW, GRID, PATCH)]


def test_a_point_seeds_the_connected_planted_region_it_falls_in():
    first = _region(slice(1, 3), slice(2, 5))  # the object under the click
    twin = _region(slice(4, 6), slice(7, 9))  # the same features elsewhere, not connected
    tokens = _planted({0: first | twin, 1: _region(slice(0, 2), slice(7, 9))})
    seed = seeds.Seed(points=(_frame_xy(1, 3),))
    grid = seeds.grid_labels(seed, tokens, FRAME_HW, WORKING_HW, GRID, PATCH)
    np.testing.assert_array_equal(grid, first.astype(np.uint8))


def test_two_points_are_two_objects_and_a_box_keeps_its_inside_object():
    a, b = _region(slice(0, 2), slice(0, 3)), _region(slice(3, 6), slice(6, 9))
    tokens = _planted({0: a, 1: b})
    x0, y0 = _frame_xy(2.6, 5.4)  # a box around b with background patches inside it
    x1, y1 = _frame_xy(5.5, 9.5)
    seed = seeds.Seed(points=(_frame_xy(1, 1),), boxes=((x0, y0, x1, y1),))
    grid = seeds.grid_labels(seed, tokens, FRAME_HW, WORKING_HW, GRID, PATCH)
    np.testing.assert_array_equal(grid, a.astype(np.uint8) + 2 * b.astype(np.uint8))


@pytest.mark.parametrize("seed, message", [
    (dict(points=((100, 5),)), "point 100,5 is outside the 100x60 frame"),
    (dict(boxes=((5, 5, 120, 20),)), "box corner 120,20 is outside"),
    (dict(boxes=((30, 5, 10, 20),)), "is empty"),
])
def test_seeds_outside_the_frame_or_empty_are_refused(seed, message):
    tokens = _planted({})
    with pytest.raises(VidattnError, match=message):
        seeds.grid_labels(seeds.Seed(**seed), tokens, FRAME_HW, WORKING_HW, GRID, PATCH)


def test_a_seed_needs_exactly_one_kind():
    with pytest.raises(VidattnError, match="--mask PNG, or as --point"):
        seeds.Seed()
    with pytest.raises(VidattnError, match="not both"):
        seeds.Seed(mask="m.png", points=((1, 1),))


def _save(path, shape, value=0):
    Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(path)


def test_a_frame_folder_is_read_in_name_order_at_24_fps(tmp_path):
    for i in (2, 0, 1):
        _save(tmp_path / f"{i:05d}.jpg", (16, 24), 40 * i)
    source = open_source(tmp_path)
    assert source.frame_hw == (16, 24) and source.n_frames == 3 and source.is_folder
    frames = list(read_source(source, start=1 / 24))
    assert [f.index for f in frames] == [1, 2]
    assert [source.frame_name(f, k) for k, f in enumerate(frames)] == ["00001", "00002"]
    assert frames[0].pts_s == pytest.approx(1 / 24)
    assert abs(int(frames[1].image.mean()) - 80) <= 2


def test_frame_folders_with_mixed_sizes_or_other_files_are_refused(tmp_path):
    _save(tmp_path / "00000.jpg", (16, 24))
    _save(tmp_path / "00001.jpg", (16, 26))
    with pytest.raises(VidattnError, match="00001.jpg: frame is 26x16 but 00000.jpg is 24x16"):
        open_source(tmp_path)
    (tmp_path / "00001.jpg").unlink()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VidattnError, match="notes.txt: not an image file"):
        open_source(tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "00002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    with pytest.raises(VidattnError, match="00002.png: not a readable image"):
        open_source(tmp_path)
