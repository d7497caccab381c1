"""DAVIS 2017 masks, folders and metrics: hand-worked J and F cases, the decay bins, the disk
against skimage's, the palette against the VOC formula, mask file rules, folder errors, and
score_folder / write_csvs on a tiny generated DAVIS layout."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from vidattn.errors import VidattnError
from vidattn.track import davis

H, W = 32, 48  # the generated layout's frame size; bound_pix = ceil(0.008 * 57.7) = 1


def _square(y, x, size=10, shape=(H, W)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y:y + size, x:x + size] = 1
    return mask


# ---- metrics -------------------------------------------------------------------------------

def test_iou_hand_worked_and_void():
    a, b = _square(5, 5), _square(5, 10)  # 10x10 squares overlapping on 10x5
    assert davis.db_eval_iou(a, b) == pytest.approx(50 / 150)
    void = np.zeros((H, W), bool)
    void[:, 15:] = True  # hides b's non-overlapping half: 50 / 100
    assert davis.db_eval_iou(a, b, void) == pytest.approx(50 / 100)
    empty = np.zeros((H, W), np.uint8)
    assert davis.db_eval_iou(empty, empty) == 1.0
    assert davis.db_eval_iou(a, empty) == 0.0
    per_frame = davis.db_eval_iou(np.stack([a, empty]), np.stack([b, empty]))
    np.testing.assert_allclose(per_frame, [50 / 150, 1.0])


def test_seg2bmap_square():
    """A square's boundary is its outline shifted half a pixel towards the origin: the pixels
    just above/left of it (the north-west one through its south-east neighbour) and its own
    last row/column."""
    b = davis.seg2bmap(_square(5, 5, size=4))
    expected = np.zeros((H, W), bool)
    expected[4:9, 4:9] = True
    expected[5:8, 5:8] = False
    np.testing.assert_array_equal(b, expected)


def test_boundary_tolerance():
    """At 32x48 the tolerance is 1 pixel: a 1-pixel shift is a perfect boundary match, a
    3-pixel shift matches only the edges parallel to the shift, in part."""
    a = _square(5, 5)
    assert davis.db_eval_boundary(a, a) == 1.0
    assert davis.db_eval_boundary(a, _square(5, 6)) == 1.0
    far = davis.db_eval_boundary(a, _square(20, 30))
    assert far == 0.0
    # Shift by 3 columns: each boundary has 40 pixels (rows 4..14 x cols 4..14 outline minus the
    # corner); the top and bottom rows overlap except 3 end pixels each beyond the 1-px reach ...
    shifted = davis.db_eval_boundary(a, _square(5, 8))
    fg, gt = davis.seg2bmap(_square(5, 8)), davis.seg2bmap(a)
    near = lambda m: np.array([[m[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any() for x in range(W)]
                               for y in range(H)])  # independent 3x3 (radius-1 disk) dilation
    dgt, dfg = near(gt), near(fg)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    dgt = np.array([[any(gt[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                         if cross[dy + 1, dx + 1] and 0 <= y + dy < H and 0 <= x + dx < W)
                     for x in range(W)] for y in range(H)])
    dfg = np.array([[any(fg[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                         if cross[dy + 1, dx + 1] and 0 <= y + dy < H and 0 <= x + dx < W)
                     for x in range(W)] for y in range(H)])
    p, r = (fg & dgt).sum() / fg.sum(), (gt & dfg).sum() / gt.sum()
    assert 0 < shifted < 1
    assert shifted == pytest.approx(2 * p * r / (p + r))
    empty = np.zeros((H, W), np.uint8)
    assert davis.db_eval_boundary(empty, empty) == 1.0
    assert davis.db_eval_boundary(a, empty) == 0.0
    assert davis.db_eval_boundary(empty, a) == 0.0


def test_boundary_void_clears_boundary():
    a, b = _square(5, 5), _square(5, 30)
    void = np.zeros((H, W), bool)
    void[:, 25:] = True  # b lies wholly in void: its boundary vanishes -> precision 1, recall 0
    assert davis.db_eval_boundary(a, b, void) == 0.0
    void[:, :20] = True  # everything void: both boundaries empty
    assert davis.db_eval_boundary(a, b, void) == 1.0


@pytest.mark.parametrize("radius", range(1, 13))
def test_disk_equals_skimage(radius):
    morphology = pytest.importorskip("skimage.morphology")
    np.testing.assert_array_equal(davis.disk(radius), morphology.disk(radius).astype(np.uint8))


def test_db_statistics_hand_worked():
    # T = 9: split points round(linspace(1, 9, 5)) - 1 = 0, 2, 4, 6, 8; first bin frames 0..2,
    # last bin frames 6..8.
    series = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    m, o, d = davis.db_statistics(series)
    assert m == pytest.approx(0.6)
    assert o == pytest.approx(5 / 9)  # 0.5 is not above 0.5
    assert d == pytest.approx(0.9 - 0.3)
    # T = 5: split points 0, 1, 2, 3, 4 -> bins [0, 1] and [3, 4]; NaN is skipped by the means
    m, o, d = davis.db_statistics([1.0, np.nan, 0.5, 0.0, 0.2])
    assert m == pytest.approx(1.7 / 4)
    assert o == pytest.approx(1 / 5)  # NaN counts as not above 0.5, as in the reference
    assert d == pytest.approx(1.0 - 0.1)


def test_evaluate_sequence_objects():
    gt = np.zeros((5, H, W), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 20:28, 30:40] = 2
    gt[0, 0, 0] = 255  # void in the first frame does not count as an object
    results = gt[1:-1] % 2  # object 2 lost; object 1 perfect
    j, f = davis.evaluate_sequence(gt, None, results)
    assert j.shape == f.shape == (2, 3)
    np.testing.assert_array_equal(j, [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(f, [[1, 1, 1], [0, 0, 0]])
    j_full, _ = davis.evaluate_sequence(gt, None, np.concatenate([gt[:1] * 0, results, gt[:1]]))
    np.testing.assert_array_equal(j_full, j)  # first and last result frames are ignored
    with pytest.raises(ValueError, match="id 3"):
        davis.evaluate_sequence(gt, None, np.full((3, H, W), 3, np.uint8))


# ---- palette and mask files ----------------------------------------------------------------

def test_palette_is_the_voc_formula():
    expected = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        expected[i] = rgb
    np.testing.assert_array_equal(davis.PALETTE, expected)
    assert davis.PALETTE.shape == (256, 3) and davis.PALETTE.dtype == np.uint8
    assert davis.PALETTE[0].tolist() == [0, 0, 0]
    assert davis.PALETTE[1].tolist() == [128, 0, 0]
    assert davis.PALETTE[2].tolist() == [0, 128, 0]


def test_mask_round_trip(tmp_path):
    ids = np.random.default_rng(0).integers(0, 6, (H, W)).astype(np.uint8)
    ids[0, :3] = 255
    path = tmp_path / "m.png"
    davis.write_mask(path, ids)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert np.asarray(im.getpalette()[:9]).tolist() == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    np.testing.assert_array_equal(davis.read_mask(path), ids)


def test_greyscale_masks(tmp_path):
    binary = _square(3, 3) * 255
    Image.fromarray(binary).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(davis.read_mask(tmp_path / "bw.png"), binary // 255)
    Image.fromarray(binary.astype(bool)).save(tmp_path / "one.png")  # mode "1"
    np.testing.assert_array_equal(davis.read_mask(tmp_path / "one.png"), binary // 255)
    ids = _square(3, 3) * 2
    ids[0, 0] = 255  # another id present: 255 stays void
    Image.fromarray(ids).save(tmp_path / "ids.png")
    np.testing.assert_array_equal(davis.read_mask(tmp_path / "ids.png"), ids)
    Image.fromarray(_square(3, 3).astype(np.uint16) * 7).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(davis.read_mask(tmp_path / "i16.png"), _square(3, 3) * 7)
    Image.fromarray(_square(3, 3).astype(np.uint16) * 300).save(tmp_path / "big.png")
    with pytest.raises(VidattnError, match="more than 255 object ids"):
        davis.read_mask(tmp_path / "big.png")


def test_bad_masks_refused(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(VidattnError, match="RGB mask is not an indexed PNG") as err:
        davis.read_mask(tmp_path / "rgb.png")
    assert str(tmp_path / "rgb.png") in str(err.value)
    davis.write_mask(tmp_path / "ok.png", _square(3, 3))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.png").write_text("not a png")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(VidattnError) as err:
            davis.read_mask(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


# ---- the folder ----------------------------------------------------------------------------

def _layout(root, masks: dict[str, np.ndarray]):
    """A DAVIS 2017 layout under ``root``: per sequence, T black frames and annotations."""
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{s}\n" for s in masks))
    for seq, gt in masks.items():
        frames = root / "JPEGImages" / "480p" / seq
        anns = root / "Annotations" / "480p" / seq
        frames.mkdir(parents=True)
        anns.mkdir(parents=True)
        for t, ids in enumerate(gt):
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(frames / f"{t:05d}.jpg")
            davis.write_mask(anns / f"{t:05d}.png", ids)
    return davis.DavisFolder(root)


def _moving(n_objects, t=5) -> np.ndarray:
    gt = np.zeros((t, H, W), np.uint8)
    for k in range(t):
        gt[k, 4:14, 2 + 2 * k:12 + 2 * k] = 1
        if n_objects > 1:
            gt[k, 18:28, 30 - 2 * k:40 - 2 * k] = 2
    return gt


def test_folder_layout_and_errors(tmp_path):
    folder = _layout(tmp_path / "DAVIS", {"cows": _moving(1), "dogs": _moving(2)})
    assert folder.sequences == ["cows", "dogs"]
    assert [p.name for p in folder.frames("dogs")] == [f"{t:05d}.jpg" for t in range(5)]
    assert [p.name for p in folder.annotations("dogs")] == [f"{t:05d}.png" for t in range(5)]
    assert folder.select(["dogs", "cows", "dogs"]) == ["dogs", "cows"]
    with pytest.raises(VidattnError, match="'cats'.*known: cows, dogs"):
        folder.select(["cats"])
    missing = tmp_path / "DAVIS" / "Annotations" / "480p" / "dogs" / "00002.png"
    missing.unlink()
    (missing.parent / "00004.png").unlink()
    with pytest.raises(VidattnError, match="00002") as err:
        folder.annotations("dogs")
    assert str(missing) in str(err.value)
    with pytest.raises(VidattnError, match="no DAVIS folder"):
        davis.DavisFolder(tmp_path / "nowhere")
    with pytest.raises(VidattnError, match="test-dev"):
        davis.DavisFolder(tmp_path / "DAVIS", "test-dev")
    (tmp_path / "DAVIS" / "ImageSets" / "2017" / "val.txt").write_text("cows\nbirds\n")
    with pytest.raises(VidattnError, match="'birds'") as err:
        davis.DavisFolder(tmp_path / "DAVIS")
    assert str(tmp_path / "DAVIS" / "JPEGImages" / "480p" / "birds") in str(err.value)


def _results(root, masks: dict[str, np.ndarray]):
    for seq, ids in masks.items():
        (root / seq).mkdir(parents=True)
        for t, frame in enumerate(ids):
            davis.write_mask(root / seq / f"{t:05d}.png", frame)
    return root


def test_score_folder_and_csvs(tmp_path):
    gt = {"cows": _moving(1), "dogs": _moving(2)}
    folder = _layout(tmp_path / "DAVIS", gt)
    perfect = davis.score_folder(folder, _results(tmp_path / "perfect", gt))
    assert [r["Sequence"] for r in perfect.per_sequence] == ["cows_1", "dogs_1", "dogs_2"]
    assert all(r["J-Mean"] == r["F-Mean"] == 1.0 for r in perfect.per_sequence)
    assert list(perfect.global_row) == list(davis.GLOBAL_COLUMNS)
    assert perfect.global_row["J&F-Mean"] == 1.0 and perfect.global_row["J-Decay"] == 0.0

    lost = {"cows": gt["cows"], "dogs": gt["dogs"] % 2}  # dogs' object 2 lost
    scores = davis.score_folder(folder, _results(tmp_path / "lost", lost))
    rows = {r["Sequence"]: r for r in scores.per_sequence}
    assert rows["dogs_2"]["J-Mean"] == rows["dogs_2"]["F-Mean"] == 0.0
    assert rows["dogs_1"]["J-Mean"] == 1.0
    assert scores.global_row["J-Mean"] == pytest.approx(2 / 3)
    assert scores.global_row["J&F-Mean"] == pytest.approx(2 / 3)
    assert scores.global_row["F-Recall"] == pytest.approx(2 / 3)

    davis.write_csvs(scores, tmp_path, "val")
    assert (tmp_path / "global_results-val.csv").read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "0.667,0.667,0.667,0.000,0.667,0.667,0.000\n")
    with open(tmp_path / "per-sequence_results-val.csv", newline="") as f:
        assert list(csv.reader(f)) == [["Sequence", "J-Mean", "F-Mean"],
                                       ["cows_1", "1.000", "1.000"],
                                       ["dogs_1", "1.000", "1.000"], ["dogs_2", "0.000", "0.000"]]
    table = davis.format_table(scores).splitlines()
    assert table[0].split() == list(davis.GLOBAL_COLUMNS)
    assert table[1].split() == ["0.667", "0.667", "0.667", "0.000", "0.667", "0.667", "0.000"]
    assert table[-1].split() == ["dogs_2", "0.000", "0.000"]
    assert len({len(line) for line in table[3:]}) == 1  # aligned

    (tmp_path / "lost" / "dogs" / "00003.png").unlink()
    with pytest.raises(VidattnError, match="00003.png"):
        davis.score_folder(folder, tmp_path / "lost", ["dogs"])
    # only the scored frames (not the first and last) need results
    (tmp_path / "perfect" / "cows" / "00000.png").unlink()
    (tmp_path / "perfect" / "cows" / "00004.png").unlink()
    assert davis.score_folder(folder, tmp_path / "perfect", ["cows"]).global_row["J-Mean"] == 1.0
