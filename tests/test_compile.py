"""The choice of XLA's CPU matmul: oneDNN only for the work and the TensorFlow where it was
measured faster, once per process, never over the user's own flags.

XLA stops the process at a flag it does not know, so a wrong version gate would crash every run
on another TensorFlow; these cases pin the gate."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vidattn.backend import keras
from vidattn.models import compile as compile_step

MEASURED = next(iter(compile_step.XLA_CPU_FLAGS))
FLAGS = compile_step.XLA_CPU_FLAGS[MEASURED]
MANY = compile_step.ONEDNN_MIN_ROWS  # rows of a batch of short sequences (8 x 197 at 224)


@pytest.fixture
def fresh_process(monkeypatch):
    """No choice made yet, no XLA_FLAGS, an x86 machine."""
    monkeypatch.setattr(compile_step, "_xla_cpu_chosen", False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compile_step.platform, "machine", lambda: "x86_64")
    return monkeypatch


@pytest.mark.parametrize(
    "version, machine, user, rows, chunked, expected",
    [
        (f"{MEASURED}.0", "x86_64", None, MANY, False, FLAGS),
        (f"{MEASURED}.3", "AMD64", "--xla_dump_to=/tmp/x", MANY, False,
         f"--xla_dump_to=/tmp/x {FLAGS}"),
        (f"{MEASURED}.0", "x86_64", None, 197, False, None),  # one 224 image: Eigen was faster
        (f"{MEASURED}.0", "x86_64", None, 16322, True, None),  # chunked --full-res: Eigen too
        ("2.99.0", "x86_64", None, MANY, False, None),  # another XLA may not know the flags
        (f"{MEASURED}.0", "aarch64", None, MANY, False, None),  # oneDNN's x86 kernels
        (f"{MEASURED}.0", "x86_64", "--xla_cpu_use_onednn=false", MANY, False,
         "--xla_cpu_use_onednn=false"),
    ],
    ids=["batch", "appended-to-user-flags", "one-image", "chunked", "other-version", "arm",
         "user-chose"],
)
def test_onednn_only_where_measured_faster(fresh_process, version, machine, user, rows, chunked,
                                           expected):
    if user is not None:
        fresh_process.setenv("XLA_FLAGS", user)
    fresh_process.setattr(compile_step.platform, "machine", lambda: machine)
    compile_step.choose_xla_cpu_matmul(rows, chunked, version)
    assert os.environ.get("XLA_FLAGS") == expected


def test_the_first_compile_chooses_for_the_process(fresh_process):
    version = f"{MEASURED}.1"
    compile_step.choose_xla_cpu_matmul(197, False, version)  # first: a single image
    compile_step.choose_xla_cpu_matmul(MANY, False, version)  # XLA has read its flags by now
    assert "XLA_FLAGS" not in os.environ
    fresh_process.setattr(compile_step, "_xla_cpu_chosen", False)
    compile_step.choose_xla_cpu_matmul(MANY, False, version)
    compile_step.choose_xla_cpu_matmul(MANY, False, version)
    assert os.environ["XLA_FLAGS"] == FLAGS  # added once


# A fresh process whose first compile is a batch of 64 images of 21 tokens (1344 rows): oneDNN's
# products, against Hugging Face's DINOv3 (RoPE, the masked key bias, LayerScale)
ONEDNN_PARITY = """
import json, os, sys, tempfile
from pathlib import Path
import numpy as np
import vidattn
from tests.support.families import hf_run, peaky_hf_dinov3, tiny_dinov3

preset = tiny_dinov3()
reference = peaky_hf_dinov3(preset)
with tempfile.TemporaryDirectory() as folder:
    reference.save_pretrained(folder)
    ours = vidattn.load_model(preset, weights=Path(folder) / "model.safetensors")
images = np.random.default_rng(1).normal(size=(64, 64, 64, 3)).astype(np.float32)
out = ours.run(images, attention="all", tokens=True)
features, attention, tokens = hf_run(reference, images)
print(json.dumps({
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "peak": float(attention[-1].max()),
    "attention": max(float(np.abs(a - b).max()) for a, b in zip(out["attention"], attention)),
    "features": float(np.abs(out["features"] - features).max()),
    "tokens": float(np.abs(out["patch_tokens"] - tokens).max()),
}))
"""


def _onednn_measured_here() -> bool:
    """This process's backend, machine and TensorFlow are those oneDNN is chosen for."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    measured = ".".join(tf.__version__.split(".")[:2]) in compile_step.XLA_CPU_FLAGS
    return measured and platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not _onednn_measured_here(),
                    reason="oneDNN's products are chosen only with a measured TensorFlow on x86")
def test_onednn_products_keep_parity_with_hugging_face():
    """The rest of the suite runs in one process whose first compile is small (Eigen); this
    checks the other matmul, in a process that chooses oneDNN, within the same 1e-5."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", ONEDNN_PARITY], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["xla_flags"] == compile_step.XLA_CPU_FLAGS[MEASURED]
    assert got["peak"] > 0.3, "attention too uniform for a meaningful parity test"
    assert got["attention"] < 1e-5 and got["features"] < 1e-5 and got["tokens"] < 1e-5, got
