"""Video reader and writer: frame counts, timestamps, rotation, geometry, colour, audio, GIF,
errors, no half-written output, and the prefetching thread."""

import gc
import os
import re
import subprocess
import threading

import av
import imageio_ffmpeg
import numpy as np
import pytest

from tests.support.videos import (
    AUDIO_HZ,
    make_audio_only,
    make_truncated_copy,
    make_video,
    make_zero_frame_video,
)
from vidattn.errors import VidattnError
from vidattn.video.reader import Prefetcher, probe, read_frames
from vidattn.video.writer import VideoWriter, rgb_to_yuv420p

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def square_centre(image, color=(255, 0, 0)):
    """(x, y) centroid of the pixels close to ``color``, in continuous pixel coordinates."""
    close = np.abs(image.astype(int) - color).max(axis=2) < 70
    rows, cols = np.nonzero(close)
    assert rows.size, "square not found"
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


def ffmpeg_rgb(path, width, height, frame=0):
    """Frame ``frame`` of ``path`` decoded by the ffmpeg CLI (which applies rotation itself)."""
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-vf", f"select=eq(n\\,{frame})",
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def copy_video(source, target, **writer_kwargs):
    """Read ``source`` and write every frame to ``target`` at the source's times."""
    info = probe(source)
    with VideoWriter(target, info.fps, info.width, info.height, **writer_kwargs) as writer:
        for frame in read_frames(source):
            writer.write(frame.image, frame.pts_s)
    return writer


# ------------------------------------------------------------------------------------- reader


def test_probe_and_read_give_every_frame_at_its_time(tmp_path):
    made = make_video(tmp_path / "v.mp4", n_frames=30, fps=25, size=(96, 64))
    info = probe(made.path)
    assert (info.width, info.height, info.rotation) == (96, 64, 0)
    assert info.fps == 25 and info.n_frames == 30 and info.duration_s == pytest.approx(1.2)
    assert (info.codec, info.pix_fmt, info.has_audio) == ("h264", "yuv420p", False)

    frames = list(read_frames(made.path))
    assert [f.index for f in frames] == list(range(30))
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(30) / 25, atol=1e-9)
    for frame in frames:
        assert frame.image.shape == (64, 96, 3) and frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous


@pytest.mark.parametrize("rotation", [0, 90, -90, 180])
def test_rotation_is_honoured_and_the_square_is_where_drawn(tmp_path, rotation):
    made = make_video(tmp_path / "r.mp4", n_frames=12, size=(96, 64), rotation=rotation)
    info = probe(made.path)
    assert (info.width, info.height, info.rotation) == (made.width, made.height, rotation)
    assert (made.width, made.height) == ((64, 96) if rotation in (90, -90) else (96, 64))
    frames = list(read_frames(made.path))
    assert len(frames) == 12
    for frame, centre in zip(frames, made.centres):
        assert frame.image.shape == (made.height, made.width, 3)
        np.testing.assert_allclose(square_centre(frame.image), centre, atol=1.0)


@pytest.mark.parametrize("rotation", [90, -90])
def test_rotation_matches_ffmpeg(tmp_path, rotation):
    """The rotation convention is FFmpeg's, not just consistent with our own generator."""
    made = make_video(tmp_path / "r.mp4", n_frames=3, rotation=rotation, background="gray")
    ours = next(read_frames(made.path)).image
    np.testing.assert_array_equal(ours, ffmpeg_rgb(made.path, made.width, made.height))


@pytest.mark.parametrize(
    "start, end, every, max_frames",
    [(0.4, None, 1, None), (None, 0.6, 1, None), (0.4, 0.8, 3, None), (None, None, 2, 7),
     (0.5, None, 4, 3), (0.41, 0.43, 1, None), (1.5, None, 1, None)],
)
def test_start_end_every_max_frames(tmp_path, start, end, every, max_frames):
    made = make_video(tmp_path / "v.mp4", n_frames=30, fps=25, gop=10)
    kept = [i for i in range(30) if (start or 0) <= i / 25 < (end or 99)]
    expected = kept[::every][:max_frames]
    frames = list(read_frames(made.path, start, end, every, max_frames))
    assert [f.index for f in frames] == expected
    np.testing.assert_allclose([f.pts_s for f in frames], np.array(expected) / 25, atol=1e-9)
    for frame in frames:  # the pictures are the right ones, not just the labels
        np.testing.assert_allclose(square_centre(frame.image), made.centres[frame.index], atol=1.0)


def test_seeking_to_each_frame_starts_exactly_there(tmp_path):
    """Short GOPs with B-frames: the seek lands on a keyframe before start, frames are dropped."""
    made = make_video(tmp_path / "v.mp4", n_frames=30, gop=7, background="gray")
    for k in range(30):
        first = next(read_frames(made.path, start=k / 25))
        assert (first.index, first.pts_s) == (k, pytest.approx(k / 25))
        np.testing.assert_allclose(square_centre(first.image), made.centres[k], atol=1.0)


def test_variable_frame_rate_times_are_kept(tmp_path):
    made = make_video(tmp_path / "vfr.mp4", n_frames=20, fps=25, vfr=True)
    assert len(set(np.round(np.diff(made.pts_s), 6))) > 2  # really irregular
    frames = list(read_frames(made.path))
    np.testing.assert_allclose([f.pts_s for f in frames], made.pts_s, atol=1e-6)
    assert [f.index for f in frames] == list(range(20))


def test_errors_name_the_file(tmp_path):
    good = make_video(tmp_path / "good.mp4", n_frames=40, size=(160, 96))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cases = {
        tmp_path / "missing.mp4": "file not found",
        tmp_path: "is a directory",
        text: "not a readable media file",
        make_truncated_copy(good.path, tmp_path / "head.mp4", 20): "not a readable media file",
        make_audio_only(tmp_path / "sound.m4a"): "has no video stream",
        make_zero_frame_video(tmp_path / "empty.y4m"): "has no frames",
    }
    for path, message in cases.items():
        with pytest.raises(VidattnError, match=message) as caught:
            probe(path)
        assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize("path_kind", ["missing", "directory", "not_video", "no_video_stream"])
def test_read_frames_errors(tmp_path, path_kind):
    path = {
        "missing": lambda: tmp_path / "missing.mp4",
        "directory": lambda: tmp_path,
        "not_video": lambda: (tmp_path / "x.mp4").write_text("hi") and tmp_path / "x.mp4",
        "no_video_stream": lambda: make_audio_only(tmp_path / "sound.m4a"),
    }[path_kind]()
    with pytest.raises(VidattnError, match=str(path)):
        list(read_frames(path))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_file_fails_mid_stream_with_the_time(tmp_path, keep):
    """Cut between packets (FFmpeg stops quietly) or inside one (the decoder fails)."""
    good = make_video(tmp_path / "good.mp4", n_frames=40, size=(160, 96))
    cut = make_truncated_copy(good.path, tmp_path / "cut.mp4", keep)
    assert probe(cut).n_frames == 40  # the index survives: only the data is missing
    frames = []
    with pytest.raises(VidattnError, match=r"corrupt video data at t=\d+\.\d\ds") as caught:
        for frame in read_frames(cut):
            frames.append(frame)
    assert str(caught.value).startswith(f"{cut}: ")
    assert 0 < len(frames) < 40
    reported = float(re.search(r"t=([\d.]+)s", str(caught.value)).group(1))
    assert frames[-1].pts_s - 0.05 <= reported <= frames[-1].pts_s + 0.5  # where the data ends


def test_zero_frame_video_reads_as_empty(tmp_path):
    assert list(read_frames(make_zero_frame_video(tmp_path / "empty.y4m"))) == []


# ------------------------------------------------------------------------------------- prefetch


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "vidattn-prefetch"]


def test_prefetch_yields_everything_in_order(tmp_path):
    made = make_video(tmp_path / "v.mp4", n_frames=20)
    with Prefetcher(read_frames(made.path), maxsize=3) as frames:
        got = list(frames)
    direct = list(read_frames(made.path))
    assert [f.pts_s for f in got] == [f.pts_s for f in direct]
    for a, b in zip(got, direct):
        np.testing.assert_array_equal(a.image, b.image)
    assert not _prefetch_threads()


def test_prefetch_reraises_the_producer_error_after_its_items():
    def produce():
        yield from range(5)
        raise KeyError("boom")

    got = []
    with pytest.raises(KeyError, match="boom"):
        for item in Prefetcher(produce(), maxsize=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert not _prefetch_threads()


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():
    closed = threading.Event()

    def forever():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    with Prefetcher(forever(), maxsize=2) as items:
        assert [next(items) for _ in range(3)] == [0, 1, 2]
    assert closed.is_set()  # the generator was closed (its finally ran) ...
    assert not _prefetch_threads()  # ... and the thread joined

    closed.clear()
    items = Prefetcher(forever(), maxsize=2)
    assert next(items) == 0
    (thread,) = _prefetch_threads()
    del items  # dropped without close(): garbage collection stops the thread
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive() and closed.is_set()


# ------------------------------------------------------------------------------------- writer


@pytest.mark.parametrize("name, tick", [("out.mp4", 1 / 90000), ("out.mov", 1 / 90000),
                                        ("out.mkv", 1e-3)])
def test_round_trip_keeps_count_times_fps_and_geometry(tmp_path, name, tick):
    made = make_video(tmp_path / "in.mp4", n_frames=30, fps=25, size=(96, 64))
    out = tmp_path / name
    copy_video(made.path, out)
    info = probe(out)
    assert (info.width, info.height, info.fps, info.codec) == (96, 64, 25, "h264")
    assert info.n_frames == 30 and info.duration_s == pytest.approx(1.2, abs=tick)
    frames = list(read_frames(out))
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(30) / 25, atol=tick)
    for frame, centre in zip(frames, made.centres):
        np.testing.assert_allclose(square_centre(frame.image), centre, atol=1.0)
    assert sorted(os.listdir(tmp_path)) == sorted(["in.mp4", name])  # no temporary left


def test_trimmed_clip_starts_at_zero(tmp_path):
    made = make_video(tmp_path / "in.mp4", n_frames=30)
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, 25, made.width, made.height) as writer:
        for frame in read_frames(made.path, start=0.4, end=0.8):
            writer.write(frame.image, frame.pts_s)
    frames = list(read_frames(out))
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(10) / 25, atol=1e-6)
    np.testing.assert_allclose(square_centre(frames[0].image), made.centres[10], atol=1.0)


def test_variable_frame_rate_survives_writing(tmp_path):
    made = make_video(tmp_path / "vfr.mp4", n_frames=20, fps=25, vfr=True)
    out = tmp_path / "out.mp4"
    copy_video(made.path, out)
    np.testing.assert_allclose([f.pts_s for f in read_frames(out)], made.pts_s, atol=1 / 90000)


@pytest.mark.parametrize("width, height", [(95, 63), (96, 63), (95, 64)])
def test_odd_sizes_are_padded_to_even_at_the_right_and_bottom(tmp_path, width, height):
    image = np.full((height, width, 3), 128, np.uint8)
    image[40:54, 60:74] = (255, 0, 0)  # a square whose place must not move
    image[:, -2:] = (0, 200, 0)  # last columns green, last rows blue: the pad repeats them
    image[-2:, :] = (0, 0, 200)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 25, width, height, crf=12) as writer:
        assert writer.size == (width + width % 2, height + height % 2)
        for i in range(3):
            writer.write(image, i / 25)
    decoded = next(read_frames(out)).image.astype(int)
    assert decoded.shape == (height + height % 2, width + width % 2, 3)
    np.testing.assert_allclose(square_centre(decoded), [67, 47], atol=0.25)
    assert np.abs(decoded[:-4, width - 1 :] - (0, 200, 0)).mean() < 12
    assert np.abs(decoded[height - 1 :, :-4] - (0, 0, 200)).mean() < 12


def test_colours_match_what_ffmpeg_decodes(tmp_path):
    """BT.709 conversion and tags agree, so players show the colours written."""
    colours = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [30, 200, 90]],
        np.uint8,
    )
    image = np.ascontiguousarray(np.repeat(np.repeat(colours[None], 64, 0), 16, 1))  # 64x96
    out = tmp_path / "colours.mp4"
    with VideoWriter(out, 25, 96, 64, crf=10) as writer:
        for i in range(2):
            writer.write(image, i / 25)
    for decoded in (ffmpeg_rgb(out, 96, 64), next(read_frames(out)).image):
        inner = decoded[8:-8].reshape(48, 6, 16, 3)[:, :, 4:12].astype(int)
        error = np.abs(inner - colours[None, :, None]).mean(axis=(0, 2))
        assert error.max() < 4, error


def _audio(path):
    """(duration_s, start_s, samples of the first channel, rate, codec) of the audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
        samples = np.concatenate([f.to_ndarray()[0] for f in frames])
        start = float(frames[0].pts * frames[0].time_base)
        return len(samples) / stream.rate, start, samples, stream.rate, stream.codec_context.name


def _peak_hz(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * rate / len(samples)


@pytest.mark.parametrize("source_name, audio_codec", [("in.mp4", "aac"), ("in.mov", "pcm_s16le")])
@pytest.mark.parametrize("start", [None, 0.4])
def test_audio_is_carried_over_and_spans_the_video(tmp_path, source_name, audio_codec, start):
    made = make_video(tmp_path / source_name, n_frames=40, audio=True, audio_codec=audio_codec)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, made.width, made.height, audio_from=made.path) as writer:
        for frame in read_frames(made.path, start=start):
            writer.write(frame.image, frame.pts_s)
    video_s = probe(out).duration_s
    assert video_s == pytest.approx(1.6 - (start or 0), abs=1e-3)
    duration, first_s, samples, rate, codec = _audio(out)
    assert codec == "aac"  # copied from AAC, or re-encoded from PCM
    assert 0 <= first_s < 0.07  # at most one AAC packet late
    assert first_s + duration == pytest.approx(video_s, abs=0.07)
    assert _peak_hz(samples, rate) == pytest.approx(AUDIO_HZ, abs=5)
    check = subprocess.run([FFMPEG, "-v", "error", "-i", str(out), "-f", "null", "-"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == ""  # plays through without complaint


def test_explicit_audio_span(tmp_path):
    made = make_video(tmp_path / "in.mp4", n_frames=40, audio=True)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, made.width, made.height, audio_from=made.path, audio_start=0.4,
                     audio_end=1.0) as writer:
        for frame in read_frames(made.path, start=0.4):
            writer.write(frame.image, frame.pts_s)
    duration, first_s, _, _, _ = _audio(out)
    assert first_s + duration == pytest.approx(0.6, abs=0.07)


def test_missing_audio_source_fails_at_construction(tmp_path):
    with pytest.raises(VidattnError, match="file not found") as caught:
        VideoWriter(tmp_path / "out.mp4", 25, 96, 64, audio_from=tmp_path / "gone.mp4")
    assert str(tmp_path / "gone.mp4") in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_audio_source_without_audio_gives_a_silent_video(tmp_path):
    made = make_video(tmp_path / "in.mp4", n_frames=5)
    out = tmp_path / "out.mp4"
    copy_video(made.path, out, audio_from=made.path)
    assert not probe(out).has_audio and probe(out).n_frames == 5


@pytest.mark.parametrize(
    "gif_fps, gif_width, n_expected, size",
    [(10, None, 12, (96, 64)), (None, 48, 30, (48, 32)), (4, 50, 5, (50, 33))],
)
def test_gif_frame_count_size_and_content(tmp_path, gif_fps, gif_width, n_expected, size):
    made = make_video(tmp_path / "in.mp4", n_frames=30, fps=25, background="gray")
    out = tmp_path / "out.gif"
    writer = copy_video(made.path, out, gif_fps=gif_fps, gif_width=gif_width)
    assert writer.size == size
    # the documented rule: a frame is kept when floor(t * fps) passes the last kept frame's
    times = np.arange(30) / 25
    slots = np.floor(times * (gif_fps or 50) + 1e-6)
    kept = np.flatnonzero(np.diff(slots, prepend=-1) > 0)
    assert len(kept) == n_expected
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == n_expected
    np.testing.assert_allclose([float(f.pts * f.time_base) for f in frames], times[kept],
                               atol=0.006)
    scale = size[0] / made.width
    for frame, index in zip(frames, kept):
        image = frame.to_ndarray(format="rgb24")
        assert image.shape == (size[1], size[0], 3)
        np.testing.assert_allclose(square_centre(image), made.centres[index] * scale,
                                   atol=1.0)
        background = image[-3:, :3].astype(int)  # bottom-left stays grey 128
        assert np.abs(background - 128).max() <= 6


def test_unwritable_outputs_fail_before_any_work(tmp_path):
    (tmp_path / "folder.mp4").mkdir()
    cases = {
        tmp_path / "missing" / "out.mp4": "output directory does not exist",
        tmp_path / "folder.mp4": "output path is a directory",
        tmp_path / "out.avi": "cannot write .avi",
    }
    for path, message in cases.items():
        with pytest.raises(VidattnError, match=message) as caught:
            VideoWriter(path, 25, 96, 64)
        assert str(caught.value).startswith(f"{path}: ")
    assert os.listdir(tmp_path) == ["folder.mp4"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_directory_fails_at_construction(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(VidattnError, match="Permission denied"):
            VideoWriter(locked / "out.mp4", 25, 96, 64)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("name", ["out.mp4", "out.gif"])
def test_failure_inside_the_with_block_leaves_nothing(tmp_path, name):
    out = tmp_path / name
    out.write_bytes(b"previous result")
    image = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(RuntimeError, match="model crashed"):
        with VideoWriter(out, 25, 96, 64, audio_from=None) as writer:
            for i in range(5):
                writer.write(image, i / 25)
            raise RuntimeError("model crashed")
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary file
    assert out.read_bytes() == b"previous result"  # the old output is untouched


def test_writer_never_closed_or_empty_leaves_nothing(tmp_path):
    writer = VideoWriter(tmp_path / "a.mp4", 25, 96, 64)
    writer.write(np.zeros((64, 96, 3), np.uint8), 0.0)
    assert len(os.listdir(tmp_path)) == 1  # the temporary file
    del writer
    gc.collect()
    assert os.listdir(tmp_path) == []

    with pytest.raises(VidattnError, match="no frames to write"):
        with VideoWriter(tmp_path / "b.mp4", 25, 96, 64):
            pass
    assert os.listdir(tmp_path) == []


def test_write_rejects_wrong_images_and_backward_times(tmp_path):
    with VideoWriter(tmp_path / "a.mp4", 25, 96, 64) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((64, 96, 3), np.float32), 0.0)
        with pytest.raises(ValueError, match=r"\(64, 96, 3\)"):
            writer.write(np.zeros((96, 64, 3), np.uint8), 0.0)
        writer.write(np.zeros((64, 96, 3), np.uint8), 0.0)
        with pytest.raises(ValueError, match="increase"):
            writer.write(np.zeros((64, 96, 3), np.uint8), 0.0)
    assert probe(tmp_path / "a.mp4").n_frames == 1


def test_rgb_to_yuv420p_matches_libswscale_bt709():
    """Our BT.709 limited-range conversion (cv2) against libswscale's on smooth content: Y and
    chroma within 1 level, and the planes laid out as yuv420p (Y, then Cb, then Cr)."""
    h, w = 64, 96
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1)
    rgb = rgb.astype(np.uint8)
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG").to_ndarray()
    got = rgb_to_yuv420p(rgb)
    assert got.shape == ref.shape == (h * 3 // 2, w) and got.dtype == np.uint8
    np.testing.assert_allclose(got.astype(int), ref.astype(int), atol=1)
    white = rgb_to_yuv420p(np.full((2, 2, 3), 255, np.uint8)).ravel()
    black = rgb_to_yuv420p(np.zeros((2, 2, 3), np.uint8)).ravel()
    np.testing.assert_array_equal(white, [235] * 4 + [128, 128])  # limited range
    np.testing.assert_array_equal(black, [16] * 4 + [128, 128])
