"""Patch features: the PCA (fit, background rule), the pca view on planted tokens, the seeking
fit sample, ``--save-features`` files, and the pca options on the command line."""

import dataclasses
import json
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from tests.support.planted import planted_model, planted_tokens
from tests.support.videos import make_video
from vidattn.errors import VidattnError
from vidattn.features import (dequantize_signed, fit_basis, fit_projection, fit_reduction,
                              fit_times, quantize_signed, unit_rows)
from vidattn.options import ImageOptions, VideoOptions
from vidattn.preprocess import prepare_frames, video_geometry
from vidattn.probes import probe_images
from vidattn.video.pipeline import fit_frames, render_video
from vidattn.video.reader import probe, read_frames

QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def coloured():
    """The planted model whose patch tokens are a known function of each patch's colour."""
    return planted_model(patch=16, depth=2, heads=2, dim=32, grid=14, colour_tokens=True)


def _clusters(rng, n_fg, n_bg, dim=16):
    """Tokens along two orthogonal directions plus noise -> (tokens, is_foreground)."""
    u, v = np.eye(dim)[0] * 3, np.eye(dim)[1] * 3
    tokens = np.concatenate([u + 0.3 * rng.standard_normal((n_fg, dim)),
                             v + 0.3 * rng.standard_normal((n_bg, dim))])
    return tokens, np.arange(n_fg + n_bg) < n_fg


def test_first_component_and_the_background_rule():
    rng = np.random.default_rng(0)
    tokens, fg = _clusters(rng, 60, 240)
    first = fit_projection(tokens)(tokens)[:, 0]
    assert first[fg].min() > first[~fg].max() or first[fg].max() < first[~fg].min()
    many, first_is_many = _clusters(rng, 240, 60)
    for sample, small in ((tokens, fg), (many, ~first_is_many)):  # u: 20 % of it, then 80 %
        kept = fit_basis(sample, threshold=0.5).draw(sample)[:, 3] > 0.5
        np.testing.assert_array_equal(kept, small)  # the smaller cluster is the foreground
    explained = fit_basis(tokens).colours.explained
    assert np.all(np.diff(explained) <= 0) and 0 < explained.sum() <= 1 + 1e-9
    projection = fit_projection(tokens)
    np.testing.assert_allclose(projection.flipped()(tokens)[:, 0],
                               1 - projection(tokens)[:, 0], atol=1e-6)


def test_fit_times_are_spread_over_the_range():
    times = fit_times(2.0, 6.0, 4)
    np.testing.assert_allclose(times, [2.5, 3.5, 4.5, 5.5])


def test_patch_tokens_are_the_planted_ones_alongside_attention_and_rollout():
    model = planted_model(patch=16, dim=32, grid=14, colour_tokens=True, registers=4)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 64, 96, 3)).astype(np.float32)
    alone = model.run(images, tokens=True)["patch_tokens"]
    together = model.run(images, attention="cls", rollout=True, tokens=True)
    assert alone.shape == (2, 4 * 6, 32)  # registers and CLS removed
    np.testing.assert_allclose(alone, planted_tokens(images), atol=1e-4)
    np.testing.assert_allclose(together["patch_tokens"], alone, atol=1e-6)
    assert together["attention"][0].shape == (2, 2, 1, 1 + 4 + 24) and "rollout" in together


def _scene_video(path, n_frames=12, fps=10):
    """128x128 frames, a red 32x32 square on whole 16-pixel patches moving right and down over a
    grey background: flat in the first half; in the second, grey noise of the same mean and a
    blue patch in the bottom right corner (where the square never goes). -> the square's
    corners (x, y) per frame."""
    rng = np.random.default_rng(2)
    corners = [(16 * (i % 6), 16 * (i % 5)) for i in range(n_frames)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "4", "g": "4"})
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv444p"
        for i, (x, y) in enumerate(corners):
            if i < n_frames // 2:
                frame = np.full((128, 128, 3), 128, np.uint8)
            else:
                frame = np.repeat(rng.integers(88, 169, (128, 128, 1), dtype=np.uint8), 3, 2)
                frame[112:, 112:] = (0, 0, 255)
            frame[y : y + 32, x : x + 32] = (255, 0, 0)
            video_frame = av.VideoFrame.from_ndarray(frame, "rgb24")
            video_frame.pts, video_frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(video_frame))
        out.mux(stream.encode(None))
    return corners


def _square_cells(corner):
    """(8, 8) bool: the grid cells the square covers (it covers whole cells)."""
    cells = np.zeros((8, 8), bool)
    cells[corner[1] // 16 : corner[1] // 16 + 2, corner[0] // 16 : corner[0] // 16 + 2] = True
    return cells


def test_pca_view_separates_the_planted_object_and_keeps_its_colour(coloured, tmp_path):
    src = tmp_path / "scene.mp4"
    corners = _scene_video(src)
    maps = {}
    for background in (0.5, None):
        saved = tmp_path / f"maps-{background}.npz"
        opts = VideoOptions(view="pca", size=128, batch_size=4, pca_background=background,
                            save_maps=saved, **QUIET)
        render_video(coloured, src, tmp_path / "out.mp4", opts)
        maps[background] = np.load(saved)["maps"].astype(np.float32)  # (n, 4, 8, 8)
    assert maps[0.5].shape == (12, 4, 8, 8)
    for frame_maps, corner in zip(maps[0.5], corners):  # the foreground is the square, always
        np.testing.assert_array_equal(frame_maps[3] > 0.5, _square_cells(corner))
    np.testing.assert_array_equal(maps[None][:, 3], 1.0)  # no threshold: every patch kept
    colours = np.stack([m[:3][:, _square_cells(c)].mean(1) for m, c in zip(maps[None], corners)])
    ground = np.stack([m[:3][:, ~_square_cells(c)].mean(1) for m, c in zip(maps[None], corners)])
    # the square: one colour in the flat-grey frames and in the others, far from the ground's
    assert np.abs(colours - colours[0]).max() < 0.05
    assert np.abs(colours - ground).max(1).min() > 0.3


@pytest.mark.parametrize("kind", ["vfr", "rotated"])
def test_the_fit_sample_is_read_by_seeking_across_the_range(tmp_path, kind):
    made = make_video(tmp_path / "v.mp4", n_frames=48, fps=24, size=(96, 64), gop=6,
                      vfr=kind == "vfr", rotation=90 if kind == "rotated" else 0,
                      background="gray")
    info = probe(made.path)
    for start, end in ((None, None), (0.5, 1.5)):
        frames = list(fit_frames(made.path, info, VideoOptions(pca_frames=6, start=start,
                                                                end=end)))
        times = np.array([f.pts_s for f in frames])
        lo, hi = start or 0.0, end or info.duration_s
        assert len(frames) == 6 and np.all(np.diff(times) > 0)
        for frame, target in zip(frames, fit_times(lo, hi, 6)):
            i = int(np.flatnonzero(made.pts_s >= target - 1e-6)[0])  # the frame at that time
            assert frame.pts_s == pytest.approx(made.pts_s[i], abs=1e-3)
            assert frame.image.shape == (made.height, made.width, 3)
            red = (frame.image[..., 0] > 150) & (frame.image[..., 1] < 100)
            ys, xs = np.nonzero(red)  # upright: the square where the ground truth has it
            cx, cy = made.centres[i]
            assert abs(xs.mean() + 0.5 - cx) < 2 and abs(ys.mean() + 0.5 - cy) < 2


def test_saved_features_hold_every_frames_tokens_and_times(coloured, tmp_path):
    made = make_video(tmp_path / "v.mp4", n_frames=10, fps=10, size=(64, 48))
    feats = tmp_path / "feats.npy"
    render_video(coloured, made.path, tmp_path / "o.mp4",
                 VideoOptions(size=64, batch_size=4, every=2, save_features=feats, **QUIET))
    tokens = np.load(feats)  # plain numpy and json: no vidattn needed to read them
    meta = json.loads(feats.with_suffix(".json").read_text())
    geo = video_geometry(48, 64, 16, 64)
    assert tokens.dtype == np.float16 and tokens.shape == (5, geo.grid_hw[0] * geo.grid_hw[1], 32)
    assert meta["shape"] == list(tokens.shape) and meta["grid_hw"] == list(geo.grid_hw)
    np.testing.assert_allclose(meta["timestamps_s"], made.pts_s[::2], atol=1e-6)
    assert meta["model"] == "planted" and meta["source"] == "v.mp4" and meta["dtype"] == "float16"
    frames = list(read_frames(made.path, every=2))
    inputs = prepare_frames([f.image for f in frames], geo, coloured.preset.preprocessing)
    np.testing.assert_allclose(tokens, planted_tokens(inputs), atol=2e-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.json", "feats.npy", "o.mp4",
                                                          "v.mp4"]


class _Interrupted:
    """A model whose second call is interrupted (Ctrl-C in the middle of a video)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.model.run(*args, **kwargs)


def test_saved_features_are_atomic(coloured, tmp_path):
    made = make_video(tmp_path / "v.mp4", n_frames=12, fps=10, size=(64, 48))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        render_video(_Interrupted(coloured), made.path, out / "o.mp4",
                     VideoOptions(size=64, batch_size=4, save_features=out / "f.npy", **QUIET))
    assert list(out.iterdir()) == []  # no video, no features, no temporary file
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    opts = ImageOptions(probes="pca", size=64, save_features=out / "f.npy")
    with pytest.raises(VidattnError, match="broken.png"):
        probe_images(coloured, [photo, broken], out / "probes", opts)
    assert not (out / "f.npy").exists() and not list(out.glob(".*"))
    run = probe_images(coloured, [photo, broken, photo], out / "probes", opts, overwrite=True,
                       on_error=lambda err: None)
    meta = json.loads((out / "f.json").read_text())
    assert len(run.failures) == 1 and meta["images"] == [str(photo)] * 2
    assert np.load(out / "f.npy").shape == (2, 16, 32)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "vidattn", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_pca_view_keeps_frames_and_audio(tmp_path):
    made = make_video(tmp_path / "in.mp4", n_frames=20, fps=10, size=(96, 64), audio=True)
    proc = _cli("video", made.path, "-o", "out.mp4", "--model", "demo", "--size", "64",
                "--view", "side-by-side", "--side-map", "pca", "--pca-background", "0.4",
                "--max-frames", "8", "--save-features", "f.npy", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with av.open(str(tmp_path / "out.mp4")) as c:
        times = [f.time for f in c.decode(c.streams.video[0])]
        assert len(c.streams.audio) == 1
    np.testing.assert_allclose(times, made.pts_s[:8], atol=1e-3)
    assert np.load(tmp_path / "f.npy").shape[0] == 8


def test_cli_image_pca_probe_writes_figures_and_numbers(tmp_path):
    for name, colour in (("a", (220, 30, 30)), ("b", (30, 30, 220))):
        pixels = np.full((80, 80, 3), 120, np.uint8)
        pixels[20:60, 20:60] = colour
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    proc = _cli("image", "a.png", "b.png", "-o", "out", "--model", "demo", "--size", "64",
                "--probes", "pca", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    for name in ("a", "b"):
        record = json.loads((out / name / "probes.json").read_text())
        ratio = record["pca"]["explained_variance_ratio"]
        assert record["files"] == {"pca": "pca.png"} and len(ratio) == 3
        assert ratio == sorted(ratio, reverse=True) and 0 < sum(ratio) <= 1 + 1e-9
        with Image.open(out / name / "pca.png") as im:
            assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 20
    joint = json.loads((out / "_model" / "pca-joint.json").read_text())
    assert joint["images"] == ["a.png", "b.png"] and len(joint["explained_variance_ratio"]) == 3
    assert (out / "_model" / "pca-joint.png").exists() and "pca-joint.png" in (
        out / "index.html").read_text()
    again = _cli("image", "a.png", "-o", "out", "--model", "demo", "--size", "64", "--probes",
                 "pca", "--overwrite", "-q", cwd=tmp_path)  # one image: no joint PCA, none left
    assert again.returncode == 0 and not list((out / "_model").glob("pca-joint.*"))


def test_cli_bad_pca_options_are_one_line_errors(tmp_path):
    made = make_video(tmp_path / "in.mp4", n_frames=4, fps=10, size=(64, 48))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "p.png")
    cases = [("video", made.path, "-o", "o.mp4", "--view", "pca", "--pca-background", "1.5"),
             ("image", "p.png", "-o", "probes", "--probes", "pca", "--pca-background", "0"),
             ("video", made.path, "--view", "pca", "--viewer", "v"),
             ("video", made.path, "-o", "o.mp4", "--save-features", "f.txt")]
    for args in cases:
        proc = _cli(*args, "--model", "demo", "--size", "64", "-q", cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("vidattn: error: "), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "p.png"]


def test_batch_fingerprints_change_only_where_pca_shapes_the_output():
    from vidattn.batch import fingerprint
    from vidattn.options import BatchOptions

    model = planted_model()

    def fp(kind, **video):
        image = ImageOptions(probes=video.pop("probes", "all"),
                             pca_background=video.get("pca_background"))
        return fingerprint(model, kind, BatchOptions(video=VideoOptions(**video), image=image))

    assert fp("video") == fp("video", pca_frames=8, pca_background=0.5)  # unused by the mean view
    assert fp("video", view="pca") != fp("video", view="pca", pca_frames=8)
    assert fp("video", view="pca") != fp("video", view="pca", pca_background=0.5)
    assert fp("image", probes="rollout") == fp("image", probes="rollout", pca_background=0.5)
    assert fp("image") != fp("image", pca_background=0.5)
    with pytest.raises(VidattnError, match="viewer"):
        BatchOptions(video=VideoOptions(view="pca"), viewer=True)


def _tiny(name):
    from tests.support.families import tiny_dinov2, tiny_dinov3
    from vidattn.models.presets import get_preset

    if name == "dinov2_reg":
        return tiny_dinov2(registers=True)
    if name == "dinov3":
        return tiny_dinov3()
    return dataclasses.replace(get_preset(name), embed_dim=32, depth=1, num_heads=2,
                               mlp_hidden=64)


@pytest.mark.parametrize("family", ["dino_vits16", "dinov2_reg", "dinov3", "vit_b16",
                                    "deit_b16_distilled"])
def test_every_family_renders_pca_and_saves_its_patch_tokens(family, tmp_path):
    """Class, distillation, register and storage tokens never reach the features or the PCA."""
    import vidattn

    model = vidattn.load_model(_tiny(family), weights="random")
    made = make_video(tmp_path / "v.mp4", n_frames=6, fps=10, size=(80, 48))
    opts = VideoOptions(view="side-by-side", side_map="pca", pca_background=0.5, size=48,
                        batch_size=3, pca_frames=4, save_features=tmp_path / "f.npy", **QUIET)
    result = render_video(model, made.path, tmp_path / "o.mp4", opts)
    p = model.preset.patch_size
    gh, gw = video_geometry(48, 80, p, 48).grid_hw
    tokens = np.load(tmp_path / "f.npy")
    assert result.frames == 6 and tokens.shape == (6, gh * gw, model.preset.embed_dim)
    assert np.isfinite(tokens).all()


def test_reduction_keeps_cosines_within_its_stated_error():
    """The viewer's reduced features: the dot products of the stored (projected, int8) vectors
    against the full cosines, over every pair of a sample; the stated error is that maximum;
    with as many directions as dimensions only the int8 step is left."""
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((600, 48)) @ rng.standard_normal((48, 48)) + 3.0  # correlated
    reduction = fit_reduction(tokens, k=16)
    stored = dequantize_signed(*quantize_signed(reduction(tokens)))
    full = unit_rows(tokens)
    error = np.abs(full @ full.T - stored @ stored.T).max()
    assert error == pytest.approx(reduction.max_error, abs=1e-5) and 0 < error < 0.5
    exact = fit_reduction(tokens, k=48)
    assert exact.max_error < 0.02 < reduction.max_error  # the int8 step alone
    values = rng.standard_normal((5, 7)).astype(np.float32)
    data, scales = quantize_signed(values)
    assert data.dtype == np.uint8 and scales.shape == (5,)
    assert np.abs(dequantize_signed(data, scales) - values).max() <= scales.max() / 254 + 1e-6


def test_viewer_features_above_the_cap_are_refused(tmp_path, monkeypatch):
    """--viewer-similarity on a clip whose features would pass the cap: one error line naming
    the clip before any work, and no viewer folder."""
    import vidattn.viewer.video as viewer_video

    monkeypatch.setattr(viewer_video, "VIEWER_FEATURE_CAP", 10_000)
    made = make_video(tmp_path / "clip.mp4", n_frames=12, size=(96, 64))
    opts = VideoOptions(size=64, viewer=tmp_path / "v", viewer_similarity=True, progress=False)
    with pytest.raises(VidattnError, match="--viewer-similarity would store .* above the") as err:
        render_video(planted_model(), made.path, None, opts)
    assert err.value.path == str(made.path) and not (tmp_path / "v").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
