"""Patch features: a PCA of a ViT's patch tokens drawn as colours, patch similarity, and a
streamed feature file.

The picture of what a self-supervised ViT has learnt (DINOv2, Figure 1): three principal
components of the final-normed patch tokens mapped to red, green and blue, with the background
removed by thresholding the first component. A ``PcaBasis`` is fitted once, on a sample of tokens
(the frames spread over a video, or every image of a run), and then applied to every frame: the
axes *and* the colour scaling are fixed at the fit, so a colour means the same thing in every
frame and nothing flickers.

Fit (``fit_basis``): the tokens are centred in float64 and decomposed by SVD; each component is
scaled to 0..1 by the sample's 1st and 99th percentiles of its projection (``PERCENTILES``), and
clipped there. With a background threshold ``T`` the DINOv2 recipe runs: the first component of
all the tokens, scaled so, splits foreground (above ``T``) from background; its sign is chosen so
that the foreground is the smaller side of the sample (objects cover less of a picture than what
lies around them); the three colour components are then fitted on the sample's foreground tokens
alone, so the colours spend their range on the object's parts.

Similarity (``unit_rows``, ``similarity_maps``): the cosine of every patch token to one query
token, as the DINOv2 and DINOv3 patch-matching notebooks compare patches (tokens L2-normalised,
then a dot product).

``FeatureWriter`` streams float16 patch tokens ``(frames, gh * gw, D)`` into a plain ``.npy`` file
as they come (memory does not grow with the video) with a JSON sidecar (timestamps, grid, model,
weights); both are written under temporary names and renamed only when complete
(``vidattn.io``). ``numpy.load(path, mmap_mode="r")`` and ``json.load`` read them without vidattn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidattn.io import temporary_path
from vidattn.options import check_features_path

PERCENTILES = (1.0, 99.0)  # each component's colour range: robust to a few outlying patches
COMPONENTS = 3  # red, green, blue


def unit_rows(x) -> np.ndarray:
    """float32 ``(..., D)`` with each row (last axis) scaled to unit L2 norm, as
    ``F.normalize(p=2)`` (eps 1e-12)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


VIEWER_DIMS = 32  # the video viewer's stored patch features: directions kept per patch
ERROR_SAMPLE = 2048  # tokens whose pairs measure a reduction's largest error


@dataclass(frozen=True)
class Reduction:
    """Unit patch features projected onto ``axes`` ``(k, D)``, the directions holding most of
    their energy (an uncentred PCA of a sample's unit tokens), then stored as int8 with one
    scale per patch (``quantize_signed``), so that the dot product of two stored vectors
    approximates the cosine of the full features. ``max_error``: the largest
    ``|cosine - stored dot|`` over the pairs of (up to ``ERROR_SAMPLE``) tokens of the sample."""

    axes: np.ndarray
    max_error: float

    def __call__(self, tokens) -> np.ndarray:
        """Tokens ``(..., D)`` -> reduced ``(..., k)`` float32 (before the int8 storage)."""
        return (unit_rows(tokens) @ self.axes.T.astype(np.float32)).astype(np.float32)


def quantize_signed(values) -> tuple[np.ndarray, np.ndarray]:
    """Float ``(..., k)`` -> ``(uint8 (..., k), float32 (...))``: each vector as ``round(127 *
    v / max|v|) + 128`` and ``max|v|`` its scale; ``(byte - 128) / 127 * scale`` gives ``v``
    back within ``scale / 254``."""
    values = np.asarray(values, np.float32)
    scale = np.abs(values).max(axis=-1, keepdims=True)
    ratio = np.divide(values, scale, out=np.zeros_like(values), where=scale > 0)
    return (np.rint(ratio * 127) + 128).astype(np.uint8), scale[..., 0]


def dequantize_signed(data, scales) -> np.ndarray:
    """The inverse of ``quantize_signed``: float32 ``(..., k)``."""
    return (np.asarray(data, np.float32) - 128) / 127 * np.asarray(scales, np.float32)[..., None]


def signed_bytes(vectors: int, dims: int) -> int:
    """Bytes that ``vectors`` vectors of ``dims`` take as ``quantize_signed`` stores them (before
    base64): ``dims`` bytes and a float32 scale each."""
    return vectors * (dims + 4)


def dot_error(unit_a, stored_a, unit_b, stored_b) -> float:
    """The largest ``|cosine - stored dot|`` over the pairs of rows of ``a`` ``(M, D)`` and
    ``b`` ``(N, D)``: ``unit`` the features scaled to unit length, ``stored`` the same as a page
    decodes them (``dequantize_signed``); in float64."""
    exact = np.asarray(unit_a, np.float64) @ np.asarray(unit_b, np.float64).T
    approx = np.asarray(stored_a, np.float64) @ np.asarray(stored_b, np.float64).T
    return float(np.abs(exact - approx).max())


def fit_reduction(sample, k: int = VIEWER_DIMS) -> Reduction:
    """A ``Reduction`` to ``k`` directions fitted on tokens ``(..., D)``, its error measured on
    the sample (see the class)."""
    unit = unit_rows(np.asarray(sample).reshape(-1, np.shape(sample)[-1])).astype(np.float64)
    _, _, vt = np.linalg.svd(unit, full_matrices=False)
    axes = vt[:k]
    pick = np.random.default_rng(0).permutation(len(unit))[:ERROR_SAMPLE]
    stored = dequantize_signed(*quantize_signed(unit[pick] @ axes.T))
    return Reduction(axes.astype(np.float32), dot_error(unit[pick], stored, unit[pick], stored))


def similarity_maps(tokens, query, grid_hw) -> np.ndarray:
    """Patch tokens ``(N, gh * gw, D)`` and one query token ``(D,)`` -> the cosine similarity
    of every patch to the query, ``(N, gh, gw)`` float32 in [-1, 1]."""
    cos = unit_rows(tokens) @ unit_rows(query)
    return cos.reshape(len(cos), *grid_hw).astype(np.float32)


@dataclass(frozen=True)
class Projection:
    """``k`` principal axes of a token sample and their fixed colour scaling.

    mean: ``(D,)`` float64, the sample's mean token. axes: ``(k, D)`` float64, unit rows (zero
    rows where the sample had fewer than ``k`` directions). low, high: ``(k,)`` the sample's
    percentiles of each projection, mapped to 0 and 1. explained: ``(k,)`` share of the sample's
    total variance along each axis.
    """

    mean: np.ndarray
    axes: np.ndarray
    low: np.ndarray
    high: np.ndarray
    explained: np.ndarray

    def __call__(self, tokens) -> np.ndarray:
        """Tokens ``(..., D)`` -> float32 ``(..., k)`` in [0, 1]."""
        raw = (np.asarray(tokens, np.float64) - self.mean) @ self.axes.T
        return _scaled(raw, self.low, self.high).astype(np.float32)

    def flipped(self) -> Projection:
        """The same projection with its axes pointing the other way: each value becomes one
        minus what it was."""
        return Projection(self.mean, -self.axes, -self.high, -self.low, self.explained)


def _scaled(raw, low, high):
    span = np.where(high > low, high - low, 1.0)
    return np.clip((raw - low) / span, 0.0, 1.0)


def fit_projection(sample, k: int = COMPONENTS) -> Projection:
    """The first ``k`` principal axes of ``sample`` ``(M, D)`` (SVD of the centred float64
    tokens), each signed so that its largest loading is positive (deterministic), with the
    ``PERCENTILES`` of the sample's projections as its colour range."""
    x = np.asarray(sample, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"a PCA needs a sample (M, D) of at least one token, got {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((k, x.shape[1]))
    found = min(k, len(vt))
    axes[:found] = vt[:found]
    peak = np.abs(axes).argmax(axis=1)
    axes *= np.where(axes[np.arange(k), peak] < 0, -1.0, 1.0)[:, None]
    variance = s**2
    explained = np.zeros(k)
    if variance.sum() > 0:
        explained[:found] = variance[:found] / variance.sum()
    low, high = np.percentile(centred @ axes.T, PERCENTILES, axis=0)
    return Projection(mean, axes, low, high, explained)


@dataclass(frozen=True)
class PcaBasis:
    """What a PCA picture is drawn with: ``colours`` (3 axes -> RGB), and with a background
    threshold, ``background`` (the first axis of all the tokens, foreground above
    ``threshold``)."""

    colours: Projection
    background: Projection | None = None
    threshold: float | None = None

    def draw(self, tokens) -> np.ndarray:
        """Tokens ``(..., D)`` -> float32 ``(..., 4)``: red, green, blue in [0, 1], and 1 for a
        foreground patch, 0 for background (all 1 without a threshold)."""
        rgb = self.colours(tokens)
        if self.background is None:
            keep = np.ones(rgb.shape[:-1] + (1,), np.float32)
        else:
            keep = (self.background(tokens) > self.threshold).astype(np.float32)
        return np.concatenate([rgb, keep], axis=-1)

    def record(self) -> dict:
        """The numbers for ``probes.json``: each colour component's explained variance ratio
        (of the tokens it was fitted on), and the background split's where there is one."""
        out = {"explained_variance_ratio": self.colours.explained.tolist()}
        if self.background is not None:
            out["background"] = {"threshold": self.threshold,
                                 "first_component_explained_variance_ratio":
                                     float(self.background.explained[0])}
        return out


def fit_basis(sample, threshold: float | None = None) -> PcaBasis:
    """Fit a ``PcaBasis`` on tokens ``(..., D)`` (see the module's note), removing the background
    below ``threshold`` of the first component when one is given (in (0, 1))."""
    sample = np.asarray(sample).reshape(-1, np.shape(sample)[-1])
    if threshold is None:
        return PcaBasis(fit_projection(sample))
    split = fit_projection(sample, 1)
    first = split(sample)[:, 0]
    if (first > threshold).sum() > (first < 1 - threshold).sum():  # the flip's foreground
        split = split.flipped()
        first = split(sample)[:, 0]
    foreground = sample[first > threshold]
    return PcaBasis(fit_projection(foreground if len(foreground) > 1 else sample), split,
                    threshold)


def fit_times(start: float, end: float, count: int) -> np.ndarray:
    """``count`` times spread evenly over ``[start, end)``: the middles of ``count`` equal
    spans, so the first and last frames of a fade do not weigh more than the rest."""
    return start + (np.arange(count) + 0.5) * (end - start) / count


# -- the feature file --------------------------------------------------------------------------


class FeatureWriter:
    """Stream float16 patch tokens into ``path`` (``.npy``, shape ``(frames, gh * gw, D)``) and
    their description into ``path`` with ``.json`` (``sidecar``): ``shape``, ``grid_hw``,
    ``dim``, ``dtype``, the name of each frame under the key ``index`` (``timestamps_s``: seconds
    for a video's frames; ``images``: the images' paths), and ``meta`` (``model_meta``).

    The ``.npy`` header is written first with 0 frames and rewritten at ``close`` with the count:
    numpy pads headers for in-place growth, so its length does not change. Both files go to
    temporary names (``io.temporary_path``) and are renamed into place by ``close``, the sidecar
    last; ``abort`` removes them. Memory holds nothing but the timestamps.
    """

    def __init__(self, path, grid_hw, dim: int, meta: dict, index: str = "timestamps_s"):
        check_features_path(path)
        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)
        self.grid_hw, self.dim, self.meta = tuple(int(v) for v in grid_hw), int(dim), meta
        self.index = index
        self.names: list = []
        self._tmp = temporary_path(self.path)
        self._tmp_sidecar = None
        try:
            self._tmp_sidecar = temporary_path(self.sidecar)
            self._file = open(self._tmp, "r+b")  # noqa: SIM115 - closed by close/abort
            self._header = self._write_header(0)
        except BaseException:
            self.abort()
            raise

    def _write_header(self, frames: int) -> int:
        self._file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                  "fortran_order": False,
                  "shape": (frames, self.grid_hw[0] * self.grid_hw[1], self.dim)}
        np.lib.format.write_array_header_1_0(self._file, header)
        return self._file.tell()

    def write(self, tokens, names) -> None:
        """Append tokens ``(n, gh * gw, D)`` (cast to float16) of ``n`` frames, and their
        ``names``: timestamps in seconds, or image names."""
        tokens = np.asarray(tokens)
        expected = (self.grid_hw[0] * self.grid_hw[1], self.dim)
        if tokens.shape[1:] != expected:
            raise ValueError(f"tokens must be (n, {expected[0]}, {expected[1]}), "
                             f"got {tokens.shape}")
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(tokens, np.float16).tobytes())
        self.names.extend(names)

    def close(self) -> Path:
        """Finish the header, write the sidecar, and rename both into place -> the .npy path."""
        try:
            if self._write_header(len(self.names)) != self._header:
                raise RuntimeError("the .npy header changed length")  # numpy pads: cannot happen
            self._file.close()
            record = {"shape": [len(self.names), self.grid_hw[0] * self.grid_hw[1], self.dim],
                      "dtype": "float16", "grid_hw": list(self.grid_hw), "dim": self.dim,
                      self.index: self.names, **self.meta}
            self._tmp_sidecar.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            os.replace(self._tmp, self.path)
            os.replace(self._tmp_sidecar, self.sidecar)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Remove the temporary files (after a failure or an interruption)."""
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
        for tmp in (self._tmp, self._tmp_sidecar):
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def sidecar_path(path) -> Path:
    """The JSON sidecar of a feature file: ``feats.npy`` -> ``feats.json``."""
    return Path(path).with_suffix(".json")


def model_meta(model) -> dict:
    """The sidecar's description of the model the features come from."""
    return {"model": model.preset.name, "weights": model.weights_label,
            "random_weights": model.is_random, "patch_size": model.preset.patch_size,
            "stride": model.preset.cell_stride, "precision": model.precision,
            "tokens": "final-normed patch tokens (class, register and storage tokens removed)"}
