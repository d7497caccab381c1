"""Streaming video input with PyAV: probe a file, decode its frames one at a time, prefetch.

Memory stays flat however long the video is: ``read_frames`` is a generator that holds one decoded
frame at a time, and ``Prefetcher`` runs any iterator (the decoder, or a later stage) in a
background thread behind a bounded queue, so decoding overlaps with whatever consumes the frames.

Times are seconds from the start of the file (the container's start time), as a player shows them,
so the reader's ``pts_s`` and the writer's ``audio_start``/``audio_end`` use the same clock.
Images are ``uint8`` arrays of shape ``(H, W, 3)``, RGB, in display orientation: a frame whose
stream carries a display matrix (phone videos filmed upright) is rotated to stand upright.

Frames above ``MAX_FRAME_PIXELS`` are refused before they are decoded: a damaged or hostile file
can declare an enormous frame size in a few bytes. Every frame comes out with the first frame's
size and orientation: a stream whose resolution changes midway (a spliced or damaged file, a
recorded adaptive stream) has its later frames scaled to the first frame's size.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator, NamedTuple

import av
import numpy as np

from vidattn.errors import VidattnError

# 8192 x 8192 (67 MP): above 8K UHD (7680 x 4320) and DCI 8K (8192 x 4320), the largest frames
# H.264 and HEVC levels allow; one decoded frame at this size is ~200 MB of RGB.
MAX_FRAME_PIXELS = 8192 * 8192
# Declared frame rates outside this range are damage (a flipped byte in an MP4's sample table
# declared 25/65537 fps) and read as unknown: a slideshow at one frame in 1000 s is still in.
FPS_RANGE = (Fraction(1, 1000), Fraction(1000))
DEFAULT_FPS = Fraction(25)  # for streams whose rate is unknown


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns about a video file.

    ``width``/``height`` are the display size, after ``rotation``: the counter-clockwise angle in
    degrees (0, 90, 180 or -90) of the stream's display matrix, as FFmpeg reports it; a typical
    portrait phone video has -90 and coded size 1920x1080, so width=1080, height=1920.
    ``fps`` is the stream's frame rate (``frame_rate``; None when unknown). ``n_frames`` is the
    container's frame count, or duration x fps rounded, or None when neither is known.
    """

    width: int
    height: int
    rotation: int
    fps: Fraction | None
    time_base: Fraction
    duration_s: float | None
    n_frames: int | None
    has_audio: bool
    codec: str
    pix_fmt: str | None


class Frame(NamedTuple):
    """One decoded frame.

    ``index``: position of the frame in the stream (0 = first frame; see ``read_frames`` for how
    it is found after a seek). ``pts_s``: presentation time in seconds from the start of the file,
    exact from the stream (variable frame rates are kept). ``image``: ``(H, W, 3)`` uint8 RGB,
    C-contiguous, upright.
    """

    index: int
    pts_s: float
    image: np.ndarray


def probe(path) -> VideoInfo:
    """Describe the video stream of ``path``; decodes its first frame to learn the rotation.

    Raises VidattnError naming the file when it is missing, not a media file, has no video stream,
    has no frames or frames above ``MAX_FRAME_PIXELS``.
    """
    with open_media(path) as container:
        stream = _video_stream(container, path)
        first = next(_decode(container, stream, path), None)
        if first is None:
            raise VidattnError("video stream has no frames", path)
        _check_frame_size(first.width, first.height, path)
        quarter_turns = _quarter_turns(first)
        width, height = first.width, first.height
        if quarter_turns % 2:
            width, height = height, width
        fps = frame_rate(stream)
        if stream.duration is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        if stream.frames > 0:
            n_frames = stream.frames
        elif duration_s is not None and fps is not None:
            n_frames = round(duration_s * fps)
        else:
            n_frames = None
        return VideoInfo(
            width=width,
            height=height,
            rotation=90 * (quarter_turns if quarter_turns != 3 else -1),
            fps=fps,
            time_base=stream.time_base,
            duration_s=duration_s,
            n_frames=n_frames,
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
        )


def read_frames(path, start=None, end=None, every=1, max_frames=None) -> Iterator[Frame]:
    """Decode ``path`` lazily and yield ``Frame``s with ``start <= pts_s < end``.

    ``start``/``end`` are seconds (None: from the beginning / to the end); comparisons allow half a
    stream tick. With a ``start`` the decoder seeks to the keyframe before it and drops the frames
    before ``start``. ``every=N`` keeps the 0th, Nth, 2Nth... frame from ``start`` on;
    ``max_frames`` stops after that many frames have been yielded.

    ``Frame.index`` counts decoded frames exactly when reading from the beginning; after a seek it
    is ``round((pts_s - first_pts_s) * fps)``, exact for constant-rate video and an estimate for
    variable-rate video.

    Every frame has the first frame's size and orientation (later frames of another size are
    scaled to it), and a later time than the frame before (a damaged file's frames whose time
    goes back or repeats are dropped). The decoder uses FFmpeg's frame/slice threads. Damaged
    data that FFmpeg cannot decode past raises VidattnError("corrupt video data at t=...s"); the
    warnings FFmpeg logs and recovers from are tolerated. Closing the generator early closes the
    file.
    """
    if every < 1 or int(every) != every:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames!r}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    _check_file(path)
    return _frames(path, start, end, every, max_frames)


def _frames(path, start, end, every, max_frames) -> Iterator[Frame]:
    """The generator behind ``read_frames`` (whose arguments are already checked)."""
    if max_frames == 0:
        return
    with open_media(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        origin = Fraction(container.start_time or 0, av.time_base)
        stream_start = (stream.start_time or 0) * time_base - origin
        fps = frame_rate(stream) or DEFAULT_FPS
        half_tick = float(time_base) / 2
        seeking = start is not None and start > float(stream_start)
        if seeking:
            container.seek(int((Fraction(start) + origin) / time_base), stream=stream)

        taken = 0  # frames at or after start, the basis of `every`
        yielded = 0
        shape = None  # (coded width, coded height, quarter turns) of the first frame
        last_pts_s = None
        for counted, frame in enumerate(_decode(container, stream, path)):
            if shape is None:
                _check_frame_size(frame.width, frame.height, path)
                shape = (frame.width, frame.height, _quarter_turns(frame))
            if frame.pts is not None:
                pts_s = float(frame.pts * time_base - origin)
            else:  # raw elementary streams carry no timestamps: assume a constant rate
                pts_s = float(stream_start + counted / fps)
            if last_pts_s is not None and pts_s <= last_pts_s:
                continue  # damaged timestamps: a frame not after the one before is dropped
            last_pts_s = pts_s
            if start is not None and pts_s < start - half_tick:
                continue
            if end is not None and pts_s >= end - half_tick:
                return
            if taken % every == 0:
                index = round((pts_s - float(stream_start)) * fps) if seeking else counted
                yield Frame(index, pts_s, _upright_rgb(frame, *shape))
                yielded += 1
                if yielded == max_frames:
                    return
            taken += 1


class Prefetcher:
    """Run an iterable in a daemon thread, ``maxsize`` items ahead of the consumer.

    Iterate it like the iterable itself. An exception raised by the producer is re-raised in the
    consumer, in order, after the items produced before it. Use it as a context manager (or call
    ``close()``) to stop early: the producer stops after its current item, the iterable is
    closed (generators run their ``finally``), and the thread is joined. A prefetcher that is
    dropped without ``close()`` still stops its thread when it is garbage collected.

        with Prefetcher(read_frames(path), maxsize=8) as frames:
            for frame in frames: ...
    """

    _END = object()

    def __init__(self, iterable: Iterable, maxsize: int = 8, name: str = "vidattn-prefetch"):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
        self._queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._done = False
        # The thread must not reference self, so that a dropped prefetcher can be collected.
        self._thread = threading.Thread(
            target=_produce, args=(iterable, self._queue, self._stop, self._END), name=name,
            daemon=True,
        )
        self._finalizer = weakref.finalize(self, self._stop.set)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END or isinstance(item, _Failure):
            self._done = True
            self._thread.join()
            if item is self._END:
                raise StopIteration
            raise item.error
        return item

    def close(self):
        """Stop the producer, drop what it had queued, and join its thread."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Failure:
    """Carries the producer's exception through the queue."""

    def __init__(self, error):
        self.error = error


def _produce(iterable, items: queue.Queue, stop: threading.Event, end):
    """Prefetcher's thread: put each item (giving up when ``stop`` is set), then ``end`` or the
    exception; always close the iterator."""

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    iterator = None
    try:
        iterator = iter(iterable)
        for item in iterator:
            if not put(item):
                return
        put(end)
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, who re-raises it
        put(_Failure(error))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _check_file(path):
    if not os.path.exists(path):
        raise VidattnError("file not found", path)
    if os.path.isdir(path):
        raise VidattnError("is a directory, not a video file", path)


def open_media(path):
    """Open the media file ``path`` for reading (the video here, its audio in the writer),
    turning every way that can fail into a VidattnError.

    Metadata that is not valid UTF-8 (damaged or foreign tags) is read with replacement
    characters: PyAV decodes it strictly, and a bad tag must not make the video unreadable.
    """
    _check_file(path)
    try:
        return av.open(os.fspath(path), "r", metadata_errors="replace")
    except av.FFmpegError as error:
        raise VidattnError(
            f"not a readable media file (corrupt or unsupported container: {_reason(error)})", path
        ) from error


def frame_rate(stream) -> Fraction | None:
    """The first of FFmpeg's average, guessed and base rates of ``stream`` that lies in
    ``FPS_RANGE``, or None (unknown or damaged)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and FPS_RANGE[0] <= rate <= FPS_RANGE[1]:
            return Fraction(rate)
    return None


def _video_stream(container, path):
    """The first video stream, refused if it has no decoder or its declared frame size is above
    the limit."""
    if not container.streams.video:
        raise VidattnError("has no video stream", path)
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VidattnError("no decoder for its video codec (unsupported or damaged file)", path)
    _check_frame_size(stream.codec_context.width, stream.codec_context.height, path)
    return stream


def _check_frame_size(width, height, path):
    if width * height > MAX_FRAME_PIXELS:
        raise VidattnError(
            f"frames are {width}x{height} ({width * height / 1e6:.0f} MP), above the "
            f"{MAX_FRAME_PIXELS / 1e6:.0f} MP limit (damaged file or unsupported size)", path
        )


def _decode(container, stream, path) -> Iterator[av.VideoFrame]:
    """Decoded frames of ``stream``, with demuxing and decoding failures as VidattnError.

    FFmpeg ends a truncated file quietly when the cut falls between packets; the container's
    index (MP4, MOV) then points past the end of the file, which is reported as corruption too.
    """
    origin = Fraction(container.start_time or 0, av.time_base)
    packet_s = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                packet_s = float(packet.pts * packet.time_base - origin)
            yield from packet.decode()
    except av.FFmpegError as error:
        raise VidattnError(
            f"corrupt video data at t={packet_s:.2f}s ({_reason(error)})", path
        ) from error
    index = stream.index_entries
    if len(index) and index[-1].pos + index[-1].size > os.path.getsize(path):
        raise VidattnError(f"corrupt video data at t={packet_s:.2f}s (the file is truncated)", path)


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns (0..3) that stand ``frame`` upright."""
    return round(frame.rotation / 90) % 4


def _upright_rgb(frame, width, height, turns) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, scaled to the coded size ``width`` x ``height`` if it differs,
    turned by ``turns`` counter-clockwise quarter turns, C-contiguous."""
    same = (frame.width, frame.height) == (width, height)
    size = {} if same else {"width": width, "height": height}
    image = frame.to_ndarray(format="rgb24", **size)  # colour matrix and range from the frame
    if turns:
        image = np.rot90(image, turns)
    return np.ascontiguousarray(image)


def _reason(error) -> str:
    return getattr(error, "strerror", None) or str(error)


__all__ = ["DEFAULT_FPS", "FPS_RANGE", "Frame", "Prefetcher", "VideoInfo", "frame_rate",
           "open_media", "probe", "read_frames"]
