"""DAVIS 2017: mask PNGs, the dataset folder, and the semi-supervised J and F scores.

The metrics follow davisvideochallenge/davis2017-evaluation exactly: J is the region IoU
(``db_eval_iou``), F the boundary F-measure (``db_eval_boundary``: 1-pixel boundaries from
``seg2bmap``, matched within a disk of ``ceil(0.008 * image diagonal)`` pixels), and each
object's per-frame series is summarised by ``db_statistics`` as mean, recall (fraction above 0.5)
and decay (first quarter's mean minus last quarter's). ``score_folder`` reproduces
``evaluation.py`` for the semi-supervised task (first and last frames left out, objects counted
from the first annotation, void pixels counted as background as that task passes no void mask)
and ``write_csvs`` the two CSV files ``evaluation_method.py`` writes.

Masks are ``(H, W)`` uint8 ids: 0 background, 1..254 objects, 255 DAVIS's void. Sequences of
masks are ``(T, H, W)``.

Where we deliberately differ from the reference (each also said where it happens):
- ``read_mask`` reads a plain black-and-white greyscale PNG (only 0 and 255) as object 1;
- ``db_statistics`` bins with ordinary integers, where the reference's uint8 indices wrap for
  series longer than 255 frames;
- ``seg2bmap`` has no resampling to another size (the reference's branch for it is unused);
- problems the reference reports by printing and exiting (a missing or oversized result mask,
  more result objects than annotated ones) are one-line VidattnErrors naming the file.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vidattn.errors import VidattnError
from vidattn.io import write_bytes_atomic
from vidattn.preprocess import opened_image

__all__ = ["BOUND_TH", "GLOBAL_COLUMNS", "PALETTE", "SEQUENCE_COLUMNS", "VOID", "DavisFolder",
           "Scores", "db_eval_boundary", "db_eval_iou", "db_statistics", "disk",
           "evaluate_sequence", "f_measure", "format_table", "read_mask", "score_folder",
           "seg2bmap", "write_csvs", "write_mask"]

VOID = 255  # DAVIS's "void" id: pixels left out of the unsupervised scores
BOUND_TH = 0.008  # boundary tolerance, as a fraction of the image diagonal (reference default)
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
_CSV_FLOAT = "%.3f"  # evaluation_method.py's float_format

# The Pascal VOC / DAVIS palette (id i -> RGB), (256, 3) uint8, shipped as text: see the README.
PALETTE = np.array(
    importlib.resources.files("vidattn").joinpath("data/davis_palette.txt").read_text().split(),
    dtype=np.uint8).reshape(256, 3)


# ---- mask files ----------------------------------------------------------------------------

def read_mask(path) -> np.ndarray:
    """The mask PNG at ``path`` -> ids ``(H, W)`` uint8 (void 255 kept).

    Palette ("P") images give their indices as they are (a DAVIS annotation whose objects are all
    out of view may hold only void). Greyscale ("L", "1") gives its values, except that a plain
    black-and-white image (no value but 0 and 255) is object 1 (unlike the reference, which
    would read such a mask as void only). 16/32-bit greyscale ("I", "I;16") is allowed while its
    values fit 0..254. RGB is refused: colours are not ids. Errors name the file.
    """
    path = Path(path)
    with opened_image(path, "a mask PNG") as im:
        im.load()  # decode now, inside the error handling: truncated files fail here
        mode, ids = im.mode, np.asarray(im)
    if mode in ("RGB", "RGBA"):
        raise VidattnError("an RGB mask is not an indexed PNG: save it with a palette or as "
                           "greyscale ids", path)
    if mode == "P":
        return ids.astype(np.uint8)
    if mode in ("L", "1"):
        ids = ids.astype(np.uint8)
        black_and_white = not ((ids != 0) & (ids != VOID)).any()
        return (ids > 0).astype(np.uint8) if black_and_white else ids
    if mode == "I" or mode.startswith("I;16"):
        if ids.size and (ids.min() < 0 or ids.max() > VOID - 1):
            raise VidattnError(f"more than {VOID} object ids (values {ids.min()}..{ids.max()}; "
                               f"ids must be 0..{VOID - 1})", path)
        return ids.astype(np.uint8)
    raise VidattnError(f"a {mode} image is not a mask: save it as an indexed PNG or as "
                       "greyscale ids", path)


def write_mask(path, ids) -> None:
    """Write ids ``(H, W)`` (0..255) as an indexed "P" PNG with ``PALETTE``, as DINO's
    ``imwrite_indexed`` and DAVIS's annotations are stored."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"mask ids must be (H, W) in 0..255, got shape {ids.shape}")
    image = Image.fromarray(ids.astype(np.uint8), mode="L")
    image.putpalette(PALETTE.ravel().tolist())
    try:
        image.save(Path(path), format="PNG")
    except OSError as exc:
        raise VidattnError(f"cannot write the mask ({exc.strerror or exc})", path) from None


# ---- the dataset folder --------------------------------------------------------------------

class DavisFolder:
    """DAVIS 2017 as downloaded: ``ImageSets/2017/<split>.txt`` lists the sequences,
    ``JPEGImages/<resolution>/<seq>/*.jpg`` their frames and ``Annotations/<resolution>/<seq>/``
    one ``<frame stem>.png`` per frame. Errors name the missing path."""

    def __init__(self, root, split: str = "val", resolution: str = "480p"):
        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        if not self.root.is_dir():
            raise VidattnError("no DAVIS folder here", self.root)
        self.list_file = self.root / "ImageSets" / "2017" / f"{split}.txt"
        try:
            lines = self.list_file.read_text().splitlines()
        except OSError:
            raise VidattnError(f"no list of the {split!r} sequences (is this DAVIS 2017?)",
                               self.list_file) from None
        self.sequences = [line.strip() for line in lines if line.strip()]
        for seq in self.sequences:
            if not self._frames_dir(seq).is_dir():
                raise VidattnError(f"sequence {seq!r} is listed but has no frames folder",
                                   self._frames_dir(seq))

    def _frames_dir(self, seq: str) -> Path:
        return self.root / "JPEGImages" / self.resolution / seq

    def select(self, names) -> list[str]:
        """``names`` checked against the split's list, in the order given, repeats dropped."""
        known = set(self.sequences)
        for name in names:
            if name not in known:
                shown = ", ".join(self.sequences[:5]) + (", ..." if len(self.sequences) > 5 else "")
                raise VidattnError(f"no sequence {name!r} in the {self.split!r} split (known: "
                                   f"{shown or 'none'})", self.list_file)
        return list(dict.fromkeys(names))

    def frames(self, seq: str) -> list[Path]:
        """The sequence's frames, sorted by name."""
        (seq,) = self.select([seq])
        frames = sorted(self._frames_dir(seq).glob("*.jpg"))
        if not frames:
            raise VidattnError(f"sequence {seq!r} has no .jpg frames", self._frames_dir(seq))
        return frames

    def annotations(self, seq: str) -> list[Path]:
        """One annotation PNG per frame, in frame order; the first one missing is an error."""
        folder = self.root / "Annotations" / self.resolution / seq
        paths = [folder / f"{frame.stem}.png" for frame in self.frames(seq)]
        for path in paths:
            if not path.is_file():
                raise VidattnError(f"frame {path.stem} of {seq!r} has no annotation", path)
        return paths


# ---- the metrics (davis2017/metrics.py) ----------------------------------------------------

def disk(radius: int) -> np.ndarray:
    """A disk structuring element ``(2r+1, 2r+1)`` uint8: 1 where ``x^2 + y^2 <= r^2``, as
    skimage's ``morphology.disk`` (its default ``strict_radius``) that the reference uses."""
    r = int(radius)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def db_eval_iou(annotation, segmentation, void_pixels=None):
    """Region similarity J: the IoU of two binary masks ``(..., H, W)`` outside ``void_pixels``
    -> a float, or one per leading index; an empty union scores 1."""
    annotation, segmentation = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} "
                         "differ in shape")
    keep = True if void_pixels is None else ~np.asarray(void_pixels, bool)
    inter = np.sum(annotation & segmentation & keep, axis=(-2, -1))
    union = np.sum((annotation | segmentation) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(union == 0, 1.0, inter / union)
    return float(j) if j.ndim == 0 else j


def seg2bmap(seg) -> np.ndarray:
    """Binary boundary map ``(H, W)`` bool of a mask ``(H, W)``: a pixel is on the boundary where
    it differs from its east, south or south-east neighbour (so boundaries lie half a pixel
    towards the origin); the last row compares east only, the last column south only, and the
    corner is never a boundary. (David Martin's ``seg2bmap`` at the mask's own size only.)"""
    seg = np.asarray(seg, bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def f_measure(foreground_mask, gt_mask, void_pixels=None, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of one frame: the masks' boundaries (``seg2bmap``, void pixels cleared
    first) are matched within a disk of ``bound_th`` pixels (``>= 1``) or ``ceil(bound_th *
    diagonal)`` (``< 1``). Precision is the share of the result's boundary near the ground
    truth's, recall the converse; an empty boundary has precision 1 / recall 0 against a
    non-empty one, and two empty boundaries score 1."""
    foreground_mask, gt_mask = np.asarray(foreground_mask, bool), np.asarray(gt_mask, bool)
    if foreground_mask.ndim != 2:
        raise ValueError(f"f_measure takes one (H, W) frame, got {foreground_mask.shape}")
    keep = np.ones_like(foreground_mask) if void_pixels is None else ~np.asarray(void_pixels, bool)
    diagonal = np.linalg.norm(foreground_mask.shape)
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * diagonal)
    fg_boundary = seg2bmap(foreground_mask & keep).astype(np.uint8)
    gt_boundary = seg2bmap(gt_mask & keep).astype(np.uint8)
    kernel = disk(radius)
    fg_dil, gt_dil = cv2.dilate(fg_boundary, kernel), cv2.dilate(gt_boundary, kernel)
    n_fg, n_gt = int(fg_boundary.sum()), int(gt_boundary.sum())
    if n_fg == 0 or n_gt == 0:
        precision, recall = float(n_fg == 0), float(n_gt == 0)
    else:
        precision = np.sum(fg_boundary & gt_dil) / n_fg
        recall = np.sum(gt_boundary & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th: float = BOUND_TH):
    """Boundary F (``f_measure``) of binary masks ``(H, W)`` -> a float, or ``(T, H, W)`` -> one
    per frame ``(T,)``."""
    annotation, segmentation = np.asarray(annotation), np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} "
                         "differ in shape")
    if annotation.ndim == 2:
        return f_measure(segmentation, annotation, void_pixels, bound_th)
    if annotation.ndim != 3:
        raise ValueError(f"db_eval_boundary takes (H, W) or (T, H, W), got {annotation.shape}")
    voids = [None] * len(annotation) if void_pixels is None else void_pixels
    return np.array([f_measure(s, a, v, bound_th)
                     for a, s, v in zip(annotation, segmentation, voids)], dtype=float)


def db_statistics(per_frame) -> tuple[float, float, float]:
    """Mean M, recall O (fraction of frames above 0.5) and decay D of one object's per-frame
    scores ``(T,)`` (davis2017/utils.py). D is the mean of the first of four bins minus that of
    the last, the bins split at ``round(linspace(1, T, 5)) - 1`` (neighbouring bins share their
    edge frame); NaN frames are skipped by the means. The reference casts the split points to
    uint8, which wraps past 255 frames; we keep them as plain integers."""
    per_frame = np.asarray(per_frame, dtype=float)
    edges = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN or empty bins: NaN
        mean = np.nanmean(per_frame)
        recall = np.nanmean(per_frame > 0.5)
        decay = (np.nanmean(per_frame[edges[0]:edges[1] + 1])
                 - np.nanmean(per_frame[edges[3]:edges[4] + 1]))
    return float(mean), float(recall), float(decay)


# ---- one sequence, one folder --------------------------------------------------------------

def evaluate_sequence(gt, void, results) -> tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F ``(n_objects, T - 2)`` of one sequence, as
    davis2017-evaluation's semi-supervised evaluation computes them.

    ``gt``: the annotations ``(T, H, W)`` ids (void 255 counts as background, as DAVIS does);
    ``void``: ``(T, H, W)`` bool pixels to leave out, or None, which is what the reference's
    semi-supervised task uses; ``results``: the result ids, ``(T - 2, H, W)`` for the frames
    scored, or ``(T, H, W)``, whose first and last frames are then ignored. The objects are
    1..n, n the largest id of the first annotation; result objects absent from ``results``
    score as empty masks (the reference's zero padding); a result id above n is a ValueError.
    """
    gt, results = np.asarray(gt), np.asarray(results)
    if gt.ndim != 3 or len(gt) < 3:
        raise ValueError(f"a sequence needs (T, H, W) annotations with T >= 3, got {gt.shape}")
    if len(results) == len(gt):
        results = results[1:-1]
    if results.shape != (len(gt) - 2, *gt.shape[1:]):
        raise ValueError(f"results {results.shape} do not match annotations {gt.shape}")
    first = gt[0]
    n_objects = int(first[first != VOID].max(initial=0))
    n_results = int(results.max(initial=0))
    if n_results > n_objects:
        raise ValueError(f"the results use id {n_results} but the first annotation has only "
                         f"{n_objects} object(s)")
    gt = gt[1:-1]
    void = None if void is None else np.asarray(void, bool)[1:-1]
    j = np.zeros((n_objects, len(gt)))
    f = np.zeros((n_objects, len(gt)))
    for k in range(1, n_objects + 1):  # one object at a time: memory of one (T, H, W) pair
        j[k - 1] = db_eval_iou(gt == k, results == k, void)
        f[k - 1] = db_eval_boundary(gt == k, results == k, void)
    return j, f


@dataclass
class Scores:
    """``score_folder``'s result: ``per_sequence``, one row per object (``SEQUENCE_COLUMNS``,
    "Sequence" is ``<seq>_<object>``), and ``global_row`` (``GLOBAL_COLUMNS``), means over all
    objects of all sequences."""

    per_sequence: list[dict]
    global_row: dict


def _read_sequence(paths, shape=None) -> np.ndarray:
    """The masks at ``paths`` -> ``(T, H, W)`` uint8, each checked to have the first's size (or
    ``shape``)."""
    masks = []
    for path in paths:
        ids = read_mask(path)
        shape = shape or ids.shape
        if ids.shape != tuple(shape):
            raise VidattnError(f"mask is {ids.shape[1]}x{ids.shape[0]}, expected "
                               f"{shape[1]}x{shape[0]}", path)
        masks.append(ids)
    return np.stack(masks)


def score_folder(davis: DavisFolder, results_dir, sequences=None) -> Scores:
    """Score the result masks ``results_dir/<seq>/<frame stem>.png`` of ``sequences`` (None: the
    split's list) against ``davis``'s annotations, as ``evaluation_method.py`` does for the
    semi-supervised task. Only the scored frames (all but the first and last) need results."""
    results_dir = Path(results_dir)
    names = davis.select(sequences) if sequences else list(davis.sequences)
    rows, stats = [], {"J": [], "F": []}
    for seq in names:
        annotations = davis.annotations(seq)
        if len(annotations) < 3:
            raise VidattnError(f"sequence {seq!r} has {len(annotations)} frame(s); scoring leaves "
                               "out the first and last, so it needs 3 or more",
                               annotations[0].parent)
        gt = _read_sequence(annotations)
        result_paths = [results_dir / seq / path.name for path in annotations[1:-1]]
        results = _read_sequence(result_paths, gt.shape[1:])
        try:
            j, f = evaluate_sequence(gt, None, results)
        except ValueError as exc:
            raise VidattnError(str(exc), results_dir / seq) from None
        for k in range(len(j)):
            stats["J"].append(db_statistics(j[k]))
            stats["F"].append(db_statistics(f[k]))
            rows.append({"Sequence": f"{seq}_{k + 1}", "J-Mean": stats["J"][-1][0],
                         "F-Mean": stats["F"][-1][0]})
    if not rows:
        raise VidattnError("no object to score: every first annotation is empty", davis.root)
    (jm, jr, jd), (fm, fr, fd) = (np.mean(stats[m], axis=0) for m in ("J", "F"))
    values = ((jm + fm) / 2, jm, jr, jd, fm, fr, fd)
    return Scores(rows, dict(zip(GLOBAL_COLUMNS, map(float, values))))


# ---- output --------------------------------------------------------------------------------

def _csv_cell(value) -> str:
    """A cell as pandas' ``to_csv(float_format="%.3f")`` writes it (NaN as an empty cell)."""
    if isinstance(value, str):
        return value
    return "" if math.isnan(value) else _CSV_FLOAT % value


def _csv_bytes(columns, rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(row[c]) for c in columns] for row in rows)
    return text.getvalue().encode()


def write_csvs(scores: Scores, out_dir, split: str) -> None:
    """Write ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv`` into
    ``out_dir``, in evaluation_method.py's columns, order and number format, each atomically."""
    out_dir = Path(out_dir)
    write_bytes_atomic(out_dir / f"global_results-{split}.csv",
                       _csv_bytes(GLOBAL_COLUMNS, [scores.global_row]))
    write_bytes_atomic(out_dir / f"per-sequence_results-{split}.csv",
                       _csv_bytes(SEQUENCE_COLUMNS, scores.per_sequence))


def _aligned(columns, rows) -> list[str]:
    """Rows of cells as lines: text columns left-aligned, numbers right-aligned."""
    cells = [list(columns)] + [[_csv_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    left = [bool(rows) and isinstance(rows[0][c], str) for c in columns]
    return ["  ".join(cell.ljust(w) if flush else cell.rjust(w)
                      for cell, w, flush in zip(line, widths, left)) for line in cells]


def format_table(scores: Scores) -> str:
    """The global row, then the per-object rows, as plain aligned text (3 decimals)."""
    return "\n".join(_aligned(GLOBAL_COLUMNS, [scores.global_row]) + [""]
                     + _aligned(SEQUENCE_COLUMNS, scores.per_sequence))
