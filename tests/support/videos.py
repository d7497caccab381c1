"""Small synthetic test videos, made with PyAV into a path the test chooses (normally tmp_path).

``make_video`` draws a coloured square on a known trajectory, so tests can check where things land
after decoding, rotation, resizing and attention overlays. Coordinates are continuous display
pixels: pixel (row r, column c) covers [c, c+1) x [r, r+1), so the centre of a square covering
columns x..x+s-1 is x + s/2, which is also the mean of (c + 0.5) over the square's pixels.

The other helpers make broken or unusual inputs: audio only, zero frames, a declared frame size
with no data behind it, a truncated copy, timestamps that go back, a resolution change midway.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_CONTAINER_OPTIONS = {".mp4": {"movflags": "+faststart"}, ".mov": {"movflags": "+faststart"}}
AUDIO_RATE = 16000
AUDIO_HZ = 440.0
VFR_STEPS = (1.0, 2.0, 0.5, 1.5)  # frame durations of a vfr video, in units of 1/fps, cycled


@dataclass(frozen=True)
class MadeVideo:
    """A generated video and its ground truth.

    ``pts_s``: (n,) presentation times in seconds. ``centres``: (n, 2) float (x, y) centre of the
    square in display coordinates. ``width``/``height``: display size (coded size turned by the
    rotation). ``square_size``: side of the square in pixels.
    """

    path: Path
    pts_s: np.ndarray
    centres: np.ndarray
    width: int
    height: int
    fps: float
    square_size: int

    @property
    def duration_s(self) -> float:
        """Last frame's time plus one nominal frame: how long a player shows the video."""
        return float(self.pts_s[-1] + 1.0 / self.fps)


def make_video(
    path,
    n_frames=30,
    fps=25,
    size=(96, 64),
    codec="libx264",
    pix_fmt="yuv420p",
    audio=False,
    audio_codec="aac",
    rotation=0,
    vfr=False,
    square_color=(255, 0, 0),
    square_size=None,
    background="noise",
    gop=10,
    seed=0,
    title=None,
    metadata_encoding="utf-8",
) -> MadeVideo:
    """Write a video of ``n_frames`` frames to ``path`` (container chosen by the extension).

    ``size``: (W, H) as stored in the file. ``rotation``: counter-clockwise degrees (a multiple of
    90) written as a display matrix; players, and the reader, turn the stored frames by it, so the
    display size is (H, W) for +-90. The square moves, in display coordinates, from the top-left
    corner to the right edge while descending to mid-height; its side defaults to a fifth of the
    smaller display dimension. ``background``: "noise" (grey noise in 40..140, new every frame) or
    "gray" (flat 128). ``vfr``: frame durations cycle through ``VFR_STEPS`` / fps instead of
    1 / fps. ``audio``: a 440 Hz sine in ``audio_codec`` ("aac", or "pcm_s16le" in .mov/.mkv)
    lasting the video's duration. ``gop``: keyframe interval, short so seeking is exercised.
    ``title``: a container title tag, written in ``metadata_encoding`` ("latin-1" makes a tag
    that is not valid UTF-8, as some cameras and editors write them).
    """
    path = Path(path)
    turns = round(rotation / 90) % 4
    width, height = size if turns % 2 == 0 else size[::-1]
    side = square_size or max(4, min(width, height) // 5)
    progress = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)
    corners = np.stack(
        [np.round(progress * (width - side)), np.round(progress * (height - side) / 2)], axis=1
    ).astype(int)

    if vfr:
        time_base = Fraction(1, 1000)
        steps = np.resize(np.asarray(VFR_STEPS), n_frames - 1) * 1000 / fps
        ticks = np.concatenate([[0], np.cumsum(np.round(steps).astype(int))])
    else:
        time_base = Fraction(1, 1) / Fraction(fps)
        ticks = np.arange(n_frames)
    rng = np.random.default_rng(seed)

    with av.open(str(path), "w", options=_CONTAINER_OPTIONS.get(path.suffix.lower(), {}),
                 metadata_encoding=metadata_encoding) as out:
        if title is not None:
            out.metadata["title"] = title
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "crf": "18"}
        if turns:
            stream.set_display_rotation(90 * turns)
        audio_stream = None
        if audio:
            audio_stream = out.add_stream(audio_codec, rate=AUDIO_RATE, layout="mono")
        for tick, (x, y) in zip(ticks, corners):
            if background == "noise":
                image = np.repeat(rng.integers(40, 140, (height, width, 1), np.uint8), 3, axis=2)
            else:
                image = np.full((height, width, 3), 128, np.uint8)
            image[y : y + side, x : x + side] = square_color
            stored = np.ascontiguousarray(np.rot90(image, -turns))
            frame = av.VideoFrame.from_ndarray(stored, "rgb24")
            frame.pts = int(tick)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        pts_s = np.array([float(int(tick) * time_base) for tick in ticks])
        if audio_stream is not None:
            _write_sine(out, audio_stream, float(pts_s[-1]) + 1.0 / fps)

    return MadeVideo(path, pts_s, corners + side / 2, width, height, float(fps), side)


def _write_sine(container, stream, seconds):
    """Encode a 440 Hz sine of ``seconds`` into ``stream`` (mono, AUDIO_RATE)."""
    t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
    wave = 0.3 * np.sin(2 * np.pi * AUDIO_HZ * t)
    fmt = stream.codec_context.format.name
    if fmt == "s16":
        samples = (wave * 32767).astype(np.int16)[None]
    else:
        samples = wave.astype(np.float32)[None]
        fmt = "fltp"
    frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
    frame.sample_rate = AUDIO_RATE
    frame.pts = 0
    frame.time_base = Fraction(1, AUDIO_RATE)
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_audio_only(path, seconds=1.0):
    """An AAC sine in ``path`` (e.g. ``.m4a``) with no video stream."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        _write_sine(out, out.add_stream("aac", rate=AUDIO_RATE, layout="mono"), seconds)
    return path


def make_zero_frame_video(path):
    """A video stream with no frames: a YUV4MPEG2 header alone (``path`` should end .y4m)."""
    return make_y4m_header(path, 96, 64)


def make_y4m_header(path, width, height, payload=b""):
    """A YUV4MPEG2 file (``path`` should end .y4m) declaring ``width`` x ``height`` frames, then
    ``payload``: a few bytes can declare a frame size that would take gigabytes to decode."""
    path = Path(path)
    header = f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + payload)
    return path


def make_retimed_video(path, times, size=(32, 32)):
    """Intra-only H.264 (``path`` .mkv) whose packets carry ``times``: one ``(pts, dts)`` pair per
    frame in 1/25 s ticks, dts increasing (muxers insist) but pts free to go back or repeat, as
    in a file whose timestamps are damaged. Frame ``i`` is flat grey ``40 * i``."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 1
        packets = []
        for i in range(len(times)):
            frame = av.VideoFrame.from_ndarray(
                np.full((size[1], size[0], 3), 40 * i % 256, np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for packet, (pts, dts) in zip(packets, times, strict=True):
            packet.pts, packet.dts = pts, dts
            out.mux(packet)
    return path


def make_resolution_change(path, sizes=((96, 64), (48, 32)), n_frames=5):
    """A raw H.264 stream (``path`` .h264) of ``n_frames`` frames at each of ``sizes`` in turn:
    what splicing two recordings (or a stream that changed resolution) gives."""
    path = Path(path)
    parts = []
    for i, size in enumerate(sizes):
        part = path.with_name(f".{path.stem}-part{i}.h264")
        make_video(part, n_frames=n_frames, size=size, seed=i)
        parts.append(part.read_bytes())
        part.unlink()
    path.write_bytes(b"".join(parts))
    return path


def make_truncated_copy(source, path, keep):
    """Copy the start of ``source`` to ``path``, a broken download: ``keep`` is a fraction of the
    bytes (float < 1) or a byte count (int).

    In a faststart MP4 (index first) a cut in the media data still opens but fails mid-stream;
    a cut within the first hundred bytes or so no longer opens at all.
    """
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path
