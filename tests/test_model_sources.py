"""``--model PATH`` and ``--model hf:ORG/NAME`` wired through every command and the notebook API:
each publisher's folder (``tests.support.publishers``) probed by ``vidattn image`` computes
what its ``transformers`` reference computes on the same crop, with the folder's own
preprocessing; a classifier's ``id2label`` names reach the top-5 and the video captions; the
read is cached; the weights, labels, fingerprints and listings say where the model came from."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vidattn
from tests.support import publishers
from tests.support.videos import make_video
from vidattn import attention as am
from vidattn import cli, notebook
from vidattn import probes as pr
from vidattn.batch import fingerprint
from vidattn.models import configs, hub, presets
from vidattn.models.configs import read_model
from vidattn.options import BatchOptions
from vidattn.preprocess import display_image, load_image, preprocess_image

CHELSEA = Path(__file__).resolve().parent.parent / "samples" / "chelsea.jpg"

# layout -> (publisher, what --model names: the folder or a file in it, crop side)
LAYOUTS = {
    "rad_dino": (publishers.publish_rad_dino, None, 56),
    "phikon": (publishers.publish_phikon, None, 32),
    "vit_classifier": (publishers.publish_vit_classifier, None, 48),
    "dinov2_registers": (publishers.publish_dinov2_registers, None, 56),
    "dinov3": (publishers.publish_dinov3, None, 32),
    "uni": (publishers.publish_uni, None, 48),
    "virchow2": (publishers.publish_virchow2, None, 56),
    "openclip": (publishers.publish_openclip, None, 32),
    "official_dinov2": (publishers.publish_official_dinov2, "dinov2_custom.pth", 56),
    "official_dinov3": (publishers.publish_official_dinov3, "dinov3_custom.pth", 32),
}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """layout -> (the --model argument, its transformers reference), written once."""
    root = tmp_path_factory.mktemp("published")
    made = {}
    for name, (publish, file, _) in LAYOUTS.items():
        folder = root / name
        folder.mkdir()
        if file is None:
            made[name] = (folder, publish(folder)[0])
        else:
            made[name] = (folder / file, publish(folder / file))
    return made


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def _reference_attention(reference, x: np.ndarray) -> list[np.ndarray]:
    """Every block's attention of the transformers ``reference`` on ``x`` ``(1, H, W, 3)``."""
    with torch.no_grad():
        out = reference(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                        output_attentions=True)
    return [a.numpy() for a in out.attentions]


def _distances(preset, attentions, size) -> np.ndarray:
    grid = preset.grid_at((size, size))
    return np.stack([am.mean_attention_distance(a, preset.num_prefix_tokens, grid,
                                                preset.patch_size)[0] for a in attentions])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_image_probes_each_publishers_folder_as_its_reference(tmp_path, published, layout):
    """`vidattn image --model FOLDER`: the mean attention distance of every block and head is the
    reference's on the crop preprocessed as the folder's config says (mean, std, filter); a
    crop made the study's default way would give other numbers where the config differs."""
    source, reference = published[layout]
    size = LAYOUTS[layout][2]
    out = tmp_path / "out"
    result = run("image", CHELSEA, "-o", out, "--model", source, "--size", size,
                 "--probes", "distance,heads", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "chelsea" / "probes.json").read_text())
    preset = read_model(str(source))
    weights = Path(preset.weights_path)
    assert record["model"]["preset"] == preset.name
    assert record["model"]["weights"] == f"{weights.parent.name}/{weights.name}"  # not official
    assert record["shapes"]["tokens"] == preset.tokens_at((size, size))
    pixels = load_image(CHELSEA)
    x = preprocess_image(pixels, preset.preprocessing, size, preset.resample)
    want = _distances(preset, _reference_attention(reference, x), size)
    got = np.asarray(record["mean_attention_distance"]["per_block_head"])
    tolerance = 1e-5 * size  # pixels
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
    if (preset.preprocessing, preset.resample) != ("imagenet", "bicubic"):
        default = preprocess_image(pixels, "imagenet", size)
        other = _distances(preset, _reference_attention(reference, default), size)
        assert np.abs(other - got).max() > 10 * tolerance


def test_top5_names_are_the_classifiers_id2label(tmp_path, published):
    """A ViTForImageClassification folder: top-5 names are its id2label's, with the
    probabilities its head gives on that crop, in probes.json and the index page."""
    source, reference = published["vit_classifier"]
    out = tmp_path / "out"
    result = run("image", CHELSEA, "-o", out, "--model", source, "--size", 48,
                 "--probes", "heads", "--quiet")
    assert result.exit_code == 0, result.output
    top5 = json.loads((out / "chelsea" / "probes.json").read_text())["top5"]
    # no preprocessor_config.json: ViTImageProcessor's default mean = std = 0.5
    x = preprocess_image(load_image(CHELSEA), "minus_one_one", 48)
    with torch.no_grad():
        logits = reference(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2)).logits[0]
    probs = torch.softmax(logits.double(), 0).numpy()
    names = ("cat", "dog", "teapot")
    assert [t["name"] for t in top5] == [names[i] for i in np.argsort(-probs, kind="stable")]
    np.testing.assert_allclose([t["probability"] for t in top5], np.sort(probs)[::-1], atol=1e-5)
    assert top5[0]["name"] in (out / "index.html").read_text()


def test_video_with_a_folder_captions_its_classes(tmp_path, published):
    """`vidattn video --model FOLDER`: a short clip rendered, every frame; the explain view's
    explained class is named by the folder's id2label."""
    source, _ = published["vit_classifier"]
    clip = make_video(tmp_path / "clip.mp4", n_frames=6, size=(64, 48))
    maps = tmp_path / "maps.npz"
    result = run("video", clip.path, "-o", tmp_path / "out.mp4", "--model", source, "--size", 48,
                 "--view", "explain", "--explain-method", "attention", "--save-maps", maps,
                 "--quiet")
    assert result.exit_code == 0, result.output
    saved = np.load(maps)
    assert len(saved["maps"]) == 6 and str(saved["model"]) == Path(source).name
    assert set(saved["explained_name"]) <= {"cat", "dog", "teapot"}
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_models_inspect_prints_what_is_read(published):
    source, _ = published["rad_dino"]
    result = run("models", "--inspect", source)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == configs.describe(read_model(str(source)))
    bad = run("models", "--inspect", Path(source) / "missing")
    assert bad.exit_code == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        f"vidattn: error: {Path(source) / 'missing'}: does not exist (expected a model folder, "
        "a checkpoint file, or hf:ORG/NAME)"]


def test_models_table_shows_a_mean_std_pair(monkeypatch):
    own = dataclasses.replace(presets.get_preset("demo"), name="own_norm",
                              preprocessing=((0.5, 0.4, 0.3), (0.2, 0.2, 0.2)))
    monkeypatch.setitem(presets.PRESETS, "own_norm", own)
    result = run("models")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("own_norm "))
    assert "mean/std" in row.split()


def test_get_preset_reads_a_folder_once_until_it_changes(published, monkeypatch):
    source, _ = published["phikon"]
    reads = []
    real = configs.read_model
    monkeypatch.setattr(configs, "read_model", lambda s: reads.append(s) or real(s))
    presets._read_source.cache_clear()
    first = presets.get_preset(str(source))
    assert presets.get_preset(str(source)) is first and len(reads) == 1
    config = Path(source) / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert presets.get_preset(str(source)) == first and len(reads) == 2
    with pytest.raises(vidattn.VidattnError, match="unknown model preset 'nope'"):
        presets.get_preset("nope")


def test_weights_come_from_the_folder_unless_weights_is_given(published, tmp_path):
    source, _ = published["phikon"]
    preset = read_model(str(source))
    assert hub.resolve(preset) == Path(source) / "model.safetensors"
    other = tmp_path / "other.safetensors"
    other.write_bytes((Path(source) / "model.safetensors").read_bytes())
    assert hub.resolve(preset, other) == other
    model = vidattn.load_model(str(source), weights=other)
    assert model.weights_label == "other.safetensors"
    assert vidattn.load_model(str(source)).weights_label == "phikon/model.safetensors"


def test_resize_filter_is_the_presets(monkeypatch):
    """The image probes crop with ``preset.resample``: bilinear differs from the study's bicubic,
    and the crop shown is the one the model saw."""
    tiny = dataclasses.replace(presets.get_preset("demo"), resample="bilinear")
    model = vidattn.load_model(tiny, weights="random")
    pixels = load_image(CHELSEA)
    analysis = pr.analyse(model, pixels, 64, ["heads"])
    np.testing.assert_array_equal(analysis.display, display_image(pixels, 64, "bilinear"))
    assert np.abs(analysis.display.astype(int) - display_image(pixels, 64)).max() > 8


def test_fingerprint_follows_what_the_config_says(published):
    """A batch redoes a folder model's outputs when its config changes, even under the same
    name and weights label; a named preset's fingerprint ignores none of that."""
    preset = read_model(str(published["phikon"][0]))
    opts = BatchOptions()

    def fp(p):
        return fingerprint(SimpleNamespace(preset=p, weights_label="phikon/model.safetensors"),
                           "image", opts)

    assert fp(preset) == fp(read_model(str(published["phikon"][0])))
    assert fp(preset) != fp(dataclasses.replace(preset, layer_norm_eps=1e-6))
    demo = presets.get_preset("demo")
    assert fp(presets.with_stride(demo, 4)) != fp(demo)


def test_ray_workers_get_the_folder_as_an_absolute_path(published, monkeypatch):
    source = Path(published["phikon"][0])
    monkeypatch.chdir(source.parent)
    kw = {"model": source.name, "weights": None, "checkpoint_key": "teacher",
          "memory_budget": None, "precision": "fp32", "stride": None}
    assert cli._loader(kw).__self__.model == str(source)
    assert cli._loader({**kw, "model": "demo"}).__self__.model == "demo"


def test_notebook_caches_a_folder_model_until_its_weights_change(published):
    source, _ = published["phikon"]
    notebook.clear_model_cache()
    first = notebook.model_for(str(source))
    assert notebook.model_for(str(source)) is first
    weights = Path(source) / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert notebook.model_for(str(source)) is not first
    notebook.clear_model_cache()


def test_a_folder_classifier_explains_its_classes_by_name(published):
    from vidattn.relevance.targets import check_classifier, resolve

    preset = read_model(str(published["vit_classifier"][0]))
    check_classifier(preset)  # supervised: no error
    assert list(resolve(preset, "Teapot", np.zeros((2, 3)))) == [2, 2]


def test_a_hub_name_reads_the_hugging_face_cache_offline(published, tmp_path, monkeypatch):
    """`--model hf:ORG/NAME` with the repository in the Hugging Face cache and HF_HUB_OFFLINE:
    config, preprocessing and weights come from the cache; the label names the repository."""
    from huggingface_hub import constants

    source, _ = published["phikon"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--phikon"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    result = run("image", CHELSEA, "-o", out, "--model", "hf:someone/phikon", "--size", 32,
                 "--probes", "distance", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "chelsea" / "probes.json").read_text())
    assert record["model"]["weights"] == "hf:someone/phikon"
    local = tmp_path / "local"
    assert run("image", CHELSEA, "-o", local, "--model", source, "--size", 32, "--probes",
               "distance", "--quiet").exit_code == 0
    assert record["mean_attention_distance"] == json.loads(
        (local / "chelsea" / "probes.json").read_text())["mean_attention_distance"]
