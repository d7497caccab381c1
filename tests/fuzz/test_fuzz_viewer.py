"""The video viewer on damaged videos: a whole viewer folder or one error naming the input, and
never a half-written folder (the pages' own handling of damaged data is tested in Chromium)."""

from __future__ import annotations

import shutil

import av
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import vidattn
from tests.support.browser import read_meta, video_maps
from tests.support.fuzzing import examples, write_damaged
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.options import VideoOptions
from vidattn.video.pipeline import render_video

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(scope="module")
def demo():
    return vidattn.load_model("demo")


@reliability(("the damaged seed videos rendered with `--viewer DIR`, alone or with `-o`",
              "a complete viewer (its page, a video and maps of every rendered frame) and "
              "output, or one error naming the input and no folder, output or temporary file"))
@examples(12)
@given(data=st.data())
def test_damaged_videos_give_a_whole_viewer_or_none(data, demo, seed_videos, scratch):
    src = write_damaged(data, seed_videos, scratch, "video")
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    dst = out / "o.mp4" if data.draw(st.booleans(), label="with -o") else None
    opts = VideoOptions(size=64, viewer=out / "v", progress=False)
    try:
        result = render_video(demo, src, dst, opts)
    except VidattnError as err:
        assert err.path == str(src), err
        assert list(out.iterdir()) == []
        event("error")
        return
    assert sorted(p.name for p in out.iterdir()) == (["o.mp4", "v"] if dst else ["v"])
    with av.open(str(out / "v" / "video.mp4")) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == result.frames
    assert len(read_meta(out / "v" / "index.html")["times"]) == result.frames
    assert len(video_maps(out / "v")[1]) == result.frames
    event("ok")
