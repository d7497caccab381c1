"""Reduced precision: bf16 and fp16 maps agree with fp32 within a stated tolerance on the planted
model, what leaves the model is float32, everything made is labelled with the precision, and the
GPU install extras resolve."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vidattn
from tests.support.planted import planted_model
from vidattn import attention as am
from vidattn import probes as pr
from vidattn.options import ImageOptions, VideoOptions
from vidattn.preprocess import load_image, normalize, preprocess_image
from vidattn.video.pipeline import render_video

# Largest difference of the maps scaled to peak 1 against fp32, on the trained demo model and
# the sample photos (measured here: bf16 0.041 for the CLS maps and 0.010 for rollout, fp16 0.0048
# and 0.0015; bf16 keeps 8 bits of mantissa, fp16 11).
TOLERANCE = {"bf16": 0.06, "fp16": 0.01}
PHOTOS = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.jpg"))


def _red_square(hw=(160, 256), box=(slice(96, 144), slice(16, 64))):
    img = np.full((*hw, 3), 90, np.uint8)
    img[box] = (255, 0, 0)
    return normalize(img[None], "imagenet")


def _maps(out, n_prefix, grid):
    """The CLS maps of every head and the rollout map, each scaled to peak 1."""
    return (am.normalize_maps(am.cls_maps(out["attention"][0], n_prefix, grid)),
            am.rollout_map(out["rollout"], n_prefix, grid))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_maps_agree_with_fp32(precision):
    """On the planted model (with registers) the maps are fp32's, peaks included; on the trained
    demo model and the sample photos within TOLERANCE. What leaves the model is float32."""
    exact, reduced = planted_model(registers=4), planted_model(registers=4, precision=precision)
    want = exact.run(_red_square(), attention="cls", rollout=True, tokens=True)
    got = reduced.run(_red_square(), attention="cls", rollout=True, tokens=True)
    assert all(v.dtype == np.float32 for k, v in got.items() if k != "attention")
    assert got["attention"][0].dtype == np.float32
    for a, b in zip(_maps(want, 5, (10, 16)), _maps(got, 5, (10, 16))):
        np.testing.assert_allclose(b, a, atol=TOLERANCE[precision])
        for m_a, m_b in zip(a.reshape(-1, 10, 16), b.reshape(-1, 10, 16)):
            assert am.peak_location(m_a) == am.peak_location(m_b)
    exact, reduced = vidattn.load_model("demo"), vidattn.load_model("demo", precision=precision)
    for photo in PHOTOS:
        x = preprocess_image(load_image(photo), "imagenet", 224)
        pairs = zip(_maps(exact.run(x, attention="cls", rollout=True), 1, (28, 28)),
                    _maps(reduced.run(x, attention="cls", rollout=True), 1, (28, 28)))
        for a, b in pairs:
            assert np.abs(a - b).max() <= TOLERANCE[precision], photo.name


def test_precision_labels_what_it_makes(tmp_path):
    from tests.support.videos import make_video

    model = planted_model(precision="bf16")
    assert model.weights_label.endswith(", bf16") and not model.is_random
    photo = tmp_path / "red.png"
    from PIL import Image

    Image.fromarray(np.uint8(np.asarray(_red_square()[0] * 50 + 128).clip(0, 255))).save(photo)
    record = pr.probe_image(model, photo, tmp_path / "probe", ImageOptions(probes="heads"))
    assert record["model"]["weights"].endswith(", bf16")
    clip = make_video(tmp_path / "in.mp4", n_frames=4, fps=25, size=(160, 96)).path
    corners = {}
    for name, m in (("bf16", model), ("fp32", planted_model())):
        out = tmp_path / f"{name}.mp4"
        render_video(m, clip, out, VideoOptions(captions=False, progress=False))
        import av

        with av.open(str(out)) as c:
            frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
        corners[name] = frame[-14:, :40].astype(int)
    # bottom left: "bf16" in light text on a darkened box, nothing on the fp32 render
    assert (corners["bf16"] > 200).any() and not (corners["fp32"] > 200).any()


@pytest.mark.parametrize("extra", ["cuda", "jax-cuda", "torch"])
def test_gpu_extras_resolve(extra, tmp_path):
    """Each GPU extra names a package version that exists for this Python and provides the
    extra it asks for (pip's resolver on the package alone: no CUDA libraries downloaded)."""
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    requirements = config["options.extras_require"][extra].split()
    assert requirements
    for requirement in requirements:
        report = tmp_path / "report.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
             "--quiet", "--report", str(report), requirement],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (resolved,) = json.loads(report.read_text())["install"]
        asked = requirement.split("[", 1)[1].split("]")[0] if "[" in requirement else None
        assert resolved["metadata"]["name"] == requirement.split("[")[0].split(">")[0]
        if asked:
            assert asked in resolved["metadata"].get("provides_extra", []), resolved["metadata"]
