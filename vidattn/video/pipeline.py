"""``vidattn video``: reader -> preprocess -> model -> attention maths -> render -> writer.

Three threads overlap the work: one decodes and preprocesses frames into batches, the caller's
thread runs the model (TensorFlow and XLA release the GIL), and one renders and encodes; on a
machine with more cores, ``WORKERS`` threads share each batch's preprocessing and drawing, so the
model (on a GPU, say) does not wait on one core. Bounded queues between them keep memory flat
however long the video is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vidattn import attention as am
from vidattn import draw
from vidattn.cells import cell_index
from vidattn.errors import VidattnError
from vidattn.features import (FeatureWriter, PcaBasis, fit_basis, fit_reduction, fit_times,
                              model_meta, similarity_maps)
from vidattn.models.memory import explain_plan, format_bytes
from vidattn.options import VideoOptions
from vidattn.preprocess import prepare_frames, resize_frame, video_geometry
from vidattn.video.reader import DEFAULT_FPS, Prefetcher, probe, read_frames
from vidattn.video.writer import VideoWriter

PCA_CHANNELS = 4  # a pca view's maps: red, green, blue, foreground (features.PcaBasis.draw)
HEAD_PANEL_MIN = 240  # heads view: panels are the frame scaled by 1/cols, but not below this
# Threads that resize and normalise a batch's frames, and that draw them: the cores beside the
# model's (decoding and encoding are FFmpeg's and x264's own threads); one on a 2-core machine.
WORKERS = max(1, min(8, (os.cpu_count() or 1) // 2))
# Batches each queue between the threads holds (decoded frames, prepared inputs, maps to draw).
# The model is the slowest stage by far, so one batch ready on each side keeps it fed; each
# queued batch holds its decoded frames (2.8 MB each at 720p), and deeper queues only held more.
QUEUED_BATCHES = 1


@dataclass
class VideoResult:
    """What a render did: frames written, wall time, the output path (None for a viewer alone)
    and its frame size (the viewer's video's without one), the saved maps' shape, the viewer
    folder (None without one)."""

    frames: int
    seconds: float
    output: Path | None
    size: tuple[int, int]
    maps_shape: tuple[int, ...] = field(default=())
    viewer: Path | None = None


def _batches(frames, size):
    """Group an iterator of Frames into lists of at most ``size``."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Stopped(Exception):
    """Marks a sink stopped by its producer; never raised to users."""


class _Sink:
    """A consumer thread behind a bounded queue: ``put(item)`` hands work to ``fn``.

    The consumer's exception is re-raised in the producer at the next ``put`` or at ``close``.

    The end of the thread is awaited on an Event, not with ``Thread.join``: a join interrupted by
    Ctrl-C or SIGTERM can mark the still-running thread as finished (CPython 3.11), so the next
    join returns at once and the caller would close the writer under the encoding thread (a
    segfault in FFmpeg).
    """

    _END = object()

    def __init__(self, fn, maxsize=QUEUED_BATCHES):
        self._fn, self._queue, self._error = fn, queue.Queue(maxsize), None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vidattn-render", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while (item := self._queue.get()) is not self._END:
                if self._error is None:
                    try:
                        self._fn(item)
                    except BaseException as err:  # noqa: BLE001 - handed to the producer
                        self._error = err
        finally:
            self._finished.set()

    def put(self, item):
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self):
        """Finish the queued work, stop the thread, and re-raise its error if it had one."""
        self._queue.put(self._END)
        self._finished.wait()
        if self._error is not None:
            raise self._error

    def stop(self):
        """Drop the queued work and stop the thread (after a failure elsewhere): with an error
        set, the thread skips the items left, so the put below cannot block for long."""
        self._error = self._error or _Stopped()
        self._queue.put(self._END)
        self._finished.wait()


@dataclass(frozen=True)
class MapLayout:
    """The maps ``MapMaker`` computes for each frame, in order: for each block of ``blocks``, its
    ``heads`` CLS maps then their mean; then the rollout map if ``rollout``; then, if ``pca``,
    the ``PCA_CHANNELS`` maps of the PCA view; then, if ``similarity``, the similarity map;
    then, if ``explain``, the relevance map of the explained class (``relevance.methods``).
    ``count`` maps in all; ``view`` indexes the ones the chosen view draws."""

    blocks: tuple[int, ...]
    heads: int
    rollout: bool
    view: tuple[int, ...]
    pca: bool = False
    similarity: bool = False
    explain: bool = False

    @property
    def count(self) -> int:
        return (len(self.blocks) * (self.heads + 1) + self.rollout + PCA_CHANNELS * self.pca
                + self.similarity + self.explain)

    @classmethod
    def of(cls, model, opts: VideoOptions) -> MapLayout:
        """What ``opts`` needs: the view's maps, and every map the viewer stores when it is on."""
        depth, heads = model.preset.depth, model.preset.num_heads
        if opts.needs_pca:  # options refuse a viewer here: the maps are the PCA's alone
            return cls((), heads, False, tuple(range(PCA_CHANNELS)), pca=True)
        if opts.needs_similarity:  # the same: the viewer is refused
            return cls((), heads, False, (0,), similarity=True)
        if opts.needs_explain:  # the same: the viewer is refused
            return cls((), heads, False, (0,), explain=True)
        if opts.viewer is not None:
            blocks = tuple(range(depth)) if opts.viewer_blocks == "all" else (depth - 1,)
        else:
            blocks = () if opts.view == "rollout" else (depth - 1,)
        rollout = opts.needs_rollout or opts.viewer_has_rollout
        last = (len(blocks) - 1) * (heads + 1)  # the last block's first map
        if opts.needs_rollout:
            view = (len(blocks) * (heads + 1),)
        elif opts.view in ("heads", "masks"):
            view = tuple(range(last, last + heads))
        else:
            view = (last + heads,)
        return cls(blocks, heads, rollout, view)

    def attention(self, depth: int) -> str:
        """The ``Model.run`` attention mode that gives these maps: the class tokens' rows only,
        of the last block or of every block (none for rollout alone)."""
        return "none" if not self.blocks else "cls" if self.blocks == (depth - 1,) else "cls_all"


def _padded(inputs, size: int):
    """A batch of model inputs padded to ``size`` by repeating its last: the last batch of a video
    runs through the same compiled shape as the others."""
    n = len(inputs)
    return inputs if n >= size else np.concatenate([inputs, np.repeat(inputs[-1:], size - n, 0)])


class MapMaker:
    """Turns a batch of model inputs into ``(maps, tokens, explained)``: maps ``(N, count, gh,
    gw)`` float32 as ``layout`` says (``MapLayout.of``): what the view draws is
    ``maps[:, layout.view]``, and the viewer stores all of them; with ``tokens``, the patch
    tokens ``(N, gh * gw, D)`` float32 (else None); for an explain layout, ``explained``, one
    dict per frame of what its map explains (``relevance.targets.describe``; else None).
    A pca layout draws with ``basis`` (``fit_video_pca``), a similarity layout compares with
    ``query`` ``(D,)`` (``query_token``), an explain layout explains ``target``
    (``explain_target``; None: ``opts.explain_class``) with ``opts.explain_method`` and
    ``opts.explain_head``, from one backward pass per batch. Smoothing (an exponential moving
    average with time constant ``smooth`` frames) runs across batches."""

    def __init__(self, model, opts: VideoOptions, grid_hw, layout: MapLayout,
                 basis: PcaBasis | None = None, tokens: bool = False, query=None, target=None):
        self.model, self.opts, self.grid_hw, self.layout = model, opts, grid_hw, layout
        self.basis, self.query = basis, query
        self.target = opts.explain_class if target is None else target
        self.tokens = tokens or layout.pca
        if layout.pca and basis is None:
            raise ValueError("a pca layout needs a PcaBasis")
        if layout.similarity and query is None:
            raise ValueError("a similarity layout needs a query token")
        self.n_prefix = model.preset.num_prefix_tokens
        depth = model.preset.depth
        self._attention = layout.attention(depth)
        self._returned = range(depth) if self._attention == "cls_all" else (depth - 1,)
        self._state = None

    def __call__(self, inputs):
        o, layout = self.opts, self.layout
        n = len(inputs)
        padded = _padded(inputs, o.batch_size)
        parts, explained = [], None
        forward = layout.blocks or layout.rollout or layout.similarity or self.tokens
        out = self.model.run(padded, attention=self._attention, rollout=layout.rollout,
                             tokens=self.tokens,
                             facet=(o.layer, o.facet) if layout.similarity else None,
                             features=False) if forward else {"attention": ()}
        attns = dict(zip(self._returned, out["attention"]))
        for block in layout.blocks:
            maps = am.cls_maps(attns[block][:n], self.n_prefix, self.grid_hw)
            parts += [maps, am.head_mean(maps)[:, None]]
        if layout.rollout:
            parts.append(am.rollout_map(out["rollout"][:n], self.n_prefix, self.grid_hw)[:, None])
        tokens = out["patch_tokens"][:n] if self.tokens else None
        if layout.pca:  # (n, gh*gw, 4) -> (n, 4, gh, gw)
            parts.append(np.moveaxis(self.basis.draw(tokens), -1, 1).reshape(
                n, PCA_CHANNELS, *self.grid_hw))
        if layout.similarity:
            parts.append(similarity_maps(out["facet_tokens"][:n], self.query,
                                         self.grid_hw)[:, None])
        if layout.explain:
            from vidattn.relevance.methods import explain_maps  # the gradients, on demand
            from vidattn.relevance.targets import describe

            relevance, ps = explain_maps(self.model, padded, o.explain_method, self.target,
                                         o.explain_head)
            parts.append(np.maximum(relevance[:n], 0)[:, None])
            explained = describe(self.model.preset, ps.logits[:n], ps.target[:n], self.target)
        maps = np.ascontiguousarray(np.concatenate(parts, axis=1), np.float32)
        if o.smooth > 1:
            rate = 1.0 / o.smooth
            for i in range(len(maps)):  # per frame, not per pixel: the recurrence is sequential
                self._state = maps[i] if self._state is None else self._state + rate * (
                    maps[i] - self._state
                )
                maps[i] = self._state
        return maps, tokens, explained


def explained_caption(explained: dict, method: str) -> str:
    """The caption of an explained frame: "tabby cat 87% · generic" (an unnamed class: "class
    3"; an embedding target: "similarity to ref.jpg 0.82")."""
    name = explained["name"] or f"class {explained['class']}"
    value = (f"{explained['probability']:.0%}" if "probability" in explained
             else f"{explained['similarity']:.2f}")
    return f"{name} {value} · {method}"


def check_explain(preset, opts: VideoOptions) -> None:
    """One error line, before any work (the command line calls it before loading weights), when
    ``opts``' explain view cannot run on ``preset``: one without a classifier head and no
    ``--explain-reference`` (an embedding target needs no head), or a class name or index the
    head does not have (the name's nearest classes suggested)."""
    from vidattn.relevance.targets import check_classifier, check_target

    if opts.explain_reference is None:
        check_classifier(preset)
    check_target(preset, opts.explain_class)


def explain_target(model, opts: VideoOptions):
    """What the explain view explains in every frame: ``opts.explain_class``, or the
    ``relevance.targets.Embedding`` of ``opts.explain_reference`` (``probes.explain_target``:
    its square centre crop at ``--size``, rounded down to the patch; a missing or unreadable
    file is one VidattnError naming it)."""
    if opts.explain_reference is None:
        return opts.explain_class
    from vidattn.probes import explain_target as image_target

    p = model.preset.patch_size
    return image_target(model, dataclasses.replace(opts, size=max(p, opts.size // p * p)))


def model_label(model) -> str | None:
    """The caption every rendered frame carries for what could be mistaken for a trained fp32
    model: RANDOM WEIGHTS for an untrained one, and a reduced precision's name; None for neither."""
    labels = ["RANDOM WEIGHTS (untrained)"] * model.is_random + [model.precision] * (
        model.precision != "fp32")
    return " · ".join(labels) or None


class FrameRenderer:
    """Draws one frame's maps onto it as the chosen view.

    Output size for an ``H x W`` frame: ``mean``, ``masks``, ``rollout``: ``H x W``;
    ``side-by-side``: the frame and the overlay with a 2-pixel gap, ``H x (2W + 2)``; ``heads``: a
    grid (``draw.grid_shape``, ``cols = ceil(sqrt(heads))``) of panels, each the frame scaled by
    ``max(1 / cols, min(1, 240 / min(H, W)))``. The writer pads an odd side by one pixel.
    Captions: head numbers, the explained class and its probability (top left, explain:
    ``explained``, one dict of ``relevance.targets.describe``), the frame time (bottom right) and,
    always, for random weights, a
    RANDOM WEIGHTS label (bottom left), and a reduced precision's name beside it, so neither an
    untrained model's maps nor a bf16/fp16 model's are mistaken for a trained fp32 model's.
    """

    def __init__(self, model, opts: VideoOptions, geometry):
        self.opts, self.geometry = opts, geometry
        self.patch = model.preset.patch_size
        self.lut = draw.colormap_lut(opts.colormap)
        self.model_label = model_label(model)
        heads = model.preset.num_heads
        self.cols = math.ceil(math.sqrt(heads))
        self.mask_colors = draw.head_colors(heads)

    def _heat(self, grid_map, out_hw):
        return draw.map_to_frame(grid_map, out_hw, self.geometry.resized_hw, self.patch,
                                 stride=self.geometry.stride)

    def __call__(self, image, maps, pts_s, explained=None):
        o = self.opts
        h, w = image.shape[:2]
        if o.needs_pca:  # red, green, blue, foreground: fixed by the basis, never rescaled
            # to uint8 on the grid, then upsampled: half the time of upsampling floats (within
            # one level of 255)
            up = self._heat(draw.to_uint8(maps), (h, w))
            out = draw.blend(image, np.ascontiguousarray(np.moveaxis(up[:3], 0, -1)),
                             up[3] * np.float32(o.alpha / 255))
        elif o.needs_similarity:  # cosine: 0..1 on the colormap in every frame, not rescaled
            out = draw.overlay(image, self._heat(np.clip(maps[0], 0, 1), (h, w)), self.lut,
                               o.alpha)
        elif o.view == "heads":
            maps = am.normalize_maps(maps)
            scale = max(1 / self.cols, min(1.0, HEAD_PANEL_MIN / min(h, w)))
            ph, pw = max(2, round(h * scale)), max(2, round(w * scale))
            small = resize_frame(image, (ph, pw))
            panels = []
            for k, m in enumerate(maps):
                panel = draw.overlay(small, self._heat(m, (ph, pw)), self.lut, o.alpha)
                panels.append(draw.caption(panel, f"head {k}") if o.captions else panel)
            out = draw.grid(panels, cols=self.cols)
        elif o.view == "masks":
            masks = am.threshold_masks(am.normalize_maps(maps)[None], keep=o.threshold)[0]
            out = draw.draw_masks(image, masks, self.mask_colors, o.alpha, self.patch,
                                    self.geometry.resized_hw, stride=self.geometry.stride)
        else:
            out = draw.overlay(image, self._heat(am.normalize_maps(maps)[0], (h, w)), self.lut,
                               o.alpha)
        if o.view == "side-by-side":
            out = draw.side_by_side(image, out)
        if o.captions and explained is not None:
            out = draw.caption(out, explained_caption(explained, o.explain_method))
        if o.captions:
            out = draw.caption(out, f"t={pts_s:.2f}s", corner="br")
        if self.model_label:
            out = draw.caption(out, self.model_label, corner="bl")
        return out


def render_video(model, src, dst, opts: VideoOptions | None = None) -> VideoResult:
    """Render the attention of ``model`` on every (kept) frame of ``src`` into ``dst``, and into
    the browser viewer folder ``opts.viewer`` when that is set (``vidattn.viewer.video``). A pca
    view first fits its one basis on frames spread over the range (``fit_video_pca``).

    ``dst`` ends in .mp4/.mov/.mkv (H.264 with the source's audio) or .gif; it may be None when
    the viewer is the only output. ``opts.save_features`` streams every kept frame's patch tokens
    into a .npy with a .json sidecar (``features.FeatureWriter``). Nothing is left at ``dst``,
    the viewer folder or the feature files unless the whole video was written.
    """
    opts = opts or VideoOptions()
    if dst is None and opts.viewer is None:
        raise ValueError("render_video needs an output: dst, opts.viewer or both")
    if opts.needs_explain:
        check_explain(model.preset, opts)
    target = explain_target(model, opts) if opts.needs_explain else None
    info = probe(src)
    total = _expected_frames(info, opts)
    if total and total < opts.batch_size:  # a short run: one smaller batch, no padded frames
        opts = dataclasses.replace(opts, batch_size=total)
    geometry = video_geometry(
        info.height, info.width, model.preset.patch_size, opts.size, opts.full_res,
        model.preset.stride)
    opts = _plan_batch(model, opts, geometry)
    kind = model.preset.preprocessing
    layout = MapLayout.of(model, opts)
    from vidattn.models.vit import check_attention  # the model is loaded: Keras is imported

    check_attention(model.preset, layout.attention(model.preset.depth))  # before any output
    if dst is not None:
        _check_writable(dst)
    basis = fit_video_pca(model, src, info, opts, geometry) if layout.pca else None
    query = query_token(model, src, opts, geometry) if layout.similarity else None
    reduction = None
    if opts.viewer is not None and opts.viewer_similarity:
        _check_viewer_features(src, total, geometry)
        reduction = fit_reduction(sample_tokens(model, src, info, opts, geometry))
    make_maps = MapMaker(model, opts, geometry.grid_hw, layout, basis,
                         tokens=opts.save_features is not None or reduction is not None,
                         query=query, target=target)
    render_frame = FrameRenderer(model, opts, geometry)
    saved_maps, saved_pts, saved_explained = [], [], []
    started = time.perf_counter()
    written = 0
    pool = ThreadPoolExecutor(WORKERS, "vidattn-work") if WORKERS > 1 else None

    def prepare(images):
        return prepare_frames(images, geometry, kind)

    def prepared():
        frames = read_frames(src, opts.start, opts.end, opts.every, opts.max_frames)
        with Prefetcher(frames, maxsize=QUEUED_BATCHES * opts.batch_size,
                        name="vidattn-decode") as decoded:
            for batch in _batches(decoded, opts.batch_size):
                parts = _in_parallel(pool, prepare, _split([f.image for f in batch], WORKERS))
                yield batch, np.concatenate(parts)

    def open_writer(path, width, height):
        return VideoWriter(
            path, info.fps or DEFAULT_FPS, width, height,
            audio_from=src if opts.audio else None, crf=opts.crf, preset=opts.x264_preset,
            gif_fps=opts.gif_fps, gif_width=opts.gif_width,
        )

    bar = tqdm(total=total, unit="frame", disable=not opts.progress, dynamic_ncols=True,
               desc=Path(src).name, leave=True)
    writer = viewer = features = None

    def consume(item):
        nonlocal writer, written
        batch, maps, tokens, explained = item
        images = [None] * len(batch) if dst is None else _in_parallel(
            pool, lambda args: render_frame(*args),
            [(f.image, m[list(layout.view)], f.pts_s, e)
             for f, m, e in zip(batch, maps, explained or [None] * len(batch))])
        for i, (frame, frame_maps, image) in enumerate(zip(batch, maps, images)):
            if image is not None:
                if writer is None:
                    writer = open_writer(dst, image.shape[1], image.shape[0])
                writer.write(image, frame.pts_s)
            if viewer is not None:
                viewer.write(frame.image, frame.pts_s, frame_maps,
                             None if reduction is None else tokens[i])
            written += 1
        bar.update(len(batch))

    if opts.viewer is not None:
        from vidattn.viewer.video import VideoViewer

        viewer = VideoViewer(opts.viewer, model, geometry, layout, open_writer, Path(src).name,
                             _viewer_defaults(opts), reduction)
    if opts.save_features is not None:
        try:
            features = FeatureWriter(opts.save_features, geometry.grid_hw,
                                     model.preset.embed_dim,
                                     {"source": Path(src).name, **model_meta(model)})
        except BaseException:
            if viewer is not None:
                viewer.abort()
            raise
    sink = _Sink(consume)
    try:
        with Prefetcher(prepared(), maxsize=QUEUED_BATCHES, name="vidattn-prepare") as batches:
            for batch, inputs in batches:
                maps, tokens, explained = make_maps(inputs)
                if features is not None:
                    features.write(tokens, [f.pts_s for f in batch])
                if opts.save_maps is not None:
                    saved_maps.append(maps[:, list(layout.view)].astype(np.float16))
                    saved_pts.extend(f.pts_s for f in batch)
                    saved_explained.extend(explained or ())
                sink.put((batch, maps, tokens, explained))
        sink.close()
        if not written:
            raise VidattnError("no frames in the requested range", src)
        if opts.save_maps is not None:
            _save_maps(opts.save_maps, saved_maps, saved_pts, opts, model, geometry,
                       saved_explained)
        if viewer is not None:
            viewer.finish()
        if writer is not None:
            writer.close()
        if features is not None:
            features.close()
        if viewer is not None:
            viewer.publish()
    except BaseException:
        sink.stop()
        if writer is not None:
            writer.abort()
        if viewer is not None:
            viewer.abort()
        if features is not None:
            features.abort()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return VideoResult(written, time.perf_counter() - started,
                       None if dst is None else Path(dst), (writer or viewer).size,
                       tuple(np.concatenate(saved_maps).shape) if saved_maps else (),
                       opts.viewer)


def fit_video_pca(model, src, info, opts: VideoOptions, geometry) -> PcaBasis:
    """The one PCA basis of a video (``features.fit_basis``, background per
    ``opts.pca_background``), fitted on ``sample_tokens``."""
    return fit_basis(sample_tokens(model, src, info, opts, geometry), opts.pca_background)


def sample_tokens(model, src, info, opts: VideoOptions, geometry) -> np.ndarray:
    """The patch tokens ``(frames, gh * gw, D)`` of the frames ``fit_frames`` reads, run through
    the model in batches of ``opts.batch_size`` as the render's frames are: what a video's PCA
    and the viewer's feature reduction are fitted on."""
    sample, kind = [], model.preset.preprocessing
    for batch in _batches(fit_frames(src, info, opts), opts.batch_size):
        inputs = prepare_frames([f.image for f in batch], geometry, kind)
        out = model.run(_padded(inputs, opts.batch_size), tokens=True)
        sample.append(out["patch_tokens"][: len(batch)])
    if not sample:
        raise VidattnError("no frames in the requested range", src)
    return np.concatenate(sample)


def query_token(model, src, opts: VideoOptions, geometry) -> np.ndarray:
    """The patch features ``(D,)`` (``opts.facet`` of block ``opts.layer``) under
    ``opts.query_point`` (frame pixels), in the frame at its time (default: the first frame
    rendered, ``opts.start``); errors name ``src`` for a point outside the frame or a time past
    the end."""
    x, y, seconds = opts.query_point
    (fh, fw), (rh, rw) = geometry.frame_hw, geometry.resized_hw
    if not (0 <= x < fw and 0 <= y < fh):
        raise VidattnError(f"--query {x:g},{y:g} is outside the {fw}x{fh} frame", src)
    at = opts.start if seconds is None else seconds
    frame = next(read_frames(src, at, None, 1, 1), None)
    if frame is None:
        raise VidattnError(f"--query: no frame at {at or 0:g} s", src)
    inputs = prepare_frames([frame.image], geometry, model.preset.preprocessing)
    tokens = model.run(_padded(inputs, opts.batch_size),
                       facet=(opts.layer, opts.facet))["facet_tokens"][0]
    gh, gw = geometry.grid_hw
    row = cell_index(y * rh / fh, gh, geometry.patch, geometry.stride)
    col = cell_index(x * rw / fw, gw, geometry.patch, geometry.stride)
    return tokens[row * gw + col]


def fit_frames(src, info, opts: VideoOptions):
    """The frames a video's PCA is fitted on: up to ``opts.pca_frames``, each read by seeking
    (``read_frames`` from its time) to the middles of equal spans of ``[start, end)``, where the
    end is the first of ``--end``, the video's duration and, with ``--max-frames``, the time that
    many kept frames take; each frame once, in time order. A video whose duration is unknown
    gives its range's first ``pca_frames`` frames instead."""
    start = opts.start or 0.0
    end = min(t for t in (opts.end, info.duration_s, _frames_end(info, opts), math.inf)
              if t is not None)
    if not (math.isfinite(end) and end > start):
        count = min(opts.pca_frames, opts.max_frames or opts.pca_frames)
        yield from read_frames(src, opts.start, opts.end, opts.every, count)
        return
    seen = set()
    for t in fit_times(start, end, opts.pca_frames):
        for frame in read_frames(src, float(t), opts.end, max_frames=1):
            if frame.pts_s not in seen:  # seeks in a short video land on one frame
                seen.add(frame.pts_s)
                yield frame


def _frames_end(info, opts: VideoOptions) -> float | None:
    """Where ``--max-frames`` kept frames end, in seconds (None without it or a frame rate)."""
    if opts.max_frames is None or not info.fps:
        return None
    return (opts.start or 0.0) + opts.max_frames * opts.every / float(info.fps)


def _check_viewer_features(src, total, geometry):
    """One error line, before any work, when the viewer's stored features would pass
    ``VIEWER_FEATURE_CAP`` (the page loads them into the browser)."""
    from vidattn.viewer.video import VIEWER_FEATURE_CAP, feature_bytes

    if total and feature_bytes(total, geometry.grid_hw) > VIEWER_FEATURE_CAP:
        need = format_bytes(feature_bytes(total, geometry.grid_hw))
        raise VidattnError(f"--viewer-similarity would store {need} of features for {total} "
                           f"frames, above the viewer's {format_bytes(VIEWER_FEATURE_CAP)}: "
                           "keep fewer frames (--every, --max-frames, --end) or a smaller --size",
                           src)


def _viewer_defaults(opts: VideoOptions) -> dict:
    """The viewer's first state: the view's map, its colours and threshold."""
    return {"map": "rollout" if opts.needs_rollout else "mean",
            "mode": "mask" if opts.view == "masks" else "heat",
            "colormap": opts.colormap, "alpha": opts.alpha, "threshold": opts.threshold}


def _split(items, parts: int) -> list[list]:
    """``items`` in at most ``parts`` consecutive groups of nearly equal size, none empty."""
    size = -(-len(items) // max(1, parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _in_parallel(pool, fn, items) -> list:
    """``[fn(x) for x in items]``, on ``pool``'s threads when there is one (the work is OpenCV's
    and numpy's, which release the GIL), in order."""
    return list(pool.map(fn, items)) if pool is not None and len(items) > 1 else [
        fn(x) for x in items]


def _plan_batch(model, opts: VideoOptions, geometry) -> VideoOptions:
    """``opts`` with the batch size the memory planner allows (``Model.plan``), said in one line
    when it is lower than asked; raises VidattnError, naming the largest ``--size`` that fits,
    when one frame cannot fit. Besides the model's working memory, each frame of a batch is held
    about five times as decoded pixels in the pipeline's queues. The explain view plans its
    backward pass instead (``memory.explain_plan``: every block's attention, its gradient and
    the activations the gradient needs)."""
    (fh, fw), p, s = geometry.frame_hw, geometry.patch, geometry.stride
    layout = MapLayout.of(model, opts)
    sizes = (min(geometry.resized_hw),
             lambda side: video_geometry(fh, fw, p, side, stride=s).input_hw)
    if layout.explain:
        plan = explain_plan(model.preset, geometry.input_hw, opts.batch_size,
                            model.memory_budget, extra_per_image=5 * fh * fw * 3, sizes=sizes)
    else:
        plan = model.plan(
            geometry.input_hw, opts.batch_size, layout.attention(model.preset.depth),
            layout.rollout,
            tokens=layout.pca or layout.similarity or opts.save_features is not None,
            extra_per_image=5 * fh * fw * 3, sizes=sizes)
    if plan.batch < opts.batch_size:
        if opts.progress:
            tqdm.write(f"vidattn: note: batch size {plan.batch} instead of {opts.batch_size}: "
                       f"{geometry.input_hw[1]}x{geometry.input_hw[0]} frames need about "
                       f"{format_bytes(plan.bytes / plan.batch)} each and the memory budget is "
                       f"{format_bytes(plan.budget)}", file=sys.stderr)
        opts = dataclasses.replace(opts, batch_size=plan.batch)
    return opts


def _expected_frames(info, opts):
    """Frames the run will write, for the progress bar (an estimate for VFR video)."""
    if info.n_frames is None or not info.fps:
        return opts.max_frames
    first = round((opts.start or 0) * float(info.fps))
    last = info.n_frames if opts.end is None else min(info.n_frames, round(opts.end * info.fps))
    n = max(0, math.ceil((last - first) / opts.every))
    return n if opts.max_frames is None else min(n, opts.max_frames)


def _check_writable(dst):
    parent = Path(dst).resolve().parent
    if not parent.is_dir():
        raise VidattnError("output folder does not exist", parent)


def _save_maps(path, maps, pts, opts, model, geometry, explained=()):
    """Write the raw per-frame maps (before display normalisation) as .npz, atomically; for the
    explain view also what each frame explains (``relevance.targets.describe``): ``explained_class``
    (index, -1 for an embedding target), ``explained_name`` and ``explained_probability`` (or
    ``explained_similarity``), and the method and head."""
    from vidattn.io import atomic_path

    extra = {}
    if explained:
        value = "probability" if "probability" in explained[0] else "similarity"
        extra = {"explained_class": np.asarray([-1 if e["class"] is None else e["class"]
                                                for e in explained], np.int64),
                 "explained_name": np.asarray([e["name"] or "" for e in explained]),
                 f"explained_{value}": np.asarray([e[value] for e in explained], np.float64),
                 "explain_method": opts.explain_method, "explain_head": opts.explain_head}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f, maps=np.concatenate(maps), pts_s=np.asarray(pts, np.float64),
                view=opts.view, model=model.preset.name, weights=model.weights_label,
                grid_hw=np.asarray(geometry.grid_hw), patch_size=model.preset.patch_size,
                stride=geometry.stride, **extra,
            )
