"""The faithfulness tests (``vidattn.relevance.faithfulness``) against independent computations
(scikit-learn's metrics, which the reference calls; torch's interpolation; IoU from sets of
pixels), their floor and ceiling, the perturbation test on a model whose decision is planted, and
``vidattn explain-eval`` on a tiny ImageNet folder and a tiny ``gtsegs_ijcv.mat`` written in the
real layout, with its error paths."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score

from tests.support.gtsegs import write_gtsegs
from tests.support.reliability import reliability
from vidattn.cli import main
from vidattn.demo.classes import labelled_scenes
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset
from vidattn.relevance import faithfulness as fa
from vidattn.relevance.evaluate import GtSegs, ImageNetFolder, evaluate

PRESET = get_preset("demo_classifier")
S = PRESET.image_size
G = S // PRESET.patch_size


def test_average_precision_is_sklearns():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((6, 300)), 1)  # many ties
    truth = rng.random((6, 300)) < np.linspace(0.05, 0.9, 6)[:, None]
    got = fa.average_precision(scores, truth)
    want = [average_precision_score(t, s) for t, s in zip(truth, scores)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_row_f1_is_sklearns():
    rng = np.random.default_rng(1)
    predicted, truth = rng.random((2, 40, 30)) < 0.3
    predicted[:5], truth[:3] = False, False  # rows with no positive at all
    want = [f1_score(t, p, zero_division=0) for t, p in zip(truth, predicted)]
    np.testing.assert_allclose(fa.row_f1(predicted, truth), want)


def test_segmentation_metrics_from_sets_and_sklearn():
    """Planted maps: foreground above each map's mean; pixel accuracy and the two classes' IoU
    summed over images from sets of pixel coordinates; mAP from sklearn on (1 - R, R)."""
    rng = np.random.default_rng(2)
    n, h = 4, 16
    labels = np.zeros((n, h, h), np.uint8)
    labels[:, 4:12, 3:10] = 1
    maps = fa.min_max(labels + rng.normal(0, 0.6, labels.shape))
    seg = fa.Segmentation()
    seg.add(maps[:2], labels[:2])
    seg.add(maps[2:], labels[2:])
    got = seg.result()

    def pixels(where):
        return {tuple(i) for i in np.argwhere(where)}

    inter, union, correct = np.zeros(2), np.zeros(2), 0
    for m, gt in zip(maps, labels):
        fg, obj = pixels(m > m.mean()), pixels(gt == 1)
        every = pixels(np.ones_like(gt, bool))
        for c, (pred, true) in enumerate(((every - fg, every - obj), (fg, obj))):
            inter[c] += len(pred & true)
            union[c] += len(pred | true)
        correct += len(fg & obj) + len((every - fg) & (every - obj))
    assert got["pixel_accuracy"] == pytest.approx(correct / labels.size)
    assert got["mIoU"] == pytest.approx(np.mean(inter / union))
    ap = [average_precision_score(np.r_[gt.ravel() == 0, gt.ravel() == 1],
                                  np.r_[1 - m.ravel(), m.ravel()]) for m, gt in zip(maps, labels)]
    assert got["mAP"] == pytest.approx(np.mean(ap))
    f1 = [f1_score(t, p, zero_division=0) for m, gt in zip(maps, labels)
          for t, p in zip(gt == 1, m > m.mean())]
    assert got["mF1"] == pytest.approx(np.mean(f1)) and got["images"] == n


def test_constant_map_is_background_everywhere():
    """A constant map is NaN after min-max (0 / 0), as in the reference: no foreground, AP of
    all-zero scores."""
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, :4] = 1
    counts = fa.segmentation_counts(fa.min_max(np.ones((1, 8, 8))), labels)
    assert counts.correct[0] == 32 and counts.inter[0].tolist() == [32, 0]
    assert counts.ap[0] == pytest.approx(0.5)


def test_test_maps_are_torch_bilinear_then_min_max():
    grid = np.random.default_rng(3).random((3, G, G)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(grid)[:, None],
                                         scale_factor=PRESET.patch_size, mode="bilinear")[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    want = ((up - low) / (up.amax(dim=(1, 2), keepdim=True) - low)).numpy()
    np.testing.assert_allclose(fa.pixel_maps(grid, PRESET), want, atol=1e-6)


def test_ceiling_is_perfect_and_random_is_chance():
    scenes = labelled_scenes(48, seed=7)
    ceiling, floor = fa.Segmentation(), fa.Segmentation()
    ceiling.add(fa.min_max(scenes.masks.astype(np.float32)), scenes.masks.astype(np.uint8))
    floor.add(fa.random_maps(np.random.default_rng(0), 48, PRESET, (S, S)),
              scenes.masks.astype(np.uint8))
    best, chance = ceiling.result(), floor.result()
    assert best["pixel_accuracy"] == pytest.approx(1) and best["mIoU"] == pytest.approx(1)
    assert best["mAP"] == pytest.approx(1)
    assert abs(chance["pixel_accuracy"] - 0.5) < 0.05 and abs(chance["mAP"] - 0.5) < 0.05
    assert chance["mIoU"] < 0.4


def test_removal_order_and_counts():
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 9, 9], maps[0, 0, 5] = 1.0, 0.5
    pos, neg = fa.removal_ranks(maps, "positive"), fa.removal_ranks(maps, "negative")
    assert pos[0, 9, 9] == 0 and pos[0, 0, 5] == 1 and pos[0, 0, 0] == 2  # ties: raster order
    assert neg[0, 0, 0] == 0 and neg[0, 9, 9] == 99
    pixels = np.full((1, 10, 10, 3), 200, np.uint8)
    for step in fa.STEPS:
        out = fa.perturbed(pixels, pos, step)
        assert (out[0, ..., 0] == 0).sum() == int(100 * step)
        assert ((out == 0).all(-1) == (out == 0).any(-1)).all()  # every channel


class PlantedModel:
    """A classifier that names class 0 while most of the top-left patch block is intact, and
    class 1 once it is mostly blacked out: the planted relevant region."""

    preset = PRESET
    region = (slice(0, 3 * PRESET.patch_size), slice(0, 3 * PRESET.patch_size))

    def run(self, x):
        black = fa.model_input(np.zeros((1, 1, 1, 3), np.uint8), PRESET)[0, 0, 0]
        intact = (np.abs(x[:, self.region[0], self.region[1]] - black) > 1e-3).any(-1)
        return {"logits": np.stack([intact.mean((1, 2)), np.full(len(x), 0.5)], axis=1)}


def test_perturbation_removing_the_relevant_region_first_drops_faster():
    model = PlantedModel()
    rng = np.random.default_rng(4)
    pixels = np.full((4, S, S, 3), 180, np.uint8)
    maps = rng.random((4, S, S)) * 0.5
    maps[:, model.region[0], model.region[1]] = 1.0  # the planted map: right about the region
    test = fa.Perturbation()
    test.add(model, pixels, np.zeros(4, np.int64), {"predicted": maps, "target": maps[::-1]})
    got = test.result()["predicted"]
    # 9% of the image: gone at the first step when it goes first, intact to 90% when last
    assert got["positive"]["accuracy"] == [1.0] + [0.0] * 9
    assert got["negative"]["accuracy"] == [1.0] * 10
    assert got["positive"]["auc"] == pytest.approx(5.0)
    assert got["negative"]["auc"] == pytest.approx(95.0)



def test_evaluate_scores_the_floor_and_the_ceiling():
    """The loop: the ceiling (the planted region's mask) segments it perfectly and, removed
    first, ends the planted decision at once; the floor lies between."""
    model = PlantedModel()
    masks = np.zeros((8, S, S), np.uint8)
    masks[:, model.region[0], model.region[1]] = 1
    batches = [{"pixels": np.full((8, S, S, 3), 180, np.uint8), "masks": masks,
                "labels": np.zeros(8, np.int64)}]
    got = evaluate(model, batches, [fa.FLOOR, fa.CEILING])
    ceiling, floor = got[fa.CEILING], got[fa.FLOOR]
    assert ceiling["segmentation"]["mIoU"] == pytest.approx(1)
    for explained in fa.EXPLAINED:
        assert ceiling["perturbation"][explained]["positive"]["auc"] == pytest.approx(5)
        assert ceiling["perturbation"][explained]["negative"]["auc"] == pytest.approx(95)
        assert 5 < floor["perturbation"][explained]["positive"]["auc"] < 95
    assert floor["segmentation"]["mIoU"] < 0.5

# -- explain-eval ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Five labelled scenes as an ImageNet-style folder of class subfolders (the demo's 4
    classes, ImageFolder's sorted rule), the same as a flat folder + labels file, and as a
    gtsegs_ijcv.mat."""
    root = tmp_path_factory.mktemp("sets")
    scenes = labelled_scenes(5, seed=11)
    lines = []
    for c in range(PRESET.num_classes):
        (root / "val" / f"class{c}").mkdir(parents=True)
    (root / "flat").mkdir()
    for i, (image, label) in enumerate(zip(scenes.images, scenes.labels)):
        Image.fromarray(image).save(root / "val" / f"class{label}" / f"im{i}.png")
        Image.fromarray(image).save(root / "flat" / f"im{i}.png")
        lines.append(f"im{i}.png {label}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    write_gtsegs(root / "gtsegs_ijcv.mat", scenes.images, scenes.masks)
    return SimpleNamespace(root=root, scenes=scenes)


def run(*args):
    return CliRunner().invoke(main, ["explain-eval", "--model", "demo_classifier", "--weights",
                                     "random", "-q", *map(str, args)])


def test_readers_follow_the_reference_layout(sets):
    seg = GtSegs(sets.root / "gtsegs_ijcv.mat")
    image, mask = seg.sample(3, S)
    seg.close()
    np.testing.assert_array_equal(image, sets.scenes.images[3])  # same size: PIL keeps it
    np.testing.assert_array_equal(mask, sets.scenes.masks[3])
    folders = ImageNetFolder(sets.root / "val", PRESET.num_classes)
    flat = ImageNetFolder(sets.root / "flat", PRESET.num_classes, sets.root / "labels.txt")
    assert sorted(c for _, c in folders.items) == sorted(sets.scenes.labels.tolist())
    assert [c for _, c in flat.items] == sets.scenes.labels.tolist()


def test_explain_eval_writes_json_and_table(sets, tmp_path):
    out = tmp_path / "res"
    got = run("--segmentation", sets.root / "gtsegs_ijcv.mat", "--imagenet", sets.root / "val",
              "--method", "generic,random", "--limit", 4, "-o", out)
    assert got.exit_code == 0, got.output
    results = json.loads((out / "faithfulness.json").read_text())
    assert results["tests"]["segmentation"]["images"] == 4
    assert results["tests"]["perturbation"]["images"] == 4
    for method in ("generic", "random"):
        r = results["results"][method]
        assert 0 <= r["segmentation"]["mIoU"] <= 1
        assert len(r["perturbation"]["target"]["negative"]["accuracy"]) == 1 + len(fa.STEPS)
    table = (out / "faithfulness.md").read_text()
    assert "| `generic` |" in table and "| `random` |" in table


def _no_output(got, out, *words):
    assert got.exit_code == 1, got.output
    line = got.output.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@reliability(("`vidattn explain-eval --segmentation` of a missing file, a text file, or an HDF5 "
              "file without ImageNet-Segmentation's /value/img and /value/gt",
              "one error naming the file and what is wrong; no results folder"))
def test_bad_mat_files_are_refused(sets, tmp_path):
    out = tmp_path / "res"
    _no_output(run("--segmentation", tmp_path / "missing.mat", "-o", out), out, "missing.mat",
               "no such file")
    (tmp_path / "text.mat").write_text("MATLAB 5.0 MAT-file\n")
    _no_output(run("--segmentation", tmp_path / "text.mat", "-o", out), out, "text.mat",
               "not an HDF5")
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f.create_dataset("value/img", data=np.zeros((2, 1)))
    _no_output(run("--segmentation", tmp_path / "other.mat", "-o", out), out, "other.mat",
               "/value/img")


@reliability(("a gtsegs_ijcv.mat whose mask does not fit its image, or holds values other "
              "than 0 and 1", "one error naming the file and the sample; no results folder"))
def test_bad_mat_samples_are_refused(sets, tmp_path):
    out = tmp_path / "res"
    images, masks = sets.scenes.images[:2], sets.scenes.masks[:2].astype(np.uint8)
    write_gtsegs(tmp_path / "small.mat", images, masks[:, :-1])
    _no_output(run("--segmentation", tmp_path / "small.mat", "-o", out), out, "small.mat",
               "mask 0")
    write_gtsegs(tmp_path / "255.mat", images, masks * 255)
    _no_output(run("--segmentation", tmp_path / "255.mat", "-o", out), out, "255.mat",
               "other than 0 and 1")


@reliability(("`vidattn explain-eval --imagenet` with an image that has no label, a label out "
              "of range, a malformed labels line, or class folders that do not give the model's "
              "classes", "one error naming the file or folder and the problem, before any model "
              "work; no results folder"),
             ("an ImageNet folder with an unreadable (truncated) JPEG",
              "one error naming the image; no results folder"))
def test_bad_imagenet_folders_are_refused(sets, tmp_path):
    out = tmp_path / "res"
    flat = sets.root / "flat"
    (tmp_path / "short.txt").write_text("im0.png 1\n")
    _no_output(run("--imagenet", flat, "--labels", tmp_path / "short.txt", "-o", out), out,
               "im1.png has no label")
    (tmp_path / "range.txt").write_text("im0.png 9\n")
    _no_output(run("--imagenet", flat, "--labels", tmp_path / "range.txt", "-o", out), out,
               "range.txt", "out of range")
    (tmp_path / "bad.txt").write_text("im0.png cat\n")
    _no_output(run("--imagenet", flat, "--labels", tmp_path / "bad.txt", "-o", out), out,
               "bad.txt", "line 1")
    few = tmp_path / "few"
    (few / "n01440764").mkdir(parents=True)
    _no_output(run("--imagenet", few, "-o", out), out, "1 WordNet-id class folders")
    broken = tmp_path / "broken" / "0"
    broken.mkdir(parents=True)
    Image.fromarray(sets.scenes.images[0]).save(broken / "a.JPEG")
    data = (broken / "a.JPEG").read_bytes()
    (broken / "a.JPEG").write_bytes(data[: len(data) // 2])
    _no_output(run("--imagenet", broken.parent, "-o", out), out, "a.JPEG", "truncated")


def test_refusals_before_work(sets, tmp_path):
    out = tmp_path / "res"
    _no_output(run("-o", out), out, "nothing to evaluate")
    _no_output(run("--segmentation", sets.root / "gtsegs_ijcv.mat", "--method", "nope",
                   "-o", out), out, "--method", "generic")
    got = CliRunner().invoke(main, ["explain-eval", "--model", "demo", "--weights", "random",
                                    "--segmentation", str(sets.root / "gtsegs_ijcv.mat"), "-o",
                                    str(out)])
    _no_output(got, out, "no classifier head")
    out.mkdir()
    got = run("--segmentation", sets.root / "gtsegs_ijcv.mat", "-o", out)
    assert got.exit_code == 1 and "output exists" in got.output
    with pytest.raises(VidattnError, match="not a folder"):
        ImageNetFolder(sets.root / "labels.txt", 4)
