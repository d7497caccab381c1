"""vidattn.probe and vidattn.render: the commands' numbers, files and figures, shown inline."""

import base64
import dataclasses
import gc
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

import vidattn
from tests.support.study import study_mean_distance, study_rollout
from tests.support.videos import make_video
from vidattn import attention as am
from vidattn import notebook
from vidattn.cli import main
from vidattn.errors import VidattnError
from vidattn.models import presets
from vidattn.models.hub import DATA
from vidattn.options import MODEL_PROBES
from vidattn.preprocess import load_image, preprocess_image

TINY = dataclasses.replace(presets.get_preset("dino_vits16"), name="tiny_nb", embed_dim=32,
                           depth=3, num_heads=2, image_size=64)


@pytest.fixture(autouse=True)
def _tiny_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "tiny_nb", TINY)
    notebook.clear_model_cache()
    yield
    notebook.clear_model_cache()


@pytest.fixture
def photo(tmp_path, monkeypatch):
    """A real photo, as the relative path ``photo.jpg`` (probes.json keeps the path as given)."""
    Image.fromarray(skimage.data.chelsea()[::2, ::2]).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    return "photo.jpg"


def data_uris(html, mime):
    """The decoded bytes of every ``data:MIME;base64,...`` in ``html``, in order."""
    return [base64.b64decode(b) for b in re.findall(rf"data:{mime};base64,([A-Za-z0-9+/=]+)", html)]


def test_numbers_are_model_run_plus_the_attention_maths(photo):
    model = vidattn.load_model("tiny_nb", weights="random")
    result = vidattn.probe(photo, model=model, size=64, threshold=0.5)

    x = preprocess_image(load_image(photo), TINY.preprocessing, 64)
    out = model.run(x, attention="all", rollout=True)
    attns, grid = out["attention"], (4, 4)
    heads = am.cls_maps(attns[-1], 1, grid)[0]
    np.testing.assert_allclose(result.heads, heads, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.masks, am.threshold_masks(heads, 0.5))
    np.testing.assert_allclose(result.rollout, am.rollout_map(out["rollout"], 1, grid)[0],
                               rtol=1e-5)
    distances = np.stack([am.mean_attention_distance(a, 1, grid, 16)[0] for a in attns])
    np.testing.assert_allclose(result.mean_distances, distances, rtol=1e-5)
    # and the study's own formulas, from every block's attention
    np.testing.assert_allclose(result.rollout, study_rollout(attns, 1, grid)[0], rtol=1e-4)
    np.testing.assert_allclose(result.mean_distances,
                               [study_mean_distance(a, 1, grid, 16)[0] for a in attns], rtol=1e-5)
    assert result.mean_distances.shape == (3, 2) and result.image.shape == (64, 64, 3)
    assert result.top5 is None  # a DINO backbone has no classifier head
    assert result.record["masks"]["patches_per_head"] == result.masks.sum((1, 2)).tolist()


@pytest.mark.parametrize("options", [
    {}, {"probes": "rollout,masks,posembed", "threshold": 0.3},
])
def test_save_writes_what_vidattn_image_writes_byte_for_byte(tmp_path, photo, options):
    """With the demo model: its weights are a file, so the command's model and probe's are equal
    (random weights are drawn anew by every load)."""
    args = [f"--{k}={v}" for k, v in options.items()]
    cli = CliRunner().invoke(main, ["image", photo, "-o", "by_cli", "--model", "demo",
                                    "--size", "64", "--quiet", *args])
    assert cli.exit_code == 0, cli.output
    result = vidattn.probe(photo, model="demo", size=64, **options)
    assert result.save("by_probe") == Path("by_probe", "index.html")

    def files(folder):
        return {p.relative_to(tmp_path / folder).as_posix(): p.read_bytes()
                for p in (tmp_path / folder).rglob("*") if p.is_file()}

    by_cli, by_probe = files("by_cli"), files("by_probe")
    assert sorted(by_probe) == sorted(by_cli)
    assert "photo/probes.json" in by_cli and "index.html" in by_cli
    ran = result.record["probes"] + [p for p in MODEL_PROBES if p in result.opts.probes]
    assert len(by_cli) == 2 + len(ran)  # a PNG per probe run, probes.json, index
    assert "registers" not in ran  # the demo has no registers: skipped, and said so
    assert ("registers" in result.record.get("skipped", {})) == ("registers" in result.opts.probes)
    for name in by_cli:
        assert by_probe[name] == by_cli[name], name


def test_inline_figures_are_the_saved_pngs_and_random_says_so(tmp_path, photo):
    result = vidattn.probe(photo, model="tiny_nb", weights="random", size=64)
    html = result._repr_html_()
    pngs = data_uris(html, "image/png")
    result.save(tmp_path / "out")
    ran = result.record["probes"]
    assert ran == ["distance", "rollout", "heads", "masks", "norms", "pca"]  # no registers
    saved = [(tmp_path / "out" / "photo" / f"{p}.png").read_bytes() for p in ran]
    saved += [(tmp_path / "out" / "_model" / f"{p}.png").read_bytes()
              for p in ("filters", "posembed")]
    assert pngs == saved  # the report's figures, in the report's order
    assert html.count("<img ") == len(ran) + 2
    assert "RANDOM (untrained) WEIGHTS" in html and "RANDOM" in repr(result)
    assert "tiny_nb" in html and "mean attention distance" in html  # the report's table


def test_trained_weights_are_not_called_random(photo):
    result = vidattn.probe(photo, model="demo", size=64, probes="heads")
    html = result._repr_html_()
    assert "RANDOM" not in html and "RANDOM" not in repr(result)
    assert "weights: demo (bundled toy)" in html and html.count("<img ") == 1


def test_arrays_and_pillow_images_give_the_numbers_of_the_path(tmp_path, photo):
    model = vidattn.load_model("tiny_nb", weights="random")
    by_path = vidattn.probe(photo, model=model, size=64)
    with Image.open(photo) as im:
        by_pil = vidattn.probe(im, model=model, size=64)
    by_array = vidattn.probe(load_image(photo), model=model, size=64, name="cat.png")
    for other in (by_pil, by_array):
        np.testing.assert_array_equal(other.heads, by_path.heads)
        np.testing.assert_array_equal(other.mean_distances, by_path.mean_distances)
    assert by_pil.source == "photo.jpg" and by_array.source == "cat.png"
    assert (by_array.save(tmp_path / "out").parent / "cat" / "probes.json").is_file()
    assert vidattn.probe(np.zeros((9, 7), np.uint8), model=model, size=64).source == "image"
    with pytest.raises(VidattnError, match=r"shape \(9, 7, 3\) and dtype float64 is not an image"):
        vidattn.probe(np.zeros((9, 7, 3)), model=model, size=64)


def test_save_refuses_an_existing_folder_and_writes_nothing(tmp_path, photo):
    result = vidattn.probe(photo, model="tiny_nb", weights="random", size=64, probes="heads")
    result.save("out")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    with pytest.raises(VidattnError, match="output folder exists"):
        result.save("out")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before
    result.save("out", overwrite=True)


def test_models_by_name_load_once_in_a_bounded_cache(tmp_path):
    first = notebook.model_for("tiny_nb", "random")
    assert notebook.model_for("tiny_nb", "random") is first
    loaded = vidattn.load_model("tiny_nb", weights="random")
    assert notebook.model_for(loaded) is loaded
    with pytest.raises(VidattnError, match="go with a preset name"):
        notebook.model_for(loaded, weights="random")

    weights = tmp_path / "demo.safetensors"
    shutil.copy(DATA / "demo_vit.safetensors", weights)
    demo = notebook.model_for("demo", weights)
    assert notebook.model_for("demo", str(weights)) is demo
    assert demo.weights_label == "demo.safetensors" and not demo.is_random
    assert notebook.model_for("demo") is not demo  # the bundled file is other weights

    # bounded: two other models since "tiny_nb" was last used; it was dropped, and loads again
    assert notebook.MODEL_CACHE_SIZE == 2
    assert notebook.model_for("tiny_nb", "random") is not first


def test_a_weights_file_replaced_on_disk_is_read_again(tmp_path):
    weights = tmp_path / "demo.safetensors"
    shutil.copy(DATA / "demo_vit.safetensors", weights)
    demo = notebook.model_for("demo", weights)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert notebook.model_for("demo", weights) is not demo


@pytest.fixture
def clip(tmp_path):
    return make_video(tmp_path / "clip.mp4", n_frames=12, fps=12, size=(96, 64))


def test_render_shows_the_video_inline_and_random_says_so(clip):
    result = vidattn.render(clip.path, model="tiny_nb", weights="random", size=64, view="mean",
                            progress=False)
    assert result.temporary and result.output.suffix == ".mp4"
    assert result.frames == 12 and result.size == (96, 64)
    html = result._repr_html_()
    assert "<video " in html and 'type="video/mp4"' in html
    assert data_uris(html, "video/mp4") == [result.output.read_bytes()]
    assert "RANDOM (untrained) WEIGHTS" in html and "RANDOM" in repr(result)
    assert "tiny_nb" in html and "12 frames, 96x64" in html
    path = result.output
    del result, html
    gc.collect()
    assert not path.exists()  # render's own file goes with its result


def test_render_takes_the_video_options_and_an_output(tmp_path, clip):
    model = vidattn.load_model("demo")
    out = tmp_path / "side.mp4"
    result = vidattn.render(clip.path, out, model=model, view="side-by-side", size=64, end=0.5,
                            progress=False)
    assert result.output == out and not result.temporary
    assert result.frames == 6 and result.size == (2 * 96 + 2, 64)  # the frame beside its map
    html = result._repr_html_()
    assert "RANDOM" not in html and "view side-by-side" in html
    with pytest.raises(VidattnError, match="output exists"):
        vidattn.render(clip.path, out, model=model, progress=False)
    gif = vidattn.render(clip.path, tmp_path / "a.gif", model=model, size=64, max_frames=3,
                         progress=False)
    assert len(data_uris(gif._repr_html_(), "image/gif")) == 1
    with pytest.raises(TypeError, match="colour"):
        vidattn.render(clip.path, model=model, colour="red")
    assert out.exists()


def test_import_stays_light_and_the_api_is_lazy():
    import subprocess
    import sys

    code = ("import sys, vidattn; assert 'keras' not in sys.modules; "
            "assert callable(vidattn.render) and callable(vidattn.probe); "
            "import vidattn.draw; assert callable(vidattn.render); "
            "print(vidattn.ProbeResult.__name__, vidattn.RenderResult.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ProbeResult", "RenderResult"]
