"""The compiled programs the command line keeps under ``$VIDATTN_HOME``
(``runtime.keep_compiled_programs``): a second process loads them instead of compiling, and a
program loaded for other weights computes with the new weights (they are the program's inputs,
not constants in it)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import vidattn
from vidattn.backend import keras
from vidattn.models.presets import get_preset
from vidattn.runtime import compile_cache_dir, keep_compiled_programs

TINY = dataclasses.replace(get_preset("dino_vits16"), name="tiny", embed_dim=32, depth=2,
                           num_heads=2)
# A fresh process as the command line starts one: the cache set up before Keras is imported.
SCRIPT = """
import dataclasses, sys
import numpy as np
from vidattn.runtime import keep_compiled_programs
keep_compiled_programs()
import vidattn
from vidattn.models.presets import get_preset
tiny = dataclasses.replace(get_preset("dino_vits16"), name="tiny", embed_dim=32, depth=2,
                           num_heads=2)
model = vidattn.load_model(tiny, weights="random", seed=int(sys.argv[1]))
x = np.random.default_rng(0).normal(size=(2, 32, 48, 3)).astype(np.float32)
np.save(sys.argv[2], model.run(x, attention="cls")["attention"][0])
"""


@pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
                    reason="only the XLA backends compile")
def test_a_second_process_loads_the_kept_program_and_uses_its_own_weights(tmp_path):
    env = {**os.environ, "VIDATTN_HOME": str(tmp_path / "home")}
    for name in ("TF_XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    folder = (tmp_path / "home" / "compiled" / compile_cache_dir(keras.backend.backend()).name)

    def run(seed):
        out = tmp_path / f"seed{seed}.npy"
        subprocess.run([sys.executable, "-c", SCRIPT, str(seed), str(out)], env=env, check=True)
        return np.load(out)

    first = run(0)
    kept = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert kept, f"nothing kept in {folder}"
    second = run(1)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == kept  # loaded, not rebuilt
    x = np.random.default_rng(0).normal(size=(2, 32, 48, 3)).astype(np.float32)
    own = vidattn.load_model(TINY, weights="random", seed=1).run(x, attention="cls")
    np.testing.assert_allclose(second, own["attention"][0], atol=1e-6)
    assert np.abs(second - first).max() > 1e-3  # other weights: other attention


def test_a_folder_that_cannot_be_made_is_left_out(monkeypatch, tmp_path):
    """TensorFlow fails the model's call on a cache folder it cannot open: none is set up."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path / "file" / "home"))  # under a file
    for backend in ("tensorflow", "jax"):
        monkeypatch.setenv("KERAS_BACKEND", backend)
        for name in ("TF_XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR",
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):  # restored afterwards
            monkeypatch.delenv(name, raising=False)
        assert not keep_compiled_programs()
        assert "TF_XLA_FLAGS" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path / "home"))
    assert keep_compiled_programs()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(compile_cache_dir("jax"))
    assert compile_cache_dir("jax").is_dir()
