"""Streaming video output with PyAV: H.264 MP4/MOV/MKV (with the source's audio) or animated GIF.

Frames are encoded as they arrive, so memory stays flat however long the video is. Output goes to
a hidden temporary file next to ``path`` (``.NAME.partial-XXXXXXXX.EXT``) that replaces ``path``
only when ``close()`` succeeds; an exception in the ``with`` block, a failed ``close()``, or a
writer that is never closed leaves nothing at ``path`` and no temporary file.

Timestamps: a frame written with ``pts_s`` is shown at ``pts_s - first_pts_s`` in the output, so
variable frame rates survive and a clip cut from the middle of a video starts at 0.
"""

from __future__ import annotations

import math
import os
import weakref
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from vidattn.errors import VidattnError
from vidattn.io import temporary_path
from vidattn.options import DEFAULT_X264_PRESET
from vidattn.video.reader import FPS_RANGE, open_media

VIDEO_TICKS_PER_S = 90000  # video time base 1/90000: exact for 24, 25, 30, 50, 60, 30000/1001 fps
GIF_TICKS_PER_S = 100  # GIF delays are centiseconds
GIF_MAX_FPS = 50  # players stretch delays under 2 cs, so GIF cannot show more than 50 fps

_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".gif": "gif"}
# Audio codecs each container takes as they are; anything else is re-encoded to AAC.
_COPYABLE_AUDIO = {
    ".mp4": {"aac", "mp3", "alac", "opus", "ac3", "eac3"},
    ".mov": {"aac", "mp3", "alac", "ac3", "eac3"},
    ".mkv": {"aac", "mp3", "alac", "opus", "ac3", "eac3", "vorbis", "flac"},
}
# Appended to errors about the source's audio: the video itself may be fine.
_WITHOUT_AUDIO = "; --no-audio renders the video without it"


def _bt709_matrix() -> np.ndarray:
    """``(3, 4)`` float32 matrix taking ``(R, G, B, 1)`` in 0..255 to BT.709 limited-range
    ``(Y, Cb, Cr)``: Y in 16..235, Cb and Cr in 16..240 around 128 (ITU-R BT.709 section 3)."""
    kr, kb = 0.2126, 0.0722
    kg = 1 - kr - kb
    full = np.array([
        [kr, kg, kb],
        [-kr / (2 - 2 * kb), -kg / (2 - 2 * kb), 0.5],
        [0.5, -kg / (2 - 2 * kr), -kb / (2 - 2 * kr)],
    ])
    scaled = full * np.array([[219], [224], [224]]) / 255
    return np.hstack([scaled, [[16], [128], [128]]]).astype(np.float32)


RGB_TO_BT709 = _bt709_matrix()


def rgb_to_yuv420p(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)``, H and W even -> BT.709 limited-range yuv420p ``(3H/2, W)``: the
    Y plane, then the Cb and Cr planes (each ``H/2 x W/2``), packed as PyAV's ``from_ndarray``
    takes them.

    One ``cv2.transform`` (rounded and saturated to uint8) and a 2x2 average of the chroma: under
    a third of the time of libswscale's conversion, which matters at 720p and above because
    encoding shares the cores with the model. Y matches libswscale within 1 level.
    """
    h, w = image.shape[:2]
    yuv = cv2.transform(image, RGB_TO_BT709)
    half = cv2.resize(yuv, (w // 2, h // 2), interpolation=cv2.INTER_AREA)  # 2x2 means
    planes = np.empty(h * w * 3 // 2, np.uint8)
    planes[: h * w] = yuv[..., 0].reshape(-1)
    planes[h * w :].reshape(2, h // 2, w // 2)[:] = np.moveaxis(half[..., 1:], -1, 0)
    return planes.reshape(h * 3 // 2, w)


class VideoWriter:
    """Encode ``(height, width, 3)`` uint8 RGB frames to ``path``, chosen by its extension.

    ``.mp4``/``.mov``/``.mkv``: H.264 (libx264, yuv420p, BT.709, ``crf``, x264 ``preset``,
    ``threads`` encoder threads with 0 = x264's choice), stream average rate ``fps`` (in
    ``reader.FPS_RANGE``), timestamps kept to 1/90000 s; MP4/MOV get ``+faststart`` so browsers
    play them while downloading.
    yuv420p needs even sizes: an odd width or height is padded by one pixel at the right or bottom
    edge (a copy of the last column or row), so the picture is never cropped and keeps its
    coordinates; ``size`` is the size written. The last frame lasts 1/fps.

    Audio: the first audio stream of ``audio_from`` (an input path; None for a silent video) over
    ``[audio_start, audio_end)`` in that file's clock, the one ``read_frames`` reports ``pts_s``
    in, is placed at output time 0. By default it spans the written video: from the first written
    frame's ``pts_s`` to the last one's plus 1/fps. Packets are copied when the container takes
    the codec (``_COPYABLE_AUDIO``), else re-encoded to AAC; they are cut at packet (or decoded
    frame) boundaries, so the audio may start up to one packet late (about 20 ms), never early.
    A source without audio gives a silent video. GIFs ignore audio.

    ``.gif``: FFmpeg's palettegen/paletteuse with a new 256-colour palette per frame (streamed,
    good quality). ``gif_width`` caps the width (area resampling, aspect kept, height rounded).
    ``gif_fps`` caps the rate (None or above ``GIF_MAX_FPS``: ``GIF_MAX_FPS``): the timeline from
    the first frame is cut into slots of 1/gif_fps s and a frame is kept when it is the first one
    in its slot, i.e. when ``floor(t * gif_fps)`` exceeds that of the last kept frame (t = output
    time). Kept frames keep their own times, rounded to centiseconds. So 30 frames at 25 fps with
    ``gif_fps=10`` give floor(1.16 * 10) + 1 = 12 frames.

    An output that cannot be written (missing directory, no permission, a directory) raises
    VidattnError here, before any work. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        path,
        fps,
        width,
        height,
        *,
        audio_from=None,
        audio_start=None,
        audio_end=None,
        crf=23,
        preset=DEFAULT_X264_PRESET,
        threads=0,
        gif_fps=None,
        gif_width=None,
    ):
        self.path = Path(path)
        extension = self.path.suffix.lower()
        if extension not in _FORMATS:
            raise VidattnError(
                f"cannot write {extension or 'files without an extension'}: "
                f"use one of {', '.join(_FORMATS)}",
                path,
            )
        if not FPS_RANGE[0] <= fps <= FPS_RANGE[1] or width < 1 or height < 1:
            raise ValueError(f"need fps in [{FPS_RANGE[0]}, {FPS_RANGE[1]}] and a positive size, "
                             f"got {fps}, {width}x{height}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.width, self.height = int(width), int(height)
        self._temp = temporary_path(self.path)
        options = {"movflags": "+faststart"} if extension in (".mp4", ".mov") else {}
        try:
            self._container = av.open(
                str(self._temp), "w", format=_FORMATS[extension], options=options
            )
        except BaseException:
            self._temp.unlink()
            raise
        self._finalizer = weakref.finalize(self, _discard, self._container, self._temp)
        self._audio = None
        try:
            if extension == ".gif":
                self._video = _GifTrack(
                    self._container, self.width, self.height, gif_fps, gif_width
                )
            else:
                self._video = _H264Track(
                    self._container, self.fps, self.width, self.height, crf, preset, threads
                )
                if audio_from is not None:
                    self._audio = _AudioTrack(self._container, audio_from, extension)
        except BaseException:
            self._finalizer()
            raise
        self._audio_span = (audio_start, audio_end)  # in the source's clock; None: the video's
        self._audio_end_t = None  # output time where the audio ends, when audio_end is given
        self._first_pts_s = None
        self._last_t = None  # last written frame's output time

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the encoded video: even-padded for H.264, capped for GIF."""
        return self._video.size

    def write(self, image: np.ndarray, pts_s: float):
        """Encode one ``(height, width, 3)`` uint8 RGB frame shown at ``pts_s`` seconds.

        Times must increase from frame to frame.
        """
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a ({self.height}, {self.width}, 3) uint8 image, "
                f"got {image.shape} {image.dtype}"
            )
        if self._first_pts_s is None:
            self._first_pts_s = float(pts_s)
            if self._audio is not None:
                start, end = self._audio_span
                start = self._first_pts_s if start is None else start
                self._audio.start(start)
                self._audio_end_t = None if end is None else end - start
        t = float(pts_s) - self._first_pts_s
        if self._last_t is not None and t <= self._last_t:
            raise ValueError(f"frame times must increase: got {pts_s} after a later frame")
        try:
            self._video.write(image, t)
            if self._audio is not None:
                self._audio.mux_until(t if self._audio_end_t is None else min(t, self._audio_end_t))
        except av.FFmpegError as error:
            raise VidattnError(f"cannot write video: {error}", self.path) from error
        self._last_t = t

    def close(self):
        """Finish encoding, add the rest of the audio, and move the file into place.

        A writer that received no frames raises VidattnError and leaves no file.
        """
        if not self._finalizer.alive:
            return
        try:
            if self._last_t is None:
                raise VidattnError("no frames to write", self.path)
            self._video.finish()
            if self._audio is not None:
                end_t = self._audio_end_t
                if end_t is None:  # the video's end: the last frame lasts 1/fps
                    end_t = self._last_t + 1 / float(self.fps)
                self._audio.mux_until(end_t)
            self._container.close()
            if self._audio is not None:
                self._audio.close()
            os.replace(self._temp, self.path)
        except av.FFmpegError as error:
            self.abort()
            raise VidattnError(f"cannot write video: {error}", self.path) from error
        except BaseException:
            self.abort()
            raise
        self._finalizer.detach()

    def abort(self):
        """Stop without output: close the encoder and delete the temporary file."""
        if self._audio is not None:
            self._audio.close()
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _H264Track:
    """libx264 yuv420p BT.709 stream, time base 1/VIDEO_TICKS_PER_S."""

    def __init__(self, container, fps, width, height, crf, preset, threads):
        self.size = (width + width % 2, height + height % 2)
        self._pad = ((0, height % 2), (0, width % 2), (0, 0))
        self._container = container
        self._stream = container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height = self.size
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, VIDEO_TICKS_PER_S)
        context = self._stream.codec_context
        context.time_base = Fraction(1, VIDEO_TICKS_PER_S)
        context.thread_count = threads
        context.options = {"crf": str(crf), "preset": preset}
        context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709
        context.color_range = 1  # limited ("tv") range
        self._frame_ticks = round(VIDEO_TICKS_PER_S / fps)

    def write(self, image, t):
        if self._pad[0][1] or self._pad[1][1]:
            image = np.pad(image, self._pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p")
        frame.pts = round(t * VIDEO_TICKS_PER_S)
        frame.time_base = self._stream.codec_context.time_base
        self._mux(self._stream.encode(frame))

    def finish(self):
        self._mux(self._stream.encode(None))

    def _mux(self, packets):
        for packet in packets:
            if not packet.duration:  # the muxer takes the last frame's duration from here
                packet.duration = self._frame_ticks
            self._container.mux(packet)


class _GifTrack:
    """GIF stream fed through scale -> palettegen/paletteuse (one palette per frame)."""

    def __init__(self, container, width, height, gif_fps, gif_width):
        self._fps = min(gif_fps or GIF_MAX_FPS, GIF_MAX_FPS)
        out_width = min(width, gif_width) if gif_width else width
        self.size = (out_width, max(1, round(height * out_width / width)))
        self._container = container
        self._stream = container.add_stream("gif", rate=Fraction(self._fps).limit_denominator(1000))
        self._stream.width, self._stream.height = self.size
        self._stream.pix_fmt = "pal8"
        self._stream.codec_context.time_base = Fraction(1, GIF_TICKS_PER_S)

        graph = av.filter.Graph()
        source = graph.add_buffer(
            width=width, height=height, format="rgb24", time_base=Fraction(1, GIF_TICKS_PER_S)
        )
        scale = graph.add("scale", f"{self.size[0]}:{self.size[1]}:flags=area")
        split = graph.add("split")
        palettegen = graph.add("palettegen", "stats_mode=single")
        paletteuse = graph.add("paletteuse", "new=1")
        source.link_to(scale)
        scale.link_to(split)
        split.link_to(paletteuse, 0, 0)
        split.link_to(palettegen, 1, 0)
        palettegen.link_to(paletteuse, 0, 1)
        paletteuse.link_to(graph.add("buffersink"))
        graph.configure()
        self._graph = graph
        self._slot = -1
        self._ticks = -1

    def write(self, image, t):
        slot = math.floor(t * self._fps + 1e-6)
        if slot <= self._slot:
            return
        self._slot = slot
        self._ticks = max(round(t * GIF_TICKS_PER_S), self._ticks + 1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._ticks
        frame.time_base = Fraction(1, GIF_TICKS_PER_S)
        self._graph.push(frame)
        self._drain()

    def finish(self):
        self._graph.push(None)
        self._drain()
        self._mux(self._stream.encode(None))

    def _drain(self):
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            self._mux(self._stream.encode(frame))

    def _mux(self, packets):
        for packet in packets:
            if not packet.duration:  # the last frame's delay
                packet.duration = round(GIF_TICKS_PER_S / self._fps)
            self._container.mux(packet)


class _AudioTrack:
    """The first audio stream of ``source``, copied or re-encoded to AAC, muxed as video advances.

    Call ``start(start_s)`` once (``start_s`` in the source's clock: seconds from the start of the
    file), then ``mux_until(t)`` with output times; packets are shifted by ``-start_s``.
    """

    def __init__(self, container, source, extension):
        self._source = source
        self._input = open_media(source)
        self._container = container
        self._packets = iter(())
        self._pending = None
        if not self._input.streams.audio:
            self._in = None
            self._input.close()
            return
        self._in = self._input.streams.audio[0]
        if self._in.codec_context is None:  # a codec FFmpeg does not know: damaged or exotic
            self._input.close()
            raise VidattnError(f"its audio stream has an unknown codec{_WITHOUT_AUDIO}", source)
        self._origin = Fraction(self._input.start_time or 0, av.time_base)
        if self._in.codec_context.name in _COPYABLE_AUDIO[extension]:
            self._out = container.add_stream_from_template(self._in)
            self._copy = True
        else:
            layout = "mono" if self._in.channels == 1 else "stereo"
            self._out = container.add_stream("aac", rate=self._in.rate, layout=layout)
            self._copy = False

    def start(self, start_s):
        if self._in is not None:
            self._packets = (self._copied if self._copy else self._encoded)(Fraction(start_s))

    def mux_until(self, t):
        """Mux the packets whose output time is before ``t`` seconds."""
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
            if self._pending.pts * self._pending.time_base >= t:
                return
            self._container.mux(self._pending)
            self._pending = None

    def close(self):
        self._packets = iter(())
        self._pending = None
        if self._in is not None:
            self._input.close()
            self._in = None

    def _copied(self, start_s):
        shift = math.ceil((start_s + self._origin) / self._in.time_base)
        for packet in self._demux():
            if packet.pts is None or packet.pts < shift:
                continue
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self._out
            yield packet

    def _encoded(self, start_s):
        rate = self._in.rate
        for packet in self._demux():
            for frame in self._decode(packet):
                if frame.pts is None:
                    continue
                t = frame.pts * frame.time_base - self._origin - start_s
                if t < 0:
                    continue
                frame.pts = round(t * rate)
                frame.time_base = Fraction(1, rate)
                yield from self._out.encode(frame)
        yield from self._out.encode(None)

    def _demux(self):
        try:
            yield from self._input.demux(self._in)
        except av.FFmpegError as error:
            raise self._corrupt(error) from error

    def _decode(self, packet):
        try:
            return packet.decode()
        except av.FFmpegError as error:
            raise self._corrupt(error) from error

    def _corrupt(self, error):
        return VidattnError(f"corrupt audio data: {error}{_WITHOUT_AUDIO}", self._source)


def _discard(container, temp: Path):
    """Close ``container`` if open, ignoring errors, and delete ``temp``."""
    if container is not None:
        try:
            container.close()
        except Exception:  # noqa: BLE001 - the output is being thrown away anyway
            pass
    temp.unlink(missing_ok=True)


__all__ = ["VideoWriter", "GIF_MAX_FPS"]
