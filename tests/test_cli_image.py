"""``vidattn image`` end to end: good images, broken ones, the index page, re-runs."""

import dataclasses
import json
import re

import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from tests.support.reliability import reliability
from vidattn.cli import main
from vidattn.models import presets

TINY = dataclasses.replace(presets.get_preset("dino_vits16"), name="tiny_cli", embed_dim=32,
                           depth=2, num_heads=2, image_size=64)
ARGS = ["--model", "tiny_cli", "--weights", "random", "--size", "64", "--quiet"]


@pytest.fixture(autouse=True)
def _tiny_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "tiny_cli", TINY)


@pytest.fixture
def inputs(tmp_path):
    """Two real photos (one a same-stem clash), a text file named .jpg and a missing file."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(tmp_path / "a" / "photo.jpg")
    Image.fromarray(skimage.data.chelsea()[::3, ::3]).save(tmp_path / "b" / "photo.jpg")
    (tmp_path / "notes.jpg").write_text("meeting at noon")
    return [str(tmp_path / "a" / "photo.jpg"), str(tmp_path / "b" / "photo.jpg"),
            str(tmp_path / "notes.jpg"), str(tmp_path / "missing.jpg")]


def run(*args):
    """``vidattn image ARGS...``"""
    return CliRunner().invoke(main, ["image", *(str(a) for a in args)])


def test_good_images_done_bad_ones_reported_one_line_each(tmp_path, inputs):
    out = tmp_path / "out"
    result = run(*inputs, "-o", out, *ARGS)
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"vidattn: error: {inputs[2]}: not an image file (Pillow cannot identify it)",
        f"vidattn: error: {inputs[3]}: no such file",
    ]
    for folder, src in (("photo", inputs[0]), ("photo-2", inputs[1])):  # same stem: disambiguated
        record = json.loads((out / folder / "probes.json").read_text())
        assert record["image"] == src and record["model"]["random_weights"] is True
        for probe in ("distance", "rollout", "heads", "masks"):
            with Image.open(out / folder / f"{probe}.png") as im:
                assert im.format == "PNG" and min(im.size) > 200
    assert sorted(p.name for p in (out / "_model").iterdir()) == [
        "filters.png", "pca-joint.json", "pca-joint.png", "posembed.png"]
    assert not (out / "notes").exists() and not (out / "missing").exists()

    html = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert "photo/heads.png" in links and "photo-2/probes.json" in links
    assert "_model/filters.png" in links
    assert all((out / link).is_file() for link in links)  # relative, and every one resolves
    assert "RANDOM (untrained) WEIGHTS" in html and "missing.jpg: no such file" in html
    assert html.count("mean attention distance") == 2  # one table per good image


@reliability(("`vidattn image` into a folder that holds that image's results",
              "error naming the image's folder: use --overwrite; nothing replaced"))
def test_existing_output_needs_overwrite(tmp_path, inputs):
    """--overwrite itself is tested in test_probes (probe_image)."""
    out = tmp_path / "out"
    assert run(inputs[0], "-o", out, *ARGS, "--probes", "heads").exit_code == 0
    again = run(inputs[0], "-o", out, *ARGS, "--probes", "heads")
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        f"vidattn: error: {out / 'photo'}: output folder exists (use --overwrite to replace it)"
    )


def test_top5_reaches_probes_json_and_index(tmp_path, inputs, monkeypatch):
    classifier = dataclasses.replace(presets.get_preset("vit_b16"), name="tiny_vit", embed_dim=32,
                                     depth=2, num_heads=2, image_size=64)
    monkeypatch.setitem(presets.PRESETS, "tiny_vit", classifier)
    out = tmp_path / "out"
    result = run(inputs[0], "-o", out, "--model", "tiny_vit", "--weights", "random", "--size",
                 "64", "--probes", "rollout")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "1 of 1 images" in result.stderr
    top5 = json.loads((out / "photo" / "probes.json").read_text())["top5"]
    assert len(top5) == 5 and all(isinstance(t["name"], str) for t in top5)
    assert sum(t["probability"] for t in top5) <= 1 + 1e-6
    html = (out / "index.html").read_text()
    assert top5[0]["name"] in html and "filters.png" not in html  # only the probes asked for


@pytest.mark.parametrize("args,message", [
    (["--probes", "heads,saliency"], "unknown probe(s) saliency"),
    (["--size", "72"], "--size 72 must be a multiple of the patch size 16"),
])
def test_bad_options_are_one_line_errors(tmp_path, inputs, args, message):
    result = run(inputs[0], "-o", tmp_path / "out", "--model", "tiny_cli", "--weights", "random",
                 "--quiet", *args)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_help_reads_like_a_manual():
    result = run("--help")
    assert result.exit_code == 0
    for text in ("Examples:", "--probes", "--threshold", "--overwrite", "index.html",
                 "probes.json"):
        assert text in result.output
