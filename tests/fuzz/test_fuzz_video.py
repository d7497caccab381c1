"""Videos: damaged seeds through the reader and through the whole render, and a table of named
odd inputs. Every case ends in a complete output or one VidattnError naming the input, and never
leaves a file behind in the output folder."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import vidattn
from tests.support.fuzzing import examples, write_damaged
from tests.support.reliability import reliability
from tests.support.videos import (
    make_audio_only,
    make_resolution_change,
    make_retimed_video,
    make_truncated_copy,
    make_video,
    make_y4m_header,
    make_zero_frame_video,
)
from vidattn.errors import VidattnError
from vidattn.options import VideoOptions
from vidattn.video.pipeline import render_video
from vidattn.video.reader import MAX_FRAME_PIXELS, probe, read_frames

# A warning is noise on a CLI user's terminal: here it fails the case.
pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(scope="module")
def demo():
    return vidattn.load_model("demo")


def _decoded_frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def _read_or_refuse(path) -> str:
    """Probe and decode ``path``: "ok" with consistent frames, or "error" with a VidattnError
    that names it; anything else fails the test."""
    try:
        info = probe(path)
        frames = list(read_frames(path))
    except VidattnError as err:
        assert err.path == str(path), err
        return "error"
    assert frames and info.width * info.height <= MAX_FRAME_PIXELS
    assert all(f.image.shape == (info.height, info.width, 3) and f.image.dtype == np.uint8
               for f in frames)
    times = [f.pts_s for f in frames]
    assert times == sorted(set(times)), times  # strictly increasing: what the writer needs
    return "ok"


def _render_or_refuse(model, src, out_dir, suffix=".mp4", **options) -> str:
    """Render ``src`` into ``out_dir``: "ok" with a complete output holding every rendered frame
    and nothing else, or "error" with a VidattnError naming ``src`` and an empty ``out_dir``."""
    dst = out_dir / f"out{suffix}"
    try:
        result = render_video(model, src, dst, VideoOptions(size=64, progress=False, **options))
    except VidattnError as err:
        assert err.path == str(src), err
        assert list(out_dir.iterdir()) == []
        return "error"
    assert list(out_dir.iterdir()) == [dst]
    frames = _decoded_frames(dst)
    assert frames == result.frames if suffix == ".mp4" else 1 <= frames <= result.frames
    dst.unlink()
    return "ok"


@reliability(("a seed video (H.264 + AAC, yuv444, 10-bit, rotated, variable frame rate, 1x1, "
              "7x5) cut at a random byte, with bytes flipped or overwritten with 00/FF/7F/80 in "
              "its header, index or packets, or spliced with another",
              "decoded to upright frames of one size with increasing times, or one error naming "
              "the file (not a readable media file, corrupt video data at t=..., no frames, "
              "no decoder)"))
@examples(80)
@given(data=st.data())
def test_damaged_videos_decode_or_fail_cleanly(data, seed_videos, scratch):
    path = write_damaged(data, seed_videos, scratch, "video")
    event(_read_or_refuse(path))


@reliability(("the same damaged videos rendered end to end (mean or heads view, MP4 or GIF)",
              "a complete output with every frame, or one error naming the input and no "
              "output or temporary file"))
@examples(24)
@given(data=st.data())
def test_damaged_videos_render_or_fail_cleanly(data, demo, seed_videos, scratch):
    src = write_damaged(data, seed_videos, scratch, "video")
    view = data.draw(st.sampled_from(["mean", "heads"]), label="view")
    suffix = data.draw(st.sampled_from([".mp4", ".gif"]), label="output")
    out = scratch / "out"
    out.mkdir(exist_ok=True)
    event(_render_or_refuse(demo, src, out, suffix, view=view))


@reliability(("the same damaged videos rendered with `--view pca` (its fit sample read by "
              "seeking across the video), with or without `--pca-background`, and "
              "`--save-features`",
              "a complete output and a feature file holding every rendered frame, or one error "
              "naming the input and no output, feature file or temporary file"))
@examples(16)
@given(data=st.data())
def test_damaged_videos_render_pca_or_fail_cleanly(data, demo, seed_videos, scratch):
    src = write_damaged(data, seed_videos, scratch, "video")
    background = data.draw(st.sampled_from([None, 0.5]), label="pca_background")
    features = _render_keeping(demo, src, scratch, "save_features", "f.npy", view="pca",
                               pca_background=background)
    if features is None:
        return
    times = json.loads(features.with_suffix(".json").read_text())["timestamps_s"]
    tokens = np.load(features)
    assert tokens.dtype == np.float16 and len(tokens) == len(times) >= 1
    assert np.isfinite(tokens).all() and times == sorted(set(times))


def _render_keeping(model, src, scratch, option: str, name: str, **options):
    """``_render_or_refuse`` into ``scratch/out`` with the side file ``option`` (save_features,
    save_maps) at ``scratch/kept/name`` -> its path, or None after an error (which must leave
    no side file either). The side files of the case before are removed first."""
    out, kept = scratch / "out", scratch / "kept"
    out.mkdir(exist_ok=True)
    kept.mkdir(exist_ok=True)
    for path in kept.iterdir():
        path.unlink()
    outcome = _render_or_refuse(model, src, out, **options, **{option: kept / name})
    event(outcome)
    if outcome == "error":
        assert list(kept.iterdir()) == []
        return None
    return kept / name


@pytest.fixture(scope="module")
def classifier():
    """A tiny random vit_b16 classifier (the explain view needs a head)."""
    import dataclasses

    from vidattn.models.presets import get_preset

    tiny = dataclasses.replace(get_preset("vit_b16"), name="tiny_classifier", embed_dim=32,
                               depth=2, num_heads=2, num_classes=10)
    return vidattn.load_model(tiny, weights="random")


@reliability(("the same damaged videos rendered with `--view explain` (a backward pass per "
              "batch), with `--smooth` and `--save-maps`",
              "a complete output and maps with each frame's explained class, or one error "
              "naming the input and no output, maps or temporary file"))
@examples(8)
@given(data=st.data())
def test_damaged_videos_render_explain_or_fail_cleanly(data, classifier, seed_videos, scratch):
    src = write_damaged(data, seed_videos, scratch, "video")
    smooth = data.draw(st.sampled_from([1.0, 3.0]), label="smooth")
    maps = _render_keeping(classifier, src, scratch, "save_maps", "maps.npz", view="explain",
                           smooth=smooth)
    if maps is None:
        return
    saved = np.load(maps)
    assert len(saved["maps"]) == len(saved["explained_class"]) == len(saved["pts_s"]) >= 1
    assert np.isfinite(saved["maps"].astype(np.float32)).all()
    assert ((saved["explained_probability"] > 0) & (saved["explained_probability"] <= 1)).all()


def _file(path, data: bytes):
    path.write_bytes(data)
    return path


def _no_decoder(folder):
    """A clip with its codec tag renamed: FFmpeg demuxes a stream it cannot decode."""
    source = make_video(folder / "src.mp4", n_frames=4).path
    return _file(folder / "nocodec.mp4", source.read_bytes().replace(b"avc1", b"zzzz"))


def _absurd_rate(folder):
    """An MP4 whose sample table gives each frame 33554944 ticks of 1/12800 s (one flipped byte,
    as scripts/fuzz.sh made it): it declares 25/65537 fps, frames 2621 s apart."""
    data = bytearray(make_video(folder / "src.mp4", n_frames=4).path.read_bytes())
    delta = data.index(b"stts") + 16  # after version/flags, entry count and sample count
    assert data[delta:delta + 4] == (512).to_bytes(4, "big")
    data[delta:delta + 4] = (0x02000200).to_bytes(4, "big")
    return _file(folder / "slow.mp4", bytes(data))


# (id, input tried, what vidattn does, file maker, expected error text or None for an output)
CASES = [
    ("empty", "an empty .mp4 (zero bytes)", "error: not a readable media file",
     lambda p: _file(p / "empty.mp4", b""), "not a readable media"),
    ("text", "a text file named .mp4", "error: not a readable media file",
     lambda p: _file(p / "notes.mp4", b"hello"), "not a readable media"),
    ("truncated", "an MP4 cut in half (a broken download)",
     "error: corrupt video data at t=...s (the file is truncated); no output",
     lambda p: make_truncated_copy(make_video(p / "src.mp4", n_frames=8).path, p / "cut.mp4", 0.5),
     "corrupt video data"),
    ("zero frames", "a video stream with no frames (YUV4MPEG2 header only)",
     "error: video stream has no frames", lambda p: make_zero_frame_video(p / "empty.y4m"),
     "has no frames"),
    ("audio only", "an audio-only file (.m4a)", "error: has no video stream",
     lambda p: make_audio_only(p / "sound.m4a"), "no video stream"),
    ("huge", "a 60-byte file declaring 16000x16000 frames",
     f"error: above the {MAX_FRAME_PIXELS / 1e6:.0f} MP frame limit, refused before decoding",
     lambda p: make_y4m_header(p / "huge.y4m", 16000, 16000, b"FRAME\n" + bytes(16)),
     "MP limit"),
    ("no decoder", "an MP4 whose codec tag is unknown (damaged or exotic codec)",
     "error: no decoder for its video codec", _no_decoder, "no decoder"),
    ("1x1", "1x1-pixel frames", "rendered (the map covers the single pixel)",
     lambda p: make_video(p / "1x1.mkv", n_frames=4, size=(1, 1), pix_fmt="yuv444p").path, None),
    ("7x5", "7x5 frames, smaller than one patch", "rendered (scaled up to --size)",
     lambda p: make_video(p / "7x5.mkv", n_frames=4, size=(7, 5), pix_fmt="yuv444p").path, None),
    ("10-bit", "10-bit H.264 (yuv420p10le)", "rendered",
     lambda p: make_video(p / "10.mp4", n_frames=4, pix_fmt="yuv420p10le").path, None),
    ("yuv444", "H.264 in yuv444p", "rendered",
     lambda p: make_video(p / "444.mkv", n_frames=4, pix_fmt="yuv444p").path, None),
    ("rotated", "a phone video with a 90-degree rotation flag", "rendered upright",
     lambda p: make_video(p / "rot.mp4", n_frames=4, rotation=90).path, None),
    ("resolution change", "a stream whose resolution changes midway (96x64, then 48x32)",
     "rendered; later frames scaled to the first frame's size (regression: was a crash)",
     lambda p: make_resolution_change(p / "spliced.h264"), None),
    ("times go back", "frame timestamps that go back or repeat (damaged file)",
     "rendered; frames whose time is not after the previous one are dropped (regression: was "
     "a crash in the writer)",
     lambda p: make_retimed_video(p / "retimed.mkv", [(2, 0), (3, 1), (4, 2), (3, 3), (4, 4),
                                                      (5, 5)]), None),
    ("absurd rate", "an MP4 declaring 25/65537 fps (a flipped byte in its sample table)",
     "rendered with the frames' own times, the rate read as unknown (regression: was a crash "
     "in the writer, found by scripts/fuzz.sh)", _absurd_rate, None),
    ("bad metadata", "a title tag that is not valid UTF-8",
     "rendered; the tag is read with replacement characters (regression: was a crash)",
     lambda p: make_video(p / "latin1.mkv", n_frames=4, title="caf\u00e9",
                          metadata_encoding="latin-1").path, None),
]


@reliability(*[(tried, outcome) for _, tried, outcome, _, _ in CASES])
@pytest.mark.parametrize("make, expected", [pytest.param(m, e, id=i) for i, _, _, m, e in CASES])
def test_odd_videos(demo, tmp_path, make, expected):
    src_dir, out = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out.mkdir()
    src = make(src_dir)
    outcome = _render_or_refuse(demo, src, out)
    assert outcome == ("ok" if expected is None else "error")
    if expected is not None:
        with pytest.raises(VidattnError, match=expected):
            probe(src) and list(read_frames(src))


def test_odd_videos_read_as_the_table_says(tmp_path):
    """The frames behind rows above: upright portrait frames, one size throughout, increasing
    times, a rate out of range read as unknown."""
    rotated = make_video(tmp_path / "rot.mp4", n_frames=3, size=(96, 64), rotation=90).path
    assert {f.image.shape for f in read_frames(rotated)} == {(96, 64, 3)}
    spliced = make_resolution_change(tmp_path / "s.h264", n_frames=3)
    assert [f.image.shape for f in read_frames(spliced)] == [(64, 96, 3)] * 6
    retimed = make_retimed_video(tmp_path / "r.mkv", [(2, 0), (3, 1), (4, 2), (3, 3), (5, 4)])
    assert [round(f.pts_s, 2) for f in read_frames(retimed)] == [0.08, 0.12, 0.16, 0.2]
    slow = _absurd_rate(tmp_path)
    assert probe(slow).fps is None
    assert [f.pts_s for f in read_frames(slow)][:1] == [0.0]  # FFmpeg decodes only the first
