"""``vidattn explain-eval``'s ImageNet-Segmentation file damaged: a tiny ``gtsegs_ijcv.mat`` in
the real layout (HDF5 references, as MATLAB v7.3 writes them) cut, flipped, overwritten or
spliced, opened and read as the command reads it. Every case ends in samples of the right
shapes or one VidattnError naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.support.fuzzing import examples, write_damaged
from tests.support.gtsegs import write_gtsegs
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.relevance.evaluate import GtSegs

pytestmark = pytest.mark.filterwarnings("error")
SIZE = 32


@pytest.fixture(scope="module")
def seed_mats(tmp_path_factory):
    """Two images with their masks, and one, in the .mat layout."""
    folder = tmp_path_factory.mktemp("mats")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    masks = np.zeros((2, 20, 28), np.uint8)
    masks[:, 5:15, 8:20] = 1
    return {"two": write_gtsegs(folder / "two.mat", images, masks),
            "one": write_gtsegs(folder / "one.mat", images[:1], masks[:1])}


@reliability(("a gtsegs_ijcv.mat (HDF5) cut, flipped, overwritten or spliced, given to "
              "`vidattn explain-eval --segmentation`", "every sample read (an image and a mask "
              "of 0 and 1), or one error naming the file; never an exception of another kind"))
@examples(120)
@given(data=st.data())
def test_damaged_gtsegs_read_or_refused(data, seed_mats, scratch):
    path = write_damaged(data, seed_mats, scratch, "mat")
    try:
        seg = GtSegs(path)
        try:
            samples = [seg.sample(i, SIZE) for i in range(len(seg))]
        finally:
            seg.close()
    except VidattnError as err:
        assert err.path == str(path) and "\n" not in str(err)
        event("error")
        return
    for image, mask in samples:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 1}
    event("ok")
