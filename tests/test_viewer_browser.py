"""The viewer pages in a real headless Chromium (tests/support/browser.py), opened from the disk
as a user would: the overlay on the exact frame shown, the controls, the clicked patch's row,
the gallery's links. Planted models (tests/support/planted.py) say where the heat must be: head 0
looks at the red square, head 1 (``local_head``) from each patch at its own neighbourhood."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

import vidattn
from tests.support.browser import (
    Browser,
    expected_overlay,
    read_chunk,
    read_meta,
    video_features,
    video_maps,
)
from tests.support.planted import planted_model, strided
from tests.support.reliability import reliability
from tests.support.videos import make_truncated_copy, make_video
from vidattn import attention as am
from vidattn.batch import run_batch
from vidattn.cells import cell_index
from vidattn.options import BatchOptions, ImageOptions, VideoOptions
from vidattn.preprocess import preprocess_image, video_geometry
from vidattn.video.pipeline import render_video
from vidattn.viewer.image import write_image_viewer

ALPHA = 0.5  # VideoOptions' default opacity: the first state of the page
FRAMES, FPS, SIDE = 40, 20, 48  # a side of 3 patches: whole patches of red around its centre


@pytest.fixture(scope="module")
def browser():
    chromium = Browser()
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def planted():
    # a low gain spreads head 0 evenly over the red patches (codec noise in their redness does
    # not pick one), so the square's centre is at the map's peak
    return planted_model(patch=16, depth=2, heads=2, dim=32, grid=14, gain=0.5, local_head=True)


@pytest.fixture(scope="module")
def square(tmp_path_factory, planted):
    """A 192x112 clip of a red square moving right (with audio), and its viewer: every map of
    the last block and rollout."""
    folder = tmp_path_factory.mktemp("video")
    made = make_video(folder / "square.mp4", n_frames=FRAMES, fps=FPS, size=(192, 112),
                      square_size=SIDE, audio=True)
    opts = VideoOptions(size=112, viewer=folder / "viewer", viewer_rollout=True, progress=False)
    render_video(planted, made.path, None, opts)
    return made, folder / "viewer"


def _set(page, control, value):
    """Change a control as a user does (its value, then an input event)."""
    page.evaluate("([id, v]) => { const e = document.getElementById(id); e.value = v; "
                  "e.dispatchEvent(new Event('input')); }", [control, str(value)])


def _frame_shown(page, made) -> float:
    """Where the red square is in the video as the page shows it (overlay hidden), in frames
    along its path: the x of its red pixels' centre, over the distance it moves per frame."""
    _set(page, "alpha", 0)
    page.page.wait_for_timeout(50)
    picture = page.stage_picture().astype(int)
    _set(page, "alpha", ALPHA)
    red = (picture[..., 0] > 150) & (picture[..., 1] < 90) & (picture[..., 2] < 90)
    x = np.nonzero(red)[1].mean() * made.width / picture.shape[1]
    return (x - SIDE / 2) / ((made.width - SIDE) / (FRAMES - 1))


def _canvas_point(pixels, made, x, y):
    """The canvas pixel at video pixel (x, y)."""
    h, w = pixels.shape[:2]
    return pixels[min(h - 1, int(y * h / made.height)), min(w - 1, int(x * w / made.width))]


def _wait_drawn(page, frame):
    """Wait until the video has put ``frame`` on screen (the browser's per-frame callback says
    so) and the overlay has drawn it: a seek settles before its frame is presented."""
    page.wait_for("j => vidattnViewer.state.drawn === j && vidattnViewer.state.presented === j"
                  " && !document.getElementById('video').seeking", frame)


def test_video_viewer_folder(square, planted):
    made, folder = square
    import av

    with av.open(str(folder / "video.mp4")) as c:
        stream = c.streams.video[0]
        times = [f.time for f in c.decode(stream)]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert len(c.streams.audio) == 1
    meta = read_meta(folder / "index.html")
    np.testing.assert_allclose(times, made.pts_s - made.pts_s[0], atol=1e-3)
    np.testing.assert_allclose(meta["times"], times, atol=1e-4)
    assert (meta["model"], meta["random"], meta["grid"], meta["blocks"], meta["rollout"]) == (
        "planted", False, [7, 12], [1], True)
    scales, maps = video_maps(folder)
    assert maps.shape == (FRAMES, 2 + 1 + 1, 7, 12)  # heads 0 and 1, their mean, rollout
    assert sorted(p.name for p in folder.iterdir()) == ["data", "index.html", "video.mp4"]


def test_video_overlay_follows_the_frame_shown(browser, square):
    made, folder = square
    page = browser.open(folder / "index.html")
    _wait_drawn(page, 0)
    assert "planted (test weights)" in page.evaluate("document.getElementById('model').textContent")
    assert page.evaluate("document.getElementById('random').hidden")
    far_corner = [(made.width - 4, made.height - 4) if x < made.width / 2 else (4, made.height - 4)
                  for x, _ in made.centres]
    for j in (5, 17, 31, FRAMES - 1):
        t = made.pts_s[j] - made.pts_s[0] + 0.3 / FPS  # a time within frame j
        page.evaluate("t => { document.getElementById('video').currentTime = t; }", t)
        _wait_drawn(page, j)
        pixels = page.canvas()
        hot = _canvas_point(pixels, made, *made.centres[j])
        cold = _canvas_point(pixels, made, *far_corner[j])
        assert hot[3] >= 0.8 * 255 * ALPHA and hot[:2].min() > 200, (j, hot)  # inferno: yellow
        assert cold[3] <= 0.1 * 255 * ALPHA, (j, cold)  # the mean: head 1 spreads a little
        assert abs(_frame_shown(page, made) - j) < 0.4  # the video shows that frame too
        if j == 17:
            page.screenshot("viewer-video.png")
    assert page.errors == []


def test_keys_step_frames_and_play(browser, square):
    made, folder = square
    page = browser.open(folder / "index.html")
    _wait_drawn(page, 0)
    page.evaluate("vidattnViewer.seekFrame(10)")
    _wait_drawn(page, 10)
    page.page.keyboard.press("ArrowRight")
    _wait_drawn(page, 11)
    assert abs(_frame_shown(page, made) - 11) < 0.4
    page.page.keyboard.press("ArrowLeft")
    page.page.keyboard.press("ArrowLeft")
    _wait_drawn(page, 9)
    assert abs(_frame_shown(page, made) - 9) < 0.4
    page.page.keyboard.press(" ")
    page.wait_for("() => !document.getElementById('video').paused && "
                  "vidattnViewer.state.drawn > 12")
    page.page.keyboard.press(" ")
    page.wait_for("() => document.getElementById('video').paused")
    page.page.wait_for_timeout(200)
    drawn = page.evaluate("vidattnViewer.state.drawn")
    assert abs(_frame_shown(page, made) - drawn) < 0.4  # overlay and video agree after playing
    assert page.evaluate("vidattnViewer.state.drawn") == drawn
    assert page.errors == []


def test_every_map_drawn_as_stored(browser, square):
    """Each choice of the map control draws the stored map of that frame exactly as the
    rendered videos draw maps; head 0 looks at the square, head 1 (the CLS token has no
    neighbourhood) everywhere."""
    made, folder = square
    meta = read_meta(folder / "index.html")
    scales, maps = video_maps(folder)
    geo = video_geometry(made.height, made.width, 16, 112)
    page = browser.open(folder / "index.html")
    j = 23
    page.evaluate(f"vidattnViewer.seekFrame({j})")
    _wait_drawn(page, j)
    corner = (4, made.height - 4)
    far = {}
    for value, k in (("0", 0), ("1", 1), ("mean", 2), ("rollout", 3)):
        _set(page, "map", value)
        page.wait_for("k => vidattnViewer.canvas.dataset.map === String(k)", k)
        pixels = page.canvas().astype(float)
        want = expected_overlay(maps[j, k], pixels.shape[:2], geo.resized_hw, 16,
                                meta["defaults"]["colormap"], ALPHA)
        seen = pixels[..., 3] >= 64  # colours read back exactly enough where fairly opaque
        assert np.abs(pixels[..., 3] - want[..., 3]).max() <= 2, value
        assert np.abs(pixels[..., :3] - want[..., :3])[seen].max() <= 8, value
        assert _canvas_point(pixels, made, *made.centres[j])[3] >= 0.8 * 255 * ALPHA, value
        far[value] = _canvas_point(pixels, made, *corner)[3]
    assert far["0"] <= 3 and far["1"] >= 0.5 * 255 * ALPHA  # switching head moves the heat
    assert page.errors == []


def test_overlapping_patches_drawn_at_their_centres(browser, planted, tmp_path):
    """--stride 8: the page draws the finer grid's maps as the rendered videos do (each cell at
    its patch's centre, ``cells.map_to_frame``), and the pointer names the cell centred nearest
    it."""
    model = strided(planted, 8)
    made = make_video(tmp_path / "sq.mp4", n_frames=6, fps=FPS, size=(192, 112),
                      square_size=SIDE)
    render_video(model, made.path, None, VideoOptions(size=112, viewer=tmp_path / "v",
                                                      progress=False))
    geo = video_geometry(made.height, made.width, 16, 112, stride=8)
    scales, maps = video_maps(tmp_path / "v")
    assert maps.shape[2:] == geo.grid_hw == (13, 23)  # 1 + (input - 16) / 8 a side
    page = browser.open(tmp_path / "v" / "index.html")
    page.evaluate("vidattnViewer.seekFrame(3)")
    _wait_drawn(page, 3)
    _set(page, "map", "0")
    page.wait_for("() => vidattnViewer.canvas.dataset.map === '0'")
    pixels = page.canvas().astype(float)
    want = expected_overlay(maps[3, 0], pixels.shape[:2], geo.resized_hw, 16, "inferno", ALPHA,
                            stride=8)
    assert np.abs(pixels[..., 3] - want[..., 3]).max() <= 2
    box = page.page.locator("#stage").bounding_box()
    cx, cy = made.centres[3]
    page.page.mouse.move(box["x"] + cx / made.width * box["width"],
                         box["y"] + cy / made.height * box["height"])
    scale = geo.resized_hw[0] / made.height
    row, col = (int(cell_index(v * scale, n, 16, 8)) for v, n in zip((cy, cx), geo.grid_hw))
    text = page.evaluate("document.getElementById('cursor').textContent")
    assert text.startswith(f"patch row {row}, column {col}: "), text
    assert "every 8 px" in page.evaluate("document.getElementById('model').textContent")
    assert page.errors == []


def test_mask_threshold_and_the_value_under_the_pointer(browser, square):
    made, folder = square
    scales, maps = video_maps(folder)
    gh, gw = maps.shape[2:]
    page = browser.open(folder / "index.html")
    j = 12
    page.evaluate(f"vidattnViewer.seekFrame({j})")
    _wait_drawn(page, j)
    _set(page, "map", "1")
    _set(page, "mode", "mask")
    box = page.page.locator("#stage").bounding_box()
    rh, rw = video_geometry(made.height, made.width, 16, 112).resized_hw
    for keep in (0.3, 0.9):
        _set(page, "threshold", keep)
        page.page.wait_for_timeout(50)
        pixels = page.canvas()
        kept = am.threshold_masks(maps[j, 1].astype(np.float64), keep)
        h, w = pixels.shape[:2]
        rows = ((np.arange(gh) + 0.5) * 16 / rh * h).astype(int)  # each cell's centre
        cols = ((np.arange(gw) + 0.5) * 16 / rw * w).astype(int)
        inside = (rows[:, None] < h) & (cols[None, :] < w)
        drawn = pixels[np.minimum(rows, h - 1)[:, None], np.minimum(cols, w - 1)[None, :], 3] > 0
        assert (drawn == kept)[inside].all(), keep
    assert 0 < kept.sum() < gh * gw
    _set(page, "mode", "heat")
    _set(page, "map", "0")
    cx, cy = made.centres[j]
    page.page.mouse.move(box["x"] + cx / made.width * box["width"],
                         box["y"] + cy / made.height * box["height"])
    text = page.evaluate("document.getElementById('cursor').textContent")
    row, col = int(cy * rh / made.height // 16), int(cx * rw / made.width // 16)
    value = maps[j, 0, row, col] / 255 * scales[j, 0]
    assert text.startswith(f"patch row {row}, column {col}: "), text
    assert float(text.split(": ")[1].split(" ")[0]) == pytest.approx(value, rel=1e-3)
    assert page.errors == []


def test_click_a_patch_for_its_similarity_across_the_clip(browser, tmp_path):
    """--viewer-similarity: a click on the red square in frame 5 makes its patch the query; in
    frame 30 every patch's value is the dot product of the stored features (as Python decodes
    them), the peak lies on the square there, and the stored dot products are the full
    features' cosines within the page's stated largest error."""
    from vidattn.features import dequantize_signed, unit_rows
    from vidattn.preprocess import prepare_frames
    from vidattn.video.reader import read_frames

    model = planted_model(colour_tokens=True)
    made = make_video(tmp_path / "sq.mp4", n_frames=FRAMES, fps=FPS, size=(192, 112),
                      square_size=SIDE)
    folder = tmp_path / "viewer"
    render_video(model, made.path, None, VideoOptions(size=112, viewer=folder,
                                                      viewer_similarity=True, progress=False))
    meta = read_meta(folder / "index.html")
    scales, data = video_features(folder)
    assert data.shape == (FRAMES, 7 * 12, 32)
    assert meta["features"]["bytes"] == data.size + 4 * scales.size
    stored = dequantize_signed(data, scales)
    geo = video_geometry(made.height, made.width, 16, 112)
    frames = [f.image for f in read_frames(made.path)]
    tokens = model.run(prepare_frames(frames, geo, "imagenet"), tokens=True)["patch_tokens"]
    full = unit_rows(tokens)
    pick = np.random.default_rng(0).integers(0, full.shape[1], (2, 200))
    exact = np.einsum("fpd,fpd->fp", full[:, pick[0]], full[::-1, pick[1]])
    approx = np.einsum("fpd,fpd->fp", stored[:, pick[0]], stored[::-1, pick[1]])
    assert np.abs(exact - approx).max() <= meta["features"]["max_error"] + 0.02
    page = browser.open(folder / "index.html")
    page.evaluate("vidattnViewer.seekFrame(5)")
    _wait_drawn(page, 5)
    box = page.page.locator("#stage").bounding_box()
    cx, cy = made.centres[5]
    page.page.mouse.click(box["x"] + cx / made.width * box["width"],
                          box["y"] + cy / made.height * box["height"])
    query = page.evaluate("({row, col, frame} = vidattnViewer.state.query, [row, col, frame])")
    (rh, rw) = geo.resized_hw
    row, col = int(cy * rh / made.height // 16), int(cx * rw / made.width // 16)
    assert query == [row, col, 5]
    page.evaluate("vidattnViewer.seekFrame(30)")
    page.wait_for("() => vidattnViewer.similarityOf(30) !== null "
                  "&& vidattnViewer.state.drawn === 30")
    got = np.array(page.evaluate("Array.from(vidattnViewer.similarityOf(30))"))
    want = stored[30] @ stored[5, row * 12 + col]
    np.testing.assert_allclose(got, want, atol=1e-5)
    peak_row, peak_col = divmod(int(got.argmax()), 12)
    px = (peak_col + 0.5) * 16 * made.width / rw
    py = (peak_row + 0.5) * 16 * made.height / rh
    tx, ty = made.centres[30]
    assert abs(px - tx) <= SIDE / 2 + 16 and abs(py - ty) <= SIDE / 2 + 16
    assert page.evaluate("document.getElementById('map').value") == "similarity"
    page.screenshot("viewer-similarity.png")
    assert page.errors == []


def test_random_weights_are_labelled(browser, tmp_path):
    tiny = vidattn.models.presets.get_preset("dino_vits16")
    import dataclasses

    model = vidattn.load_model(dataclasses.replace(tiny, embed_dim=32, depth=2, num_heads=2),
                               weights="random")
    made = make_video(tmp_path / "clip.mp4", n_frames=6, size=(96, 64))
    render_video(model, made.path, None, VideoOptions(size=64, viewer=tmp_path / "v",
                                                      viewer_blocks="all", progress=False))
    page = browser.open(tmp_path / "v" / "index.html")
    _wait_drawn(page, 0)
    assert not page.evaluate("document.getElementById('random').hidden")
    assert page.evaluate("document.title").startswith("RANDOM WEIGHTS")
    assert page.evaluate("document.getElementById('block').options.length") == 2
    label = page.canvas()[-30:, :200]  # the caption, bottom left: dark box, white text
    assert (label[..., 3] > 150).all() and (label[..., :3] > 230).all(axis=-1).mean() > 0.05
    assert page.errors == []


@reliability(("a video viewer whose map data file is cut short, or missing",
              "the page names the damaged or missing file in its status line; the browser logs "
              "only that file's load or syntax error"))
@pytest.mark.parametrize("damage", ["cut", "missing"])
def test_damaged_data_is_named_on_the_page(browser, square, tmp_path, damage):
    made, folder = square
    copy = tmp_path / "viewer"
    shutil.copytree(folder, copy)
    chunk = copy / "data" / "maps-00000.js"
    if damage == "cut":
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    else:
        chunk.unlink()
    page, status = _opened_with_status(browser, copy / "index.html")
    assert "maps-00000.js" in status
    assert ("damaged" if damage == "cut" else "cannot load") in status
    if damage == "cut":
        assert len(page.errors) == 1 and "SyntaxError" in page.errors[0], page.errors
    else:
        _only_missing_logged(page, "maps-00000.js")


def _opened_with_status(browser, html):
    """Open the page ``html`` and wait for its status line -> (page, the line's text)."""
    page = browser.open(html)
    page.wait_for("() => document.getElementById('status').textContent !== ''")
    return page, page.evaluate("document.getElementById('status').textContent")


def _only_missing_logged(page, name: str):
    """The browser logged errors, each about the missing file ``name``."""
    assert page.errors and all(name in e or "ERR_FILE_NOT_FOUND" in e
                               for e in page.errors), page.errors


# -- the image viewer --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def still(tmp_path_factory, planted):
    folder = tmp_path_factory.mktemp("image")
    rng = np.random.default_rng(0)
    pixels = np.repeat(rng.integers(40, 140, (256, 256, 1), np.uint8), 3, axis=2)
    pixels[48:80, 176:208] = (255, 0, 0)  # the 224 crop starts at 16: patches (2..3, 10..11)
    Image.fromarray(pixels).save(folder / "red.png")
    page = write_image_viewer(planted, folder / "red.png", folder / "red")
    return pixels, page


def _cell_pixel(pixels, row, col, grid=14):
    h, w = pixels.shape[:2]
    return pixels[int((row + 0.5) * h / grid), int((col + 0.5) * w / grid)]


def test_image_viewer_shows_the_clicked_patch_row(browser, still, planted):
    pixels, html = still
    page = browser.open(html, "() => window.vidattnViewer && vidattnViewer.state.drawn")
    assert page.evaluate("vidattnViewer.state.drawn") == "1/mean/0"  # last block, CLS row
    canvas = page.canvas()
    assert _cell_pixel(canvas, 2, 10)[3] > 0.5 * 255 * 0.6  # the CLS token looks at red
    assert _cell_pixel(canvas, 10, 2)[3] <= 3
    _set(page, "map", "1")
    box = page.page.locator("#stage").bounding_box()
    out = planted.run(preprocess_image(pixels, "imagenet", 224), attention="all")
    for row, col in ((8, 3), (11, 12), (5, 6)):
        page.page.mouse.click(box["x"] + (col + 0.5) / 14 * box["width"],
                              box["y"] + (row + 0.5) / 14 * box["height"])
        query = 1 + row * 14 + col
        page.wait_for("d => vidattnViewer.state.drawn === d", f"1/1/{query}")
        canvas = page.canvas().astype(float)
        assert _cell_pixel(canvas, row, col)[3] >= 0.8 * 255 * 0.6  # the patch looks at itself
        assert _cell_pixel(canvas, 13 - row, 13 - col)[3] <= 3
        row_map = out["attention"][1][0, 1, query, 1:].reshape(14, 14)  # the model's own row
        want = expected_overlay(row_map, canvas.shape[:2], (224, 224), 16, "inferno", 0.6)
        outline = np.zeros(canvas.shape[:2], bool)  # the clicked patch's frame, drawn over
        cell = canvas.shape[0] / 14
        outline[max(0, int(row * cell) - 6):int((row + 1) * cell) + 6,
                max(0, int(col * cell) - 6):int((col + 1) * cell) + 6] = True
        assert np.abs(canvas[..., 3] - want[..., 3])[~outline].max() <= 2
        assert page.evaluate("document.getElementById('query').textContent") == \
            f"query: patch row {row}, column {col}"
    page.screenshot("viewer-image.png")
    _set(page, "block", "rollout")
    page.wait_for("d => vidattnViewer.state.drawn === d", f"rollout/1/{query}")
    rollout = am.rollout_matrix(out["attention"])[0, query, 1:].reshape(14, 14)
    canvas = page.canvas().astype(float)
    want = expected_overlay(rollout, canvas.shape[:2], (224, 224), 16, "inferno", 0.6)
    assert np.abs(canvas[..., 3] - want[..., 3])[~outline].max() <= 2
    page.page.click("#cls")
    page.wait_for("d => vidattnViewer.state.drawn === d", "rollout/1/0")
    assert page.errors == []


def test_image_viewer_data(still):
    """Every block's chunk holds each head's rows over the patches; rollout the rollout rows."""
    _, html = still
    meta = read_meta(html)
    folder = html.parent / meta["chunks"]["folder"]
    t, p = meta["tokens"], 14 * 14
    for key in meta["chunks"]["blocks"]:
        assert len(read_chunk(folder / f"{key}.js")) == 2 * t * (p + 4)
    assert len(read_chunk(folder / "rollout.js")) == t * (p + 4)
    assert (t, meta["grid"], meta["image"]) == (197, [14, 14], "viewer/input.png")
    assert Image.open(folder / "input.png").size == (224, 224)


def test_click_a_patch_for_its_similarity_over_the_run(browser, tmp_path):
    """``vidattn image --viewer`` over two images with the same red square in different places:
    a click on the square in A shows, on A and on B in A's strip, the float cosine of the
    model's features to that patch within the run's stated largest error, peaking on B's
    square; the map control's "similarity" draws A's own."""
    from vidattn.features import unit_rows
    from vidattn.probes import probe_images
    from vidattn.viewer.image import RUN_FILE

    model, rng = planted_model(colour_tokens=True), np.random.default_rng(0)
    squares = {"a": (1, 1), "b": (5, 4)}  # top-left patch of each 2 x 2 patch square, grid 8
    tokens = {}
    for name, (r, c) in squares.items():
        pixels = np.repeat(rng.integers(40, 140, (128, 128, 1), np.uint8), 3, axis=2)
        pixels[r * 16:(r + 2) * 16, c * 16:(c + 2) * 16] = (255, 0, 0)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        out = model.run(preprocess_image(pixels, "imagenet", 128), facet=(-1, "token"))
        tokens[name] = unit_rows(out["facet_tokens"][0])
    out = tmp_path / "out"
    probe_images(model, [tmp_path / "a.png", tmp_path / "b.png"], out,
                 ImageOptions(probes="rollout", size=128, viewer=True))
    max_error = json.loads(read_chunk(out / RUN_FILE))["max_error"]
    page = browser.open(out / "a" / "viewer.html", "() => window.vidattnViewer && "
                        "document.querySelectorAll('#strip figure').length === 2")
    box = page.page.locator("#stage").bounding_box()
    page.page.mouse.click(box["x"] + 2.5 / 8 * box["width"], box["y"] + 2.5 / 8 * box["height"])
    query = 2 * 8 + 2  # patch (2, 2): in A's square
    page.wait_for("q => document.getElementById('strip').dataset.drawn === String(q)", 1 + query)
    got = page.evaluate("vidattnViewer.similarities()")
    for name in squares:
        want = tokens[name] @ tokens["a"][query]
        assert np.abs(np.array(got[name]) - want).max() <= max_error + 1e-5, name
    peak = divmod(int(np.argmax(got["b"])), 8)
    assert peak[0] - squares["b"][0] in (0, 1) and peak[1] - squares["b"][1] in (0, 1), peak
    assert 0 < max_error < 0.02
    _set(page, "map", "similarity")
    page.wait_for("d => vidattnViewer.state.drawn === d", f"similarity/{1 + query}")
    canvas = page.canvas()
    assert _cell_pixel(canvas, 1, 1, 8)[3] >= 0.8 * 255 * 0.6  # A's square, not rescaled
    assert _cell_pixel(canvas, 6, 6, 8)[3] <= 0.2 * 255 * 0.6
    assert "against the float cosine" in page.evaluate(
        "document.getElementById('similar-note').textContent")
    page.screenshot("viewer-image-similarity.png")
    assert page.errors == []


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """``vidattn image --probes explain --viewer`` on a red square with the planted classifier
    (its class decided by the red patches, its attention uniform: tests/support/classifier.py)
    -> (its page, its probes.json explain record)."""
    from tests.support.classifier import planted_classifier
    from vidattn.probes import probe_images

    folder = tmp_path_factory.mktemp("explained")
    pixels = np.repeat(np.random.default_rng(1).integers(40, 140, (224, 224, 1), np.uint8), 3, 2)
    pixels[32:96, 128:192] = (255, 0, 0)  # patches (2..5, 8..11) of the 14 x 14 grid
    Image.fromarray(pixels).save(folder / "red.png")
    run = probe_images(planted_classifier(), [folder / "red.png"], folder / "out", ImageOptions(
        probes="explain", explain_class="top2", explain_method="generic,gradcam,rollout",
        viewer=True))
    return folder / "out" / "red" / "viewer.html", run.entries[0][1]["explain"]


def test_image_viewer_switches_the_explained_class_and_method(browser, explained):
    """The page opens on the explanation of the most probable class, "red", peaking on the
    square exactly as the stored map; switching the class to "grey" and the method to rollout
    (flat, class-agnostic) redraws each map as stored; the note names the class and its
    probability."""
    html, explain = explained
    maps = np.maximum(np.array(explain["values"]), 0)  # (classes, methods, 14, 14)
    assert [c["name"] for c in explain["classes"]] == ["red", "grey"]
    page = browser.open(html, "() => window.vidattnViewer && vidattnViewer.state.drawn")
    assert page.evaluate("vidattnViewer.state.drawn") == "explain/0/0"
    for cls, method in ((0, 0), (0, 1), (1, 0), (1, 2)):
        _set(page, "explain-class", cls)
        _set(page, "explain-method", method)
        page.wait_for("d => vidattnViewer.state.drawn === d", f"explain/{cls}/{method}")
        canvas = page.canvas().astype(float)
        want = expected_overlay(maps[cls, method], canvas.shape[:2], (224, 224), 16, "inferno",
                                0.6)
        assert np.abs(canvas[..., 3] - want[..., 3]).max() <= 2, (cls, method)
        if (cls, method) == (0, 0):
            assert min(_cell_pixel(canvas, r, c)[3] for r in (2, 5) for c in (8, 11)) >= \
                0.5 * 255 * 0.6  # red's map: the square
            assert _cell_pixel(canvas, 10, 2)[3] <= 0.2 * 255 * 0.6
            page.screenshot("viewer-image-explain.png")
    note = page.evaluate("document.getElementById('explain-note').textContent")
    assert note.startswith("Why grey (") and "rollout" in note, note
    assert np.ptp(maps[1, 2]) < 1e-3 * maps[1, 2].max()  # rollout: flat, whatever the class
    assert not page.evaluate("document.getElementById('explain').hidden")
    _set(page, "map", "mean")  # the attention maps are still there; the switch hides
    page.wait_for("d => vidattnViewer.state.drawn === d", "1/mean/0")
    assert page.evaluate("document.getElementById('explain').hidden")
    assert page.errors == []


@reliability(("an image viewer whose explanation data file holds the wrong number of bytes, "
              "or is missing",
              "the page names the file in its status line (damaged explanation data, or cannot "
              "load); its attention maps still work"))
@pytest.mark.parametrize("damage", ["short", "missing"])
def test_damaged_explanation_data_is_named_on_the_page(browser, explained, tmp_path, damage):
    from vidattn.viewer.pages import chunk_script

    html, _ = explained
    shutil.copytree(html.parent.parent, tmp_path / "out")  # the page, its data, the run file
    copy = tmp_path / "out" / "red"
    chunk = copy / "viewer" / "explain.js"
    if damage == "short":
        chunk.write_text(chunk_script("explain", bytes(10)), encoding="ascii")
    else:
        chunk.unlink()
    page, status = _opened_with_status(browser, copy / "viewer.html")
    assert "explain.js" in status
    assert ("damaged explanation data" if damage == "short" else "cannot load") in status
    _set(page, "map", "mean")
    page.wait_for("d => vidattnViewer.state.drawn === d", "1/mean/0")
    if damage == "short":
        assert page.errors == [], page.errors
    else:
        _only_missing_logged(page, "explain.js")


# -- the batch gallery -------------------------------------------------------------------------

def _files_linked(page, html: Path) -> list[Path]:
    urls = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href).concat("
                         "[...document.querySelectorAll('img[src]')].map(i => i.src))")
    assert all(u.startswith("file://") for u in urls), urls
    return [Path(unquote(urlparse(u).path)) for u in urls]


@reliability(("`vidattn batch` over a video, an image, a cut video and a text file named .jpg, "
              "then again with one more video (a resume)",
              "OUTDIR/index.html: one card per input in walk order, each failure with its error "
              "line, and every link and thumbnail an existing file"))
def test_gallery_links_resolve_after_a_resume(browser, planted, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    clip = make_video(src / "clip one.mp4", n_frames=8, size=(96, 64)).path
    make_truncated_copy(clip, src / "sub" / "broken.mp4", 0.5)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(src / "photo #1.png")
    (src / "notes.jpg").write_text("not an image")
    opts = BatchOptions(video=VideoOptions(size=64), image=ImageOptions(probes="rollout,heads",
                        size=64), viewer=True, progress=False)
    run_batch(planted, src, out, opts)
    make_video(src / "sub" / "later.mp4", n_frames=6, size=(64, 64), seed=2)
    result = run_batch(planted, src, out, opts)  # the resume: one new file, the failures again
    assert result.done == ["sub/later.mp4"] and len(result.up_to_date) == 2
    page = browser.open(out / "index.html", "() => document.readyState === 'complete'")
    cards = page.evaluate("[...document.querySelectorAll('.card')].map(c => "
                          "[c.querySelector('.name').textContent, "
                          "c.querySelector('.badge').textContent, "
                          "(c.querySelector('.error') || {}).textContent || ''])")
    assert [(name, status) for name, status, _ in cards] == [
        ("clip one.mp4", "done"), ("notes.jpg", "failed"), ("photo #1.png", "done"),
        ("sub/broken.mp4", "failed"), ("sub/later.mp4", "done")]
    assert "not an image" in cards[1][2] and "truncated" in cards[3][2]
    linked = _files_linked(page, out / "index.html")
    assert len(linked) >= 15 and all(p.is_file() for p in linked), linked
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot("gallery.png")
    viewers = sorted({p for p in linked if p.name in ("index.html", "viewer.html")} -
                     {out / "index.html"})
    assert len(viewers) == 3
    for viewer in viewers:
        seen = browser.open(viewer, "() => window.vidattnViewer && "
                            "![-1, null].includes(vidattnViewer.state.drawn)")
        assert seen.errors == [], viewer
    assert page.errors == []
