"""The fuzz suite's seed corpus, made once per session, and its hypothesis profile
(``fuzzing.py``, loaded here before any test module)."""

from __future__ import annotations

import pytest

from tests.support import fuzzing  # noqa: F401 - registers and loads the hypothesis profile
from tests.support.corpus import (
    make_checkpoints,
    make_family_checkpoints,
    make_images,
    make_videos,
)


@pytest.fixture(scope="session")
def seed_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("seeds")


@pytest.fixture(scope="session")
def seed_videos(seed_dir):
    return make_videos(seed_dir)


@pytest.fixture(scope="session")
def seed_images(seed_dir):
    return make_images(seed_dir)


@pytest.fixture(scope="session")
def seed_checkpoints(seed_dir):
    return make_checkpoints(seed_dir)


@pytest.fixture(scope="session")
def family_checkpoints(seed_dir):
    return make_family_checkpoints(seed_dir)


@pytest.fixture
def scratch(tmp_path_factory):
    """A fresh folder per test; the hypothesis examples of one test share it (each overwrites
    its files)."""
    return tmp_path_factory.mktemp("case")
