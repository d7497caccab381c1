"""Tracking's inputs damaged: seed masks (indexed, greyscale, 16-bit PNGs) cut, flipped,
overwritten or spliced, read as ``vidattn track --mask`` reads them, and frame folders holding
such a damaged frame. Every case ends in labels that fit the frame or one VidattnError naming the
file."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from tests.support.fuzzing import examples, write_damaged
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.track import davis
from vidattn.track.frames import open_source, read_source
from vidattn.track.seeds import labels_from_mask

pytestmark = pytest.mark.filterwarnings("error")
FRAME_HW = (48, 64)


@pytest.fixture(scope="module")
def seed_masks(tmp_path_factory):
    """A DAVIS indexed mask, a black-and-white greyscale one and a 16-bit one."""
    folder = tmp_path_factory.mktemp("masks")
    ids = np.zeros(FRAME_HW, np.uint8)
    ids[10:30, 5:25], ids[20:40, 30:60] = 1, 2
    davis.write_mask(folder / "indexed.png", ids)
    Image.fromarray((ids > 0).astype(np.uint8) * 255).save(folder / "bw.png")
    Image.fromarray(ids.astype(np.uint16)).save(folder / "i16.png")
    return {p.stem: p for p in folder.iterdir()}


@reliability(("a seed mask PNG (indexed, black-and-white, 16-bit) cut, flipped, overwritten or "
              "spliced, given to `vidattn track --mask`", "labels of the frame's size with ids "
              "1..254, or one error naming the mask (unreadable or truncated, another size, no "
              "object, DAVIS's void id, RGB)"))
@examples(120)
@given(data=st.data())
def test_damaged_masks_read_or_refused(data, seed_masks, scratch):
    path = write_damaged(data, seed_masks, scratch, "mask")
    try:
        labels = labels_from_mask(path, FRAME_HW)
    except VidattnError as err:
        assert err.path == str(path) and "\n" not in str(err)
        event("error")
        return
    assert labels.shape == FRAME_HW and labels.dtype == np.uint8
    assert 0 < labels.max() < davis.VOID
    event("ok")


@reliability(("a folder of frames whose middle frame is a damaged PNG", "every frame, or one "
              "error naming the damaged frame; the frames before it are read"))
@examples(60)
@given(data=st.data())
def test_damaged_frame_in_folder(data, seed_masks, scratch):
    folder = scratch / "frames"
    folder.mkdir(exist_ok=True)
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((*FRAME_HW, 3), 120, np.uint8)).save(folder / name)
    bad = write_damaged(data, {"frame": folder / "a.png"}, scratch, "frame")
    (folder / "b.png").write_bytes(bad.read_bytes())
    try:
        source = open_source(folder)
        frames = [f.image.shape for f in read_source(source, None, None, None)]
    except VidattnError as err:
        assert err.path in (str(folder / "b.png"), str(folder)), err
        event("error")
        return
    assert frames == [(*FRAME_HW, 3)] * 3
    event("ok")


@reliability(("any text as `--point`, `--box` or `--query` (hypothesis: numbers, signs, "
              "infinities, NaN, separators, unicode)", "the numbers, or one error line naming "
              "the option and the shape it wants; never an exception of another kind"))
@examples(300)
@given(text=st.one_of(st.text(max_size=24), st.lists(
    st.one_of(st.floats(allow_nan=True), st.integers(), st.sampled_from(["", " ", "1e309", "-0"])),
    max_size=5).map(lambda xs: ",".join(map(str, xs)))), at=st.sampled_from(["", "@", "@2.5",
                                                                              "@-1", "@x"]))
def test_coordinates_parse_or_refuse(text, at):
    from vidattn.options import VideoOptions, parse_numbers

    for count, what in ((2, "--point"), (4, "--box")):
        try:
            values = parse_numbers(text, count, what)
        except VidattnError as err:
            assert what in str(err) and "\n" not in str(err)
        else:
            assert len(values) == count and all(0 <= v < float("inf") for v in values)
    try:
        opts = VideoOptions(view="similarity", query=text + at)
    except VidattnError as err:
        assert "--query" in str(err) and "\n" not in str(err)
    else:
        x, y, t = opts.query_point
        assert x >= 0 and y >= 0 and (t is None or t >= 0)
