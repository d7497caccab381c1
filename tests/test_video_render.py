"""``vidattn video`` end to end: frame counts, times, sizes, audio, GIF, geometry of the
planted attention on a moving square, and clean failures."""

import dataclasses
import subprocess
import sys

import av
import numpy as np
import pytest

import vidattn
from tests.support.families import tiny_dinov2, tiny_dinov3
from tests.support.planted import planted_model, strided
from tests.support.reliability import reliability
from tests.support.videos import (
    make_audio_only,
    make_truncated_copy,
    make_video,
    make_zero_frame_video,
)
from vidattn.draw import map_to_frame
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset
from vidattn.options import VideoOptions
from vidattn.preprocess import prepare_frames, video_geometry
from vidattn.video.pipeline import render_video
from vidattn.video.reader import read_frames

QUIET = dict(progress=False)


def _read(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        return frames, s.average_rate, len(c.streams.audio), c.duration


@pytest.fixture(scope="module")
def planted():
    return planted_model(patch=16, depth=2, heads=2, dim=32, grid=14)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "in.mp4"
    return make_video(path, n_frames=30, fps=25, size=(160, 96), audio=True)


@pytest.mark.parametrize("view", ["heads", "mean", "masks", "rollout", "pca", "side-by-side"])
def test_every_view_keeps_count_times_rate_and_audio(planted, clip, tmp_path, view):
    out = tmp_path / "out.mp4"
    result = render_video(planted, clip.path, out, VideoOptions(view=view, batch_size=4, **QUIET))
    frames, rate, n_audio, _ = _read(out)
    assert result.frames == len(frames) == 30
    np.testing.assert_allclose([t for t, _ in frames], clip.pts_s, atol=1e-3)
    assert rate == 25 and n_audio == 1
    h, w = frames[0][1].shape[:2]
    assert h % 2 == 0 and w % 2 == 0
    expected = {"mean": (96, 160), "masks": (96, 160), "rollout": (96, 160),
                "pca": (96, 160), "side-by-side": (96, 322)}
    if view == "heads":  # 2 heads -> 2 columns of full-size panels (short side 96 < 240)
        assert (h, w) == (96, 322)
    else:
        assert (h, w) == expected[view]
    assert list(tmp_path.iterdir()) == [out]  # no temporary left behind


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("short") / "in.mp4"
    return make_video(path, n_frames=6, fps=25, size=(160, 96), audio=False)


@pytest.mark.parametrize("family", ["dinov2_reg_swiglu", "dinov3"])
def test_every_view_renders_the_register_and_rope_families(family, short_clip, tmp_path):
    """Each view of a DINOv2-with-registers (SwiGLU) and a DINOv3 model (RoPE, storage tokens,
    masked key bias) writes every frame at the view's size (that register tokens stay out of
    the maps: test_planted_peak_follows_the_square)."""
    preset = tiny_dinov2(registers=True, swiglu=True) if family != "dinov3" else tiny_dinov3()
    model = vidattn.load_model(preset, weights="random")
    sizes = {"heads": (194, 322), "side-by-side": (96, 322)}  # 4 heads: 2 x 2 panels
    for view in ("heads", "mean", "masks", "rollout", "pca", "side-by-side"):
        out = tmp_path / f"{view}.mp4"
        result = render_video(model, short_clip.path, out,
                              VideoOptions(view=view, batch_size=4, **QUIET))
        frames, *_ = _read(out)
        assert result.frames == len(frames) == 6, view
        assert frames[0][1].shape[:2] == sizes.get(view, (96, 160)), view


def test_trim_and_stride(planted, clip, tmp_path):
    out = tmp_path / "trim.mp4"
    opts = VideoOptions(start=0.2, end=1.0, every=2, **QUIET)
    render_video(planted, clip.path, out, opts)
    frames, _, n_audio, _ = _read(out)
    kept = clip.pts_s[(clip.pts_s >= 0.2) & (clip.pts_s < 1.0)][::2]
    assert len(frames) == len(kept) == 10
    np.testing.assert_allclose([t for t, _ in frames], kept - kept[0], atol=1e-3)
    assert n_audio == 1


def test_gif_frame_count(planted, clip, tmp_path):
    out = tmp_path / "out.gif"
    render_video(planted, clip.path, out, VideoOptions(gif_fps=10, gif_width=80, **QUIET))
    frames, *_ = _read(out)
    assert len(frames) == 12  # floor(29/25 * 10) + 1: one frame per 1/10 s slot
    assert frames[0][1].shape[1] == 80


@pytest.mark.parametrize("size,rotation,registers,stride", [
    ((192, 112), 0, 0, None), ((176, 96), 90, 0, None), ((192, 112), 0, 4, None),
    ((176, 96), 0, 0, 8)])
def test_planted_peak_follows_the_square(planted, tmp_path, size, rotation, registers, stride):
    """The map of each frame peaks on the moving square; also with 4 registers that take most of
    the attention (they never appear in a map), and on the finer grid of overlapping patches
    (``--stride 8``: cells 8 px apart, the peak drawn at the cells' centres)."""
    if registers:
        planted = planted_model(patch=16, depth=2, heads=2, dim=32, grid=14, registers=registers)
    if stride:
        planted = strided(planted, stride)
    made = make_video(tmp_path / "sq.mp4", n_frames=20, fps=20, size=size, rotation=rotation,
                      square_size=28)
    maps_file = tmp_path / "maps.npz"
    opts = VideoOptions(view="mean", size=112, save_maps=maps_file, **QUIET)
    render_video(planted, made.path, tmp_path / "out.mp4", opts)
    saved = np.load(maps_file)
    maps = saved["maps"][:, 0].astype(np.float32)
    assert len(maps) == 20 and (made.height, made.width) != (0, 0)
    geo = video_geometry(made.height, made.width, 16, 112, stride=stride)
    assert tuple(saved["grid_hw"]) == geo.grid_hw == (
        tuple(2 * side // 16 - 1 for side in geo.input_hw) if stride else
        tuple(side // 16 for side in geo.input_hw))
    heat = map_to_frame(maps, (made.height, made.width), geo.resized_hw, 16, stride=stride)
    reach = made.square_size / 2 + 16 * made.height / geo.resized_hw[0]  # on it, within a patch
    for frame_heat, (cx, cy) in zip(heat, made.centres):
        py, px = np.unravel_index(frame_heat.argmax(), frame_heat.shape)
        assert abs(px - cx) <= reach and abs(py - cy) <= reach, (px, py, cx, cy)


def test_side_maps_are_labelled_when_weights_are_random(clip, tmp_path):
    tiny = dataclasses.replace(
        get_preset("dino_vits16"), embed_dim=32, depth=1, num_heads=2
    )
    model = vidattn.load_model(tiny, weights="random")
    same = dataclasses.replace(model, weights_label="same weights, not random", _compiled={})
    corners = {}
    for label, m in (("random", model), ("named", same)):
        out = tmp_path / f"{label}.mp4"
        render_video(m, clip.path, out, VideoOptions(captions=False, **QUIET))
        frames, *_ = _read(out)
        corners[label] = frames[0][1][-14:, :60].astype(int)
    # the label sits bottom left even without captions: a box a third as bright, light text
    assert np.median(corners["random"]) < 0.5 * np.median(corners["named"])
    assert (corners["random"] > 200).any() and not (corners["named"] > 200).any()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vidattn", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_bad_inputs_give_one_line_errors_and_no_output(clip, tmp_path):
    cut = make_truncated_copy(clip.path, tmp_path / "cut.mp4", 0.5)
    audio = tmp_path / "audio.m4a"
    make_audio_only(audio)
    empty = tmp_path / "empty.y4m"
    make_zero_frame_video(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cases = [(p, tmp_path / f"out-{i}.mp4") for i, p in enumerate([cut, audio, empty, text])]
    cases.append((clip.path, tmp_path / "missing-dir" / "out.mp4"))
    for src, dst in cases:
        proc = _cli("video", src, "-o", dst, "--weights", "random", "-q")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, (src, proc.stderr)
        assert lines[-1].startswith("vidattn: error: ") and "Traceback" not in proc.stderr, lines
        assert not dst.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@reliability(("`vidattn video -o` naming an existing file",
              "error: output exists (use --overwrite to replace it); the file is untouched"))
def test_existing_output_is_not_overwritten(clip, tmp_path):
    dst = tmp_path / "exists.mp4"
    dst.write_bytes(b"keep me")
    proc = _cli("video", clip.path, "-o", dst, "--weights", "random", "-q")
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    assert dst.read_bytes() == b"keep me"


def test_no_frames_in_range_is_an_error(planted, clip, tmp_path):
    with pytest.raises(VidattnError, match="no frames"):
        render_video(planted, clip.path, tmp_path / "o.mp4", VideoOptions(start=50, **QUIET))
    assert list(tmp_path.iterdir()) == []


def test_worker_threads_change_nothing_but_speed(planted, clip, tmp_path, monkeypatch):
    """On a machine with more cores, threads share each batch's preprocessing and drawing
    (``pipeline.WORKERS``): the frames written are the same as with one."""
    from vidattn.video import pipeline

    outputs = {}
    for workers in (1, 3):
        monkeypatch.setattr(pipeline, "WORKERS", workers)
        out = tmp_path / f"w{workers}.mp4"
        render_video(planted, clip.path, out, VideoOptions(view="heads", batch_size=4, **QUIET))
        outputs[workers] = [image for _, image in _read(out)[0]]
    assert len(outputs[1]) == 30
    for a, b in zip(outputs[1], outputs[3]):
        np.testing.assert_array_equal(a, b)


def test_similarity_view_follows_the_query_patch(tmp_path):
    """--view similarity: the query patch (on the square at 0.5 s) is itself at cosine 1 in its
    own frame, and in every frame the most similar patch lies on the moving square."""
    model = planted_model(colour_tokens=True)
    made = make_video(tmp_path / "sq.mp4", n_frames=20, fps=20, size=(192, 112), square_size=28)
    x, y = made.centres[10]
    maps_file = tmp_path / "maps.npz"
    opts = VideoOptions(view="similarity", query=f"{x:.1f},{y:.1f}@0.5", size=112,
                        save_maps=maps_file, **QUIET)
    render_video(model, made.path, tmp_path / "out.mp4", opts)
    maps = np.load(maps_file)["maps"][:, 0].astype(np.float32)
    geo = video_geometry(made.height, made.width, 16, 112)
    scale = geo.resized_hw[0] / made.height
    row, col = int(y * scale) // 16, int(x * scale) // 16
    assert maps[10, row, col] == pytest.approx(1.0, abs=2e-3)  # float16 in the file
    assert maps.min() >= -1 - 1e-3 and maps.max() <= 1 + 1e-3
    heat = map_to_frame(maps, (made.height, made.width), geo.resized_hw, 16)
    reach = made.square_size / 2 + 16 / scale
    for frame_heat, (cx, cy) in zip(heat, made.centres):
        py, px = np.unravel_index(frame_heat.argmax(), frame_heat.shape)
        assert abs(px - cx) <= reach and abs(py - cy) <= reach, (px, py, cx, cy)


@pytest.mark.parametrize("kwargs, message", [
    (dict(view="similarity"), "--query X,Y[@SECONDS] goes with --view similarity"),
    (dict(view="mean", query="3,4"), "--query X,Y[@SECONDS] goes with --view similarity"),
    (dict(view="similarity", query="3"), "--query '3': expected 2 comma-separated numbers"),
    (dict(view="similarity", query="3,4@x"), "expected 1 comma-separated numbers"),
    (dict(view="similarity", query="3,4", viewer="v"), "cannot be combined with a similarity"),
])
def test_similarity_options_refused(kwargs, message):
    with pytest.raises(VidattnError, match=message.replace("[", r"\[").replace("]", r"\]")):
        VideoOptions(**kwargs)


@pytest.mark.parametrize("facet, layer", [("key", 0), ("query", -1), ("token", 0)])
def test_similarity_of_another_facet_and_block(tmp_path, facet, layer):
    """--facet/--layer: the maps are the cosine of that block's facet (Model.run's, which the
    parity tests check against Hugging Face) to the query patch's, frame by frame."""
    model = planted_model(colour_tokens=True)
    made = make_video(tmp_path / "sq.mp4", n_frames=6, fps=20, size=(96, 64), square_size=20)
    x, y = made.centres[0]
    maps_file = tmp_path / "maps.npz"
    opts = VideoOptions(view="similarity", query=f"{x:.0f},{y:.0f}", facet=facet, layer=layer,
                        size=64, save_maps=maps_file, **QUIET)
    render_video(model, made.path, tmp_path / "out.mp4", opts)
    maps = np.load(maps_file)["maps"][:, 0].astype(np.float32)
    geo = video_geometry(made.height, made.width, 16, 64)
    frames = [f.image for f in read_frames(made.path)]
    feats = model.run(prepare_frames(frames, geo, "imagenet"), facet=(layer, facet))
    feats = feats["facet_tokens"]
    scale = geo.resized_hw[0] / made.height
    row, col = int(y * scale) // 16, int(x * scale) // 16
    query = feats[0, row * geo.grid_hw[1] + col]
    want = (feats @ query) / (np.linalg.norm(feats, axis=-1) * np.linalg.norm(query))
    np.testing.assert_allclose(maps, want.reshape(maps.shape), atol=2e-3)  # float16 file


def test_similarity_layer_out_of_range(tmp_path):
    made = make_video(tmp_path / "sq.mp4", n_frames=2, size=(96, 64))
    opts = VideoOptions(view="similarity", query="10,10", layer=2, size=64, **QUIET)
    with pytest.raises(VidattnError, match="--layer 2: planted has 2 blocks"):
        render_video(planted_model(colour_tokens=True), made.path, tmp_path / "o.mp4", opts)
    assert not (tmp_path / "o.mp4").exists()


def test_similarity_query_outside_the_frame(tmp_path):
    made = make_video(tmp_path / "sq.mp4", n_frames=4, size=(96, 64))
    opts = VideoOptions(view="similarity", query="96,10", size=64, **QUIET)
    with pytest.raises(VidattnError, match="--query 96,10 is outside the 96x64 frame") as err:
        render_video(planted_model(colour_tokens=True), made.path, tmp_path / "o.mp4", opts)
    assert err.value.path == str(made.path)
    assert not (tmp_path / "o.mp4").exists()
