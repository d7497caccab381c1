"""``vidattn explain-eval``: the faithfulness tests (``faithfulness``) on the user's folders, and
the loop that runs them on any labelled images (the bench's synthetic scenes too).

Inputs, read as the references' loaders read them (hila-chefer/Transformer-Explainability):

- ImageNet-Segmentation's ``gtsegs_ijcv.mat`` (``GtSegs``): a MATLAB v7.3 file, which is HDF5,
  read as data only with h5py, indexed as ``data/Imagenet.py``'s ``Imagenet_Segmentation``
  does: ``/value/img`` ``(N, 1)`` object references to uint8 images stored ``(3, W, H)``
  (MATLAB's column order, transposed to ``(H, W, 3)``), ``/value/gt`` ``(N, 1)`` references to
  ``(1, 1)`` cells of references to the ``(W, H)`` masks, 0 background and 1 object.
- ImageNet val (``ImageNetFolder``), in one of the two usual layouts: a folder of class
  subfolders (torchvision's ``ImageFolder`` and ``ImageNet(split="val")``: one folder per class,
  the ILSVRC2012 WordNet ids ``n01440764/`` ... sorted give the classes 0..999; or folders
  named by class index, ``0/``, ``65/``, for a subset), or a flat folder of the JPEGs
  (``ILSVRC2012_val_00000001.JPEG`` ...) with a labels file of ``NAME INDEX`` lines (Caffe's
  ``val.txt``, in the same class order; commas allowed).

Images are read by ``preprocess.load_image`` (upright per EXIF, alpha over white: the
reference's PIL ``convert("RGB")`` ignores both) and squashed to the model input by PIL
bilinear; masks by PIL nearest.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vidattn.errors import VidattnError
from vidattn.relevance import faithfulness as fa

__all__ = ["IMAGE_SUFFIXES", "GtSegs", "ImageNetFolder", "evaluate", "format_table",
           "open_inputs", "run_explain_eval", "squash"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # case-insensitive
_WNID = re.compile(r"n\d{8}")


def squash(image, size: int, resample=Image.BILINEAR) -> np.ndarray:
    """uint8 ``(H, W[, 3])`` -> ``(size, size[, 3])`` uint8, the aspect ratio not kept
    (torchvision's ``Resize((224, 224))`` of a PIL image: PIL bilinear, or nearest for masks)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), resample))


class GtSegs:
    """ImageNet-Segmentation's ``gtsegs_ijcv.mat``: ``len()`` images, ``sample(i, size)`` ->
    uint8 image ``(size, size, 3)`` and mask ``(size, size)`` of 0 and 1. Opening checks the
    layout; a sample that breaks it raises one VidattnError naming the file and the index."""

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise VidattnError("no such file" if not self.path.exists() else "not a file",
                               self.path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise VidattnError(f"not an HDF5 (MATLAB v7.3) file ({' '.join(str(err).split())})",
                               self.path) from None
        try:
            with self._damaged("the file's index"):
                self.images, self.masks = (self._refs(name) for name in ("/value/img",
                                                                         "/value/gt"))
        except BaseException:
            self.file.close()
            raise
        if len(self.images) != len(self.masks):
            self.file.close()
            raise VidattnError(f"{len(self.images)} images but {len(self.masks)} masks",
                               self.path)

    @contextlib.contextmanager
    def _damaged(self, what: str):
        """h5py's errors on a damaged file (bad offsets, checksums, filters) -> one line."""
        try:
            yield
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            detail = " ".join(str(err).split()) or type(err).__name__
            raise VidattnError(f"{what}: damaged or unreadable ({detail})", self.path) from None

    def _refs(self, name: str):
        import h5py

        d = self.file.get(name)
        if not isinstance(d, h5py.Dataset) or d.ndim != 2 or d.shape[1] != 1 \
                or d.dtype != h5py.ref_dtype:
            raise VidattnError(f"no {name} dataset of (N, 1) references: not "
                               "ImageNet-Segmentation's gtsegs_ijcv.mat", self.path)
        return d

    def __len__(self) -> int:
        return len(self.images)

    def close(self) -> None:
        self.file.close()

    def _read(self, ref, i: int, what: str) -> np.ndarray:
        """The dataset that reference ``ref`` of sample ``i`` points to, read."""
        import h5py

        with self._damaged(f"{what} {i}"):
            target = self.file[ref] if isinstance(ref, h5py.Reference) and ref else None
            if not isinstance(target, h5py.Dataset):
                raise VidattnError(f"{what} {i}: a broken reference", self.path)
            return np.asarray(target)

    def sample(self, i: int, size: int):
        """Image ``i`` and its mask, squashed to ``size`` (see the class docstring)."""
        with self._damaged(f"sample {i}"):
            image_ref, cell_ref = self.images[i, 0], self.masks[i, 0]
        image = self._read(image_ref, i, "image")
        cell = self._read(cell_ref, i, "mask")
        if cell.shape != (1, 1) or cell.dtype != object:
            raise VidattnError(f"mask {i}: a {cell.dtype} {cell.shape} cell, expected (1, 1) "
                               "references", self.path)
        mask = self._read(cell[0, 0], i, "mask")
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.uint8 or not image.size:
            raise VidattnError(f"image {i}: {image.dtype} {image.shape}, expected uint8 "
                               "(3, W, H)", self.path)
        image, mask = image.transpose(2, 1, 0), mask.T
        if mask.shape != image.shape[:2]:
            raise VidattnError(f"mask {i} is {mask.shape[1]}x{mask.shape[0]} but its image "
                               f"{image.shape[1]}x{image.shape[0]}", self.path)
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise VidattnError(f"mask {i} holds values other than 0 and 1", self.path)
        return squash(image, size), squash(mask.astype(np.uint8), size, Image.NEAREST)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageNetFolder:
    """ImageNet val images and their classes (layouts: the module docstring): ``items`` the
    ``[(path, class)]`` sorted by path, checked against ``num_classes`` when opened."""

    def __init__(self, root, num_classes: int, labels=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise VidattnError("no such folder" if not self.root.exists() else "not a folder",
                               self.root)
        self.items = (self._from_file(Path(labels), num_classes) if labels
                      else self._from_folders(num_classes))
        if not self.items:
            raise VidattnError("no images (.jpeg, .jpg, .png)", self.root)

    def _from_file(self, labels: Path, num_classes: int):
        try:
            lines = labels.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise VidattnError("no such file", labels) from None
        except (OSError, UnicodeDecodeError) as err:
            raise VidattnError(f"unreadable labels file ({type(err).__name__})", labels) from None
        table = {}
        for number, line in enumerate(lines, 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise VidattnError(f"line {number}: expected 'NAME INDEX', got {line.strip()!r}",
                                   labels)
            index = int(parts[1])
            if index >= num_classes:
                raise VidattnError(f"line {number}: class {index} is out of range "
                                   f"0..{num_classes - 1}", labels)
            if table.setdefault(Path(parts[0]).name, index) != index:
                raise VidattnError(f"line {number}: {parts[0]} is labelled twice", labels)
        items = []
        for path in _images_in(self.root):
            if path.name not in table:
                raise VidattnError(f"{path.name} has no label in {labels}", self.root)
            items.append((path, table[path.name]))
        return items

    def _from_folders(self, num_classes: int):
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise VidattnError("no class folders; a flat folder of images needs --labels FILE",
                               self.root)
        if all(f.name.isdigit() for f in folders):
            classes = {f: int(f.name) for f in folders}
            wrong = [f.name for f, c in classes.items() if c >= num_classes]
            if wrong:
                raise VidattnError(f"class folder {wrong[0]}/ is out of range "
                                   f"0..{num_classes - 1}", self.root)
        elif len(folders) == num_classes:
            classes = {f: c for c, f in enumerate(folders)}  # ImageFolder's rule: sorted names
        else:
            kind = "WordNet-id " * all(_WNID.fullmatch(f.name) for f in folders)
            raise VidattnError(f"{len(folders)} {kind}class folders for {num_classes} classes: "
                               "the folders' sorted order gives the classes only when all are "
                               "there; name them by class index (0/, 65/ ...) or give --labels",
                               self.root)
        return [(path, c) for f, c in classes.items() for path in _images_in(f)]

    def sample(self, i: int, size: int):
        """Image ``i`` squashed to ``size`` (uint8 ``(size, size, 3)``) and its class."""
        from vidattn.preprocess import load_image

        path, label = self.items[i]
        return squash(load_image(path), size), label


def evaluate(model, batches, methods, seed: int = 0, explained=fa.EXPLAINED, progress=None):
    """Run the faithfulness tests of ``methods`` (``methods.METHODS`` names, ``fa.FLOOR``,
    ``fa.CEILING``) over ``batches``: dicts of uint8 ``pixels`` ``(N, S, S, 3)`` and, for the
    tests each supports, ``masks`` ``(N, S, S)`` (segmentation: the ground-truth object; the
    ceiling's map) and ``labels`` ``(N,)`` (perturbation; maps explaining ``explained``).
    ``seed`` draws the floor's maps; ``progress`` is called with each batch's size.
    Returns ``{method: {"segmentation": Segmentation.result(), "perturbation":
    Perturbation.result()}}`` for the tests that ran."""
    rng = np.random.default_rng(seed)
    seg = {m: fa.Segmentation() for m in methods}
    per = {m: fa.Perturbation() for m in methods}
    for batch in batches:
        pixels = batch["pixels"]
        masks, labels = batch.get("masks"), batch.get("labels")
        size_hw = pixels.shape[1:3]
        base_hits = None if labels is None else fa.top_class(model, pixels) == labels
        floor = fa.random_maps(rng, len(pixels), model.preset, size_hw)
        for method in methods:
            if method == fa.CEILING and masks is None:
                continue  # the ceiling is the ground-truth mask: only where there is one
            if method == fa.FLOOR:
                predicted = floor
            elif method == fa.CEILING:
                predicted = fa.min_max(masks.astype(np.float32))
            else:
                predicted = fa.relevance_maps(model, pixels, method)
            if masks is not None:
                seg[method].add(predicted, masks)
            if labels is not None:
                maps = {e: predicted for e in explained}  # the floor and ceiling know no class
                if "target" in explained and method not in (fa.FLOOR, fa.CEILING):
                    maps["target"] = fa.relevance_maps(model, pixels, method, labels)
                per[method].add(model, pixels, labels, maps, base_hits)
        if progress:
            progress(len(pixels))
    out = {}
    for m in methods:
        out[m] = {}
        if seg[m].ap:
            out[m]["segmentation"] = seg[m].result()
        if any(per[m].hits[e][d] for e in fa.EXPLAINED for d in fa.DIRECTIONS):
            out[m]["perturbation"] = per[m].result()
    return out


def _batches(source, count: int, size: int, key: str):
    """``source.sample`` in batches of ``fa.BATCH``: dicts of ``pixels`` and ``key`` (masks
    or labels)."""
    for start in range(0, count, fa.BATCH):
        samples = [source.sample(i, size) for i in range(start, min(count, start + fa.BATCH))]
        yield {"pixels": np.stack([s[0] for s in samples]),
               key: np.stack([s[1] for s in samples]) if key == "masks"
               else np.array([s[1] for s in samples], np.int64)}


def format_table(results: dict) -> str:
    """The markdown table of ``evaluate``'s results: one row per method, the segmentation
    test's pixel accuracy, mIoU, mAP (percent) and the perturbation AUCs (percent)."""
    head = ["method", "pixel acc.", "mIoU", "mAP", "pos. AUC (pred.) ↓", "neg. AUC (pred.) ↑",
            "pos. AUC (target) ↓", "neg. AUC (target) ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        seg, per = r.get("segmentation", {}), r.get("perturbation", {})
        cells = [f"{100 * seg[k]:.2f}" if k in seg else "-"
                 for k in ("pixel_accuracy", "mIoU", "mAP")]
        cells += [f"{per[e][d]['auc']:.2f}" if e in per else "-"
                  for e in fa.EXPLAINED for d in fa.DIRECTIONS]
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def open_inputs(preset, segmentation=None, imagenet=None, labels=None):
    """The explain-eval inputs, opened and checked before any model work: ``(GtSegs or None,
    ImageNetFolder or None)``; one VidattnError for the first problem."""
    from vidattn.relevance.targets import check_classifier

    check_classifier(preset)
    if segmentation is None and imagenet is None:
        raise VidattnError("nothing to evaluate: give --segmentation gtsegs_ijcv.mat and/or "
                           "--imagenet DIR")
    if labels is not None and imagenet is None:
        raise VidattnError("--labels: only with --imagenet DIR")
    val = ImageNetFolder(imagenet, preset.num_classes, labels) if imagenet else None
    return (GtSegs(segmentation) if segmentation else None), val


def run_explain_eval(model, out_dir, methods, inputs, limit=None, progress: bool = True) -> dict:
    """``vidattn explain-eval``: run the tests on ``inputs`` (``open_inputs``; closed here) and
    write ``OUT/faithfulness.json`` and ``OUT/faithfulness.md`` (the folder appears whole, or
    not at all) -> the results."""
    from tqdm.auto import tqdm

    from vidattn.io import discard_folder, publish_folder, temporary_folder

    seg, val = inputs
    p = model.preset
    size = p.image_size
    sources = {"segmentation": (seg, "masks"), "perturbation": (val, "labels")}
    counts = {test: min(len(s.items) if key == "labels" else len(s), limit or 10**12)
              for test, (s, key) in sources.items() if s is not None}
    try:
        temp = temporary_folder(Path(out_dir))
        started = time.perf_counter()
        results = {"model": p.name, "weights": model.weights_label, "input": size,
                   "methods": list(methods), "steps": list(fa.STEPS), "tests": {},
                   "results": {m: {} for m in methods}}
        try:
            with tqdm(total=sum(counts.values()), unit="image", disable=not progress,
                      dynamic_ncols=True, desc="explain-eval") as bar:
                for test, n in counts.items():
                    source, key = sources[test]
                    bar.set_postfix_str(test)
                    got = evaluate(model, _batches(source, n, size, key), methods,
                                   progress=bar.update)
                    where = source.path if key == "masks" else source.root
                    results["tests"][test] = {"images": n, "source": str(where)}
                    for method, r in got.items():
                        results["results"][method].update(r)
            results["seconds"] = round(time.perf_counter() - started, 1)
            (temp / "faithfulness.json").write_text(json.dumps(results, indent=1))
            (temp / "faithfulness.md").write_text(
                f"Faithfulness of {p.name} ({model.weights_label}) at {size}x{size}: "
                + ", ".join(f"{t} on {v['images']} images" for t, v in results["tests"].items())
                + f"\n\n{format_table(results['results'])}\n")
            publish_folder(temp, Path(out_dir))
        except BaseException:
            discard_folder(temp)
            raise
    finally:
        if seg is not None:
            seg.close()
    return results
