"""``vidattn video --viewer DIR``: a page to scrub a video with any head's attention drawn live.

``DIR`` holds::

    index.html          the page (``static/video.html``, ``video.js``): open it from the disk
    video.mp4           the kept frames, unannotated, H.264 yuv420p with the input's audio
    data/maps-NNNNN.js  the maps of ``frames_per_chunk`` consecutive frames each
    data/feats-NNNNN.js with --viewer-similarity: the frames' reduced patch features

A chunk of ``n`` frames holds, for ``K`` maps per frame on a ``gh x gw`` grid, ``n * K`` float32
scales (frame by frame) and then ``n * K * gh * gw`` bytes (``pages.quantize``). The ``K`` maps of a
frame are, for each stored block (the last, or all of them with ``--viewer-blocks all``), its
heads' CLS maps and their mean, then rollout if it was asked for (``MapLayout`` in the pipeline).
So the data grows as ``frames * K * (gh * gw + 4)`` bytes, a third more in base64.

With a ``Reduction`` (``--viewer-similarity``), each frame's patch features are stored too, for
the page to compute a clicked patch's cosine similarity in every frame: a feature chunk of ``n``
frames holds ``n * gh * gw`` float32 scales, then ``n * gh * gw * k`` bytes
(``features.quantize_signed``), ``frames * gh * gw * (k + 4)`` bytes in all, at most
``VIEWER_FEATURE_CAP``.

The folder is written as the frames come, into a hidden temporary folder beside ``DIR`` that
replaces ``DIR`` only when complete (``io.publish_folder``): memory holds one chunk, and a failed or
interrupted run leaves no ``DIR`` and nothing else behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidattn.errors import VidattnError
from vidattn.features import VIEWER_DIMS, quantize_signed, signed_bytes
from vidattn.io import discard_folder, publish_folder, temporary_folder
from vidattn.models.memory import format_bytes
from vidattn.preprocess import resize_frame
from vidattn.viewer.pages import (
    colormap_tables,
    page_meta,
    quantize,
    write_chunk,
    write_viewer_page,
)

__all__ = ["VIEWER_FEATURE_CAP", "VideoViewer", "feature_bytes", "viewer_video_size"]

VIDEO_NAME = "video.mp4"
DATA_FOLDER = "data"
PAGE = "index.html"
CHUNK_RAW_BYTES = 1 << 20  # about 1 MiB of maps per chunk script: a few hundred frames
MAX_SIDE = 1920  # the page's video: long side at most this (H.264 levels browsers decode)
MIN_SIDE = 64  # ... and tiny videos enlarged to this short side, so the page is usable
VIEWER_FEATURE_CAP = 256 * 2**20  # bytes of stored features a page may load


def feature_bytes(frames: int, grid_hw, dims: int = VIEWER_DIMS) -> int:
    """Bytes the features of ``frames`` frames take (before base64), ``dims`` per patch."""
    return signed_bytes(frames * grid_hw[0] * grid_hw[1], dims)


def viewer_video_size(frame_hw) -> tuple[int, int]:
    """``(h, w)`` of the page's video for frames of ``frame_hw``: the frame, shrunk to a long side
    of ``MAX_SIDE`` or enlarged to a short side of ``MIN_SIDE`` (aspect kept)."""
    h, w = frame_hw
    scale = min(max(1.0, MIN_SIDE / min(h, w)), MAX_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


class VideoViewer:
    """Writes ``folder`` frame by frame: ``write`` each kept frame with its maps, then ``finish``
    and ``publish`` (or ``abort``).

    ``layout``: the maps of each frame (``pipeline.MapLayout``: ``blocks``, ``heads``,
    ``rollout``, ``count``). ``open_writer(path, width, height)`` opens the ``VideoWriter`` for the
    page's video, with the run's encoder settings and audio. ``source``: the input's name, shown on
    the page. ``defaults``: the controls' first state (``map``, ``mode``, ``colormap``, ``alpha``,
    ``threshold``). ``reduction``: store each frame's patch features reduced by it (``write``'s
    ``tokens``), for the page's click-a-patch similarity.
    """

    def __init__(self, folder, model, geometry, layout, open_writer, source: str, defaults: dict,
                 reduction=None):
        self.folder = Path(folder)
        self._model, self._geometry, self._layout = model, geometry, layout
        self._open_writer, self._source, self._defaults = open_writer, source, defaults
        self._temp = temporary_folder(self.folder)
        (self._temp / DATA_FOLDER).mkdir()
        gh, gw = geometry.grid_hw
        self.frames_per_chunk = max(1, CHUNK_RAW_BYTES // (layout.count * (gh * gw + 4)))
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (scales, bytes) per frame
        self._keys: list[str] = []
        self._times: list[float] = []
        self._video_hw = viewer_video_size(geometry.frame_hw)
        self._writer = None
        self._reduction = reduction
        self.frames_per_feature_chunk = max(1, CHUNK_RAW_BYTES // feature_bytes(1, (gh, gw)))
        self._pending_features: list[tuple[np.ndarray, np.ndarray]] = []
        self._feature_keys: list[str] = []

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the page's video."""
        return self._writer.size if self._writer else self._video_hw[::-1]

    def write(self, image: np.ndarray, pts_s: float, maps: np.ndarray, tokens=None):
        """One kept frame: uint8 ``(H, W, 3)`` at ``pts_s``, its float maps ``(K, gh, gw)`` and,
        with a reduction, its patch tokens ``(gh * gw, D)``."""
        if self._writer is None:
            h, w = self._video_hw
            self._writer = self._open_writer(self._temp / VIDEO_NAME, w, h)
        self._writer.write(resize_frame(image, self._video_hw), pts_s)
        data, scales = quantize(maps.reshape(len(maps), -1))
        self._pending.append((scales, data))
        self._times.append(float(pts_s))
        if len(self._pending) == self.frames_per_chunk:
            self._flush()
        if self._reduction is not None:
            if feature_bytes(len(self._times), self._geometry.grid_hw) > VIEWER_FEATURE_CAP:
                raise VidattnError(f"--viewer-similarity: the features passed the viewer's "
                                   f"{format_bytes(VIEWER_FEATURE_CAP)} at frame "
                                   f"{len(self._times)}: keep fewer frames or a smaller --size",
                                   self._source)
            data, scales = quantize_signed(self._reduction(tokens))
            self._pending_features.append((scales, data))
            if len(self._pending_features) == self.frames_per_feature_chunk:
                self._flush_features()

    def _flush_features(self):
        self._write_pending("feats", self._pending_features, self._feature_keys)

    def _flush(self):
        self._write_pending("maps", self._pending, self._keys)

    def _write_pending(self, prefix: str, pending: list, keys: list):
        """Write ``pending`` ``(scales, bytes)`` frames as the next ``PREFIX-NNNNN`` chunk."""
        if not pending:
            return
        key = f"{prefix}-{len(keys):05d}"
        scales, data = zip(*pending)
        write_chunk(self._temp / DATA_FOLDER, key, np.stack(scales), np.stack(data))
        keys.append(key)
        pending.clear()

    def finish(self):
        """Write the last chunk, close the video and write the page, all still in the temporary
        folder."""
        self._flush()
        self._flush_features()
        self._writer.close()
        first = self._times[0]
        times = [round(t - first, 6) for t in self._times]
        gaps = np.diff(times)
        layout, geo = self._layout, self._geometry
        meta = page_meta(
            self._model, kind="video", source=self._source, video=VIDEO_NAME,
            frame=list(geo.frame_hw), resized=list(geo.resized_hw), grid=list(geo.grid_hw),
            times=times, fps=float(1 / np.median(gaps)) if len(gaps) else None,
            chunks={"folder": DATA_FOLDER, "frames": self.frames_per_chunk, "keys": self._keys},
            blocks=list(layout.blocks), rollout=layout.rollout, maps=layout.count,
            colormaps=colormap_tables(self._defaults.get("colormap")), defaults=self._defaults,
            features=None if self._reduction is None else {
                "dims": int(self._reduction.axes.shape[0]),
                "max_error": self._reduction.max_error,
                "bytes": feature_bytes(len(times), geo.grid_hw, self._reduction.axes.shape[0]),
                "chunks": {"folder": DATA_FOLDER, "frames": self.frames_per_feature_chunk,
                           "keys": self._feature_keys}},
        )
        label = "RANDOM WEIGHTS · " if self._model.is_random else ""
        write_viewer_page(self._temp / PAGE, "video",
                          f"{label}{self._source} · {self._model.preset.name} · vidattn", meta)

    def publish(self) -> Path:
        """Move the finished folder into place (replacing an older one)."""
        return publish_folder(self._temp, self.folder)

    def abort(self):
        """Drop everything written: no ``folder``, no temporary folder."""
        if self._writer is not None:
            self._writer.abort()
        discard_folder(self._temp)

