"""The viewer's files, without a browser: the compact map data against the model's own maps,
one pass writing the rendered video and the viewer, streaming, sizes, the image viewer's rows
and rollout, the CLI's options, and no half-written folder on failure (the pages themselves are
tested in Chromium: test_viewer_browser.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vidattn
from tests.support.browser import read_chunk, read_meta, video_maps
from tests.support.planted import planted_model
from tests.support.study import random_attention, study_rollout
from tests.support.videos import make_truncated_copy, make_video
from vidattn import attention as am
from vidattn import cli
from vidattn.options import VideoOptions
from vidattn.preprocess import prepare_frames, preprocess_image, video_geometry
from vidattn.video.pipeline import MapLayout, render_video
from vidattn.video.reader import read_frames
from vidattn.viewer import pages
from vidattn.viewer import video as video_viewer
from vidattn.viewer.image import write_image_viewer


@pytest.fixture(scope="module")
def tiny():
    """Random weights (heads differ), 3 blocks of 3 heads."""
    preset = dataclasses.replace(vidattn.models.presets.get_preset("dino_vits16"), name="tiny",
                                 embed_dim=48, depth=3, num_heads=3)
    return vidattn.load_model(preset, weights="random")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "in.mp4"
    return make_video(path, n_frames=21, fps=25, size=(160, 96), audio=True)


def _decoded(path):
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(c.streams.video[0])], len(c.streams.audio)


def test_quantize_keeps_each_vector_within_half_a_step():
    rng = np.random.default_rng(0)
    values = rng.gamma(0.3, size=(5, 7, 50)).astype(np.float32)
    values[0, 0] = 0
    data, scale = pages.quantize(values)
    assert data.dtype == np.uint8 and scale.dtype == np.float32 and scale.shape == (5, 7)
    assert (data.max(axis=-1)[scale > 0] == 255).all() and (data[0, 0] == 0).all()
    back = data / 255 * scale[..., None]
    assert np.abs(back - values).max() <= scale.max() / 510 + 1e-7
    assert (np.abs(back - values) <= scale[..., None] / 510 + 1e-7).all()


@pytest.mark.parametrize("view, viewer, blocks, rollout, count, shown", [
    ("mean", False, "last", False, 4, (3,)),
    ("heads", False, "last", False, 4, (0, 1, 2)),
    ("rollout", False, "last", False, 1, (0,)),
    ("masks", True, "last", False, 4, (0, 1, 2)),
    ("rollout", True, "last", False, 5, (4,)),
    ("mean", True, "all", True, 13, (11,)),
    ("side-by-side", True, "all", False, 12, (11,)),
])
def test_layout_holds_what_the_view_and_the_viewer_need(tiny, tmp_path, view, viewer, blocks,
                                                        rollout, count, shown):
    opts = VideoOptions(view=view, viewer=tmp_path if viewer else None, viewer_blocks=blocks,
                        viewer_rollout=rollout)
    layout = MapLayout.of(tiny, opts)
    assert (layout.count, layout.view) == (count, shown)


def test_stored_maps_are_the_models_maps(tiny, clip, tmp_path):
    """Every block's heads, their mean and rollout, per kept frame, as the model gives them."""
    folder = tmp_path / "viewer"
    opts = VideoOptions(size=64, every=2, viewer=folder, viewer_blocks="all",
                        viewer_rollout=True, progress=False)
    result = render_video(tiny, clip.path, None, opts)
    assert (result.output, result.viewer, result.frames) == (None, folder, 11)
    scales, data = video_maps(folder)
    stored = data / 255 * scales[..., None, None]
    frames = [f.image for f in read_frames(clip.path, every=2)]
    geo = video_geometry(96, 160, 16, 64)
    out = tiny.run(prepare_frames(frames, geo, "imagenet"), attention="all", rollout=True)
    for b in range(3):
        maps = am.cls_maps(out["attention"][b], 1, geo.grid_hw)
        want = np.concatenate([maps, am.head_mean(maps)[:, None]], axis=1)
        got = stored[:, 4 * b: 4 * b + 4]
        assert np.abs(got - want).max() <= want.max() / 500
    roll = am.rollout_map(out["rollout"], 1, geo.grid_hw)
    assert np.abs(stored[:, 12] - roll).max() <= 1 / 500
    meta = read_meta(folder / "index.html")
    assert (meta["blocks"], meta["maps"], meta["random"]) == ([0, 1, 2], 13, True)
    times, audio = _decoded(folder / "video.mp4")
    kept = clip.pts_s[::2]
    np.testing.assert_allclose(times, kept - kept[0], atol=1e-3)
    np.testing.assert_allclose(meta["times"], times, atol=1e-4)
    assert audio == 1


def test_one_pass_writes_the_video_and_the_viewer_as_frames_go(tiny, clip, tmp_path,
                                                                monkeypatch):
    """With -o and --viewer both come from one run; the maps reach the disk a chunk at a time
    (never the whole video's), each chunk as soon as it is full."""
    monkeypatch.setattr(video_viewer, "CHUNK_RAW_BYTES", 4 * 4 * (4 * 7 + 4))  # 4 frames a chunk
    written, calls = [], []
    real = video_viewer.write_chunk

    def spy(folder, key, scales, data):
        written.append((key, len(scales), len(calls)))
        return real(folder, key, scales, data)

    monkeypatch.setattr(video_viewer, "write_chunk", spy)
    run = tiny.run
    monkeypatch.setattr(tiny, "run", lambda *a, **k: calls.append(k) or run(*a, **k))
    out, folder = tmp_path / "attn.mp4", tmp_path / "viewer"
    opts = VideoOptions(view="heads", size=64, batch_size=4, viewer=folder, progress=False)
    result = render_video(tiny, clip.path, out, opts)
    assert result.frames == 21 and len(calls) == 6  # one model call per batch of 4
    assert [w[:2] for w in written] == [(f"maps-{i:05d}", 4) for i in range(5)] + [
        ("maps-00005", 1)]
    assert written[0][2] <= 4  # the first chunk was on disk while the model still ran: the
    # bounded queues let it run at most three batches ahead of the writer
    assert _decoded(out)[0] == pytest.approx(_decoded(folder / "video.mp4")[0], abs=1e-3)
    meta = read_meta(folder / "index.html")
    assert meta["chunks"]["frames"] == 4 and len(meta["chunks"]["keys"]) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attn.mp4", "viewer"]
    assert (meta["defaults"]["map"], meta["defaults"]["mode"]) == ("mean", "heat")


def test_data_size_is_frames_times_maps(tiny, clip, tmp_path):
    """What the size figures in the README rest on: F frames of K maps of gh x gw bytes and a
    float32 scale, a third more in base64."""
    folder = tmp_path / "v"
    render_video(tiny, clip.path, None, VideoOptions(size=64, viewer=folder, progress=False))
    gh, gw = video_geometry(96, 160, 16, 64).grid_hw
    raw = 21 * 4 * (gh * gw + 4)
    chunks = list((folder / "data").iterdir())
    assert sum(len(read_chunk(c)) for c in chunks) == raw
    assert sum(c.stat().st_size for c in chunks) == _script_size(raw, "maps-00000")


def test_viewer_of_a_long_side_is_capped():
    assert video_viewer.viewer_video_size((2160, 3840)) == (1080, 1920)
    assert video_viewer.viewer_video_size((5, 7)) == (64, 90)
    assert video_viewer.viewer_video_size((360, 640)) == (360, 640)


def test_a_failed_or_interrupted_render_leaves_no_viewer(tiny, clip, tmp_path, monkeypatch):
    cut = make_truncated_copy(clip.path, tmp_path / "cut.mp4", 0.6)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(vidattn.VidattnError, match="corrupt video data"):
        render_video(tiny, cut, out / "o.mp4", VideoOptions(size=64, viewer=out / "v",
                                                            progress=False))
    assert list(out.iterdir()) == []

    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(video_viewer.VideoViewer, "finish", interrupt)
    with pytest.raises(KeyboardInterrupt):
        render_video(tiny, clip.path, None, VideoOptions(size=64, viewer=out / "v",
                                                         progress=False))
    assert list(out.iterdir()) == []


def _script_size(raw: int, key: str) -> int:
    """Bytes of a chunk script holding ``raw`` bytes: the call around them, and base64."""
    return len(f'vidattnChunk("{key}","");\n') + 4 * math.ceil(raw / 3)


def _cli(*args):
    return CliRunner().invoke(cli.main, [*map(str, args)])


def test_cli_viewer_alone_or_with_output(tmp_path, clip, monkeypatch, tiny):
    monkeypatch.setattr(cli, "_load", lambda *a, **k: tiny)
    nothing = _cli("video", clip.path)
    assert nothing.exit_code == 1 and "give -o OUTPUT, --viewer DIR, or both" in nothing.output
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "old.txt").write_text("mine")
    refused = _cli("video", clip.path, "--viewer", folder, "--size", "64", "-q")
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert (folder / "old.txt").is_file()
    done = _cli("video", clip.path, "--viewer", folder, "--size", "64", "--overwrite",
                "--view", "rollout", "--colormap", "cividis", "--threshold", "0.4")
    assert done.exit_code == 0, done.output
    assert f"wrote {folder / 'index.html'} (21 frames" in done.output
    assert sorted(p.name for p in folder.iterdir()) == ["data", "index.html", "video.mp4"]
    meta = read_meta(folder / "index.html")
    assert meta["rollout"] and meta["maps"] == 5  # rollout: the view needs it anyway
    assert meta["defaults"] == {"map": "rollout", "mode": "heat", "colormap": "cividis",
                                "alpha": 0.5, "threshold": 0.4}
    assert list(meta["colormaps"])[0] == "cividis"
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    help_text = _cli("video", "--help").output
    for text in ("--viewer DIR", "--viewer-blocks", "--viewer-rollout", "index.html"):
        assert text in help_text


def test_page_data_cannot_end_its_script(tmp_path):
    """File names are the user's: whatever they hold, the page's data stays data."""
    name = '</script><script>alert(1)</script> @@SCRIPT@@ & <!-- "x".mp4'
    page = pages.write_viewer_page(tmp_path / "p.html", "video", name, {"source": name})
    html = page.read_text()
    assert html.count("</script>") == 2 and "alert(1)</script>" not in html
    assert read_meta(page)["source"] == name
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; @@SCRIPT@@" in html  # <title>


def test_rollout_matrix_rows_are_the_studys_joint_rows():
    rng = np.random.default_rng(3)
    attns = [random_attention(rng, 2, 3, 1, (3, 4)) for _ in range(4)]
    joint = am.rollout_matrix(attns)
    np.testing.assert_allclose(joint.sum(-1), 1, atol=1e-12)
    first = joint[:, 0, 1:].reshape(2, 3, 4)
    np.testing.assert_allclose(first / first.max(axis=(1, 2), keepdims=True),
                               study_rollout(attns, 1, (3, 4)), atol=1e-12)
    for t in range(13):  # each row by the plain product, one token at a time
        rows = np.tile(np.eye(13)[t], (2, 1))
        for a in reversed(attns):
            step = a.mean(axis=1) + np.eye(13)
            step /= step.sum(-1, keepdims=True)
            rows = np.einsum("nk,nkj->nj", rows, step)
        np.testing.assert_allclose(joint[:, t], rows, atol=1e-12)


def test_image_viewer_rows_and_size(tmp_path, tiny):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (80, 96, 3), np.uint8)
    page = write_image_viewer(tiny, pixels, tmp_path / "img", size=64, name="noise.png")
    meta = read_meta(page)
    t, p = 17, 16
    assert (meta["tokens"], meta["grid"], meta["source"]) == (t, [4, 4], "noise.png")
    out = tiny.run(preprocess_image(pixels, "imagenet", 64), attention="all")
    folder = page.parent / "viewer"
    for b, key in enumerate(meta["chunks"]["blocks"]):
        raw = read_chunk(folder / f"{key}.js")
        assert len(raw) == 3 * t * (p + 4)
        scales = np.frombuffer(raw[: 4 * 3 * t], "<f4").reshape(3, t)
        rows = np.frombuffer(raw[4 * 3 * t:], np.uint8).reshape(3, t, p) / 255 * scales[..., None]
        want = out["attention"][b][0, :, :, 1:]
        assert np.abs(rows - want).max() <= want.max() / 500
    raw = read_chunk(folder / "rollout.js")
    rows = np.frombuffer(raw[4 * t:], np.uint8).reshape(t, p) / 255 * \
        np.frombuffer(raw[: 4 * t], "<f4")[:, None]
    want = am.rollout_matrix(out["attention"])[0, :, 1:]
    assert np.abs(rows - want).max() <= want.max() / 500
    total = sum(f.stat().st_size for f in folder.glob("*.js"))
    key = meta["features"]["key"]  # and the P patch features: 48 dims, 4 bytes of scale
    assert total == 3 * _script_size(3 * t * (p + 4), "block-00") + _script_size(
        t * (p + 4), "rollout") + _script_size(p * (48 + 4), key)


def test_image_run_lists_the_images_done_with_their_features(tmp_path, tiny):
    """``vidattn image --viewer``: the run file lists the images done (not the one that failed,
    nor, after a rerun, those of the run before); each stored P x D int8 block decodes to
    vectors whose dot products are the facet's float cosines, across images too, within the
    stated largest error, which is small."""
    from vidattn.features import dequantize_signed, unit_rows
    from vidattn.options import ImageOptions
    from vidattn.probes import probe_images
    from vidattn.viewer.image import RUN_FILE

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_text("not an image")
    out, opts = tmp_path / "out", ImageOptions(probes="rollout", size=64, viewer=True,
                                               facet="key", layer=1)
    paths = [tmp_path / n for n in ("a.png", "bad.png", "b.png")]
    probe_images(tiny, paths, out, opts, on_error=lambda err: None)
    run = json.loads(read_chunk(out / RUN_FILE))
    assert [e["folder"] for e in run["images"]] == ["a", "b"]
    assert (run["facet"], run["layer"], run["bytes"]) == ("key", 1, 2 * 16 * (48 + 4))
    unit, stored = [], []
    for e in run["images"]:
        raw = read_chunk(out / e["features"] / f"{e['key']}.js")
        assert len(raw) == e["bytes"] == read_meta(out / e["page"])["features"]["bytes"]
        stored.append(dequantize_signed(np.frombuffer(raw[64:], np.uint8).reshape(16, 48),
                                        np.frombuffer(raw[:64], "<f4")))
        pixels = np.asarray(Image.open(tmp_path / f"{e['folder']}.png"))
        tokens = tiny.run(preprocess_image(pixels, "imagenet", 64), facet=(1, "key"))
        unit.append(unit_rows(tokens["facet_tokens"][0]))
    errors = [np.abs(unit[i] @ unit[j].T - stored[i] @ stored[j].T).max()
              for i in (0, 1) for j in (0, 1)]
    assert max(errors) <= run["max_error"] + 1e-6 and run["max_error"] < 0.02
    probe_images(tiny, paths[2:], out, opts, overwrite=True)
    assert [e["folder"] for e in json.loads(read_chunk(out / RUN_FILE))["images"]] == ["b"]


def test_image_command_adds_a_viewer_linked_from_the_index(tmp_path, monkeypatch):
    planted = planted_model()
    monkeypatch.setattr(cli, "_load", lambda *a, **k: planted)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    result = _cli("image", tmp_path / "grey.png", "-o", tmp_path / "out", "--size", "64",
                  "--probes", "rollout", "--viewer", "-q")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "grey"
    assert sorted(p.name for p in folder.iterdir()) == ["probes.json", "rollout.png", "viewer",
                                                        "viewer.html"]
    assert 'href="grey/viewer.html">viewer</a>' in (tmp_path / "out" / "index.html").read_text()
    assert math.isclose(read_meta(folder / "viewer.html")["size"], 64)


def test_prefix_tokens_stay_out_of_the_viewers(tmp_path):
    """Registers take part in attention but never appear in a map: the image viewer's rows and
    the video viewer's maps are over the patches, and still peak on the planted red."""
    planted = planted_model(registers=2)
    pixels = np.full((256, 256, 3), 90, np.uint8)
    pixels[48:80, 176:208] = (255, 0, 0)  # in the 224 crop: patches (2..3, 10..11)
    page = write_image_viewer(planted, pixels, tmp_path / "img", size=224)
    meta = read_meta(page)
    t, p = 1 + 2 + 196, 196
    assert (meta["tokens"], meta["prefix_tokens"]) == (t, 3)
    raw = read_chunk(page.parent / "viewer" / "block-01.js")
    assert len(raw) == 2 * t * (p + 4)
    cls_row = np.frombuffer(raw[4 * 2 * t:], np.uint8).reshape(2, t, 14, 14)[0, 0]
    assert set(zip(*np.nonzero(cls_row == 255))) <= {(2, 10), (2, 11), (3, 10), (3, 11)}
    made = make_video(tmp_path / "sq.mp4", n_frames=4, size=(96, 64), square_size=32)
    render_video(planted, made.path, None, VideoOptions(size=64, viewer=tmp_path / "v",
                                                        progress=False))
    scales, maps = video_maps(tmp_path / "v")
    assert maps.shape == (4, 3, 4, 6)
    for frame_maps, (cx, cy) in zip(maps, made.centres):
        row, col = np.unravel_index(frame_maps[2].argmax(), (4, 6))
        assert abs((col + 0.5) * 16 - cx) <= 24 and abs((row + 0.5) * 16 - cy) <= 24
