"""``vidattn.probe`` on whatever a notebook holds: arrays of any dtype and shape, odd objects.
Paths go through ``load_image``, fuzzed in test_fuzz_images; videos through ``render_video``,
fuzzed in test_fuzz_video and test_fuzz_outputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import vidattn
from tests.support.fuzzing import examples
from tests.support.reliability import reliability
from vidattn.errors import VidattnError

# A warning is noise in a notebook too: here it fails the case.
pytestmark = pytest.mark.filterwarnings("error")

DTYPES = st.sampled_from(["uint8", "uint16", "int8", "int16", "int32", "int64", "float16",
                          "float32", "float64", "bool", "complex64"])
SIDE = st.integers(0, 9)
SHAPES = st.one_of(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
                   st.tuples(SIDE, SIDE), st.tuples(SIDE, SIDE, st.integers(1, 5)))


@pytest.fixture(scope="module")
def demo():
    return vidattn.load_model("demo")


def _probe_or_refuse(demo, image) -> str:
    try:
        result = vidattn.probe(image, model=demo, size=64, probes="rollout")
    except VidattnError as err:
        assert err.path is None and "is not an image: pass uint8 RGB (H, W, 3)" in str(err)
        return "error"
    assert np.isfinite(result.rollout).all() and result.rollout.max() == pytest.approx(1)
    assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
    return "ok"


@reliability(("`vidattn.probe` given numpy arrays of every dtype (integers, floats with NaN and "
              "infinities, bool, complex) and 0 to 4 dimensions, empty ones included",
              "probed as Pillow reads such an array (RGB, RGBA, greyscale), or one error giving "
              "its shape and dtype: pass uint8 RGB (H, W, 3)"))
@examples(60)
@given(array=hnp.arrays(DTYPES, SHAPES))  # floats include NaN and infinities
def test_arrays_probe_or_fail_cleanly(demo, array):
    event(_probe_or_refuse(demo, array))


@reliability(("`vidattn.probe` given an object that is not an image: None, a list of pixels, "
              "bytes, a number",
              "one error naming its type and what to pass instead"))
@pytest.mark.parametrize("thing", [None, [[0, 0, 0]], b"\x89PNG", 3.5])
def test_things_that_are_not_images_are_refused(demo, thing):
    with pytest.raises(VidattnError, match=rf"^not an image: {type(thing).__name__} \(pass a path"):
        vidattn.probe(thing, model=demo, size=64)


@reliability(("a float greyscale image in 0..1 holding -inf, as an array or a float TIFF file",
              "probed, -inf as black (regression, found by the fuzz test above: an overflow "
              "warning in the scaling to 0..255)"))
def test_infinite_float_pixels_are_clipped(demo, tmp_path):
    values = np.array([[-np.inf, 0.5], [1.0, np.nan]], np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    for image in (values, tmp_path / "float.tif"):
        result = vidattn.probe(image, model=demo, size=64, probes="rollout")
        corners = result.image[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners[0].tolist() == [0, 0, 0] and corners[2].tolist() == [255, 255, 255]
