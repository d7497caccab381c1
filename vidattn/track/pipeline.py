"""``vidattn track``: reader -> protocol resize -> model -> label propagation -> render -> writer.

``propagated`` is the one loop every output is drawn from (the video, the DAVIS masks, the
probabilities, and ``track-eval``): the seed frame's labels as given, then, for each later frame,
its labels propagated from the seed frame and the ``context`` frames before it. Frames are decoded
and resized in a background thread, features come from ``Model.run`` in batches, and propagation
runs frame by frame (each frame's context is the frames before it). Each frame's features are
computed once and kept only while they are in the context, so memory stays flat however long the
video is. Rendering and encoding run in another thread behind a bounded queue.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from vidattn import draw
from vidattn.errors import VidattnError
from vidattn.features import FeatureWriter, model_meta, unit_rows
from vidattn.io import discard_folder, publish_folder, temporary_folder
from vidattn.options import TrackOptions
from vidattn.track import seeds
from vidattn.track.davis import PALETTE, write_mask
from vidattn.track.frames import Source, open_source, read_source
from vidattn.track.propagate import Propagator, labels_from_probs
from vidattn.track.protocols import (PROTOCOLS, Protocol, default_protocol, prepare_frame,
                                     seed_probs)
from vidattn.video.pipeline import _batches, _padded, _Sink, model_label
from vidattn.video.reader import Frame, Prefetcher
from vidattn.video.writer import VideoWriter


@dataclass
class Tracked:
    """One frame of a track: ``labels`` ``(H, W)`` uint8 at the frame's size, ``probs`` the
    propagated per-object probabilities on the patch grid ``(C, gh, gw)`` (the seed's one-hot for
    the seed frame; C = largest id + 1, channel 0 the background), and ``similarity`` ``(gh, gw)``
    in [-1, 1]: each patch's cosine similarity to the nearest object's mean feature in the seed
    frame."""

    frame: Frame
    name: str
    labels: np.ndarray
    probs: np.ndarray
    similarity: np.ndarray


@dataclass(frozen=True)
class TrackResult:
    """What a track did: frames, wall time, the protocol line, the objects and the outputs."""

    frames: int
    seconds: float
    protocol: str
    objects: int
    output: Path | None
    masks: Path | None
    probs: Path | None


def protocol_of(model, opts: TrackOptions) -> Protocol:
    """The protocol ``opts`` asks for (default: the model family's), with its overrides."""
    name = opts.protocol or default_protocol(model.preset)
    return PROTOCOLS[name].with_overrides(
        size=opts.size, neighbourhood=opts.neighbourhood, topk=opts.topk,
        temperature=opts.temperature, context=opts.context)


class _Features:
    """Frames -> their protocol inputs -> final-normed patch tokens ``(gh * gw, D)``, through the
    model in batches; also the seed frame's. ``grid_hw``: the patch grid of every frame."""

    def __init__(self, model, protocol: Protocol, batch_size: int):
        self.model, self.protocol, self.batch_size = model, protocol, batch_size
        self.patch, self.stride = model.preset.patch_size, model.preset.stride

    def prepare(self, image) -> np.ndarray:
        return prepare_frame(self.protocol, image, self.patch, self.model.preset.preprocessing)

    def tokens(self, inputs) -> np.ndarray:
        """float32 ``(n, h, w, 3)`` -> ``(n, gh * gw, D)``, in one padded batch."""
        out = self.model.run(_padded(np.asarray(inputs), self.batch_size), tokens=True)
        return out["patch_tokens"][: len(inputs)]


def propagated(model, source: Source, seed: seeds.Seed, protocol: Protocol,
               opts: TrackOptions, budget_bytes=None) -> Iterator[Tracked]:
    """Every frame of ``source`` from ``opts.start`` on, tracked from ``seed`` (see the module
    docstring). Raises VidattnError before the first frame is yielded for a bad seed or an
    empty range."""
    feats = _Features(model, protocol, opts.batch_size)
    frames = read_source(source, opts.start, opts.end, opts.max_frames)

    def prepared():
        for batch in _batches(frames, opts.batch_size):
            yield batch, np.stack([feats.prepare(f.image) for f in batch])

    with Prefetcher(prepared(), maxsize=2, name="vidattn-prepare") as batches:
        first_batch = next(batches, None)
        if first_batch is None:
            raise VidattnError("no frames in the requested range", source.path)
        batch, inputs = first_batch
        tokens = feats.tokens(inputs)
        patch, stride = feats.patch, feats.stride
        frame_hw, working_hw = source.frame_hw, inputs.shape[1:3]
        grid_hw = model.preset.grid_at(working_hw)
        if seed.needs_features:
            labels0 = seeds.frame_labels(
                seeds.grid_labels(seed, tokens[0], frame_hw, working_hw, grid_hw, patch,
                                  source.path, stride),
                frame_hw, working_hw, patch, stride)
        else:
            labels0 = seeds.labels_from_mask(seed.mask, frame_hw)
        first = seed_probs(protocol, labels0, frame_hw, patch, stride)
        unit0 = unit_rows(tokens[0])
        onehot = first[1:].reshape(len(first) - 1, grid_hw[0] * grid_hw[1])  # (objects, gh*gw)
        present = onehot.sum(1) > 0
        lost = sorted(set(np.unique(labels0[labels0 > 0]).tolist())
                      - set((np.flatnonzero(present) + 1).tolist()))
        if lost and opts.progress:
            tqdm.write(f"vidattn: note: object{'s' * (len(lost) > 1)} "
                       f"{', '.join(map(str, lost))} of the seed cover{'s' * (len(lost) == 1)} "
                       f"no patch at short side {protocol.short_side}: not tracked (a larger "
                       "--size keeps smaller objects)", file=sys.stderr)
        means = unit_rows(onehot[present] @ unit0) if present.any() else unit0[:0]

        def similarity(tok):  # (gh*gw, D) -> (gh, gw): the nearest object's mean feature
            if not len(means):
                return np.zeros(grid_hw, np.float32)
            return (unit_rows(tok) @ means.T).max(1).reshape(grid_hw).astype(np.float32)

        propagator = Propagator(protocol, grid_hw, tokens[0], first, budget_bytes)
        yield Tracked(batch[0], source.frame_name(batch[0], 0), labels0, first,
                      similarity(tokens[0]))

        def later():  # (frames, tokens) of the frames after the seed frame, batch by batch
            yield batch[1:], tokens[1:]
            for frames_, inputs_ in batches:
                yield frames_, feats.tokens(inputs_)

        count = 0
        for frames_, tokens_ in later():
            for frame, tok in zip(frames_, tokens_):
                count += 1
                probs = propagator.step(tok)
                yield Tracked(frame, source.frame_name(frame, count),
                              labels_from_probs(protocol, probs, patch, frame_hw, stride), probs,
                              similarity(tok))


class TrackRenderer:
    """Draws a tracked frame: each object tinted and outlined in its DAVIS palette colour;
    ``side_by_side``: the similarity map (cosine, 0..1 of the colormap; below 0 shows as 0)
    beside it. Captions: the time and the protocol, and RANDOM WEIGHTS for an untrained model."""

    def __init__(self, model, opts: TrackOptions, protocol: Protocol):
        self.opts, self.patch, self.stride = opts, model.preset.patch_size, model.preset.stride
        self.lut = draw.colormap_lut(opts.colormap)
        self.model_label = model_label(model)
        self.protocol = protocol.name

    def __call__(self, item: Tracked) -> np.ndarray:
        o, image = self.opts, item.frame.image
        out = draw.draw_labels(image, item.labels, PALETTE, o.alpha)
        if o.side_by_side:
            heat = draw.map_to_frame(item.similarity, image.shape[:2], None, self.patch,
                                     stride=self.stride)
            out = draw.side_by_side(out, draw.overlay(image, heat, self.lut, 1.0))
        if o.captions:
            out = draw.caption(out, f"t={item.frame.pts_s:.2f}s", corner="br")
            out = draw.caption(out, f"track: {self.protocol}", corner="tl")
        if self.model_label:
            out = draw.caption(out, self.model_label, corner="bl")
        return out


class _MaskFolder:
    """DAVIS-style indexed PNGs, written into a temporary folder published whole at the end."""

    def __init__(self, path):
        self.path = Path(path)
        self.temp = temporary_folder(self.path)

    def write(self, name: str, labels) -> None:
        write_mask(self.temp / f"{name}.png", labels)

    def publish(self) -> Path:
        return publish_folder(self.temp, self.path)

    def abort(self) -> None:
        discard_folder(self.temp)


def track_video(model, src, dst, seed: seeds.Seed, opts: TrackOptions | None = None,
                budget_bytes=None) -> TrackResult:
    """Track ``seed``'s objects through ``src`` (a video file or a folder of frames) and write
    ``dst`` (.mp4/.mov/.mkv with the source's audio, or .gif; None: no video), and, as asked,
    ``opts.save_masks`` (a folder of DAVIS indexed PNGs) and ``opts.save_probs`` (a .npy of the
    per-object probabilities on the patch grid, float16 ``(frames, gh * gw, C)``, with a .json
    sidecar). Nothing is left at any of them unless the whole track was written."""
    opts = opts or TrackOptions()
    if dst is None and opts.save_masks is None and opts.save_probs is None:
        raise ValueError("track_video needs an output: dst, opts.save_masks or opts.save_probs")
    source = open_source(src)
    protocol = protocol_of(model, opts)
    ran = protocol.describe(model.preset.stride)
    if opts.progress:
        tqdm.write(f"vidattn: {ran}", file=sys.stderr)
    render = TrackRenderer(model, opts, protocol)
    started = time.perf_counter()
    bar = tqdm(total=_expected(source, opts), unit="frame", disable=not opts.progress,
               dynamic_ncols=True, desc=Path(src).name, leave=True)
    writer = masks = probs = None
    written = objects = 0

    def consume(item: Tracked):
        nonlocal writer
        if masks is not None:
            masks.write(item.name, item.labels)
        if dst is not None:
            image = render(item)
            if writer is None:
                writer = VideoWriter(dst, source.fps, image.shape[1], image.shape[0],
                                     audio_from=src if opts.audio and source.has_audio else None,
                                     crf=opts.crf, preset=opts.x264_preset)
            writer.write(image, item.frame.pts_s)
        bar.update(1)

    sink = None
    try:
        if opts.save_masks is not None:
            masks = _MaskFolder(opts.save_masks)
        sink = _Sink(consume, maxsize=4)
        for item in propagated(model, source, seed, protocol, opts, budget_bytes):
            if probs is None and opts.save_probs is not None:
                grid_hw, channels = item.probs.shape[1:], item.probs.shape[0]
                probs = FeatureWriter(opts.save_probs, grid_hw, channels, {
                    "source": Path(src).name, "protocol": ran,
                    "probs": "per-object probabilities on the patch grid as propagated, "
                             "(frames, gh*gw, objects + 1), channel 0 the background",
                    **model_meta(model)})
            if probs is not None:
                probs.write(item.probs.reshape(len(item.probs), -1).T[None], [item.frame.pts_s])
            objects = max(objects, len(item.probs) - 1)
            sink.put(item)
            written += 1
        sink.close()
        if writer is not None:
            writer.close()
        for out in (probs, masks):
            if out is not None:
                out.close() if out is probs else out.publish()
    except BaseException:
        if sink is not None:
            sink.stop()
        for out in (writer, probs, masks):
            if out is not None:
                out.abort()
        raise
    finally:
        bar.close()
    return TrackResult(written, time.perf_counter() - started, ran, objects,
                       None if dst is None else Path(dst),
                       opts.save_masks and Path(opts.save_masks),
                       opts.save_probs and Path(opts.save_probs))


def track_masks(model, source: Source, seed: seeds.Seed, protocol: Protocol, folder: Path,
                opts: TrackOptions, budget_bytes=None, progress=None) -> int:
    """Track ``seed`` through ``source`` and write each frame's DAVIS PNG into ``folder`` (which
    exists): ``track-eval``'s inner loop. Returns the frame count."""
    count = 0
    for item in propagated(model, source, seed, protocol,
                           dataclasses.replace(opts, start=None, end=None, max_frames=None),
                           budget_bytes):
        write_mask(folder / f"{item.name}.png", item.labels)
        count += 1
        if progress is not None:
            progress.update(1)
    return count


def _expected(source: Source, opts: TrackOptions) -> int | None:
    """Frames the track will write, for the progress bar (an estimate; None when unknown)."""
    if source.n_frames is None:
        return opts.max_frames
    n = max(0, source.n_frames - round((opts.start or 0) * float(source.fps)))
    return n if opts.max_frames is None else min(n, opts.max_frames)
