"""``vidattn video --view explain``: class-specific relevance on every frame. Frame counts, times
and audio as the other views; the class and its probability on the frame; smoothing and batching
as the other views; a planted classifier whose class is decided by one region (the red square),
whose map must peak there while its attention alone could not say where; and the one-line errors.

The planted classifier (``tests.support.classifier``): uniform attention, its class "red"
decided by the red patches, so a gradient method's map must peak on the red square and the
class-agnostic rollout is flat.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import av
import numpy as np
import pytest

import vidattn
from tests.support.classifier import planted_classifier
from tests.support.reliability import reliability
from tests.support.videos import make_video
from vidattn import draw
from vidattn.draw import map_to_frame
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset
from vidattn.options import VideoOptions
from vidattn.preprocess import prepare_frames, video_geometry
from vidattn.video.pipeline import FrameRenderer, MapLayout, MapMaker, render_video
from vidattn.video.reader import read_frames

QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def planted():
    return planted_classifier()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames at 25 fps with audio, a red square moving over grey noise."""
    path = tmp_path_factory.mktemp("clip") / "in.mp4"
    return make_video(path, n_frames=20, fps=25, size=(192, 112), audio=True, square_size=28)


def _read(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        return frames, s.average_rate, len(c.streams.audio), c.duration


def _maps(model, clip, tmp_path, **options):
    """The explain view's saved maps ``(frames, gh, gw)`` and the .npz they come from."""
    saved = tmp_path / f"maps-{len(list(tmp_path.iterdir()))}.npz"
    opts = VideoOptions(view="explain", size=112, save_maps=saved, **QUIET, **options)
    render_video(model, clip.path, tmp_path / f"{saved.stem}.mp4", opts)
    data = np.load(saved)
    return data["maps"][:, 0].astype(np.float32), data


def test_frames_times_rate_duration_and_audio_are_the_inputs(planted, clip, tmp_path):
    out = tmp_path / "explain.mp4"
    result = render_video(planted, clip.path, out,
                          VideoOptions(view="explain", batch_size=8, **QUIET))
    frames, rate, n_audio, duration = _read(out)
    _, in_rate, _, in_duration = _read(clip.path)
    assert result.frames == len(frames) == 20  # 8 + 8 + 4: the last batch padded
    np.testing.assert_allclose([t for t, _ in frames], clip.pts_s, atol=1e-3)
    assert rate == in_rate == 25 and n_audio == 1
    assert abs(duration - in_duration) < 0.05 * in_duration
    assert frames[0][1].shape[:2] == (112, 192)
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("method", ["generic", "gradcam"])
def test_the_map_peaks_on_the_region_that_decides_the_class(planted, clip, tmp_path, method):
    """Each frame's map peaks on the square (within a patch), although attention is uniform;
    the class-agnostic rollout, which sees only attention, is flat: the check can fail."""
    maps, saved = _maps(planted, clip, tmp_path, explain_method=method)
    assert list(saved["explained_class"]) == [0] * 20  # top1: red, in every frame
    assert (saved["explained_probability"] > 0.8).all()
    geo = video_geometry(clip.height, clip.width, 16, 112)
    heat = map_to_frame(maps, (clip.height, clip.width), geo.resized_hw, 16)
    reach = clip.square_size / 2 + 16 * clip.height / geo.resized_hw[0]
    for frame_heat, (cx, cy) in zip(heat, clip.centres):
        py, px = np.unravel_index(frame_heat.argmax(), frame_heat.shape)
        assert abs(px - cx) <= reach and abs(py - cy) <= reach, (px, py, cx, cy)
    flat, _ = _maps(planted, clip, tmp_path, explain_method="rollout")
    assert np.ptp(flat, axis=(1, 2)).max() < 1e-3 * flat.max()


def test_a_named_class_is_explained_in_every_frame(planted, clip, tmp_path):
    """--explain-class grey: class 1 in every frame, its (low) probability saved, and its
    map not the red one's."""
    red, _ = _maps(planted, clip, tmp_path)
    grey, saved = _maps(planted, clip, tmp_path, explain_class="grey")
    assert list(saved["explained_class"]) == [1] * 20
    assert (saved["explained_probability"] < 0.2).all()
    assert not np.allclose(red, grey)
    by_index, _ = _maps(planted, clip, tmp_path, explain_class="1")
    np.testing.assert_allclose(by_index, grey, atol=1e-3)


def test_the_caption_names_the_class_and_its_probability(planted, clip):
    """The renderer writes "red 99% · generic" top left (exactly draw.caption's text), besides
    the time; the class comes from the batch's explanation."""
    opts = VideoOptions(view="explain", size=112, **QUIET)
    frame = next(read_frames(clip.path))
    geo = video_geometry(clip.height, clip.width, 16, 112)
    layout = MapLayout.of(planted, opts)
    maps, _, explained = MapMaker(planted, opts, geo.grid_hw, layout)(
        prepare_frames([frame.image], geo, planted.preset.preprocessing))
    assert explained[0]["name"] == "red" and explained[0]["probability"] > 0.8
    render = FrameRenderer(planted, opts, geo)
    shown = render(frame.image, maps[0], frame.pts_s, explained[0])
    bare = FrameRenderer(planted, dataclasses.replace(opts, captions=False), geo)(
        frame.image, maps[0], frame.pts_s)
    text = f"red {explained[0]['probability']:.0%} · generic"
    expected = draw.caption(draw.caption(bare.copy(), text), f"t={frame.pts_s:.2f}s", corner="br")
    np.testing.assert_array_equal(shown, expected)
    assert not np.array_equal(shown, bare)


def test_smoothing_is_the_moving_average_of_the_maps(planted, clip, tmp_path):
    """--smooth 3 smooths the explain maps as the other views' (an exponential moving average
    across frames and batches), and batching changes nothing."""
    raw, _ = _maps(planted, clip, tmp_path, batch_size=3)
    one, _ = _maps(planted, clip, tmp_path, batch_size=1)
    np.testing.assert_allclose(one, raw, atol=2e-3 * raw.max())
    smooth, _ = _maps(planted, clip, tmp_path, smooth=3.0, batch_size=3)
    expected = raw.astype(np.float64).copy()
    for i in range(1, len(expected)):
        expected[i] = expected[i - 1] + (raw[i] - expected[i - 1]) / 3
    np.testing.assert_allclose(smooth, expected, atol=2e-3 * raw.max())


def test_side_by_side_explain(planted, clip, tmp_path):
    out = tmp_path / "side.mp4"
    render_video(planted, clip.path, out, VideoOptions(view="side-by-side", side_map="explain",
                                                       max_frames=3, **QUIET))
    frames, *_ = _read(out)
    assert len(frames) == 3 and frames[0][1].shape[:2] == (112, 386)


def test_library_refuses_a_headless_model_before_reading(tmp_path):
    """A DINO model has no class to explain: one VidattnError before the input is opened (it
    does not exist here) and nothing written."""
    tiny = dataclasses.replace(get_preset("dino_vits16"), embed_dim=32, depth=1, num_heads=2)
    model = vidattn.load_model(tiny, weights="random")
    with pytest.raises(VidattnError, match="no classifier head"):
        render_video(model, tmp_path / "missing.mp4", tmp_path / "o.mp4",
                     VideoOptions(view="explain", **QUIET))
    assert list(tmp_path.iterdir()) == []


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vidattn", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@reliability(
    ("`vidattn video --view explain` on a model without a classifier head (DINO)",
     "error before the weights load: no class to explain, give --explain-reference or a "
     "supervised preset; no output"),
    ("`vidattn video --view explain --explain-class` a name the head does not have, a topK "
     "beyond top1, several methods, or with --viewer",
     "one-line error (the nearest class names suggested for a misspelt name); no output"))
def test_cli_errors_are_one_line_and_leave_nothing(clip, tmp_path):
    dst = tmp_path / "out.mp4"
    cases = [
        (("--view", "explain"), 1, "no classifier head"),  # dino_vits16: never downloaded
        (("--view", "explain", "--model", "vit_b16", "--weights", "random", "--explain-class",
          "tabby kat"), 1, "did you mean 'tabby'"),
        (("--view", "explain", "--explain-class", "top3"), 2, "one class per frame"),
        (("--view", "explain", "--explain-method", "generic,gradcam"), 2, "one map per frame"),
    ]
    for args, code, message in cases:
        proc = _cli("video", clip.path, "-o", dst, "-q", *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        if code == 1:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert list(tmp_path.iterdir()) == [], args


@pytest.mark.parametrize("options,message", [
    (dict(explain_class="1000"), "out of range"),
    (dict(explain_class="tabby"), None),
    (dict(viewer="v"), "cannot be combined with an explain view"),
    (dict(explain_class="top2"), "one class per frame"),
    (dict(explain_method="gradcam,rollout"), "one map per frame"),
])
def test_options_refused_before_any_work(options, message):
    """What the command line checks before loading a model, as the library sees it."""
    from vidattn.video.pipeline import check_explain

    def check():
        check_explain(get_preset("vit_b16"), VideoOptions(view="explain", **options))

    if message is None:
        check()  # an ImageNet name vit_b16 has
    else:
        with pytest.raises(VidattnError, match=message):
            check()


# -- vidattn batch -------------------------------------------------------------------------------

def _batch(monkeypatch, model, *args):
    """``vidattn batch`` in this process, loading ``model`` whatever --model says."""
    from click.testing import CliRunner

    from vidattn import cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: model)
    return CliRunner().invoke(cli.main, ["batch", *map(str, args)])


@reliability(("`vidattn batch --view explain` over a folder with a good video, a good image, a "
              "cut video and a text file named .jpg",
              "the good files explained (videos: the explain view; images: the explain probe, "
              "and its viewer with --viewer), the two bad ones listed as failed, exit 1"))
def test_batch_explains_a_folder_and_a_bad_file_stops_nothing(planted, clip, tmp_path,
                                                              monkeypatch):
    import json

    from PIL import Image

    from tests.support.batchtree import manifest
    from tests.support.videos import make_truncated_copy

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "clip.mp4").write_bytes(clip.path.read_bytes())
    make_truncated_copy(clip.path, src / "cut.mp4", 0.4)
    pixels = np.repeat(np.random.default_rng(2).integers(40, 140, (224, 224, 1), np.uint8), 3, 2)
    pixels[32:96, 128:192] = (255, 0, 0)
    Image.fromarray(pixels).save(src / "red.png")
    (src / "notes.jpg").write_text("not an image")
    result = _batch(monkeypatch, planted, src, "-o", out, "--view", "explain", "--size", "224",
                    "--probes", "explain", "--explain-method", "gradcam", "--quiet")
    assert result.exit_code == 1, result.output
    assert (out / "manifest.jsonl").is_file(), result.output
    status = {r["input"]: r["status"] for r in manifest(out)}
    assert status == {"clip.mp4": "ok", "red.png": "ok", "cut.mp4": "failed",
                      "notes.jpg": "failed"}
    frames, *_ = _read(out / "clip.mp4")
    assert len(frames) == 20
    record = json.loads((out / "red" / "probes.json").read_text())
    assert record["explain"]["methods"] == ["gradcam"]  # the command line's, for images too
    assert [c["name"] for c in record["explain"]["classes"]] == ["red", "grey"]  # top3 of 2
    assert (out / "red" / "explain.png").is_file()
    assert (out / "index.html").is_file()
    (src / "clip.mp4").unlink()  # the video viewer shows attention: --viewer with another view
    viewed = _batch(monkeypatch, planted, src, "-o", tmp_path / "viewed", "--size", "224",
                    "--probes", "explain", "--viewer", "--quiet")
    assert viewed.exit_code == 1, viewed.output
    assert (tmp_path / "viewed" / "red" / "viewer" / "explain.js").is_file()  # class switch


def test_batch_refuses_the_explain_view_of_a_headless_model_before_any_work(clip, tmp_path,
                                                                             monkeypatch):
    tiny = dataclasses.replace(get_preset("dino_vits16"), embed_dim=32, depth=1, num_heads=2)
    src = tmp_path / "in"
    src.mkdir()
    (src / "clip.mp4").write_bytes(clip.path.read_bytes())
    result = _batch(monkeypatch, vidattn.load_model(tiny, weights="random"), src, "-o",
                    tmp_path / "out", "--view", "explain", "--quiet")
    assert result.exit_code == 1 and "no classifier head" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
