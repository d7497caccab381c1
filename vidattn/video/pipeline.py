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
from vidattn.errors import VidattnError
from vidattn.models.memory import format_bytes
from vidattn.options import VideoOptions
from vidattn.preprocess import prepare_frames, resize_frame, video_geometry
from vidattn.video.reader import DEFAULT_FPS, Prefetcher, probe, read_frames
from vidattn.video.writer import VideoWriter

HEAD_PANEL_MIN = 240  # heads view: panels are the frame scaled by 1/cols, but not below this
# Threads that resize and normalise a batch's frames, and that draw them: the cores beside the
# model's (decoding and encoding are FFmpeg's and x264's own threads); one on a 2-core machine.
WORKERS = max(1, min(8, (os.cpu_count() or 1) // 2))


@dataclass
class VideoResult:
    """What a render did: frames written, wall time, the output path and its frame size."""

    frames: int
    seconds: float
    output: Path
    size: tuple[int, int]
    maps_shape: tuple[int, ...] = field(default=())


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

    def __init__(self, fn, maxsize=2):
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


class MapMaker:
    """Turns a batch of model inputs into the maps a view shows, ``(N, k, gh, gw)`` float32:
    k = heads for ``heads`` and ``masks``, 1 for ``mean`` and ``rollout``. Smoothing (an
    exponential moving average with time constant ``smooth`` frames) runs across batches."""

    def __init__(self, model, opts: VideoOptions, grid_hw):
        self.model, self.opts, self.grid_hw = model, opts, grid_hw
        self.n_prefix = model.preset.num_prefix_tokens
        self._state = None

    def __call__(self, inputs):
        o = self.opts
        n = len(inputs)
        if n < o.batch_size:  # pad the last batch: one compiled shape for the whole video
            inputs = np.concatenate([inputs, np.repeat(inputs[-1:], o.batch_size - n, 0)])
        if o.needs_rollout:
            out = self.model.run(inputs, rollout=True)
            maps = am.rollout_map(out["rollout"][:n], self.n_prefix, self.grid_hw)[:, None]
        else:
            out = self.model.run(inputs, attention="cls")
            maps = am.cls_maps(out["attention"][-1][:n], self.n_prefix, self.grid_hw)
            if o.view in ("mean", "side-by-side"):
                maps = am.head_mean(maps)[:, None]
        maps = np.ascontiguousarray(maps, np.float32)
        if o.smooth > 1:
            rate = 1.0 / o.smooth
            for i in range(len(maps)):  # per frame, not per pixel: the recurrence is sequential
                self._state = maps[i] if self._state is None else self._state + rate * (
                    maps[i] - self._state
                )
                maps[i] = self._state
        return maps


class FrameRenderer:
    """Draws one frame's maps onto it as the chosen view.

    Output size for an ``H x W`` frame: ``mean``, ``masks``, ``rollout``: ``H x W``;
    ``side-by-side``: the frame and the overlay with a 2-pixel gap, ``H x (2W + 2)``; ``heads``: a
    grid (``draw.grid_shape``, ``cols = ceil(sqrt(heads))``) of panels, each the frame scaled by
    ``max(1 / cols, min(1, 240 / min(H, W)))``. The writer pads an odd side by one pixel.
    Captions: head numbers, the frame time (bottom right) and, always, for random weights, a
    RANDOM WEIGHTS label (bottom left), and a reduced precision's name beside it, so neither an
    untrained model's maps nor a bf16/fp16 model's are mistaken for a trained fp32 model's.
    """

    def __init__(self, model, opts: VideoOptions, geometry):
        self.opts, self.geometry = opts, geometry
        self.patch = model.preset.patch_size
        self.lut = draw.colormap_lut(opts.colormap)
        labels = ["RANDOM WEIGHTS (untrained)"] * model.is_random + [model.precision] * (
            model.precision != "fp32")
        self.model_label = " · ".join(labels) or None
        heads = model.preset.num_heads
        self.cols = math.ceil(math.sqrt(heads))
        self.mask_colors = draw.head_colors(heads)

    def _heat(self, grid_map, out_hw):
        return draw.map_to_frame(grid_map, out_hw, self.geometry.resized_hw, self.patch)

    def __call__(self, image, maps, pts_s):
        o = self.opts
        h, w = image.shape[:2]
        maps = am.normalize_maps(maps)
        if o.view == "heads":
            scale = max(1 / self.cols, min(1.0, HEAD_PANEL_MIN / min(h, w)))
            ph, pw = max(2, round(h * scale)), max(2, round(w * scale))
            small = resize_frame(image, (ph, pw))
            panels = []
            for k, m in enumerate(maps):
                panel = draw.overlay(small, self._heat(m, (ph, pw)), self.lut, o.alpha)
                panels.append(draw.caption(panel, f"head {k}") if o.captions else panel)
            out = draw.grid(panels, cols=self.cols)
        elif o.view == "masks":
            masks = am.threshold_masks(maps[None], keep=o.threshold)[0]
            out = draw.draw_masks(image, masks, self.mask_colors, o.alpha, self.patch,
                                    self.geometry.resized_hw)
        else:
            out = draw.overlay(image, self._heat(maps[0], (h, w)), self.lut, o.alpha)
            if o.view == "side-by-side":
                out = draw.side_by_side(image, out)
        if o.captions:
            out = draw.caption(out, f"t={pts_s:.2f}s", corner="br")
        if self.model_label:
            out = draw.caption(out, self.model_label, corner="bl")
        return out


def render_video(model, src, dst, opts: VideoOptions | None = None) -> VideoResult:
    """Render the attention of ``model`` on every (kept) frame of ``src`` into ``dst``.

    ``dst`` ends in .mp4/.mov/.mkv (H.264 with the source's audio) or .gif. Nothing is left at
    ``dst`` unless the whole video was written.
    """
    opts = opts or VideoOptions()
    info = probe(src)
    total = _expected_frames(info, opts)
    if total and total < opts.batch_size:  # a short run: one smaller batch, no padded frames
        opts = dataclasses.replace(opts, batch_size=total)
    geometry = video_geometry(
        info.height, info.width, model.preset.patch_size, opts.size, opts.full_res
    )
    opts = _plan_batch(model, opts, geometry)
    kind = model.preset.preprocessing
    make_maps = MapMaker(model, opts, geometry.grid_hw)
    render_frame = FrameRenderer(model, opts, geometry)
    saved_maps, saved_pts = [], []
    started = time.perf_counter()
    written = 0
    pool = ThreadPoolExecutor(WORKERS, "vidattn-work") if WORKERS > 1 else None

    def prepare(images):
        return prepare_frames(images, geometry, kind)

    def prepared():
        frames = read_frames(src, opts.start, opts.end, opts.every, opts.max_frames)
        with Prefetcher(frames, maxsize=2 * opts.batch_size, name="vidattn-decode") as decoded:
            for batch in _batches(decoded, opts.batch_size):
                parts = _in_parallel(pool, prepare, _split([f.image for f in batch], WORKERS))
                yield batch, np.concatenate(parts)

    bar = tqdm(total=total, unit="frame", disable=not opts.progress, dynamic_ncols=True,
               desc=Path(src).name, leave=True)
    first = {}
    writer = None

    def consume(item):
        nonlocal writer, written
        batch, maps = item
        images = _in_parallel(pool, lambda args: render_frame(*args),
                              [(f.image, m, f.pts_s) for f, m in zip(batch, maps)])
        for frame, image in zip(batch, images):
            if writer is None:
                first["pts"] = frame.pts_s
                writer = VideoWriter(
                    dst, info.fps or DEFAULT_FPS, image.shape[1], image.shape[0],
                    audio_from=src if opts.audio else None, crf=opts.crf,
                    preset=opts.x264_preset, gif_fps=opts.gif_fps, gif_width=opts.gif_width,
                )
            writer.write(image, frame.pts_s)
            written += 1
        bar.update(len(batch))

    _check_writable(dst)
    sink = _Sink(consume)
    try:
        with Prefetcher(prepared(), maxsize=2, name="vidattn-prepare") as batches:
            for batch, inputs in batches:
                maps = make_maps(inputs)
                if opts.save_maps is not None:
                    saved_maps.append(maps.astype(np.float16))
                    saved_pts.extend(f.pts_s for f in batch)
                sink.put((batch, maps))
        sink.close()
        if writer is None:
            raise VidattnError("no frames in the requested range", src)
        if opts.save_maps is not None:
            _save_maps(opts.save_maps, saved_maps, saved_pts, opts, model, geometry)
        writer.close()
    except BaseException:
        sink.stop()
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return VideoResult(written, time.perf_counter() - started, Path(dst), writer.size,
                       tuple(np.concatenate(saved_maps).shape) if saved_maps else ())


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
    about five times as decoded pixels in the pipeline's queues."""
    (fh, fw), p = geometry.frame_hw, model.preset.patch_size
    plan = model.plan(
        geometry.input_hw, opts.batch_size, *(("none", True) if opts.needs_rollout else ("cls",)),
        extra_per_image=5 * fh * fw * 3,
        sizes=(min(geometry.resized_hw), lambda s: video_geometry(fh, fw, p, s).input_hw))
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


def _save_maps(path, maps, pts, opts, model, geometry):
    """Write the raw per-frame maps (before display normalisation) as .npz, atomically."""
    from vidattn.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f, maps=np.concatenate(maps), pts_s=np.asarray(pts, np.float64),
                view=opts.view, model=model.preset.name, weights=model.weights_label,
                grid_hw=np.asarray(geometry.grid_hw), patch_size=model.preset.patch_size,
            )
