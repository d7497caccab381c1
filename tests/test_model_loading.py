"""Loading real checkpoint layouts into the model, and every way a checkpoint can be wrong."""

import argparse
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import vidattn
from tests.support.checkpoints import canonical_from_hf, peaky_hf_vit
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset

TINY = dataclasses.replace(get_preset("dino_vits16"), name="tiny", embed_dim=64, depth=2, num_heads=4)
IMAGES = np.random.default_rng(3).normal(size=(1, 96, 160, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same random weights as HF safetensors, official DINO .pth and a DINO training checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    reference = peaky_hf_vit(TINY)
    reference.save_pretrained(root / "hf")
    canonical = canonical_from_hf(reference)
    torch.save(canonical, root / "plain.pth")
    head = {"head.mlp.0.weight": torch.randn(8, 64), "head.last_layer.weight_g": torch.ones(1, 8)}
    student = {f"module.backbone.{k}": v + 1 for k, v in canonical.items()}
    torch.save(
        {
            "student": {**student, **{f"module.{k}": v for k, v in head.items()}},
            "teacher": {**{f"backbone.{k}": v for k, v in canonical.items()}, **head},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16),
            "dino_loss": {"center": torch.zeros(1, 8)},
        },
        root / "checkpoint.pth",
    )
    return root, canonical


def _run(path, preset=TINY):
    return vidattn.load_model(preset, weights=path).run(IMAGES, attention="all")


def test_official_pth_layouts_match_safetensors(files):
    root, _ = files
    expected = _run(root / "hf" / "model.safetensors")
    for name in ("plain.pth", "checkpoint.pth"):
        got = _run(root / name)
        np.testing.assert_allclose(got["features"], expected["features"], atol=1e-6)
        for a, b in zip(got["attention"], expected["attention"]):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_training_checkpoint_student_is_selectable(files):
    root, _ = files
    teacher = vidattn.load_model(TINY, weights=root / "checkpoint.pth")
    student = vidattn.load_model(TINY, weights=root / "checkpoint.pth", checkpoint_key="student")
    assert not np.allclose(teacher.run(IMAGES)["features"], student.run(IMAGES)["features"])


def _assert_one_line_error(path, preset, *words):
    with pytest.raises(VidattnError) as err:
        vidattn.load_model(preset, weights=path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message


def test_wrong_preset_lists_the_mismatch(files):
    root, _ = files
    other = dataclasses.replace(TINY, depth=3)
    _assert_one_line_error(root / "plain.pth", other, "missing", "blocks.2.")
    _assert_one_line_error(root / "plain.pth", get_preset("dino_vitb16"), "wrong shape")


def test_missing_extra_and_misshaped_keys(files, tmp_path):
    root, canonical = files
    missing = {k: v for k, v in canonical.items() if k != "blocks.1.mlp.fc1.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    _assert_one_line_error(tmp_path / "missing.pth", TINY, "missing: blocks.1.mlp.fc1.bias")
    extra = {**canonical, "blocks.0.attn.surprise": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pth")
    _assert_one_line_error(tmp_path / "extra.pth", TINY, "unexpected: blocks.0.attn.surprise")
    shaped = {**canonical, "blocks.0.attn.qkv.weight": torch.zeros(192, 63)}
    torch.save(shaped, tmp_path / "shape.pth")
    _assert_one_line_error(tmp_path / "shape.pth", TINY, "wrong shape", "blocks.0.attn.qkv.weight")


def test_truncated_checkpoint(files, tmp_path):
    root, _ = files
    for name in ("plain.pth", "hf/model.safetensors"):
        data = (root / name).read_bytes()
        cut = tmp_path / ("cut-" + os.path.basename(name))
        cut.write_bytes(data[: len(data) // 2])
        _assert_one_line_error(cut, TINY)


def test_offline_download_fails_fast_with_a_way_out():
    start = time.monotonic()
    with pytest.raises(VidattnError) as err:
        vidattn.load_model(dataclasses.replace(TINY, weights_url="http://127.0.0.1:9/tiny.pth"))
    assert time.monotonic() - start < 10
    assert "weights=PATH" in str(err.value) and "--weights PATH" in str(err.value)


def test_random_weights_say_so():
    model = vidattn.load_model(TINY, weights="random")
    assert model.is_random and "random" in model.weights_label


SECOND_BACKEND = """
import json, sys, numpy as np, vidattn, keras
from vidattn.models.presets import get_preset
preset = get_preset("dino_vits16")
import dataclasses
tiny = dataclasses.replace(preset, name="tiny", embed_dim=64, depth=2, num_heads=4)
x = np.load(sys.argv[2])
out = vidattn.load_model(tiny, weights=sys.argv[1]).run(x, attention="all")
np.savez(sys.argv[3], features=out["features"], attention=np.stack(out["attention"]))
print(keras.backend.backend())
"""


def test_same_numbers_on_the_torch_backend(files, tmp_path):
    root, _ = files
    np.save(tmp_path / "x.npy", IMAGES)
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    proc = subprocess.run(
        [sys.executable, "-c", SECOND_BACKEND, str(root / "plain.pth"), str(tmp_path / "x.npy"),
         str(tmp_path / "torch.npz")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "torch"
    theirs = np.load(tmp_path / "torch.npz")
    ours = _run(root / "plain.pth")
    np.testing.assert_allclose(theirs["features"], ours["features"], atol=1e-5)
    np.testing.assert_allclose(theirs["attention"], np.stack(ours["attention"]), atol=1e-5)
