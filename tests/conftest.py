"""Shared fixtures. Keras' backend is fixed by ``import vidattn`` (TensorFlow unless the
environment says otherwise), so tests import vidattn before anything that imports keras. Helpers
live in ``tests/support`` (``from tests.support.videos import make_video``)."""

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import vidattn  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's weight cache."""
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path / "vidattn-home"))
