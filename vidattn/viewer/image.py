"""``vidattn image --viewer``: a page per image; click any patch to see where it looks, and
how like it every patch of this image and of the run's other images is.

Beside the image's figures (``OUTDIR/<stem>/``)::

    viewer.html              the page (``static/image.html``, ``image.js``)
    viewer/input.png         the ``size x size`` crop the model saw
    viewer/block-NN.js       block NN's attention: for each head and each of the T query tokens,
                             its row over the P patch keys
    viewer/rollout.js        the rollout matrix's rows over the patch keys (``rollout_matrix``)
    viewer/features-HASH.js  the P patch features of the chosen facet and block, at full
                             dimension D, for the click-a-patch similarity
    viewer/explain.js        where the explain probe ran: its maps, one per class and method
                             (``relevance.methods.Explanation``), ``K`` float32 scales then
                             ``K * P`` bytes (``pages.quantize``, negatives as 0), K = classes
                             x methods; the page switches class and method

and, for ``vidattn image`` (``ImageRun``), once per run::

    OUTDIR/viewer-run.js     the run's images that have a viewer: folder, name, grid, features

A block's chunk is ``heads * T`` float32 scales, then ``heads * T * P`` bytes, each row as bytes of
its own maximum over the patches (``pages.quantize``; the columns of the prefix tokens, class
tokens and registers, which no map shows, are left out); rollout's is ``T`` scales and ``T * P``
bytes. So the data is
``(depth * heads + 1) * T * (P + 4)`` bytes, a third more in base64: about 2.9 MB for ViT-S/16 at
224 (T = 197) and 89 MB for ViT-B/8 (T = 785). The page loads the block it shows, when it shows it.

The features chunk holds each patch's feature ``(D,)`` scaled to unit length and stored as int8
with one float32 scale (``features.quantize_signed``): ``P`` scales, then ``P * D`` bytes, so
``P * (D + 4)`` bytes (``features.signed_bytes``): 76 KB for ViT-S/16 at 224, 605 KB for
ViT-B/8, under 1% of the attention data, so it is always stored; it comes from the same forward
pass as the attention. The page's similarity is the dot product of two stored vectors; the
largest error of that against the float cosine is measured when the features are written
(``features.dot_error``): over every pair of an image's patches (``ERROR_SAMPLE`` of them
against all where there are more), and in a run each image's patches against a sample of up
to ``ERROR_SAMPLE`` patches of the images before it. Its name holds a hash of its bytes, so
that pages of one run never mistake one image's features for another's (``common.js`` loads a
chunk once per key).

The run file is a chunk too (``vidattnChunk("viewer-run", BASE64 of JSON)``), written atomically
when the run ends: a page loads it (``../viewer-run.js``) when it is there and draws the
similarity on each listed image, and works alone without it. It lists the images done in this
run, never one that failed, in input order, until their features reach ``RUN_FEATURE_CAP`` (what a
page loads on a click); the images after that keep their own similarity, and the run file counts
them (``left_out``) for the page to say so.

The data folder is written into a temporary folder and moved into place whole, then the page: a
``viewer.html`` is never there without its data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidattn import attention as am
from vidattn.features import (ERROR_SAMPLE, dequantize_signed, dot_error, quantize_signed,
                              signed_bytes, unit_rows)
from vidattn.io import discard_folder, publish_folder, temporary_folder, write_bytes_atomic
from vidattn.options import DEFAULT_SIZE, DEFAULT_THRESHOLD
from vidattn.preprocess import display_image, load_image, preprocess_image
from vidattn.viewer.pages import (
    chunk_script,
    colormap_tables,
    page_meta,
    quantize,
    write_chunk,
    write_viewer_page,
)

__all__ = ["PAGE", "RUN_FEATURE_CAP", "RUN_FILE", "ImageRun", "StoredFeatures",
           "write_image_viewer"]

PAGE = "viewer.html"
DATA_FOLDER = "viewer"
IMAGE_NAME = "input.png"
RUN_KEY = "viewer-run"  # the run file's chunk key, and its name: OUTDIR/viewer-run.js
RUN_FILE = f"{RUN_KEY}.js"
RUN_FEATURE_CAP = 64 * 2**20  # bytes of features the run file lists: what a page loads on a click
RUN_SAMPLE = 64  # patches of each image in the run's error sample (ERROR_SAMPLE in all)
DEFAULT_FACET = (-1, "token")  # (block, kind) as Model.run's facet: the last block's tokens
EXPLAIN_KEY = "explain"  # the explanation maps' chunk
ALPHA = 0.6  # as the probe figures


@dataclass(frozen=True)
class StoredFeatures:
    """One image's patch features as its viewer stores them. ``unit``: float32 ``(P, D)``, the
    features scaled to unit length; ``data`` uint8 ``(P, D)`` and ``scales`` float32 ``(P,)``:
    ``quantize_signed(unit)``, what the chunk holds; ``max_error``: ``dot_error`` over the pairs
    of its patches (``ERROR_SAMPLE`` of them against all where there are more)."""

    unit: np.ndarray
    data: np.ndarray
    scales: np.ndarray
    max_error: float

    @classmethod
    def of(cls, tokens) -> StoredFeatures:
        """From one image's facet tokens ``(P, D)``."""
        unit = unit_rows(tokens)
        data, scales = quantize_signed(unit)
        stored = dequantize_signed(data, scales)
        pick = np.random.default_rng(0).permutation(len(unit))[:ERROR_SAMPLE]
        return cls(unit, data, scales, dot_error(unit[pick], stored[pick], unit, stored))

    @property
    def stored(self) -> np.ndarray:
        """float32 ``(P, D)``: the vectors as the page decodes them."""
        return dequantize_signed(self.data, self.scales)

    @property
    def bytes(self) -> int:
        return signed_bytes(*self.data.shape)

    @property
    def key(self) -> str:
        """The chunk's key: ``features-`` and a hash of its bytes (unique in a run, see the
        module's note)."""
        digest = hashlib.sha256(self.scales.astype("<f4").tobytes() + self.data.tobytes())
        return f"features-{digest.hexdigest()[:16]}"


def write_image_viewer(model, image, outdir, size: int = DEFAULT_SIZE,
                       threshold: float = DEFAULT_THRESHOLD, name: str | None = None,
                       facet=DEFAULT_FACET, explanation=None) -> Path:
    """Write the viewer of one image (a path or uint8 RGB ``(H, W, 3)``) into the folder
    ``outdir`` (made if missing, its earlier viewer replaced) -> the page's path. ``size``: the
    square crop's side, a multiple of the patch; ``threshold``: the mask control's first value;
    ``name``: shown as the title (default: the file name); ``facet``: ``(block, kind)``, the
    patch features whose similarity a click shows (``Model.run``); ``explanation``: the
    explain probe's maps of this image at this ``size`` (``relevance.methods.Explanation``),
    which the page then shows first, with a class and a method switch. The page shows this
    image's similarity alone (``ImageRun`` writes pages that show their run's images too)."""
    return _write_viewer(model, image, outdir, size, threshold, name, facet,
                         explanation=explanation)[0]


def viewer_rows(out, n_prefix):
    """The attention rows one image's viewer stores, from ``model.run(..., attention="all")``'s
    ``out``: ``(rows, rollout)``, each block's ``(heads, R, P)`` and rollout's ``(R, P)`` over
    the ``P`` patch keys, one row per query token (``n_prefix`` prefix tokens, then patches).

    A model that pools by a probe (SigLIP: no class token) gets the probe as a first, virtual
    query row, where the viewer's "CLS" query is: its attention in the last block (which it
    reads), zeros in the others, and its rollout, ``probe head mean @ J``, the row the model's
    rollout returns (``vit.cls_rollout`` from the probe)."""
    attns = [a[0] for a in out["attention"]]
    joint = am.rollout_matrix(out["attention"])[0]  # (T, T)
    if "pool_attention" not in out:
        return [a[:, :, n_prefix:] for a in attns], joint[:, n_prefix:]
    probe = out["pool_attention"][0]  # (heads, 1, P)
    rows = [np.concatenate([probe if b == len(attns) - 1 else np.zeros_like(probe), a], axis=1)
            for b, a in enumerate(attns)]
    return rows, np.concatenate([probe.mean(axis=0) @ joint, joint])


def _write_viewer(model, image, outdir, size, threshold, name, facet, run=None,
                  explanation=None):
    """``write_image_viewer``, with ``run`` the page's note of its run file (``ImageRun``) ->
    ``(page path, StoredFeatures, the page's meta)``."""
    pixels = image if isinstance(image, np.ndarray) else load_image(image)
    name = name or (Path(image).name if not isinstance(image, np.ndarray) else "image")
    p = model.preset
    out = model.run(preprocess_image(pixels, p.preprocessing, size, p.resample), attention="all",
                    facet=facet)  # one forward pass for the attention and the features
    n_prefix = p.num_prefix_tokens
    rows, rollout = viewer_rows(out, n_prefix)
    feats = StoredFeatures.of(out["facet_tokens"][0])
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    temp = temporary_folder(outdir / DATA_FOLDER)
    try:
        Image.fromarray(display_image(pixels, size, p.resample)).save(temp / IMAGE_NAME,
                                                                      format="PNG")
        keys = []
        for b, block_rows in enumerate(rows):
            data, scales = quantize(block_rows)
            keys.append(f"block-{b:02d}")
            write_chunk(temp, keys[-1], scales, data)
        data, scales = quantize(rollout)
        write_chunk(temp, "rollout", scales, data)
        write_chunk(temp, feats.key, feats.scales, feats.data)
        if explanation is not None:  # (classes, methods, gh, gw) -> one row per pair
            maps = np.asarray(explanation.maps)
            data, scales = quantize(maps.reshape(-1, maps.shape[-2] * maps.shape[-1]))
            write_chunk(temp, EXPLAIN_KEY, scales, data)
        publish_folder(temp, outdir / DATA_FOLDER)
    except BaseException:
        discard_folder(temp)
        raise
    grid = p.grid_at((size, size))[0]
    features = {
        "folder": DATA_FOLDER, "key": feats.key, "facet": facet[1],
        "layer": int(facet[0]) % p.depth, "dims": int(feats.data.shape[1]),
        "bytes": feats.bytes, "max_error": feats.max_error,
    }
    meta = page_meta(
        model, kind="image", source=name, image=f"{DATA_FOLDER}/{IMAGE_NAME}", size=size,
        grid=[grid, grid], tokens=len(rollout), probe="pool_attention" in out,
        prefix_tokens=len(rollout) - grid * grid,
        chunks={"folder": DATA_FOLDER, "blocks": keys, "rollout": "rollout"},
        colormaps=colormap_tables(), features=features, run=run,
        explain=None if explanation is None else {
            "key": EXPLAIN_KEY, "classes": explanation.classes, "methods": explanation.methods},
        defaults={"colormap": "inferno", "alpha": ALPHA, "threshold": threshold, "mode": "heat"},
    )
    label = "RANDOM WEIGHTS · " if model.is_random else ""
    page = write_viewer_page(outdir / PAGE, "image", f"{label}{name} · {p.name} · vidattn", meta)
    return page, feats, meta


class ImageRun:
    """The viewers of one ``vidattn image --viewer`` run and their run file,
    ``outdir/viewer-run.js``: ``write`` each image's viewer into ``outdir/<folder>/``, then
    ``finish`` (also after a failure: it lists the images done).

    An earlier run file is removed at once, so that no page reads a list of another run's
    features while this one writes. ``facet``: ``(block, kind)`` of every page's features.
    """

    def __init__(self, outdir, facet=DEFAULT_FACET):
        self.path = Path(outdir) / RUN_FILE
        self.path.unlink(missing_ok=True)
        self.facet = facet
        self.images: list[dict] = []
        self.left_out = 0  # images done whose features would pass RUN_FEATURE_CAP
        self.max_error = 0.0
        self._sample = None  # (unit, stored) of up to ERROR_SAMPLE patches of the images so far
        self._model = None
        self._rng = np.random.default_rng(0)

    @property
    def bytes(self) -> int:
        """Bytes of the listed images' features."""
        return sum(e["bytes"] for e in self.images)

    def write(self, model, image, folder: str, size: int = DEFAULT_SIZE,
              threshold: float = DEFAULT_THRESHOLD, explanation=None) -> Path:
        """``write_image_viewer`` of ``image`` (a path; ``explanation``: its explain probe's
        maps) into ``outdir/folder`` (one path part), its page reading the run file -> the
        page's path. Its features join the run's list (unless they would pass
        ``RUN_FEATURE_CAP``) and its error measure (see the module)."""
        run = {"folder": "..", "key": RUN_KEY, "self": folder}
        page, feats, meta = _write_viewer(model, image, self.path.parent / folder, size,
                                          threshold, None, self.facet, run, explanation)
        self._model = model
        error = feats.max_error
        if self._sample is not None:
            error = max(error, dot_error(*self._sample, feats.unit, feats.stored))
        if self.bytes + feats.bytes > RUN_FEATURE_CAP:
            self.left_out += 1
            return page
        self.max_error = max(self.max_error, error)
        self._add_sample(feats)
        self.images.append({
            "folder": folder, "name": Path(image).name, "page": f"{folder}/{PAGE}",
            "image": f"{folder}/{DATA_FOLDER}/{IMAGE_NAME}", "features": f"{folder}/{DATA_FOLDER}",
            "key": feats.key, "grid": meta["grid"], "dims": meta["features"]["dims"],
            "bytes": feats.bytes,
        })
        return page

    def _add_sample(self, feats: StoredFeatures):
        """Keep up to ``RUN_SAMPLE`` of the image's patches in the error sample, and the sample
        at most ``ERROR_SAMPLE`` long (a random subset, the same on every run)."""
        pick = self._rng.permutation(len(feats.unit))[:RUN_SAMPLE]
        unit, stored = feats.unit[pick], feats.stored[pick]
        if self._sample is not None:
            unit = np.concatenate([self._sample[0], unit])
            stored = np.concatenate([self._sample[1], stored])
        keep = np.sort(self._rng.permutation(len(unit))[:ERROR_SAMPLE])
        self._sample = (unit[keep], stored[keep])

    def finish(self) -> Path | None:
        """Write the run file (atomically) -> its path; with no image listed, none (and none
        left from before)."""
        if not self.images:
            self.path.unlink(missing_ok=True)
            return None
        p = self._model.preset
        record = {
            "model": p.name, "weights": self._model.weights_label, "facet": self.facet[1],
            "layer": int(self.facet[0]) % p.depth, "max_error": self.max_error,
            "bytes": self.bytes, "cap": RUN_FEATURE_CAP, "left_out": self.left_out,
            "images": self.images,
        }
        raw = json.dumps(record, ensure_ascii=True).encode("ascii")
        write_bytes_atomic(self.path, chunk_script(RUN_KEY, raw).encode("ascii"))
        return self.path
