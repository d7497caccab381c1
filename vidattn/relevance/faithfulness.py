"""How faithful a relevance map is, measured as Chefer, Gur and Wolf (CVPR 2021) measure it, in
hila-chefer/Transformer-Explainability's ``baselines/ViT``: the segmentation test of
``imagenet_seg_eval.py`` and the perturbation test of ``generate_visualizations.py`` +
``pertubation_eval_from_hdf5.py``, with their metrics (``utils/metrices.py``).

Both tests see a map as the references make it: the method's patch-grid map ``(gh, gw)``
upsampled by the patch size, bilinear (``F.interpolate(scale_factor=16, mode="bilinear")``,
align_corners False: ``cells.map_to_frame``, the same sampling), then min-max scaled per image
(``(R - min) / (max - min)``; a constant map divides 0 by 0, NaN, as in the reference) ->
``(S, S)`` with ``S`` the model input. Images are squashed to ``S x S`` (``Resize((224, 224))``,
PIL bilinear, to uint8) and the ground-truth masks by PIL nearest.

Segmentation (``Segmentation``, over ImageNet-Segmentation's ``gtsegs_ijcv.mat``; the map
explains the predicted class):

- the map's mean is the threshold: foreground where ``R > mean``, background where ``R <= mean``
  (NaN: neither; the channel argmax then says background);
- pixel accuracy (``batch_pix_accuracy``): correct pixels over labelled pixels, summed over the
  dataset before dividing;
- mIoU (``batch_intersection_union``, 2 classes): per class (background, foreground) the
  intersection and union pixel counts, summed over the dataset, divided, then the mean of the
  two classes;
- mAP (``get_ap_scores``): per image, scikit-learn's ``average_precision_score`` of the
  two-channel scores ``(1 - R, R)`` (NaN to 0) against the one-hot labels, both channels
  flattened together; the mean over images;
- mF1 (``get_f1_scores``): as its code computes it, which reads the ``(S, S)`` foreground mask
  as a batch of ``S`` rows: the binary F1 of each row (0 where a row has no foreground in
  either), the mean over every row of every image.

Perturbation (``Perturbation``, over ImageNet val; ``explained``: the map explains the
predicted class, or the labelled one, the reference's ``--vis-class top`` and ``target``):
for each of :data:`STEPS` (10% ... 90%) the ``int(S * S * step)`` most relevant pixels
(positive perturbation) or least relevant (negative: the map negated) are set to 0 in every
channel of the 0..1 image, which is then normalised as the model expects; the hit is whether
the model's top class is still the labelled class. The AUC (percent) is the area under the
accuracy curve by the trapezoid rule over ``0, 10%, ..., 90%, 100%``: the unperturbed accuracy
at 0 and 0 at 100% (nothing left); lower is better for positive perturbation, higher for
negative. The reference repository prints only the per-step accuracies (the paper reports
"AUC"); the 11-point trapezoid is that of the AUC script that circulates with the authors'
per-step numbers of ViT-B. The per-step accuracies are kept beside it, so that another
convention (9 points, 10%..90%) can be recomputed from them.

Where we differ on purpose:

- The input size ``S`` is the preset's (``Preset.image_size``), the patch and the
  normalisation its own: the references hard-code ViT-B/16's 224, 16 and mean = std = 0.5.
- Images go through in batches (``BATCH``); each map is still its image's own (the references
  run the maps at batch 1, where their min-max over the batch is per image).
- No hdf5 intermediate: generate_visualizations.py writes each map and image to
  ``results.hdf5`` and the perturbation test reads them back; here the map goes straight on.
- Ties in the pixel ranking are broken by raster order (row by row, first the top-left), with
  a stable sort: the reference's ``torch.topk`` leaves their order to the GPU kernel. It
  matters where a map has flat regions (ReLU'd zeros; the half-patch border that
  bilinear upsampling clamps); a constant map (NaN after min-max) is all ties.
- The methods are ``methods.METHODS``, each as its own reference computes it, with the
  options the evaluation scripts give (``TEST_OPTIONS``: transformer-attribution from block 1,
  ``start_layer=1``). Their ``generate_rollout(start_layer=1)`` leaves block 0 out of rollout;
  our ``rollout`` takes every block, as the rollout of the paper and of the other probes does.
- The target-class maps are computed per class present in a batch (``explain_maps`` explains
  one class per call).
- Segmentation labels must be 0 or 1 (ImageNet-Segmentation's are); anything else is refused
  rather than counted as the reference would (a labelled pixel never correct).
- The reference's ``--neg`` is ``type=bool`` (any value, even "False", is True); here the
  direction is explicit and both are run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vidattn.cells import map_to_frame
from vidattn.preprocess import normalize

__all__ = ["BATCH", "CEILING", "DIRECTIONS", "EXPLAINED", "FLOOR", "STEPS", "TEST_OPTIONS",
           "Perturbation", "Segmentation", "average_precision", "min_max", "perturbation_auc",
           "perturbed", "pixel_maps", "random_maps", "relevance_maps", "removal_ranks", "row_f1",
           "segmentation_counts", "top_class"]

STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the reference's --scale per
DIRECTIONS = ("positive", "negative")  # most relevant removed first; least relevant first
EXPLAINED = ("predicted", "target")  # the reference's --vis-class top and target
FLOOR = "random"  # uniform noise on the patch grid: what a map that knows nothing scores
CEILING = "mask"  # the ground-truth object mask as the map: what a perfect map scores
BATCH = 8  # images per forward and backward pass
# what the evaluation scripts pass to a method beyond its defaults: both call
# generate_LRP(..., start_layer=1) for transformer_attribution
TEST_OPTIONS = {"transformer-attribution": {"start_layer": 1}}
_EPS = np.spacing(1, dtype=np.float64)  # the reference's guard against 0 / 0


def min_max(maps) -> np.ndarray:
    """Each map (the last two axes) scaled to 0..1 as the references do, ``(R - min) / (max -
    min)``; a constant map gives NaN (0 / 0), as there. ``(N, H, W)`` -> float32."""
    maps = np.asarray(maps, np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    with np.errstate(invalid="ignore", divide="ignore"):
        return (maps - low) / span


def pixel_maps(grid_maps, preset, size_hw=None) -> np.ndarray:
    """Patch-grid maps ``(N, gh, gw)`` -> the references' test maps on the input ``size_hw``
    (default ``(gh*p, gw*p)``) float32: bilinear upsampling by the patch
    (``F.interpolate(scale_factor=p, mode="bilinear")``; with ``--stride``, through the cells'
    centres, ``cells.map_to_frame``), then ``min_max``."""
    grid_maps = np.asarray(grid_maps, np.float32)
    p = preset.patch_size
    size_hw = size_hw or (grid_maps.shape[-2] * p, grid_maps.shape[-1] * p)
    return min_max(map_to_frame(grid_maps, size_hw, None, p, "linear", preset.stride))


def model_input(pixels, preset) -> np.ndarray:
    """uint8 images ``(N, S, S, 3)`` -> the model's float32 input (its normalisation)."""
    return normalize(pixels, preset.preprocessing)


def relevance_maps(model, pixels, method: str, classes=None) -> np.ndarray:
    """The test map ``(N, S, S)`` of ``method`` (``methods.METHODS``, with the evaluation
    scripts' ``TEST_OPTIONS``) for uint8 images ``pixels`` ``(N, S, S, 3)``, explaining each
    image's predicted class (``classes`` None) or its class in ``classes`` ``(N,)`` (one
    ``explain_maps`` call per class present)."""
    from vidattn.relevance.methods import explain_maps

    x = model_input(pixels, model.preset)
    options = TEST_OPTIONS.get(method, {})
    if classes is None:
        return pixel_maps(explain_maps(model, x, method, **options)[0], model.preset,
                          x.shape[1:3])
    classes = np.asarray(classes)
    grid = np.empty((len(x), *model.preset.grid_at(x.shape[1:3])))
    for c in np.unique(classes):
        chosen = classes == c
        grid[chosen] = explain_maps(model, x[chosen], method, target=int(c), **options)[0]
    return pixel_maps(grid, model.preset, x.shape[1:3])


def random_maps(rng: np.random.Generator, n: int, preset, size_hw) -> np.ndarray:
    """The floor: uniform noise on the patch grid of an input ``size_hw``, through the tests as
    a method's map goes -> ``(n, H, W)``."""
    return pixel_maps(rng.random((n, *preset.grid_at(size_hw))), preset, size_hw)


# -- segmentation ------------------------------------------------------------------------------


def average_precision(scores, truth) -> np.ndarray:
    """scikit-learn's ``average_precision_score`` of each row: ``scores`` ``(N, M)`` float,
    ``truth`` ``(N, M)`` bool -> ``(N,)`` float64: ``sum_k (R_k - R_{k-1}) P_k`` over the
    distinct score thresholds, highest first (tied scores enter together). A row without a
    positive gives 0 (the reference's ``nan_to_num`` of sklearn's NaN)."""
    scores = np.asarray(scores, np.float64)
    truth = np.asarray(truth, bool)
    n, m = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, 1)
    t = np.take_along_axis(truth, order, 1)
    tp = np.cumsum(t, axis=1)  # true positives among the first k + 1
    last = np.ones((n, m), bool)  # the last of each run of tied scores: a threshold
    last[:, :-1] = s[:, 1:] != s[:, :-1]
    positives = tp[:, -1]
    tp_at = np.where(last, tp, 0)
    # true positives at the previous threshold: the running maximum of tp_at, shifted by one
    prev = np.zeros((n, m), np.int64)
    prev[:, 1:] = np.maximum.accumulate(tp_at, axis=1)[:, :-1]
    precision = tp / np.arange(1, m + 1)
    gain = np.where(last, (tp - prev) * precision, 0.0).sum(axis=1)
    return np.divide(gain, positives, out=np.zeros(n), where=positives > 0)


def row_f1(predicted, truth) -> np.ndarray:
    """The binary F1 of each row (the last axis): ``2 tp / (2 tp + fp + fn)``, 0 where a row has
    no positive in either (scikit-learn's ``f1_score`` with its default ``zero_division``)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    tp = (predicted & truth).sum(-1)
    wrong = (predicted ^ truth).sum(-1)
    denominator = 2 * tp + wrong
    return np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)


@dataclass
class SegmentationCounts:
    """One batch of the segmentation test, per image: ``correct`` and ``labeled`` pixels
    ``(N,)``, ``inter`` and ``union`` ``(N, 2)`` (background, foreground), ``ap`` ``(N,)``,
    ``f1`` ``(N, S)`` (one per row)."""

    correct: np.ndarray
    labeled: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    ap: np.ndarray
    f1: np.ndarray


def segmentation_counts(maps, labels) -> SegmentationCounts:
    """The reference's per-image metrics of test maps ``(N, S, S)`` (``min_max``ed, NaN for
    constant maps) against labels ``(N, S, S)`` of 0 and 1 (see the module docstring)."""
    maps = np.asarray(maps, np.float32)
    gt = np.asarray(labels) == 1
    n = len(maps)
    with np.errstate(invalid="ignore"):
        mean = maps.mean(axis=(1, 2), keepdims=True)
        fg = maps > mean  # NaN: neither channel is 1, and the argmax takes background
    fg_f, gt_f = fg.reshape(n, -1), gt.reshape(n, -1)
    inter = np.stack([(~fg_f & ~gt_f).sum(1), (fg_f & gt_f).sum(1)], axis=1)
    predicted = np.stack([(~fg_f).sum(1), fg_f.sum(1)], axis=1)
    labelled = np.stack([(~gt_f).sum(1), gt_f.sum(1)], axis=1)
    scores = np.concatenate([np.nan_to_num(1 - maps.reshape(n, -1), nan=0.0),
                             np.nan_to_num(maps.reshape(n, -1), nan=0.0)], axis=1)
    truth = np.concatenate([~gt_f, gt_f], axis=1)
    return SegmentationCounts(
        correct=(fg_f == gt_f).sum(1), labeled=np.full(n, gt_f.shape[1]), inter=inter,
        union=predicted + labelled - inter, ap=average_precision(scores, truth),
        f1=row_f1(fg, gt))


@dataclass
class Segmentation:
    """The segmentation test's totals over a dataset, accumulated batch by batch as
    imagenet_seg_eval.py accumulates them; ``result()`` gives its four numbers."""

    correct: int = 0
    labeled: int = 0
    inter: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    ap: list = field(default_factory=list)
    f1: list = field(default_factory=list)

    def add(self, maps, labels) -> None:
        """Count one batch: test maps and labels ``(N, S, S)`` (``segmentation_counts``)."""
        c = segmentation_counts(maps, labels)
        self.correct += int(c.correct.sum())
        self.labeled += int(c.labeled.sum())
        self.inter += c.inter.sum(0)
        self.union += c.union.sum(0)
        self.ap.extend(c.ap.tolist())
        self.f1.extend(c.f1.ravel().tolist())

    def result(self) -> dict:
        """``pixel_accuracy``, ``mIoU``, ``mAP``, ``mF1`` (fractions) and ``images``."""
        iou = self.inter / (_EPS + self.union)
        return {"pixel_accuracy": float(self.correct / (_EPS + self.labeled)),
                "mIoU": float(iou.mean()),
                "mAP": float(np.mean(self.ap)) if self.ap else float("nan"),
                "mF1": float(np.mean(self.f1)) if self.f1 else float("nan"),
                "images": len(self.ap)}


# -- perturbation ------------------------------------------------------------------------------


def removal_ranks(maps, direction: str) -> np.ndarray:
    """Each pixel's place in the removal order, ``(N, S, S)`` int: 0 is removed first. Positive
    perturbation removes the most relevant first, negative the least (the reference negates
    the map); ties go in raster order. NaN (a constant map) counts as 0: all ties."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    maps = np.nan_to_num(np.asarray(maps, np.float32), nan=0.0)
    n, h, w = maps.shape
    key = -maps if direction == "positive" else maps
    order = np.argsort(key.reshape(n, -1), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(h * w)[None], axis=1)
    return ranks.reshape(n, h, w)


def perturbed(pixels, ranks, step: float) -> np.ndarray:
    """uint8 images ``(N, S, S, 3)`` with their first ``int(S * S * step)`` pixels of the
    removal order (``ranks`` ``(N, S, S)``) set to 0 in every channel, as the reference's
    ``scatter_(-1, idx, 0)`` on the 0..1 image."""
    h, w = ranks.shape[1:]
    removed = ranks < int(h * w * step)
    return np.where(removed[..., None], np.uint8(0), np.asarray(pixels, np.uint8))


def top_class(model, pixels) -> np.ndarray:
    """The model's class of each uint8 image ``(N, S, S, 3)`` -> ``(N,)`` int64."""
    return np.argmax(model.run(model_input(pixels, model.preset))["logits"], axis=1)


def perturbation_auc(accuracy) -> float:
    """The AUC, percent, of an accuracy curve ``(1 + len(STEPS),)`` (unperturbed, then each
    step): the trapezoid rule over ``0, STEPS..., 1`` with accuracy 0 at 1 (all removed)."""
    x = np.array([0.0, *STEPS, 1.0])
    y = np.append(np.asarray(accuracy, np.float64), 0.0)
    return float(100 * np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


@dataclass
class Perturbation:
    """The perturbation test's hits over a dataset: ``hits[explained][direction]`` a list of
    ``(1 + len(STEPS), N)`` bool per batch, row 0 the unperturbed model."""

    hits: dict = field(default_factory=lambda: {e: {d: [] for d in DIRECTIONS}
                                                for e in EXPLAINED})

    def add(self, model, pixels, labels, maps: dict, base_hits=None) -> None:
        """Perturb one batch: uint8 ``pixels`` ``(N, S, S, 3)``, ``labels`` ``(N,)`` and
        ``maps[explained]`` ``(N, S, S)`` test maps (one or both of :data:`EXPLAINED`); the
        unperturbed hits ``base_hits`` ``(N,)`` are computed when not given."""
        labels = np.asarray(labels)
        if base_hits is None:
            base_hits = top_class(model, pixels) == labels
        done = {}  # id of a map -> its hits: the floor and ceiling explain both kinds alike
        for explained, m in maps.items():
            for direction in DIRECTIONS:
                key = (id(m), direction)
                if key not in done:
                    ranks = removal_ranks(m, direction)
                    done[key] = np.stack([base_hits] + [
                        top_class(model, perturbed(pixels, ranks, s)) == labels for s in STEPS])
                self.hits[explained][direction].append(done[key])

    def result(self) -> dict:
        """``{explained: {direction: {"auc": percent, "accuracy": [per step]}}}`` for the
        explained kinds that were run, and ``images``."""
        out = {}
        for explained, by_direction in self.hits.items():
            for direction, parts in by_direction.items():
                if parts:
                    accuracy = np.concatenate(parts, axis=1).mean(axis=1)
                    out.setdefault(explained, {})[direction] = {
                        "auc": perturbation_auc(accuracy), "accuracy": accuracy.tolist()}
                    out["images"] = int(sum(p.shape[1] for p in parts))
        return out
